"""Properties of the plan, on generated studies (Hypothesis), without torch:

* a grid expands to (product of its factors' levels) x tasks x seeds runs, minus those a filter excludes;
* a run's id, config and cell label do not depend on how its study file is written (key order, 0.5 vs 0.50
  vs 5e-1);
* a planned run's config survives its JSON form: model -> config_data -> RunConfig.model_validate is the same
  model (what a worker does with its job), and its dump is the same dict.
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdgrid.errors import PlanError
from kdgrid.plan import expand
from kdgrid.plan.canonical import config_data, run_id_of
from kdgrid.study.loader import load_study
from kdgrid.study.schema import RunConfig, Study

# Settings a grid may vary, each with levels that are valid with every other choice here (a two-stage schedule
# needs a layer loss: the base objective has attention and hidden losses, so every alpha keeps one).
LEVELS: dict[str, list[Any]] = {
    "train.lr": [1e-5, 2e-5, 5e-5, 1e-4, 3.5e-4],
    "objective.prediction.temperature": [0.5, 1.0, 2.0, 4.0],
    "objective.prediction.beta": [0.0, 0.5, 1.0],
    "objective.intermediate.alpha": [0.0, 0.25, 0.5, 1.0],
    "data.fraction": [0.25, 0.5, 1.0],
    "train.batch_size": [8, 16, 32],
    "train.schedule": ["joint", "two_stage"],
    "objective.intermediate.attention": ["mse", "kl"],
}
BASE: dict[str, Any] = {"objective": {"intermediate": {"attention": "mse", "hidden": "seq"}}}
TASKS = ["cola", "stsb", "rte"]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def grids(draw: st.DrawFn, levels: dict[str, list[Any]] = LEVELS) -> dict[str, Any]:
    """A study's tasks, seeds, grid and exclude filters (each filter: one factor at one level, or a task)."""
    factors = draw(st.lists(st.sampled_from(sorted(levels)), min_size=0, max_size=3, unique=True))
    grid = {f: draw(st.lists(st.sampled_from(levels[f]), min_size=1, max_size=3, unique=True)) for f in factors}
    tasks = draw(st.lists(st.sampled_from(TASKS), min_size=1, max_size=2, unique=True))
    seeds = draw(st.integers(1, 3))
    choices = [(f, level) for f, levels in grid.items() for level in levels] + [("task", t) for t in tasks]
    exclude = draw(st.lists(st.sampled_from(choices), max_size=2, unique=True))
    return {"tasks": tasks, "seeds": seeds, "grid": grid, "exclude": [{k: v} for k, v in exclude]}


@SETTINGS
@given(grids())
def test_a_grid_expands_to_the_product_of_its_levels_minus_the_excluded(g: dict[str, Any]) -> None:
    study = Study.model_validate({"name": "p", **BASE, **g})
    n_cells = math.prod(len(levels) for levels in g["grid"].values())
    # The runs an exclude filter leaves out, counted on their own (one level of one factor, or one task).
    kept = [
        (task, levels, seed)
        for task in g["tasks"]
        for levels in itertools.product(*g["grid"].values())
        for seed in range(g["seeds"])
        if not any(
            (key == "task" and task == want) or (key != "task" and dict(zip(g["grid"], levels))[key] == want)
            for flt in g["exclude"]
            for key, want in flt.items()
        )
    ]
    if not g["exclude"]:
        assert len(kept) == n_cells * len(g["tasks"]) * g["seeds"]
    if not kept:
        with pytest.raises(PlanError, match="expands to no runs"):
            expand(study)
        return
    runs = expand(study)
    assert len(runs) == len(kept)
    # each kept (task, cell, seed) exactly once
    assert len({(r.task, r.cell, r.seed) for r in runs}) == len(runs)
    assert {r.task for r in runs} == {t for t, _, _ in kept}


def _yaml_float(x: float, how: int) -> str:
    """``x`` as YAML text in one of several spellings of the same number."""
    plain = repr(x)
    if how == 0:
        return plain
    if how == 1:  # trailing zero: 0.50, 0.000050
        return format(Decimal(plain), "f") + "0"
    mantissa, exp = f"{x:e}".split("e")
    if how == 2:  # 5.000000e-01 (a YAML 1.1 float)
        return f"{x:e}"
    # 5e-1 / 5E-01: a string to YAML 1.1, a float to YAML 1.2 and to the study loader
    short = mantissa.rstrip("0").rstrip(".")
    return f"{short}e{int(exp)}" if how == 3 else f"{short}E{exp}"


def _to_yaml(value: Any, rnd: Any, how: Any) -> str:
    """Flow-style YAML with each mapping's keys in a random order and each float spelled at random."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return "{" + ", ".join(f"{k}: {_to_yaml(v, rnd, how)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_to_yaml(v, rnd, how) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _yaml_float(value, how())
    return str(value)


STUDY_FILE: dict[str, Any] = {
    "name": "spelled",
    "tasks": ["cola", "stsb"],
    "seeds": 2,
    "teacher": {"model": "minilm-l6", "finetune": {"epochs": 1, "lr": 5e-5, "warmup_ratio": 0.1}},
    "student": {"layers": 2},
    "data": {"fraction": 0.5, "max_seq_length": 32},
    "train": {"epochs": 1, "lr": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1},
    "objective": {
        "prediction": {"beta": 0.5, "temperature": 2.0},
        "intermediate": {"attention": "mse", "hidden": "seq", "alpha": 0.5, "weight": 1.0},
    },
    "grid": {"objective.intermediate.alpha": [0.0, 0.25, 0.5], "train.lr": [2e-5, 1e-4]},
}


def _plan_of(text: str, tmp: Path) -> dict[str, Any]:
    path = tmp / "s.yaml"
    path.write_text(text)
    runs = expand(load_study(path).study)
    # levels: the labels the store and the report show (5e-5 read as text would be the level "5e-5"); their order
    # in a cell's name is the grid's key order
    return {
        r.run_id: (r.config_data(), sorted(sorted(x.factors.items()) for x in runs if x.run_id == r.run_id))
        for r in runs
    }


@SETTINGS
@given(rnd=st.randoms(use_true_random=False), spellings=st.lists(st.integers(0, 4), min_size=1, max_size=8))
def test_run_ids_and_cells_do_not_depend_on_key_order_or_how_floats_are_written(
    tmp_path_factory: pytest.TempPathFactory, rnd: Any, spellings: list[int]
) -> None:
    tmp = tmp_path_factory.mktemp("spelled")
    reference = _plan_of(_to_yaml(STUDY_FILE, _Fixed(), lambda: 0), tmp)
    it = itertools.cycle(spellings)
    assert _plan_of(_to_yaml(STUDY_FILE, rnd, lambda: next(it)), tmp) == reference


class _Fixed:
    def shuffle(self, items: list[Any]) -> None:
        pass


def test_the_spellings_are_what_they_claim() -> None:
    # The generator above must produce different texts of one number, or the property tests nothing.
    assert [_yaml_float(0.5, i) for i in range(5)] == ["0.5", "0.50", "5.000000e-01", "5e-1", "5E-01"]
    assert [_yaml_float(5e-5, i) for i in range(5)] == ["5e-05", "0.000050", "5.000000e-05", "5e-5", "5E-05"]


# Also levels and base objectives that leave a cell without any layer loss, where the canonical config resets more.
ROUND_TRIP_LEVELS = {
    **LEVELS,
    "objective.intermediate.hidden": ["seq", "none"],
    "objective.intermediate.weight": [0.0, 1.0],
}
BASES = [
    {"attention": "mse", "hidden": "seq"},
    {"attention": "mse", "alpha": 0.0},  # the attention loss has no weight
    {"hidden": "cls", "alpha": 1.0},  # the hidden loss has no weight
    {"attention": "kl", "value": "kl", "hidden": "seq", "alpha": 0.3, "weight": 0.0},
    {"embedding": 0.5, "alpha": 0.0},
    {},
]


@settings(SETTINGS, max_examples=40)
@given(grids(ROUND_TRIP_LEVELS), st.sampled_from(BASES), st.sampled_from(["joint", "two_stage"]))
def test_a_planned_config_survives_its_json_form(g: dict[str, Any], base: dict[str, Any], schedule: str) -> None:
    # A two-stage base with a joint level: the joint cells train the base's prediction-stage epochs.
    study = Study.model_validate(
        {"name": "p", "objective": {"intermediate": base}, "train": {"schedule": schedule}, **{**g, "exclude": []}}
    )
    try:
        runs = expand(study)
    except PlanError as exc:  # a two-stage cell whose layer losses all have no weight: refused when planned
        assert "schedule 'two_stage' needs an intermediate objective" in str(exc)
        return
    for run in runs:
        data = run.config_data()
        back = RunConfig.model_validate(data)  # what execute_job does with a job's config
        assert back == run.config
        assert config_data(back) == data and list(config_data(back)) == list(data)
        assert run_id_of(back) == run.run_id


def test_a_two_stage_run_whose_only_layer_loss_has_no_weight_is_refused_when_planned() -> None:
    # alpha 0 leaves the attention loss no weight: the run has no stage 1, which the run itself would only find
    # out (its canonical config fails RunConfig's check) after the plan had accepted it.
    study = Study.model_validate(
        {
            "name": "p",
            "tasks": ["cola"],
            "train": {"schedule": "two_stage"},
            "objective": {"intermediate": {"attention": "mse", "alpha": 0.0}},
        }
    )
    with pytest.raises(PlanError, match="schedule 'two_stage' needs an intermediate objective"):
        expand(study)
