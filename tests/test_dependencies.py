"""Every third-party package kdgrid/ imports is declared in pyproject.toml, and constraints.txt pins it."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> the kdgrid files that import it (module names mapped by the installed metadata)."""
    by_module = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for f in sorted((ROOT / "kdgrid").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops = {node.module.split(".")[0]}
            else:
                continue
            for top in tops - set(sys.stdlib_module_names) - {"kdgrid"}:
                for dist in by_module.get(top, [top]):
                    found.setdefault(canonical(dist), set()).add(str(f.relative_to(ROOT)))
    return found


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {canonical(re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0]) for s in specs}


def test_direct_imports_are_declared() -> None:
    missing = {d: sorted(files) for d, files in imported_distributions().items() if d not in declared()}
    assert not missing, f"imported by kdgrid/ but not in pyproject.toml: {missing}"


def test_constraints_pin_every_declared_dependency() -> None:
    pinned = {
        canonical(line.split("==", 1)[0])
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert declared() - pinned == set()
