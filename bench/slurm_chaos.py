"""Chaos on a real Slurm cluster: the 12-run grid as a job array while tasks are scancel'd and the coordinator is
kill -9'd, again and again, until the grid is complete.

Needs the local cluster of scripts/slurm-local.sh (as root: ``bash scripts/slurm-local.sh up``). The coordinator
is tests/pool_fakes.py (``run_grid`` with a fake runner of ``--delay`` seconds, as `kdgrid run` calls it), so
each run costs about a second of CPU. At random moments this script either scancels a random queued or running
array task or kill -9s the coordinator and starts a new one, which must re-attach to the live jobs. At the end it
checks the store and prints: runs done, lost (not stored as done), duplicated (a metric row stored twice),
resubmissions (array tasks beyond the first 12) and how many starts of a run were wasted by the chaos.

    python bench/slurm_chaos.py                    # 6 events
    python bench/slurm_chaos.py --events 10 --seed 2
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import REPO, header

sys.path.insert(0, str(REPO / "tests"))
from slurm_local import sacct, scancel, squeue, unavailable  # noqa: E402

import duckdb  # noqa: E402

from kdgrid.execute.rundir import workdir_for  # noqa: E402


def start(db: Path, name: str, delay: float) -> subprocess.Popen[str]:
    env = {**os.environ, "KDGRID_FAULT": "", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "pool_fakes.py"), str(db), "--seeds", "6",
                             "--delay", str(delay), "--name", name, "--retries", "10",
                             "--slurm", "gpus_per_run=0,poll_s=0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=6, help="scancels and coordinator kills, in random order")
    ap.add_argument("--delay", type=float, default=6.0, help="seconds per run (longer than Slurm's KillWait of 5 s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    why = unavailable()
    if why is not None:
        sys.exit(f"slurm_chaos: {why}")
    rng = random.Random(args.seed)
    header("Slurm chaos: 12-run job array under scancel and coordinator kill -9", events=args.events,
           delay_s=args.delay, seed=args.seed)
    root = Path(tempfile.mkdtemp(prefix="kdgrid-slurm-chaos-"))
    db, name = root / "k.duckdb", f"chaos{os.getpid()}"
    job = f"kdgrid-{name}"
    t0 = time.monotonic()
    proc = start(db, name, args.delay)
    kills = cancels = events = 0
    starts = 1
    while True:
        try:
            out, _ = proc.communicate(timeout=rng.uniform(2.0, 8.0))
        except subprocess.TimeoutExpired:
            out = None
        if out is not None:  # the coordinator finished (or failed)
            if proc.returncode != 0:
                sys.exit(f"coordinator exited {proc.returncode}:\n{out}")
            break
        if events >= args.events:
            continue
        queue = [j for j, s in squeue(job) if s in ("RUNNING", "PENDING") and "[" not in j]
        if rng.random() < 0.5 and queue:
            victim = rng.choice(queue)
            scancel(victim)
            cancels += 1
            print(f"  {time.monotonic() - t0:6.1f}s  scancel {victim}", flush=True)
        else:
            os.killpg(proc.pid, 9)
            proc.wait()
            kills += 1
            print(f"  {time.monotonic() - t0:6.1f}s  kill -9 coordinator; a new one starts", flush=True)
            proc = start(db, name, args.delay)
            starts += 1
        events += 1
    wall = time.monotonic() - t0
    con = duckdb.connect(str(db), read_only=True)
    try:
        status = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
        attempts = con.execute("SELECT sum(attempt) FROM runs").fetchone()[0]
        dup_rows = con.execute("SELECT count(*) FROM (SELECT run_id, stage, epoch, step, split, name FROM metrics "
                               "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
    finally:
        con.close()
    log = workdir_for(db) / "calls.log"
    calls = Counter(line.split()[0] for line in log.read_text().splitlines())
    tasks = sacct(job)
    done = sum(s == "done" for s in status.values())
    print(f"\nevents: {cancels} scancel, {kills} coordinator kill -9 ({starts} coordinators in all), {wall:.0f} s")
    print(f"runs done:      {done} / 12")
    print(f"lost:           {12 - done}")
    print(f"duplicated:     {dup_rows}  (metric rows stored twice)")
    print(f"resubmissions:  {attempts - 12}  (attempts beyond one per run, from the store; sacct accounts "
          f"{len(tasks)} array tasks, a task cancelled while pending having no record)")
    print(f"run starts:     {sum(calls.values())}  ({sum(calls.values()) - 12} repeated after a scancel; "
          f"runs started more than once: {sum(n > 1 for n in calls.values())})")
    print(f"final outcome of the last coordinator: {out.strip().splitlines()[-1]}")
    if done != 12 or dup_rows:
        sys.exit(1)


if __name__ == "__main__":
    main()
