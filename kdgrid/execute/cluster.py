"""Runs as a Slurm job array, submitted through submitit (``execute.executor: slurm``).

Each array task runs :func:`kdgrid.execute.job.cluster_task`: one attempt of one run, which writes ``result.json``
(done, or failed with its reason) to the run directory on the shared file system. The
coordinator never talks to the jobs: it polls the run directories, ingests what has finished,
and asks submitit (``sacct``) about jobs that ended without a result (time limit, out of
memory, node failure, cancelled). ``job.json`` in each run directory names the job, so a
coordinator that stopped (Ctrl-C, a dropped SSH session, kill -9) re-attaches to the jobs still
queued or running instead of submitting them again.

``execute.slurm.cluster: local`` runs the same array as local processes (submitit's
LocalExecutor) and ``debug`` runs it inside the coordinator: to try a setup, and in the tests.
"""

from __future__ import annotations

import math
import shlex
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdgrid.errors import KdgridError
from kdgrid.execute.job import JobSpec, RunnerRef, cluster_task, now
from kdgrid.execute.ledger import Ledger
from kdgrid.execute.rundir import JobInfo, job_path, read_result, result_path, run_dir, write_json_atomic
from kdgrid.plan.expand import PlannedRun
from kdgrid.records import RunResult
from kdgrid.study.schema import Execute

# sacct states of a job that is still queued or running (or not yet known to sacct)
LIVE_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "READY",
    "UNKNOWN",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
)


def time_limit_min(execute: Execute) -> int:
    if execute.slurm.time_min is not None:
        return execute.slurm.time_min
    return math.ceil(execute.timeout_s / 60) if execute.timeout_s is not None else 60


def make_executor(execute: Execute, workdir: Path, study_name: str) -> Any:
    import submitit

    s = execute.slurm
    try:
        ex = submitit.AutoExecutor(folder=workdir / "submitit" / "%j", cluster=s.cluster)
    except (RuntimeError, ValueError) as exc:
        hint = (
            "; submit from a Slurm login node, or try the setup here with --slurm cluster=local"
            if s.cluster == "slurm"
            else ""
        )
        raise KdgridError(f"executor slurm: cannot use submitit's '{s.cluster}' executor here ({exc}){hint}") from None
    params: dict[str, Any] = {
        "name": f"kdgrid-{study_name}",
        "timeout_min": time_limit_min(execute),
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": s.gpus_per_run,
        "cpus_per_task": s.cpus_per_run,
        "mem_gb": s.mem_gb,
        "slurm_partition": s.partition,
        "slurm_array_parallelism": s.array_parallelism,
        "slurm_account": s.account,
        "slurm_qos": s.qos,
        "slurm_constraint": s.constraint,
        "slurm_setup": s.setup or None,
        "slurm_additional_parameters": s.additional or None,
    }
    if s.cluster == "slurm":
        # The job must import the same kdgrid as this coordinator (a checkout on PYTHONPATH, not an older
        # install), even where sbatch does not pass the environment on (--export=NONE).
        params["slurm_setup"] = [
            f"export PYTHONPATH={shlex.quote(_kdgrid_root())}${{PYTHONPATH:+:$PYTHONPATH}}",
            *s.setup,
        ]
    if s.cluster == "local":
        params["local_setup"] = s.setup or None
        params["gpus_per_node"] = 0 if s.gpus_per_run == 0 else s.gpus_per_run
    try:
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, ValueError, AssertionError) as exc:
        raise KdgridError(f"execute.slurm: {str(exc).splitlines()[0]}") from None
    return ex


def _kdgrid_root() -> str:
    import kdgrid

    return str(Path(kdgrid.__file__).resolve().parents[1])


def slurm_queue() -> dict[str, str] | None:
    """{job id: state} of this user's jobs that slurmctld still holds, one per array task (``12_3``); None
    when squeue cannot be asked (then every job counts as alive: better to wait for a run than run it twice).

    squeue, not sacct, says whether a job is still alive: an array task cancelled while still pending
    is never split off its array, so sacct never reports it and submitit's watcher says UNKNOWN for good.
    Finished jobs stay listed (with their final state) for MinJobAge seconds.
    """
    try:
        out = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


def slurm_final_states(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: sacct state} of jobs that left the queue (one sacct call); missing ids were never accounted."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def is_live(state: str | None) -> bool:
    return state is not None and state.split()[0].upper() in LIVE_STATES


def live_jobs(infos: dict[str, JobInfo]) -> dict[str, JobInfo]:
    """The entries of ``{run_id: job.json}`` whose job may still be queued or running."""
    live: dict[str, JobInfo] = {}
    slurm = {rid: info for rid, info in infos.items() if info.get("executor") == "slurm"}
    if slurm:
        queue = slurm_queue()
        live.update(
            {rid: info for rid, info in slurm.items() if queue is None or is_live(queue.get(str(info["job_id"])))}
        )
    live.update({rid: info for rid, info in infos.items() if info.get("executor") == "local" and job_alive(info)})
    return live


def job_alive(info: JobInfo) -> bool:
    """Whether the job named in a run's job.json may still be queued or running."""
    cluster = info.get("executor")
    job_id = str(info.get("job_id", ""))
    if cluster == "slurm":
        return bool(live_jobs({"_": info}))
    if cluster == "local" and job_id.isdigit():  # submitit's LocalExecutor: the job id is a pid
        try:
            stat = Path(f"/proc/{job_id}/stat").read_text()
            cmdline = Path(f"/proc/{job_id}/cmdline").read_bytes()
        except OSError:
            return False
        return b"submitit" in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"
    return False  # debug jobs live in their coordinator; local pool workers die with theirs


@dataclass
class _ClusterJob:
    run: PlannedRun
    attempt: int
    handle: Any  # a submitit Job, or None for a job re-attached from job.json
    info: JobInfo


def _state_failure(state: str, detail: str, limit_min: int, setup_error: bool = False) -> tuple[str, bool]:
    """(reason, retryable) for a job that ended without writing result.json.

    The task never raises (a run's own errors become a failed result.json), so a job without a
    result either failed before the task ran (``setup_error``: kdgrid not importable on the node,
    say; not retried) or died from outside: retried, unless it hit the time limit or was cancelled.
    """
    s = state.upper()
    tail = f": {detail}" if detail else ""
    if setup_error:
        return f"the job failed before the run started (state {state}){tail}", False
    if s.startswith("TIMEOUT"):
        return f"timed out (Slurm time limit {limit_min} min); not retried", False
    if s.startswith("CANCELLED"):  # scancel, or a node taken away: the run itself did nothing wrong
        return f"interrupted: the job was cancelled ({state})", True
    if s.startswith("OUT_OF_MEMORY"):
        return "out of memory (Slurm OUT_OF_MEMORY)", True
    return f"the job died without a result (state {state}){tail}", True


def _job_detail(handle: Any) -> tuple[str, bool]:
    """(what went wrong, whether submitit recorded an exception before our task ran)."""
    try:
        if handle.paths.result_pickle.exists():  # else exception() waits for the file (seconds)
            exc = handle.exception()
            if exc is not None:
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                return (lines[-1][:300] if lines else type(exc).__name__), True
        text = Path(handle.paths.stderr).read_text(errors="replace")
    except Exception:
        return "", False
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("submitit ")]
    return (lines[-1][:300] if lines else ""), False


class ClusterRunner:
    def __init__(
        self,
        *,
        executor: Any,
        workdir: Path,
        execute: Execute,
        runner_ref: RunnerRef | None,
        ledger: Ledger,
        reporter: Any,
    ) -> None:
        self.workdir = workdir
        self.execute = execute
        self.runner_ref = runner_ref
        self.ledger = ledger
        self.reporter = reporter
        self.executor = executor  # from make_executor
        self.cluster = execute.slurm.cluster
        self.limit_min = time_limit_min(execute)
        self.poll_s = execute.slurm.poll_s if self.cluster == "slurm" else min(execute.slurm.poll_s, 0.3)
        self.queue: deque[tuple[PlannedRun, int]] = deque()
        self.inflight: dict[str, _ClusterJob] = {}
        self.submitted = 0

    def run(self, todo: Sequence[PlannedRun], reattach: dict[str, tuple[PlannedRun, JobInfo]], stop: Any) -> bool:
        """Submit and wait; False when the wait was stopped (jobs keep running and are re-attached later)."""
        for rid, (run, info) in reattach.items():
            handle: Any = None
            if info.get("executor") == "slurm" and self.cluster == "slurm":
                import submitit

                handle = submitit.SlurmJob(folder=info["folder"], job_id=str(info["job_id"]))
            self.inflight[rid] = _ClusterJob(run, int(info.get("attempt", 1)), handle, info)
            self.reporter.run_start(self.submitted, run)
            self.submitted += 1
        self.queue.extend((r, 1) for r in todo)
        while self.queue or self.inflight:
            if stop.requested:
                return False
            self._submit()
            self._sleep(stop)
            queue = slurm_queue() if self.cluster == "slurm" and self.inflight else None
            for cj in list(self.inflight.values()):
                if self._stop_if_asked(cj):
                    continue
                record = self._poll(cj, queue)
                if record is not None:
                    del self.inflight[cj.run.run_id]
                    self._settle(cj, record)
        return True

    def _sleep(self, stop: Any) -> None:
        end = time.monotonic() + self.poll_s
        while not stop.requested and time.monotonic() < end:
            time.sleep(min(0.2, self.poll_s))

    def _submit(self) -> None:
        cap = len(self.queue) if self.cluster == "slurm" else self.execute.slurm.array_parallelism - len(self.inflight)
        batch: list[tuple[PlannedRun, int]] = []
        while self.queue and len(batch) < cap:
            run, attempt = self.queue.popleft()
            if self.ledger.claim(run):
                batch.append((run, attempt))
        if not batch:
            return
        specs: list[JobSpec] = [
            {
                "run_id": r.run_id,
                "task": r.task,
                "seed": r.seed,
                "config": r.config_data(),
                "attempt": a,
                "run_dir": str(run_dir(self.workdir, r.run_id)),
                "workdir": str(self.workdir),
            }
            for r, a in batch
        ]
        try:
            with self.executor.batch():
                handles = [self.executor.submit(cluster_task, self.runner_ref, spec) for spec in specs]
        except Exception as exc:  # sbatch refused: bad partition, account, ...
            self.queue.extendleft(reversed(batch))
            raise KdgridError(f"submitting to {self.cluster} failed: {str(exc).strip().splitlines()[-1]}") from None
        folder = str(self.workdir / "submitit" / "%j")
        # Every job.json first (file writes, milliseconds), the store after: a coordinator killed right after
        # sbatch leaves each run named with its job, and the next one re-attaches instead of submitting again.
        jobs = []
        for (run, attempt), handle in zip(batch, handles):
            rdir = run_dir(self.workdir, run.run_id)
            info: JobInfo = {
                "executor": self.cluster,
                "job_id": str(handle.job_id),
                "folder": folder,
                "attempt": attempt,
                "submitted": now(),
            }
            try:
                rdir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(job_path(self.workdir, run.run_id), info)
            except Exception:
                pass  # the job reports an unwritable run directory itself
            jobs.append(_ClusterJob(run, attempt, handle, info))
        for cj in jobs:
            self.ledger.mark_running(cj.run, run_dir(self.workdir, cj.run.run_id))
            self.inflight[cj.run.run_id] = cj
            self.reporter.run_start(self.submitted, cj.run)
            self.submitted += 1

    def _poll(self, cj: _ClusterJob, queue: dict[str, str] | None = None) -> RunResult | None:
        rpath = result_path(self.workdir, cj.run.run_id)
        res = read_result(rpath)
        if res is not None and res.get("attempt", cj.attempt) == cj.attempt:
            return res
        if self.cluster == "slurm" and cj.info.get("executor") == "slurm":
            job_id = str(cj.info["job_id"])
            if queue is None or is_live(queue.get(job_id)):
                return None  # queued, running, requeued (same attempt: its result is the one we wait for)
            res = read_result(rpath)  # it may have finished between the two looks
            if res is not None:
                return res
            state = queue.get(job_id) or slurm_final_states([job_id]).get(job_id) or "UNKNOWN"
            detail, setup_error = _job_detail(cj.handle) if cj.handle is not None else ("", False)
            if state == "UNKNOWN":
                detail = detail or "it left the queue without an accounting record (cancelled while pending?)"
            return self._failure(cj, *_state_failure(state, detail, self.limit_min, setup_error))
        if cj.handle is None:
            if job_alive(cj.info):
                return None
            res = read_result(rpath)
            return res if res is not None else self._failure(cj, *_state_failure("gone", "", self.limit_min))
        try:
            finished = cj.handle.done()
        except Exception:
            return None
        if not finished:
            return None
        res = read_result(rpath)
        if res is not None:
            return res
        detail, setup_error = _job_detail(cj.handle)
        return self._failure(cj, *_state_failure(str(cj.handle.state), detail, self.limit_min, setup_error))

    def _stop_if_asked(self, cj: _ClusterJob) -> bool:
        """Cancel a job whose run the reporter wants stopped (a search pruned its trial); True when it did.

        Jobs report no epochs while they run, so this acts on runs of a trial pruned by another run's result.
        """
        why = self.ledger.stop_reason(cj.run)
        if why is None:
            return False
        res = read_result(result_path(self.workdir, cj.run.run_id))
        del self.inflight[cj.run.run_id]
        if res is not None and res["status"] == "done" and res.get("attempt", cj.attempt) == cj.attempt:
            self._settle(cj, res)
            return True
        if cj.handle is not None:
            try:
                cj.handle.cancel(check=False)
            except Exception:
                pass  # gone already: nothing to cancel
        self.ledger.stopped(cj.run, why)
        return True

    def _failure(self, cj: _ClusterJob, why: str, retryable: bool) -> RunResult:
        return self.ledger.failure(cj.run, cj.attempt, f"{why} (job {cj.info.get('job_id')})", retryable=retryable)

    def _settle(self, cj: _ClusterJob, record: RunResult) -> None:
        if self.ledger.settle(cj.run, record, cj.attempt):
            self.queue.appendleft((cj.run, cj.attempt + 1))
