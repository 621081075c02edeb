"""Statistics on a tidy results table (one row per run): pure functions returning DataFrames.

No torch, no transformers, no store access: :mod:`kdgrid.report` and external users call
these on a table from the store or from ``--from results.csv|parquet``.

* :func:`analyze_table` -> :class:`Analysis` (everything, the contract with ``report``)
* :func:`describe_cells` - n, mean, sd, t CI per task and cell
* :func:`paired_tests` - every cell vs a baseline, paired by seed, Holm/BH/Bonferroni
* :func:`anova_table`, :func:`anova_diagnostics`, :func:`mixed_model`
* :func:`sensitivity`, :func:`sensitivity_summary` - teacher-student gap per task
* :func:`power_table`, :func:`seeds_needed`, :func:`achieved_power`
* :func:`load_table`, :func:`infer_factors` - reading tables
"""

from __future__ import annotations

from kdgrid.analyze.anova import anova_diagnostics, anova_table, mixed_model
from kdgrid.analyze.core import Analysis, analyze_table
from kdgrid.analyze.describe import describe_cells, mean_ci
from kdgrid.analyze.paired import (
    adjust_pvalues,
    min_wilcoxon_p,
    paired_tests,
    paired_ttest,
    wilcoxon_signed_rank,
)
from kdgrid.analyze.power import achieved_power, power_table, seeds_needed
from kdgrid.analyze.sensitivity import sensitivity, sensitivity_summary, spearman_exact
from kdgrid.analyze.tidy import AnalysisError, infer_factors, level_key, load_table, short_names

__all__ = [
    "Analysis",
    "AnalysisError",
    "achieved_power",
    "adjust_pvalues",
    "analyze_table",
    "anova_diagnostics",
    "anova_table",
    "describe_cells",
    "infer_factors",
    "level_key",
    "load_table",
    "mean_ci",
    "min_wilcoxon_p",
    "mixed_model",
    "paired_tests",
    "paired_ttest",
    "power_table",
    "seeds_needed",
    "sensitivity",
    "sensitivity_summary",
    "short_names",
    "spearman_exact",
    "wilcoxon_signed_rank",
]
