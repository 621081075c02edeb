"""What ``kdgrid plan``, ``run``, ``status`` and ``report`` add for a sequential study (rich output)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from kdgrid.sequential.plan import SequentialPlan
from kdgrid.sequential.state import ComparisonState, looks_frame, states_frame


def plan_summary(plan: SequentialPlan, console: Console) -> None:
    first, most = plan.first_look_runs(), plan.max_runs()
    console.print(
        f"sequential: {len(plan.comparisons)} comparison(s); looks at {', '.join(map(str, plan.looks))} "
        f"seeds per cell (seeds {', '.join(map(str, plan.seeds))} in that order)",
        highlight=False,
    )
    console.print(
        f"first look: {len(first)} runs ({len({r.run_id for r in first})} unique); "
        f"at most {len(most)} runs ({len({r.run_id for r in most})} unique) if no comparison stops early",
        highlight=False,
    )
    for line in plan.design_lines():
        console.print(f"  {line}", highlight=False)


def short_cell(cell: str) -> str:
    """'objective.mapping.kind=learnable, data.fraction=0.5' -> 'kind=learnable, fraction=0.5' (for terminals)."""
    return ", ".join(
        part.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + part.split("=", 1)[1] if "=" in part else part
        for part in cell.split(", ")
    )


def states_table(states: list[ComparisonState], title: str) -> Table:
    table = Table(title=title)
    for col in ("task", "condition", "baseline", "state", "seeds", "looks", "reason"):
        table.add_column(col, overflow="fold")
    for st in states:
        c, r = st.comparison, st.result
        state = r.verdict if r.verdict != "undecided" else f"running ({st.seeds_needed} seeds next)"
        table.add_row(
            c.task,
            short_cell(c.condition),
            short_cell(c.baseline),
            state,
            str(r.n),
            f"{len(r.looks)}/{len(c.design.looks)}",
            r.reason,
        )
    return table


def write_section(plan: SequentialPlan, states: list[ComparisonState], out_dir: Path) -> Path:
    """sequential.md, sequential.csv and sequential_looks.csv beside the report, and the section at the end
    of report.md when it is there; returns the path of sequential.md."""
    from kdgrid.report.sequential import sequential_markdown, sequential_section

    frame, looks = states_frame(states), looks_frame(states)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "sequential.csv", index=False)
    looks.to_csv(out_dir / "sequential_looks.csv", index=False)
    text = sequential_markdown(sequential_section(frame, plan.design_lines(), looks))
    md = out_dir / "sequential.md"
    md.write_text(text + "\n", encoding="utf-8")
    report = out_dir / "report.md"
    if report.is_file():  # just rewritten by this 'kdgrid report': the decisions belong in it
        tmp = report.with_name(".report.md.tmp")
        tmp.write_text(report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + text + "\n", encoding="utf-8")
        tmp.replace(report)
    return md
