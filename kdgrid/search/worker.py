"""``python -m kdgrid.search.worker STUDY --db DB --trials N [--deadline T]``: one trial process.

``kdgrid search --workers N`` starts N of these; they share the search through its journal
(see ``loop``). Each prints ``Error: ...`` and exits 1 on a user error, 130 when interrupted.

``KDGRID_SEARCH_RUNNER=module:attr`` replaces the training runner (tests use a fake one, as
``KDGRID_FAULT`` injects faults into the real one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from kdgrid.errors import KdgridError
from kdgrid.search.loop import Runner, SearchJob, run_search
from kdgrid.search.space import check_search
from kdgrid.study import load_study


def runner_from_env() -> Runner | None:
    spec = os.environ.get("KDGRID_SEARCH_RUNNER")
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    runner: Runner = getattr(importlib.import_module(module), attr)
    return runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdgrid.search.worker")
    parser.add_argument("study", type=Path)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--trials", type=int, required=True, help="trials the search should have in all")
    parser.add_argument("--deadline", type=float, default=None, help="time.time() after which no trial starts")
    args = parser.parse_args(argv)
    try:
        loaded = load_study(args.study)
        check_search(loaded)
        outcome = run_search(SearchJob(args.db, loaded, args.trials, args.deadline), runner=runner_from_env())
    except KdgridError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"worker {os.getpid()}: {outcome.started} trial(s): {outcome.complete} complete, {outcome.pruned} pruned, "
          f"{outcome.failed} failed")
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
