"""Every shipped study file validates, expands as its paper needs, and checks against its teacher's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdgrid.plan import plan_study, summarize
from kdgrid.study import load_study

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_file_validates(path: Path) -> None:
    runs = plan_study(load_study(path).study)
    assert runs


def test_expected_studies_exist() -> None:
    names = {p.stem for p in STUDIES}
    assert {
        "demo",
        "ablation",
        "ablation-cpu",
        "objectives",
        "objectives-cpu",
        "what_is_lost",
        "what_is_lost-cpu",
    } <= names


def test_ablation_is_the_full_factorial_of_paper_1() -> None:
    runs = plan_study(load_study(STUDIES[0].parent / "ablation.yaml").study)
    s = summarize(runs)
    # attention {mse, kl} x mapping {uniform, learnable} x alpha {0, .5, 1} x fraction {.5, 1} x 2 tasks x 10 seeds
    assert s["runs"] == 2 * 2 * 3 * 2 * 2 * 10
    # alpha = 0 makes the attention loss irrelevant: those cells share runs
    assert s["unique_runs"] == s["runs"] - 2 * 2 * 2 * 10


def test_objectives_has_paper_2_table_1_rows() -> None:
    study = load_study(STUDIES[0].parent / "objectives.yaml").study
    assert list(study.variants["method"]) == [
        "vanilla-kd",
        "hid-cls-contrast",
        "hid-cls",
        "hid-seq",
        "att-mse",
        "att-mse+hid-seq",
        "att-kl",
        "att-kl+hid-seq",
        "att-kl+hid-seq+val-kl",
    ]
    runs = {r.factors["method"]: r.config for r in plan_study(study) if r.task == "rte" and r.seed == 0}
    assert runs["vanilla-kd"].train.schedule == "joint"
    assert runs["att-kl+hid-seq+val-kl"].train.schedule == "two_stage"
    assert runs["att-kl+hid-seq+val-kl"].objective.intermediate.value == "kl"


def test_what_is_lost_has_paper_3_shapes() -> None:
    study = load_study(STUDIES[0].parent / "what_is_lost.yaml").study
    assert list(study.variants["student"]) == ["3L", "6L", "9L", "4AH", "8AH", "384D", "516D", "6L_384D"]
    cfg = next(r.config for r in plan_study(study) if r.factors["student"] == "516D")
    assert cfg.objective.mapping.kind == "first_last"
    assert cfg.objective.prediction.model_dump() == {"beta": 0.5, "temperature": 2.0, "t_squared": True}
