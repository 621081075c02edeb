"""Per-task sensitivity to distillation: how far each student configuration falls behind its teacher.

For every task and cell: the teacher's score, the floor (the majority-class score, or chance
for a correlation metric: 0 for MCC, Pearson, Spearman; :func:`kdgrid.tasks.chance_floor`), the
student's mean ± sd over seeds, and, each with a t interval over seeds (the teacher is one
fixed model, so the interval is the students' seed variation only):

* gap = teacher − student (in the metric's units),
* normalised retention = (student − floor) / (teacher − floor): 1 = as good as the teacher,
  0 = no better than the floor. Plain student/teacher is not reported: it is meaningless for
  MCC (whose floor is 0 but can go negative) and flatters scores near the majority class.

Tasks are ranked within their metric (rank 1 = the task whose cells lose most: lowest mean
normalised retention), never across metrics, and :func:`sensitivity_summary` relates the
normalised retention (unit-free) to the training-set size with Spearman's rank correlation
(as in the per-task analysis of student shapes of paper 3 of the design notes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kdgrid.analyze.dist import t_ppf
from kdgrid.analyze.tidy import AnalysisError, MetricSpec, Prepared, group_rows, prepare

__all__ = ["SENSITIVITY_COLUMNS", "sensitivity", "sensitivity_summary", "spearman_exact", "teacher_floors"]

SENSITIVITY_COLUMNS = [
    "task",
    "metric",
    "cell",
    "teacher",
    "floor",
    "student_mean",
    "student_sd",
    "gap",
    "gap_ci_low",
    "gap_ci_high",
    "retention",
    "retention_ci_low",
    "retention_ci_high",
    "n",
    "rank",
    "train_size",
]
_EXACT_MAX_N = 9  # 9! = 362,880 permutations: exact enumeration stays under a second


TeacherScores = pd.DataFrame | Mapping[str, float]


def teacher_floors(teacher_scores: TeacherScores | None, metric_of: Mapping[str, str]) -> dict[str, float]:
    """task -> floor: the ``floor`` column of ``teacher_scores`` (majority-class score) where given,
    else the metric's chance score (:func:`kdgrid.tasks.chance_floor`); tasks with neither are absent."""
    from kdgrid.tasks import chance_floor

    out: dict[str, float] = {}
    for task, metric in metric_of.items():
        c = chance_floor(metric)
        if c is not None:
            out[task] = float(c)
    if (
        isinstance(teacher_scores, pd.DataFrame)
        and "floor" in teacher_scores.columns
        and "task" in teacher_scores.columns
    ):
        f = (
            teacher_scores.assign(floor=pd.to_numeric(teacher_scores["floor"], errors="coerce"))
            .groupby(teacher_scores["task"].astype(str))["floor"]
            .mean()
        )
        out.update({str(t): float(v) for t, v in f.items() if math.isfinite(v)})
    return out


def _t_ci(v: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if v.size < 2:
        return np.nan, np.nan
    half = t_ppf(0.5 + confidence / 2, v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()) - half, float(v.mean()) + half


def _teacher_table(teacher_scores: TeacherScores) -> tuple[dict[str, float], list[str]]:
    """task -> teacher score (mean over teacher seeds when a ``seed`` column is given)."""
    warnings: list[str] = []
    if isinstance(teacher_scores, Mapping):
        return {str(k): float(v) for k, v in teacher_scores.items()}, warnings
    if not isinstance(teacher_scores, pd.DataFrame):
        raise AnalysisError(
            f"teacher_scores must be a DataFrame (task, teacher[, seed]) or a dict, got {type(teacher_scores).__name__}"
        )
    missing = [c for c in ("task", "teacher") if c not in teacher_scores.columns]
    if missing:
        raise AnalysisError(
            f"teacher_scores needs columns task and teacher; missing {', '.join(missing)} "
            f"(columns are: {', '.join(map(str, teacher_scores.columns))})"
        )
    t = teacher_scores.assign(
        task=teacher_scores["task"].astype(str), teacher=pd.to_numeric(teacher_scores["teacher"], errors="coerce")
    )
    counts = t.groupby("task")["teacher"].count()
    if "seed" not in t.columns and (counts > 1).any():
        warnings.append("teacher_scores has several rows for some task(s) without a seed column; their mean is used")
    return {str(k): float(v) for k, v in t.groupby("task")["teacher"].mean().items()}, warnings


def _sensitivity(
    prep: Prepared,
    teacher_scores: TeacherScores,
    train_sizes: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    teacher, warnings = _teacher_table(teacher_scores)
    missing = [t for t in prep.tasks if t not in teacher or not math.isfinite(teacher[t])]
    if missing:
        warnings.append(f"no teacher score for task(s) {', '.join(missing)}: gap and retention are NaN there")
    floors = teacher_floors(teacher_scores, prep.metric_of)
    no_floor = [t for t in prep.tasks if t not in floors]
    if no_floor:
        warnings.append(f"no majority-class score for task(s) {', '.join(no_floor)}: normalised retention is NaN there")
    rows = []
    data = prep.data.drop_duplicates(["task", "cell", "seed"] if prep.has_seed else None)
    values = data["value"].to_numpy(dtype=float)
    task_of, cell_of = data["task"].to_numpy(dtype=object), data["cell"].to_numpy(dtype=object)
    rank_of = data["cell_rank"].to_numpy()
    for rows_of in group_rows(data, ["task", "cell"], sort=False):
        task, cell, v = task_of[rows_of[0]], cell_of[rows_of[0]], values[rows_of]
        t = teacher.get(str(task), np.nan)
        f = floors.get(str(task), np.nan)
        gap = t - v
        with np.errstate(divide="ignore", invalid="ignore"):
            ret = (v - f) / (t - f) if math.isfinite(t) and math.isfinite(f) and t != f else np.full(v.shape, np.nan)
        gap_ci, ret_ci = _t_ci(gap), _t_ci(ret)
        rows.append(
            {
                "task": str(task),
                "metric": prep.metric_of[str(task)],
                "cell": cell,
                "teacher": t,
                "floor": f,
                "student_mean": float(v.mean()),
                "student_sd": float(v.std(ddof=1)) if v.size > 1 else np.nan,
                "gap": float(gap.mean()),
                "gap_ci_low": gap_ci[0],
                "gap_ci_high": gap_ci[1],
                "retention": float(ret.mean()),
                "retention_ci_low": ret_ci[0],
                "retention_ci_high": ret_ci[1],
                "n": int(v.size),
                "_rank": int(rank_of[rows_of[0]]),
            }
        )
    out = pd.DataFrame(rows)
    # Rank tasks within their metric: most sensitive (lowest mean normalised retention; largest gap without a floor) first.
    per_task = out.groupby("task").agg(metric=("metric", "first"), retention=("retention", "mean"), gap=("gap", "mean"))
    key = per_task["retention"].where(per_task["retention"].notna(), -per_task["gap"])
    ranks = key.groupby(per_task["metric"]).rank(ascending=True, method="min")
    out["rank"] = out["task"].map(ranks).astype("Int64")
    sizes = dict(train_sizes or {})
    out["train_size"] = out["task"].map(lambda t: float(sizes[t]) if t in sizes else np.nan).astype(float)
    if train_sizes is not None:
        no_size = [t for t in prep.tasks if t not in sizes]
        if no_size:
            warnings.append(f"no training-set size for task(s) {', '.join(no_size)}")
    out = out.sort_values(["metric", "rank", "task", "_rank"], na_position="last", kind="mergesort")
    out["n"] = out["n"].astype("int64")
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
    dict task -> score; an optional ``floor`` column gives the majority-class score (else the
    metric's chance score, when it has one). Columns: :data:`SENSITIVITY_COLUMNS` (module
    docstring); rank = 1 for the most sensitive task within its metric (ties share the smaller
    rank), train_size from ``train_sizes`` (NaN when not given). Rows are ordered by metric,
    rank, then cell. Warnings in ``frame.attrs["warnings"]``.
    """
    prep = prepare(df, metric=metric, factors=factors)
    out, warnings = _sensitivity(prep, teacher_scores, train_sizes)
    out.attrs["warnings"] = prep.warnings + warnings
    return out


def spearman_exact(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, float, str]:
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
    tasks p is exact (permutations, :func:`spearman_exact`). Uses the normalised retention
    (unit-free, so tasks of different metrics can share one ranking); a positive rho means
    smaller training sets keep less of the teacher.
    """
    missing = [c for c in ("task", "retention", "train_size") if c not in sens.columns]
    if missing:
        raise AnalysisError(f"sensitivity frame lacks column(s) {', '.join(missing)}")
    per_task = sens.groupby("task").agg(retention=("retention", "mean"), train_size=("train_size", "first")).dropna()
    rho, p, method = spearman_exact(per_task["train_size"].to_numpy(), per_task["retention"].to_numpy())
    note = "normalised retention (student − floor)/(teacher − floor), averaged over cells per task"
    if len(per_task) < 3:
        note = f"only {len(per_task)} task(s) with a gap and a training-set size: no correlation"
    return {"spearman_rho": rho, "spearman_p": p, "n_tasks": len(per_task), "method": method, "note": note}
