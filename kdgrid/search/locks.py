"""Who is searching: liveness of search processes, and keeping ``kdgrid run`` off a store being searched.

Every search process (a ``kdgrid search`` or one of its workers) holds an *owner lock*, a file
lock under ``<db>.optuna/owners/`` that the kernel releases when the process dies, however it
dies. A trial records its owner's token, so a RUNNING trial whose owner lock can be taken was
left by a dead process: it is marked interrupted and queued again (see ``loop``).

``kdgrid run`` holds the coordinator lock (``<db>.lock``) for a whole grid and opens the store
without waiting, so it must not start while a search writes the store. A search process
therefore takes the coordinator lock when it is free and keeps it; further search processes
find it held by a live search (an owner lock is held) and join; when no search owns the store
the holder is a ``kdgrid run`` and the search refuses to start. When the holding search
process ends, another picks the lock up at its next trial.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from kdgrid.errors import StoreError


def search_dir(db_path: Path) -> Path:
    """Optuna journals and search locks live beside the store: ``<db>.optuna/``."""
    return Path(str(db_path.resolve()) + ".optuna")


def journal_path(db_path: Path, name: str) -> Path:
    return search_dir(db_path) / f"{name}.journal"


def _coordinator_lock_path(db_path: Path) -> str:
    # The same file as kdgrid.execute.local.coordinator_lock (not imported: that module is for grids).
    return str(db_path.resolve()) + ".lock"


def owner_alive(db_path: Path, token: str) -> bool:
    """True while the process that holds ``token``'s owner lock lives."""
    path = search_dir(db_path) / "owners" / f"{token}.lock"
    if not path.exists():
        return False
    probe = FileLock(str(path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


def live_owners(db_path: Path, *, exclude: str | None = None) -> list[str]:
    owners = search_dir(db_path) / "owners"
    if not owners.is_dir():
        return []
    tokens = [p.stem for p in owners.glob("*.lock") if p.stem != exclude]
    return [t for t in tokens if owner_alive(db_path, t)]


class SearchSession:
    """The locks of one search process, held from ``__enter__`` to ``__exit__``."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        owners = search_dir(db_path) / "owners"
        owners.mkdir(parents=True, exist_ok=True)
        self._owner = FileLock(str(owners / f"{self.token}.lock"), timeout=0)
        self._coordinator = FileLock(_coordinator_lock_path(db_path), timeout=0)
        self.holds_coordinator = False

    def __enter__(self) -> SearchSession:
        # Owner lock first: a search starting at the same moment then sees us as a live search, not a grid.
        self._owner.acquire()
        if not self.take_coordinator() and not live_owners(self.db_path, exclude=self.token):
            self._owner.release()
            raise StoreError(
                f"{self.db_path}: a 'kdgrid run' is using this store (lock {self._coordinator.lock_file}); "
                "wait for it or use another --db"
            )
        return self

    def take_coordinator(self) -> bool:
        """Hold the coordinator lock if it is free (a no-op when we hold it)."""
        if not self.holds_coordinator:
            try:
                self._coordinator.acquire()
                self.holds_coordinator = True
            except Timeout:
                pass
        return self.holds_coordinator

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.holds_coordinator:
            self._coordinator.release()
            self.holds_coordinator = False
        self._owner.release()
        # Dead owners' files are only clutter; ours is unlocked now and no longer names a live process.
        try:
            Path(self._owner.lock_file).unlink(missing_ok=True)
        except OSError:
            pass


def ask_lock(db_path: Path, name: str) -> FileLock:
    """Serialises 'count trials, find stale ones, ask a new one' across processes, so the budget is exact."""
    return FileLock(str(journal_path(db_path, name)) + ".ask.lock", timeout=300)
