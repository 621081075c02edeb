"""The search tests' fake runner, in a module without heavy imports: pool workers unpickle it by reference
(importing this module), so it must start fast."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdgrid.errors import RunFailed

if TYPE_CHECKING:  # not at run time: workers import this module, and it must start fast
    from kdgrid.study.schema import RunConfig

CALLS: list[str] = []  # run ids the fake runner was called for (this process)


def fake_value(config: RunConfig) -> float:
    """The fake's final dev MCC: best at alpha = 0.3, a little better with each seed."""
    return 0.5 - (config.objective.intermediate.alpha - 0.3) ** 2 + 0.01 * config.seed


def fake_runner(
    config: RunConfig, rdir: Path, *, workdir: Path, on_progress: Any = None, on_epoch: Any = None
) -> dict[str, Any]:
    """Per-epoch dev MCC rising to ``fake_value``; alpha >= 0.8 fails like a NaN loss.

    Every call is logged to ``<workdir>/calls.log`` (whatever process it runs in). KDGRID_FAKE_SLEEP slows
    every run, KDGRID_FAKE_EPOCH_SLEEP every epoch after the first; KDGRID_FAKE_HANG_AT=N makes the N-th
    call of this process write KDGRID_FAKE_MARKER and hang (to be killed).
    """
    CALLS.append(rdir.name)
    with open(Path(workdir) / "calls.log", "a") as fh:
        fh.write(f"{rdir.name} {os.getpid()}\n")
    if os.environ.get("KDGRID_FAKE_HANG_AT") == str(len(CALLS)):
        Path(os.environ["KDGRID_FAKE_MARKER"]).write_text(rdir.name)
        time.sleep(600)
    time.sleep(float(os.environ.get("KDGRID_FAKE_SLEEP", "0")))
    if config.objective.intermediate.alpha >= 0.8:
        raise RunFailed("loss became nan at stage joint, epoch 1, step 3")
    final = fake_value(config)
    epochs = config.train.epochs
    rows: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        value = final * epoch / epochs
        rows.append({"stage": "joint", "epoch": epoch, "split": "dev", "name": "mcc", "value": value})
        if epoch > 1:
            time.sleep(float(os.environ.get("KDGRID_FAKE_EPOCH_SLEEP", "0")))
        if on_epoch is not None:
            on_epoch("joint", epoch, {"mcc": value})
    rows.append({"stage": "final", "split": "dev", "name": "mcc", "value": final})
    return {
        "run_id": rdir.name,
        "task": config.task,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),  # config_data(config), without importing the plan
        "status": "done",
        "metrics": rows,
    }
