"""``analyze_table``: every analysis of a tidy results table in one call (docs/CONTRACTS.md)."""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from kdgrid.analyze.anova import ANOVA_COLUMNS, DIAGNOSTIC_COLUMNS, _anova
from kdgrid.analyze.describe import _describe
from kdgrid.analyze.efficiency import EFFICIENCY_COLUMNS, efficiency_table
from kdgrid.analyze.paired import PAIRED_COLUMNS, Margin, _paired, run_keys
from kdgrid.analyze.pooled import NEMENYI_COLUMNS, RANK_COLUMNS, STRATIFIED_COLUMNS, friedman_ranks, stratified_tests
from kdgrid.analyze.power import PLAN_COLUMNS, power_plan, power_table
from kdgrid.analyze.sensitivity import (
    SENSITIVITY_COLUMNS,
    TeacherScores,
    _sensitivity,
    sensitivity_summary,
    teacher_floors,
)
from kdgrid.analyze.tidy import MetricSpec, dedupe, prepare

__all__ = ["Analysis", "analyze_table"]


@dataclass
class Analysis:
    """Everything ``report`` renders; column names are a contract (docs/CONTRACTS.md, "analyze -> report").

    * ``cells``: task, metric, cell, <factor columns>, n, mean, sd, ci_low, ci_high, seeds, values, stands_for
    * ``paired_tests``: per task, the columns of ``kdgrid.analyze.paired.PAIRED_COLUMNS``
      (unadjusted and simultaneous intervals, p, p_adj, family, TOST, verdict, floor)
    * ``stratified``: within one metric over its tasks, task as a fixed effect
      (``kdgrid.analyze.pooled.STRATIFIED_COLUMNS``)
    * ``friedman``: statistic, p, k, n_blocks, cd, alpha, method, note; ``ranks``: cell,
      mean_rank, n_blocks, same_as; ``nemenyi``: cell_a, cell_b, rank_diff, p (across metrics)
    * ``anova``: task ('all' with task as a factor), term, df, sum_sq, F, p, partial_eta2 (one row
      per run; the seed block is the term 'seed', 'task:seed' when pooled)
    * ``diagnostics``: task, check, value, note
    * ``design``: sentences stating the ANOVA's model (runs counted once, merged factors of
      collapsed cells, seed block, type of sums of squares)
    * ``sensitivity``: task, metric, cell, teacher, floor, student_mean, student_sd, gap (+ CI),
      retention (normalised, + CI), n, rank (within metric), train_size
    * ``sensitivity_summary``: spearman_rho, spearman_p, n_tasks, method, note (empty without teacher scores)
    * ``power``: task, condition, n, dz, dz_ci_low, dz_ci_high, family_size, alpha_used, target_dz,
      n_for_target; ``power_plan``: family, family_size, alpha_used, target_dz, power, n_needed
    * ``warnings``: every caveat, in the order found, without repeats
    * ``mapping_weights``: task, cell, seed, epoch, student_layer, teacher_layer, weight (filled by callers that have them)
    * ``layers``: cell, copied, mapped: the teacher layers each cell's students copied and learn from (filled by callers)
    * ``efficiency``: cell, measure, n, median, min, max, baseline, ratio (empty when the table has no
      params / latency_ms / throughput_ex_s / train_ex_per_s / peak_memory_mb columns)
    """

    cells: pd.DataFrame
    paired_tests: pd.DataFrame
    anova: pd.DataFrame
    diagnostics: pd.DataFrame
    sensitivity: pd.DataFrame
    sensitivity_summary: dict[str, object]
    power: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    mapping_weights: pd.DataFrame | None = None
    layers: pd.DataFrame | None = None
    efficiency: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(EFFICIENCY_COLUMNS)))
    design: list[str] = field(default_factory=list)
    stratified: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STRATIFIED_COLUMNS))
    friedman: dict[str, object] = field(default_factory=dict)
    ranks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RANK_COLUMNS))
    nemenyi: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=NEMENYI_COLUMNS))
    power_plan: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PLAN_COLUMNS))


def analyze_table(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None = None,
    baseline: Mapping[str, object] | None = None,
    correction: str = "holm",
    anova_type: int = 2,
    anova_order: int | None = None,
    block_seed: bool = True,
    teacher_scores: TeacherScores | None = None,
    train_sizes: Mapping[str, float] | None = None,
    target_dz: float = 0.5,
    family: Literal["task", "all"] = "task",
    margin: Margin | None = None,
    alpha: float = 0.05,
) -> Analysis:
    """Describe, compare, ANOVA, sensitivity and power for a tidy table (one row per run).

    ``metric``: a column name, a dict task -> column, or ``"auto"`` (each GLUE task's
    official metric). ``factors``: default every column except task/seed/run_id/cell/
    study/status and metric columns. Without a ``task`` column all rows are one task,
    ``'all'``. Without a ``seed`` column rows are replicates: the paired tests and the
    power table are empty and a warning says why (no silent switch to unpaired tests).
    ``baseline`` None: the first level of every factor (a warning names it).
    ``correction`` holm | fdr_bh | bonferroni | none within ``family`` (``"task"``:
    each task's comparisons, and the pooled rows, are separate families; ``"all"``:
    one family). ``anova_type`` 2 or 3 (3 with sum-to-zero contrasts), ``anova_order``
    the highest interaction (None = all); ``block_seed`` puts seed (within task) in the
    ANOVA as a block (default; False: runs are independent replicates). ``teacher_scores`` (DataFrame task, teacher
    [, seed], or dict) enables the sensitivity tables, ``train_sizes`` (dict task ->
    training rows) its Spearman summary. ``target_dz`` is the planning effect size of
    the power table. ``margin``: equivalence margin in the metric's units (a number, or a
    dict metric -> margin; default 0.01). ``alpha``: level of every test, interval and verdict.
    See the functions of :mod:`kdgrid.analyze` for formulas.
    """
    with pywarnings.catch_warnings(record=True) as caught:
        # Library warnings never reach the terminal as Python warnings: each known case is handled
        # where it arises (mixed model convergence, Shapiro with N > 5000, ...); anything else
        # becomes one report warning here.
        pywarnings.simplefilter("always")
        analysis = _analyze(
            df,
            metric=metric,
            factors=factors,
            baseline=baseline,
            correction=correction,
            anova_type=anova_type,
            anova_order=anova_order,
            block_seed=block_seed,
            teacher_scores=teacher_scores,
            train_sizes=train_sizes,
            target_dz=target_dz,
            family=family,
            margin=margin,
            alpha=alpha,
        )
    unexpected = [
        f"analysis: {w.category.__name__} from {w.filename.rsplit('/', 1)[-1]}: {w.message}"
        for w in caught
        if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))
    ]
    analysis.warnings = dedupe([*analysis.warnings, *unexpected])
    return analysis


def _analyze(
    df: pd.DataFrame,
    *,
    metric: MetricSpec,
    factors: Sequence[str] | None,
    baseline: Mapping[str, object] | None,
    correction: str,
    anova_type: int,
    anova_order: int | None,
    block_seed: bool,
    teacher_scores: TeacherScores | None,
    train_sizes: Mapping[str, float] | None,
    target_dz: float,
    family: Literal["task", "all"],
    margin: Margin | None,
    alpha: float,
) -> Analysis:
    prep = prepare(df, metric=metric, factors=factors)
    warnings = list(prep.warnings)
    cells = _describe(prep)
    floors = teacher_floors(teacher_scores, prep.metric_of)
    no_floor = [t for t in prep.tasks if t not in floors]
    if no_floor and prep.has_seed:
        warnings.append(
            f"no majority-class score for task(s) {', '.join(no_floor)} (accuracy and F1 need it; give "
            "teacher_scores a floor column): their comparisons are not checked against the floor"
        )
    keys = run_keys(prep, df)
    full, w = _paired(
        prep,
        baseline=baseline,
        correction=correction,
        family=family,
        confidence=1 - alpha,
        margin=margin,
        floors=floors,
        internal=True,
        keys=keys,
    )
    warnings += w
    paired = full[PAIRED_COLUMNS].copy()
    if full.empty:
        stratified = pd.DataFrame(columns=STRATIFIED_COLUMNS)
    else:
        diffs = {(str(t), str(c)): d for t, c, d in zip(full["task"], full["condition"], full["_diffs"])}
        stratified = stratified_tests(full, diffs, correction=correction, alpha=alpha)
    ranks, nemenyi, friedman, w = friedman_ranks(prep, keys, alpha=alpha)
    warnings += w
    res = _anova(prep, typ=anova_type, order=anova_order, block_seed=block_seed)
    anova, diagnostics = res.table, res.diagnostics
    warnings += res.warnings
    if teacher_scores is not None:
        sens, w = _sensitivity(prep, teacher_scores, train_sizes)
        warnings += w
        summary = sensitivity_summary(sens) if train_sizes is not None else {}
    else:
        sens, summary = pd.DataFrame(columns=SENSITIVITY_COLUMNS), {}
        if train_sizes is not None:
            warnings.append("train_sizes given without teacher_scores: no sensitivity analysis")
    # One power row per hypothesis: a row repeating another's runs (collapsed cells) is not a second comparison.
    own = full[full["_dup_of"].isna()][PAIRED_COLUMNS] if not full.empty else paired
    power = power_table(own, target_dz=target_dz, alpha=alpha, correction=correction)
    plan = power_plan(paired, alpha=alpha, correction=correction)
    efficiency, w = efficiency_table(df, factors=prep.factors, baseline=baseline)
    warnings += w
    if anova.empty:
        anova = pd.DataFrame(columns=ANOVA_COLUMNS)
    if diagnostics.empty:
        diagnostics = pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)
    return Analysis(
        cells=cells,
        paired_tests=paired,
        anova=anova,
        diagnostics=diagnostics,
        sensitivity=sens,
        sensitivity_summary=summary,
        power=power,
        warnings=dedupe(warnings),
        efficiency=efficiency,
        design=res.design,
        stratified=stratified,
        friedman=friedman,
        ranks=ranks,
        nemenyi=nemenyi,
        power_plan=plan,
    )
