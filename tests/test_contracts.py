"""Contracts written in two places because of the layer rules agree (a study may not import analyze)."""

from __future__ import annotations

from typing import get_args

from kdgrid.analyze.paired import CORRECTIONS
from kdgrid.study.schema import Analysis


def test_the_study_schema_allows_exactly_the_corrections_analyze_implements() -> None:
    assert get_args(Analysis.model_fields["correction"].annotation) == CORRECTIONS
