"""Test-only fault injection: make chosen runs crash, hang, die or produce NaN.

``KDGRID_FAULT`` holds comma-separated entries ``KIND[:TARGET][@N]``:

- ``KIND``: ``nan`` (the loss becomes NaN at step 1), ``crash`` (an exception), ``hang`` (sleeps
  forever), ``oom`` (raises MemoryError, as a failed allocation does), ``kill`` (SIGKILL to itself, as
  the kernel's out-of-memory killer does), ``segfault`` (SIGSEGV to itself), ``nospace`` (writing the
  result fails with ENOSPC, a full disk).
- ``TARGET`` (optional): ``seed=N`` or a run-id prefix; without it every run is hit.
- ``@N`` (optional): only the first N attempts of the run are hit, so a retry can pass.

Examples: ``KDGRID_FAULT=nan`` (every run), ``KDGRID_FAULT=kill:seed=1@1,hang:3fa2c9``.
The worker (or the in-process coordinator) resolves the entry for a run and injects every fault from
here: the training code holds no test hook. ``nan`` wraps the distillation objective for that run only
(:func:`loop_fault`), so the loop's own finiteness check is what fails the run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kdgrid.errors import KdgridError

ENV = "KDGRID_FAULT"
KINDS = ("nan", "crash", "hang", "oom", "kill", "segfault", "nospace")


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str | None = None  # 'seed=N' or a run-id prefix
    attempts: int | None = None  # hit only attempts 1..N

    def hits(self, run_id: str, seed: int | None, attempt: int) -> bool:
        if self.attempts is not None and attempt > self.attempts:
            return False
        if self.target is None:
            return True
        if self.target.startswith("seed="):
            return seed is not None and self.target[5:] == str(seed)
        return run_id.startswith(self.target)


def parse(spec: str | None) -> list[Fault]:
    faults: list[Fault] = []
    for entry in (spec or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        attempts = None
        if "@" in entry:
            entry, _, n = entry.partition("@")
            if not n.isdigit() or int(n) < 1:
                raise KdgridError(f"{ENV}: '@{n}' is not a positive attempt count")
            attempts = int(n)
        kind, _, target = entry.partition(":")
        if kind not in KINDS:
            raise KdgridError(f"{ENV}: unknown fault '{kind}' (allowed: {', '.join(KINDS)})")
        faults.append(Fault(kind, target or None, attempts))
    return faults


def fault_for(run_id: str, seed: int | None, attempt: int, spec: str | None = None) -> str | None:
    """The fault kind that hits this attempt of this run, if any (first matching entry wins)."""
    for f in parse(os.environ.get(ENV) if spec is None else spec):
        if f.hits(run_id, seed, attempt):
            return f.kind
    return None


def inject_before_run(kind: str | None) -> None:
    """Process-level faults, injected where the run would start."""
    if kind == "crash":
        raise RuntimeError(f"injected crash ({ENV})")
    if kind == "oom":
        raise MemoryError(f"injected out of memory ({ENV})")
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)


def check_write(kind: str | None, path: os.PathLike[str] | str) -> None:
    """The ``nospace`` fault: writing the result fails as on a full disk."""
    if kind == "nospace":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextlib.contextmanager
def loop_fault(kind: str | None) -> Iterator[None]:
    """While the run trains: for a run hit by ``nan``, its loss turns NaN from the second training step.

    The distillation objective is wrapped for this run only (and restored after it); ``KDGRID_FAULT`` is
    ``nan`` meanwhile, else unset, for test runners that train nothing (tests/pool_fakes.py). A targeted
    entry never reaches the runner.
    """
    old = os.environ.pop(ENV, None)
    undo = None
    if kind == "nan":
        os.environ[ENV] = "nan"
        undo = _nan_loss_from_step(1)
    try:
        yield
    finally:
        if undo is not None:
            undo()
        os.environ.pop(ENV, None)
        if old is not None:
            os.environ[ENV] = old


def _nan_loss_from_step(first: int) -> Callable[[], None]:
    """Make DistillObjective's loss NaN from its ``first``-th training call (0-based); returns the undo."""
    from kdgrid.train.objectives import DistillObjective  # torch: only in a run that this fault hits

    forward = DistillObjective.forward
    calls = 0

    def poisoned(self: DistillObjective, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        terms = forward(self, *args, **kwargs)
        if self.training:
            calls += 1
            if calls > first:
                terms["loss"] = terms["loss"] * float("nan")
        return terms

    DistillObjective.forward = poisoned  # type: ignore[method-assign]  # undone by the returned function

    def undo() -> None:
        DistillObjective.forward = forward  # type: ignore[method-assign]

    return undo
