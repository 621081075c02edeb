"""Per-task sensitivity to distillation: how far each student configuration falls behind its teacher.

For every task and cell: the teacher's score, the student's mean ± sd over seeds, the
gap = teacher − mean(student) and the retention = 100 · mean(student) / teacher (%).
Tasks are ranked from most to least sensitive by their mean gap across cells (rank 1 =
largest gap), and :func:`sensitivity_summary` relates the gap to the training-set size
with Spearman's rank correlation (as in the per-task analysis of student shapes of
paper 3 of the design notes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kdgrid.analyze.describe import _describe
from kdgrid.analyze.tidy import AnalysisError, MetricSpec, Prepared, prepare

__all__ = ["SENSITIVITY_COLUMNS", "sensitivity", "sensitivity_summary", "spearman_exact"]

SENSITIVITY_COLUMNS = [
    "task", "cell", "teacher", "student_mean", "student_sd", "gap", "retention_pct", "n", "rank", "train_size",
]
_EXACT_MAX_N = 9  # 9! = 362,880 permutations: exact enumeration stays under a second


TeacherScores = pd.DataFrame | Mapping[str, float]


def _teacher_table(teacher_scores: TeacherScores) -> tuple[dict[str, float], list[str]]:
    """task -> teacher score (mean over teacher seeds when a ``seed`` column is given)."""
    warnings: list[str] = []
    if isinstance(teacher_scores, Mapping):
        return {str(k): float(v) for k, v in teacher_scores.items()}, warnings
    if not isinstance(teacher_scores, pd.DataFrame):
        raise AnalysisError(f"teacher_scores must be a DataFrame (task, teacher[, seed]) or a dict, got {type(teacher_scores).__name__}")
    missing = [c for c in ("task", "teacher") if c not in teacher_scores.columns]
    if missing:
        raise AnalysisError(
            f"teacher_scores needs columns task and teacher; missing {', '.join(missing)} "
            f"(columns are: {', '.join(map(str, teacher_scores.columns))})"
        )
    t = teacher_scores.assign(task=teacher_scores["task"].astype(str), teacher=pd.to_numeric(teacher_scores["teacher"], errors="coerce"))
    counts = t.groupby("task")["teacher"].count()
    if "seed" not in t.columns and (counts > 1).any():
        warnings.append("teacher_scores has several rows for some task(s) without a seed column; their mean is used")
    return t.groupby("task")["teacher"].mean().to_dict(), warnings


def _sensitivity(
    prep: Prepared,
    teacher_scores: TeacherScores,
    train_sizes: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    teacher, warnings = _teacher_table(teacher_scores)
    missing = [t for t in prep.tasks if t not in teacher or not math.isfinite(teacher[t])]
    if missing:
        warnings.append(f"no teacher score for task(s) {', '.join(missing)}: gap and retention are NaN there")
    cells = _describe(prep)
    out = pd.DataFrame({
        "task": cells["task"],
        "cell": cells["cell"],
        "teacher": cells["task"].map(lambda t: teacher.get(t, np.nan)).astype(float),
        "student_mean": cells["mean"].astype(float),
        "student_sd": cells["sd"].astype(float),
        "n": cells["n"].astype("int64"),
    })
    out["gap"] = out["teacher"] - out["student_mean"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = 100.0 * out["student_mean"] / out["teacher"]
    out["retention_pct"] = ret.where(out["teacher"] != 0)
    task_gap = out.groupby("task")["gap"].mean()
    ranks = task_gap.rank(ascending=False, method="min")
    out["rank"] = out["task"].map(ranks).astype("Int64")
    sizes = dict(train_sizes or {})
    out["train_size"] = out["task"].map(lambda t: float(sizes[t]) if t in sizes else np.nan).astype(float)
    if train_sizes is not None:
        no_size = [t for t in prep.tasks if t not in sizes]
        if no_size:
            warnings.append(f"no training-set size for task(s) {', '.join(no_size)}")
    out["_order"] = range(len(out))
    out = out.sort_values(["rank", "task", "_order"], na_position="last", kind="mergesort").drop(columns="_order")
    return out[SENSITIVITY_COLUMNS].reset_index(drop=True), warnings


def sensitivity(
    df: pd.DataFrame,
    teacher_scores: TeacherScores,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    train_sizes: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Teacher-student gap and retention per task and cell, tasks ranked by sensitivity.

    ``teacher_scores``: DataFrame with ``task`` and ``teacher`` (the teacher's score on
    the task's metric; with a ``seed`` column the mean over teacher seeds is used), or a
    dict task -> score. Columns: ``task, cell, teacher, student_mean, student_sd, gap,
    retention_pct, n, rank, train_size`` where gap = teacher − student_mean,
    retention_pct = 100·student_mean/teacher (NaN for a zero teacher score), rank = 1
    for the task with the largest mean gap across its cells (ties share the smaller
    rank), train_size from ``train_sizes`` (NaN when not given). Rows are ordered by
    rank, then cell. Warnings in ``frame.attrs["warnings"]``.
    """
    prep = prepare(df, metric=metric, factors=factors)
    out, warnings = _sensitivity(prep, teacher_scores, train_sizes)
    out.attrs["warnings"] = prep.warnings + warnings
    return out


def spearman_exact(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, str]:
    """Spearman's rho with a two-sided p: exact permutation p for n ≤ 9, else the t approximation.

    p = share of the n! pairings with |rho| ≥ |rho_observed| (ties handled by mid-ranks,
    as ``scipy.stats.spearmanr``). Returns ``(rho, p, method)``.

    Reference (R): ``cor.test(x, y, method = "spearman")`` (exact for small n
    without ties).
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    n = xa.size
    if n < 3:
        return np.nan, np.nan, "needs at least 3 tasks"
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return np.nan, np.nan, "undefined: one variable is constant"
    rho = float(stats.spearmanr(xa, ya).statistic)
    if n > _EXACT_MAX_N:
        return rho, float(stats.spearmanr(xa, ya).pvalue), "asymptotic t approximation"
    rx = stats.rankdata(xa)
    ry = stats.rankdata(ya)
    perms = np.array(list(itertools.permutations(range(n))))
    ryp = ry[perms]
    rxc = rx - rx.mean()
    rypc = ryp - ryp.mean(axis=1, keepdims=True)
    r_all = (rypc @ rxc) / (np.sqrt((rxc**2).sum()) * np.sqrt((rypc**2).sum(axis=1)))
    p = float(np.mean(np.abs(r_all) >= abs(rho) - 1e-12))
    return rho, p, f"exact permutation p over {len(perms)} orderings"


def sensitivity_summary(sens: pd.DataFrame) -> dict[str, object]:
    """Spearman correlation between a task's mean gap (across cells) and its training-set size.

    Returns ``{"spearman_rho", "spearman_p", "n_tasks", "method", "note"}``. With n ≤ 9
    tasks p is exact (permutations, :func:`spearman_exact`). A negative rho means
    smaller training sets lose more to distillation. Gaps of different metrics (MCC,
    accuracy, F1) share one ranking here; rank correlation makes that less harmful but
    it is still a caveat, stated in ``note``.
    """
    missing = [c for c in ("task", "gap", "train_size") if c not in sens.columns]
    if missing:
        raise AnalysisError(f"sensitivity frame lacks column(s) {', '.join(missing)}")
    per_task = sens.groupby("task").agg(gap=("gap", "mean"), train_size=("train_size", "first")).dropna()
    rho, p, method = spearman_exact(per_task["train_size"].to_numpy(), per_task["gap"].to_numpy())
    note = "gap = teacher − student mean, averaged over cells per task"
    if len(per_task) < 3:
        note = f"only {len(per_task)} task(s) with a gap and a training-set size: no correlation"
    return {"spearman_rho": rho, "spearman_p": p, "n_tasks": int(len(per_task)), "method": method, "note": note}
