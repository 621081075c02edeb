"""Run directories: where a run writes its result before the coordinator ingests it.

``<workdir>/runs/<run_id>/result.json`` is written atomically (temp file + ``os.replace``),
so a reader sees either no result or a whole one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kdgrid.errors import RunFailed


def workdir_for(db_path: Path) -> Path:
    """Run directories and caches live beside the store unless KDGRID_HOME says otherwise."""
    env = os.environ.get("KDGRID_HOME")
    return Path(env) if env else db_path.resolve().parent / ".kdgrid"


def run_dir(workdir: Path, run_id: str) -> Path:
    return workdir / "runs" / run_id


def result_path(workdir: Path, run_id: str) -> Path:
    return run_dir(workdir, run_id) / "result.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, default=_jsonable)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise RunFailed(f"cannot write {path}: {exc.strerror or exc}") from None


def read_result(path: Path) -> dict[str, Any] | None:
    """A finished result, or None when absent or unreadable (a crash mid-write leaves only a temp file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "run_id" in data and "status" in data else None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
