"""The local test cluster of scripts/slurm-local.sh, as the slurm tests and bench/slurm_chaos.py see it.

Only a cluster that script configured is used: the tests drain its node and cancel its jobs, which
nobody should do to a site cluster by accident.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by kdgrid scripts/slurm-local.sh"


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def unavailable() -> str | None:
    """Why the local test cluster cannot be used, or None when it is up with its node ready."""
    try:
        if MARK not in SLURM_CONF.read_text():
            return f"{SLURM_CONF} was not written by scripts/slurm-local.sh (a site cluster is never used by the tests)"
    except OSError:
        return "no local Slurm cluster: start one with 'bash scripts/slurm-local.sh up' as root (bash .ci/run does)"
    try:
        _out("scontrol", "ping")
        state = node_state()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the local Slurm cluster does not answer ({exc}): 'bash scripts/slurm-local.sh up' starts it"
    if state.startswith(("drain", "drng", "down")):
        subprocess.run(["scontrol", "update", f"nodename={node()}", "state=resume"], capture_output=True)
    return None


def node() -> str:
    return _out("sinfo", "-h", "-N", "-o", "%N").split()[0]


def node_state() -> str:
    return _out("sinfo", "-h", "-N", "-o", "%t").split()[0]


def squeue(job_name: str) -> list[tuple[str, str]]:
    """(job id like 12_3, state) of the queued and running jobs with this name, one per array task."""
    lines = _out("squeue", "-h", "-r", "-n", job_name, "-o", "%i %T").splitlines()
    return [(a, b) for a, b in (ln.split() for ln in lines if ln.strip())]


def sacct(job_name: str) -> list[tuple[str, str]]:
    """(job id, state) of every job with this name the accounting knows, one per array task (today's)."""
    lines = _out("sacct", "-X", "-n", "-P", "--name", job_name, "-S", "now-1days", "-o", "JobID,State").splitlines()
    return [(a, b) for a, b in (ln.split("|") for ln in lines if ln.strip())]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0, every: float = 0.3) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def scancel(*job_ids: str) -> None:
    subprocess.run(["scancel", *job_ids], check=True, timeout=60)


def set_node(state: str, reason: str = "kdgrid test") -> None:
    args = ["scontrol", "update", f"nodename={node()}", f"state={state}"]
    subprocess.run(args + ([f"reason={reason}"] if state == "drain" else []), check=True, timeout=60)
