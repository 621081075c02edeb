"""The plan's cached expansion gives exactly the runs of the straightforward one (and the run ids of
kdgrid before the cache existed), including its errors, word for word."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from kdgrid.errors import PlanError
from kdgrid.plan import expand
from kdgrid.plan.canonical import config_data
from kdgrid.plan.expand import _expand_cached, _expand_reference, _full_template
from kdgrid.study.loader import load_study
from kdgrid.study.schema import Study

STUDIES = Path(__file__).resolve().parents[1] / "studies"
# Frozen copies of the committed studies the goldens were computed from (the shipped ones change with their designs).
GOLDEN_STUDIES = Path(__file__).resolve().parent / "data" / "golden_studies"

# Run ids of committed studies, computed with the per-run expansion (deepcopy, RunConfig and hash per run,
# ``_expand_reference``) on the merged tree that holds issue 21's new settings (init_head, att_mse_padding,
# the learnable mapping's schedule; they changed every id once): (runs, sha256 of the ids joined by
# newlines, first three ids). The cache must never move them.
GOLDEN = {
    "ablation-cpu.yaml": (240, "5adefaf77be730e5", ["a5cb7646925ad028", "6e4dbb54318c5f44", "b35b6baaff46c92e"]),
    "demo.yaml": (6, "4d473dc0a3137981", ["8b8c2ad060c03bc8", "7a1c82bb8a04a8d9", "01b060edf561db87"]),
    "objectives-cpu.yaml": (225, "951c739e905ca92a", ["2d4fe8732d175f87", "3a11c062d730d1e7", "8e637f93899db394"]),
    "what_is_lost-cpu.yaml": (200, "aaaad8f6aacea125", ["025b5038fa9c2a19", "01f6d9e2338860f6", "c904f37319f29b85"]),
}


def as_rows(runs: list[Any]) -> list[tuple[Any, ...]]:
    # The model, and its JSON form with its key order (a config written to the store reads the same). The form
    # a run holds must be the model's own dump: the cached path assembles it from block dumps instead.
    for r in runs:
        assert (r.config_data(), list(r.config_data())) == (config_data(r.config), list(config_data(r.config)))
    return [
        (r.run_id, r.task, r.seed, list(r.factors.items()), r.config, r.config_data(), list(r.config_data()))
        for r in runs
    ]


def both(study: Study) -> tuple[list[Any], list[Any]]:
    template = _full_template()
    return _expand_reference(study, template), _expand_cached(study, template)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_committed_studies_keep_their_run_ids(name: str) -> None:
    runs = expand(load_study(GOLDEN_STUDIES / name).study)
    ids = [r.run_id for r in runs]
    n, digest, first = GOLDEN[name]
    assert (len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16], ids[:3]) == (n, digest, first)


@pytest.mark.parametrize(
    "path", sorted([*STUDIES.glob("*.yaml"), *GOLDEN_STUDIES.glob("*.yaml")]), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_cached_expansion_equals_reference_on_committed_studies(path: Path) -> None:
    ref, fast = both(load_study(path).study)
    assert as_rows(fast) == as_rows(ref)


def study(**kw: Any) -> Study:
    return Study.model_validate({"name": "s", "tasks": ["cola", "stsb"], "seeds": [0, 3, 7], **kw})


CASES = {
    # collapsed cells (alpha 0 and weight 0 make the attention choice irrelevant, beta 0 the temperature)
    "collapse": dict(
        objective={"intermediate": {"attention": "mse", "hidden": "seq"}},
        grid={
            "objective.intermediate.attention": ["mse", "kl"],
            "objective.intermediate.alpha": [0.0, 0.5, 1.0],
            "objective.intermediate.weight": [0.0, 1.0],
            "objective.prediction.beta": [0.0, 1.0],
        },
    ),
    # variants touching two blocks and a group named after a block, filters on factors, settings, task, seed
    "variants": dict(
        grid={"train.lr": [1e-5, 5e-5], "objective.prediction.beta": [0.0, 1.0]},
        variants={
            "student": {"2L": {"layers": 2}, "4AH": {"heads": 4, "init": "width_slice"}},
            "method": {"plain": {}, "att": {"objective.intermediate.attention": "kl", "train.lr": 2e-5}},
        },
        include=[{"task": "cola"}, {"seed": 3}],
        exclude=[{"student": "4AH", "train.lr": 1e-5}, {"objective.prediction.temperature": 1.0, "seed": 7}],
    ),
    # a dict level merged into its block, epochs given as one number then per stage
    "blocks": dict(
        grid={
            "objective.mapping": [{"kind": "uniform"}, {"kind": "learnable", "lr": 0.1}],
            "train.epochs.prediction": [1, 2],
        },
        train={"epochs": 3, "schedule": "two_stage"},
        objective={"intermediate": {"hidden": "seq"}},
    ),
    # a variant setting a top-level field (overridden by the run's own seed): the reference path runs
    "top-level": dict(variants={"method": {"a": {"seed": 5, "train.lr": 1e-5}, "b": {"train.lr": 2e-5}}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_expansion_equals_reference(case: str) -> None:
    ref = _expand_reference(study(**CASES[case]), _full_template())
    assert ref and as_rows(expand(study(**CASES[case]))) == as_rows(ref)
    if case != "top-level":  # expand() sends that one to the reference path
        assert as_rows(_expand_cached(study(**CASES[case]), _full_template())) == as_rows(ref)


INVALID = {
    "block": dict(grid={"train.lr": [1e-5, -1.0]}),  # one level invalid on its own
    "cross": dict(
        grid={"objective.mapping.kind": ["uniform", "explicit"], "objective.mapping.layers": [[2, 4, 6]]},
        student={"layers": 2},
    ),  # valid blocks, RunConfig's cross-check fails
    "schedule": dict(grid={"train.schedule": ["joint", "two_stage"]}),  # two_stage without a layer objective
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_cached_expansion_fails_with_the_reference_message(case: str) -> None:
    template = _full_template()
    with pytest.raises(PlanError) as ref:
        _expand_reference(study(**INVALID[case]), template)
    with pytest.raises(PlanError) as fast:
        _expand_cached(study(**INVALID[case]), template)
    assert str(fast.value) == str(ref.value) and fast.value.loc == ref.value.loc


def test_with_seed_is_model_copy_with_the_seed() -> None:
    from kdgrid.plan.expand import with_seed
    from kdgrid.study.schema import RunConfig

    cell = RunConfig.model_validate({"task": "stsb", "seed": 3, "train": {"lr": 2e-5}})
    run = with_seed(cell, 11)
    assert run == cell.model_copy(update={"seed": 11}) and run != cell
    assert config_data(run) == {**config_data(cell), "seed": 11} and cell.seed == 3
