"""Statistics on a tidy results table (one row per run): pure functions returning DataFrames.

No torch, no transformers, no store access: :mod:`kdgrid.report` and external users call
these on a table from the store or from ``--from results.csv|parquet``.

* :func:`analyze_table` -> :class:`Analysis` (everything, the contract with ``report``)
* :func:`describe_cells` - n, mean, sd, t CI per task and cell
* :func:`paired_tests` - every cell vs a baseline, paired by seed, Holm/BH/Bonferroni within a
  family, simultaneous intervals, TOST, three verdicts (:func:`verdict`, :mod:`kdgrid.analyze.verdict`)
* :func:`stratified_tests`, :func:`friedman_ranks` - over tasks: within a metric (task as a fixed
  effect) and across metrics (Friedman + Nemenyi ranks) (:mod:`kdgrid.analyze.pooled`)
* :func:`anova_table`, :func:`anova_diagnostics`, :func:`mixed_model`
* :func:`sensitivity`, :func:`sensitivity_summary` - teacher-student gap per task
* :func:`power_table`, :func:`power_plan`, :func:`seeds_needed`, :func:`dz_interval` - prospective power
* :func:`load_table`, :func:`infer_factors` - reading tables
"""

from __future__ import annotations

from kdgrid.analyze.anova import anova_diagnostics, anova_table, mixed_model
from kdgrid.analyze.core import Analysis, analyze_table
from kdgrid.analyze.describe import describe_cells, mean_ci
from kdgrid.analyze.paired import (
    adjust_pvalues,
    family_adjust,
    min_wilcoxon_p,
    paired_tests,
    paired_ttest,
    wilcoxon_signed_rank,
)
from kdgrid.analyze.pooled import friedman_ranks, stratified_effect, stratified_tests
from kdgrid.analyze.power import achieved_power, dz_interval, power_plan, power_table, seeds_needed
from kdgrid.analyze.sensitivity import sensitivity, sensitivity_summary, spearman_exact
from kdgrid.analyze.tidy import AnalysisError, infer_factors, level_key, load_table, short_names
from kdgrid.analyze.verdict import Verdict, classify, difference_p, equivalence_p, verdict

__all__ = [
    "Analysis",
    "AnalysisError",
    "Verdict",
    "achieved_power",
    "adjust_pvalues",
    "analyze_table",
    "anova_diagnostics",
    "anova_table",
    "classify",
    "describe_cells",
    "difference_p",
    "dz_interval",
    "equivalence_p",
    "family_adjust",
    "friedman_ranks",
    "infer_factors",
    "level_key",
    "load_table",
    "mean_ci",
    "min_wilcoxon_p",
    "mixed_model",
    "paired_tests",
    "paired_ttest",
    "power_plan",
    "power_table",
    "seeds_needed",
    "sensitivity",
    "sensitivity_summary",
    "short_names",
    "spearman_exact",
    "stratified_effect",
    "stratified_tests",
    "verdict",
    "wilcoxon_signed_rank",
]
