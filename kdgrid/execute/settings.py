"""Execution settings: the study's ``execute:`` block with command-line overrides, and slot sizing."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from kdgrid.errors import KdgridError
from kdgrid.study.schema import Execute, Slurm

SLURM_KEYS = tuple(Slurm.model_fields)


def _option(loc: tuple[Any, ...]) -> str:
    if loc and loc[0] == "slurm":
        return "--slurm " + ".".join(str(p) for p in loc[1:])
    return {"timeout_s": "--timeout"}.get(str(loc[0]), f"--{str(loc[0]).replace('_', '-')}") if loc else "execute"


def parse_slurm_option(text: str) -> dict[str, Any]:
    """``partition=gpu,gpus_per_run=1,time_min=120`` -> a dict of Slurm settings (validated later)."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KdgridError(f"--slurm: '{part}' is not key=value (example: --slurm partition=gpu,time_min=120)")
        if key not in SLURM_KEYS or key in ("setup", "additional"):
            allowed = [k for k in SLURM_KEYS if k not in ("setup", "additional")]
            raise KdgridError(
                f"--slurm: unknown setting '{key}' (allowed: {', '.join(allowed)}; setup and additional: in the study file)"
            )
        out[key] = value.strip()
    return out


def resolve_execute(
    base: Execute | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    gpus: str | None = None,
    timeout_s: float | None = None,
    retries: int | None = None,
    slurm: str | None = None,
) -> Execute:
    """The study's ``execute`` block with the given command-line values on top (one clean error otherwise)."""
    data = (base or Execute()).model_dump()
    for key, value in (("executor", executor), ("workers", workers), ("timeout_s", timeout_s), ("retries", retries)):
        if value is not None:
            data[key] = value
    if gpus is not None:
        data["gpus"] = gpus
        if workers is None:
            data["workers"] = len([g for g in gpus.split(",")])
    if slurm:
        data["slurm"] = {**data["slurm"], **parse_slurm_option(slurm)}
    try:
        ex = Execute.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise KdgridError(f"{_option(tuple(err['loc']))}: {msg}") from None
    if ex.gpus is not None and ex.executor == "local":
        if workers is not None and workers != len(ex.gpus):
            raise KdgridError(
                f"--workers: {workers} does not match --gpus {','.join(ex.gpus)} (one worker per listed GPU)"
            )
        ex = ex.model_copy(update={"workers": len(ex.gpus)})
    if ex.executor == "local" and ex.workers == 0 and ex.timeout_s is not None:
        raise KdgridError(
            "--timeout: needs worker processes (--workers 1 or more); an in-process run cannot be stopped"
        )
    return ex


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """CPU threads for each worker: the cores split evenly, never more than OMP_NUM_THREADS asks."""
    share = max(1, available_cores() // max(1, workers))
    env = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(env)) if env.isdigit() and int(env) > 0 else share
