"""The import contract of README.md's layout table, checked against the code.

The table is the one description of the layers: this test parses it (so it is not written twice) and reads
every module's imports with `ast` (nothing is imported, so a violation cannot hide behind an import error).
A few rules do not come from the table, so that editing the README cannot loosen them: the torch-free layers,
torch only in `train`, and nobody but `__main__` importing the CLI. A runtime check in a subprocess confirms
that the commands which must start fast really leave torch unloaded.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "kdgrid"

# Never import torch, transformers or kdgrid.train, not even inside a function: `validate`, `plan`, `status`
# and `report` go through them, and a lazy import would still load torch the first time a command calls it.
TORCH_FREE = {"kdgrid", "errors", "plugins", "tasks", "model_names", "study", "plan", "store", "analyze", "report"}
HEAVY = {"torch", "transformers"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. kdgrid.execute.local
    target: str  # what it imports, fully qualified, e.g. kdgrid.train.run or torch.nn
    lazy: bool  # inside a function (runs only when called)
    line: int


def is_kdgrid(target: str) -> bool:
    return target == "kdgrid" or target.startswith("kdgrid.")


def unit_of(module: str) -> str:
    """kdgrid.execute.local -> execute; kdgrid.cli -> cli; kdgrid -> kdgrid (the package's __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kdgrid"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, module: str | None = None) -> list[Import]:
    """Every import statement of one file, except those under `if TYPE_CHECKING:` (they never run)."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for a in child.names:
                    # `from kdgrid import train` imports the subpackage; `from kdgrid import __version__` does not
                    sub = f"{source}.{a.name}"
                    is_module = (ROOT / Path(*sub.split("."))).is_dir() or (ROOT / Path(*sub.split("."))).with_suffix(
                        ".py"
                    ).is_file()
                    found.append(Import(module, sub if is_module else source, lazy, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


def all_imports() -> list[Import]:
    return [i for f in sorted(PKG.rglob("*.py")) for i in imports_of(f)]


def top_level_units() -> set[str]:
    """Every top-level module and package of kdgrid/, as the table names them."""
    units = {"kdgrid"}
    for p in PKG.iterdir():
        if p.suffix == ".py" and p.name != "__init__.py":
            units.add(p.stem)
        elif p.is_dir() and (p / "__init__.py").is_file():
            units.add(p.name)
    return units


@dataclass(frozen=True)
class Row:
    unit: str
    allowed: frozenset[str]
    lazy_only: frozenset[str]


def layout_table() -> list[Row]:
    """The rows of README.md's '## Layout' table, in order: module, job, imports from kdgrid."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    rows: list[Row] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`kdgrid"):
            continue
        path = cells[0].strip("`")
        if path == "kdgrid/__init__.py":
            unit = "kdgrid"
        else:
            unit = Path(path).stem if path.endswith(".py") else Path(path).name
        allowed: set[str] = set()
        lazy: set[str] = set()
        if "all of the above" in cells[2]:
            allowed |= {r.unit for r in rows}
        for name, mark in re.findall(r"`([\w.]+)`(\s*\(lazy\))?", cells[2]):
            allowed.add(name)
            if mark:
                lazy.add(name)
        rows.append(Row(unit, frozenset(allowed), frozenset(lazy)))
    return rows


def test_the_table_names_every_module_once() -> None:
    units = [r.unit for r in layout_table()]
    assert len(units) == len(set(units)), f"named twice: {sorted({u for u in units if units.count(u) > 1})}"
    assert set(units) == top_level_units(), (
        f"missing from README's layout table: {sorted(top_level_units() - set(units))}; "
        f"in the table but not in kdgrid/: {sorted(set(units) - top_level_units())}"
    )
    for row in layout_table():
        unknown = sorted(row.allowed - top_level_units())
        assert not unknown, f"the {row.unit} row allows imports of {unknown}, which are not in kdgrid/"


def test_the_allowed_imports_have_no_cycle() -> None:
    # Imports never run back up: the allowed relation is a DAG (a rank for every unit exists).
    allowed = {r.unit: r.allowed for r in layout_table()}
    done: set[str] = set()
    while len(done) < len(allowed):
        # names that are not rows are reported by test_the_table_names_every_module_once
        ready = {u for u, deps in allowed.items() if u not in done and deps & allowed.keys() <= done}
        assert ready, f"the layout table's imports form a cycle among {sorted(set(allowed) - done)}"
        done |= ready


def test_the_rows_are_in_order() -> None:
    # The table lists the layers in the order the data flows (its section says which), the foundations first and
    # what sits on top of execute, then the CLI, last. (Imports may point down that order: execute writes to
    # store; the cycle test above is what keeps them from running back up.)
    order = [r.unit for r in layout_table()]
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Layout", 1)[1]
    flow = re.search(r"\(study -> ([a-z >-]+)\)", text)
    assert flow, "the layout section states the data flow as (study -> plan -> ...)"
    stages = ["study", *flow.group(1).split(" -> ")]
    assert [u for u in order if u in stages] == stages
    foundations = {"kdgrid", "errors", "records", "plugins", "tasks", "model_names"}
    assert set(order[: len(foundations)]) == foundations
    assert order[-4:] == ["search", "sequential", "cli", "__main__"]


def test_code_imports_only_what_the_table_allows() -> None:
    rows = {r.unit: r for r in layout_table()}
    bad = []
    for imp in all_imports():
        if not is_kdgrid(imp.target):
            continue
        src, dst = unit_of(imp.module), unit_of(imp.target)
        if src == dst or src not in rows:
            continue  # within one layer; a unit missing from the table fails the test above
        row = rows[src]
        if dst not in row.allowed:
            bad.append(f"{imp.module}:{imp.line} imports {imp.target}, which the {src} row does not allow")
        elif dst in row.lazy_only and not imp.lazy:
            bad.append(f"{imp.module}:{imp.line} imports {imp.target} at module level; the table allows it lazily only")
    assert not bad, "\n".join(bad)


def test_torch_only_in_train_and_never_in_the_torch_free_layers() -> None:
    bad = []
    for imp in all_imports():
        src, top = unit_of(imp.module), imp.target.split(".")[0]
        if top in HEAVY and src != "train":
            bad.append(f"{imp.module}:{imp.line} imports {imp.target} (torch belongs to kdgrid/train)")
        if src in TORCH_FREE and imp.target.startswith("kdgrid.train"):
            bad.append(f"{imp.module}:{imp.line} imports {imp.target} ({src} must stay torch-free)")
    assert not bad, "\n".join(bad)


def test_nothing_but_main_imports_the_cli_and_only_the_cli_imports_its_framework() -> None:
    users = {i.module for i in all_imports() if i.target == "kdgrid.cli" or i.target.startswith("kdgrid.cli.")}
    assert users == {"kdgrid.__main__"}
    # ../shared/STYLE.md: the library never imports the CLI framework (errors become a line in cli.py only)
    framework = {i.module for i in all_imports() if i.target.split(".")[0] in ("typer", "click")}
    assert framework == {"kdgrid.cli"}


def test_the_import_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The checks above pass on clean code: prove the reader they rely on sees lazy, relative and module-level
    # imports and skips only TYPE_CHECKING blocks.
    f = tmp_path / "probe.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nimport kdgrid.cli\nfrom .tables import x\n"
        "if TYPE_CHECKING:\n    import transformers\n\n"
        "def g():\n    from kdgrid import train, __version__\n    import torch\n"
    )
    found = {(i.target, i.lazy) for i in imports_of(f, module="kdgrid.report.probe")}
    assert found == {
        ("typing", False),
        ("kdgrid.cli", False),
        ("kdgrid.report.tables", False),
        ("kdgrid.train", True),
        ("kdgrid", True),
        ("torch", True),
    }


def _loaded_after(args: list[str]) -> list[str]:
    # Run the CLI in-process in a fresh interpreter, then list the heavy modules it loaded.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['kdgrid', *{args!r}]\n"
        "try:\n    runpy.run_module('kdgrid', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])  # the list printed last


def test_validate_and_report_help_start_without_torch() -> None:
    assert _loaded_after(["validate", "studies/demo.yaml"]) == []
    assert _loaded_after(["report", "--help"]) == []
