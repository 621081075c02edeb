"""Grid expansion: counts, filters, collapsing of factors without effect, stable run ids."""

from __future__ import annotations

import pytest

from kdgrid.errors import PlanError
from kdgrid.plan import canonical_config, expand, plan_study, run_id_of
from kdgrid.study.schema import RunConfig, Study


def study(**kw: object) -> Study:
    return Study.model_validate({"name": "s", "tasks": ["cola"], **kw})


def test_full_factorial_counts() -> None:
    s = study(
        tasks=["cola", "stsb"],
        seeds=3,
        objective={"intermediate": {"attention": "mse", "hidden": "seq"}},
        grid={"objective.intermediate.attention": ["mse", "kl"], "objective.mapping.kind": ["uniform", "learnable"]},
    )
    runs = expand(s)
    assert len(runs) == 2 * 2 * 2 * 3
    assert len({r.run_id for r in runs}) == 24
    assert runs[0].factors == {"objective.intermediate.attention": "mse", "objective.mapping.kind": "uniform"}
    assert {r.config_data()["objective"]["intermediate"]["attention"] for r in runs} == {"mse", "kl"}


def test_alpha_zero_collapses_attention_choice() -> None:
    s = study(
        seeds=2,
        objective={"intermediate": {"hidden": "seq"}},
        grid={"objective.intermediate.attention": ["mse", "kl"], "objective.intermediate.alpha": [0.0, 0.5]},
    )
    runs = expand(s)
    assert len(runs) == 8
    # alpha = 0: attention mse and kl are the same run; alpha = 0.5: different runs.
    assert len({r.run_id for r in runs}) == 6
    zero = [r for r in runs if r.factors["objective.intermediate.alpha"] == "0.0"]
    assert {r.cell for r in zero} == {
        "objective.intermediate.attention=mse, objective.intermediate.alpha=0.0",
        "objective.intermediate.attention=kl, objective.intermediate.alpha=0.0",
    }


def test_run_id_is_stable_across_studies_and_ignores_data_dir() -> None:
    a = expand(study(seeds=[4], data={"dir": "/a"}))[0]
    b = expand(study(name="other", seeds=[4], data={"dir": "/b"}, description="x"))[0]
    assert a.run_id == b.run_id
    c = expand(study(seeds=[4], train={"lr": 1e-4}))[0]
    assert c.run_id != a.run_id
    cfg = RunConfig(task="cola", seed=4)
    assert run_id_of(canonical_config(cfg)) == a.run_id


def test_variants_and_filters() -> None:
    s = study(
        seeds=2,
        variants={"student": {"2L": {"layers": 2}, "4AH": {"heads": 4, "init": "width_slice"}}},
        grid={"train.lr": [1e-5, 5e-5]},
        exclude=[{"student": "4AH", "train.lr": 1e-5}],
    )
    runs = expand(s)
    assert len(runs) == (4 - 1) * 2
    assert all(r.config_data()["student"]["heads"] == 4 for r in runs if r.factors["student"] == "4AH")
    only = expand(study(seeds=2, grid={"train.lr": [1e-5, 5e-5]}, include=[{"train.lr": 5e-5, "seed": 1}]))
    assert [(r.factors["train.lr"], r.seed) for r in only] == [("5e-05", 1)]


def test_empty_grid_after_exclude() -> None:
    with pytest.raises(PlanError, match="expands to no runs"):
        expand(study(grid={"train.lr": [1e-5]}, exclude=[{"train.lr": 1e-5}]))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            {"grid": {"objective.intermediate.atention": ["mse"]}},
            "unknown setting 'objective.intermediate.atention' (allowed under objective.intermediate: alpha, att_mse_padding, attention",
        ),
        (
            {"grid": {"objective.intermediate.attention": ["mse", "l2"]}},
            "objective.intermediate.attention: Input should be 'none', 'mse' or 'kl'",
        ),
        ({"exclude": [{"train.nope": 1}]}, "exclude[0]: unknown setting 'train.nope'"),
        ({"train": {"schedule": "two_stage"}}, "schedule 'two_stage' needs an intermediate objective"),
    ],
)
def test_bad_grids(kw: dict, expected: str) -> None:
    with pytest.raises(PlanError) as exc:
        expand(study(**kw))
    assert expected in str(exc.value)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"student": {"layers": 7}}, "student.layers: 7 layers but the teacher has 6"),
        (
            {
                "student": {"layers": 2, "heads": 4, "init": "width_slice"},
                "objective": {"intermediate": {"attention": "kl"}},
            },
            "head_match: attention/value losses compare 4 student heads with 12 teacher heads",
        ),
        (
            {"student": {"layers": 2, "hidden_size": 192, "intermediate_size": 768}},
            "student.init: 'teacher_layers' needs the teacher's hidden and intermediate size (384, 1536",
        ),
        (
            {"student": {"layers": 2, "init_layers": [2, 9]}},
            "student.init_layers[1]: layer 9 out of range (allowed: 1..6)",
        ),
    ],
)
def test_shape_checks_against_minilm_teacher(kw: dict, expected: str) -> None:
    with pytest.raises(PlanError) as exc:
        plan_study(study(**kw))
    assert expected in str(exc.value)


def test_student_more_layers_allowed_with_random_init() -> None:
    assert plan_study(study(student={"layers": 8, "init": "random"}))
