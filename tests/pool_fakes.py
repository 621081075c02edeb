"""Fakes for the pool, fault and Slurm tests: a runner without torch, and a coordinator process.

``SleepyRunner`` is module-level so worker processes and submitit jobs can unpickle it (the
coordinator ships its ``sys.path`` along). ``python tests/pool_fakes.py DB ...`` runs a
coordinator over the fake grid, so a test can kill it, interrupt it or start two of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdgrid.errors import KdgridError, RunFailed

if TYPE_CHECKING:  # not at run time: workers import this module, and it must start fast
    from kdgrid.study.schema import RunConfig


def fake_study(seeds: int = 3, temperatures: tuple[float, ...] = (1.0, 4.0), name: str = "fake") -> Any:
    from kdgrid.study.schema import Study

    return Study.model_validate(
        {
            "name": name,
            "tasks": ["cola"],
            "seeds": seeds,
            "grid": {"objective.prediction.temperature": list(temperatures)},
        }
    )


class SleepyRunner:
    """A deterministic metric from the config after ``delay`` seconds; logs each call to ``calls.log``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def __call__(
        self, config: RunConfig, rdir: Path, *, workdir: Path, on_progress: Any = None, on_epoch: Any = None
    ) -> dict[str, Any]:
        with open(Path(workdir) / "calls.log", "a") as fh:
            fh.write(
                f"{rdir.name} pid={os.getpid()} gpu={os.environ.get('CUDA_VISIBLE_DEVICES')} "
                f"threads={os.environ.get('OMP_NUM_THREADS')}\n"
            )
        steps = 4
        for step in range(1, steps + 1):
            time.sleep(self.delay / steps)
            if (
                os.environ.get("KDGRID_FAULT") == "nan" and step == 2
            ):  # as a real run hit by nan fails (kdgrid/execute/faults.py)
                raise RunFailed(f"loss became nan at stage joint, epoch 1, step {step}")
            if on_progress is not None:
                on_progress("joint", 1, step, steps)
        t = config.objective.prediction.temperature
        value = 0.5 + 0.01 * config.seed + 0.1 * (t > 1)
        return {
            "run_id": rdir.name,
            "task": config.task,
            "seed": config.seed,
            "config": config.model_dump(mode="json"),  # config_data(config), without importing the plan
            "status": "done",
            "metrics": [
                {"stage": "final", "split": "dev", "name": "mcc", "value": value},
                {"stage": "joint", "epoch": 1, "split": "train", "name": "loss", "value": 1.0 - value},
            ],
        }


def go(db: Path, study: Any, *, delay: float = 0.0, execute: Any = None, **kw: Any) -> Any:
    from kdgrid.execute.local import run_grid
    from kdgrid.plan import expand

    return run_grid(
        db,
        study_name=study.name,
        study_path="fake.yaml",
        study_text="text",
        study_sha="sha",
        planned=expand(study),
        runner=SleepyRunner(delay),
        execute=execute,
        **kw,
    )


def main() -> None:
    from kdgrid.study.schema import Execute

    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--retry-failed", action="store_true")
    ap.add_argument("--name", default="fake", help="study name (a Slurm job is named kdgrid-NAME)")
    ap.add_argument("--slurm", default=None, help="key=value,... Slurm settings: run as a job array instead")
    args = ap.parse_args()
    study = fake_study(args.seeds, name=args.name)
    execute = Execute(workers=args.workers, retries=args.retries, timeout_s=args.timeout)
    if args.slurm is not None:
        settings = dict(kv.split("=", 1) for kv in args.slurm.split(",") if kv)
        execute = Execute(executor="slurm", retries=args.retries, timeout_s=args.timeout, slurm=settings)  # type: ignore[arg-type]
    try:
        out = go(args.db, study, delay=args.delay, retry_failed=args.retry_failed, execute=execute)
    except KdgridError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(
        f"done={out.done} failed={out.failed} retried={out.retried} interrupted={out.interrupted} "
        f"recovered={out.recovered} already_done={out.already_done}",
        flush=True,
    )
    sys.exit(130 if out.interrupted else 0)


if __name__ == "__main__":
    main()
