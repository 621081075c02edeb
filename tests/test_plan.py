"""Grid expansion: counts, filters, collapsing of factors without effect, stable run ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

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


def test_labels_filters_and_duplicates_see_a_level_as_its_number() -> None:
    # A study built in Python (the loader already reads 5e-5 as a float) with a numeric level spelled as text.
    runs = expand(study(seeds=1, grid={"train.lr": ["5e-5", 1e-4]}, exclude=[{"train.lr": 1e-4}]))
    assert [r.cell for r in runs] == ["train.lr=5e-05"]
    assert runs[0].factors == {"train.lr": "5e-05"} and runs[0].config.train.lr == 5e-5
    with pytest.raises(ValidationError, match=r"grid factor 'train.lr' has duplicate levels \['5e-5', 5e-05\]"):
        study(grid={"train.lr": ["5e-5", 0.00005]})
    with pytest.raises(ValidationError, match="duplicate levels"):
        study(grid={"objective.prediction.beta": [1, 1.0]})
    # a text level of a text field stays text
    assert expand(study(seeds=1, grid={"teacher.model": ["minilm-l6"]}))[0].factors == {"teacher.model": "minilm-l6"}


LAYER_LOSS = {"intermediate": {"attention": "mse", "hidden": "seq"}}


@pytest.mark.parametrize(
    ("epochs", "joint_epochs"),
    [(3, 3), ({"intermediate": 3, "prediction": 3}, 3), ({"intermediate": 2, "prediction": 4}, 4)],
)
def test_a_joint_level_over_a_two_stage_base_trains_the_prediction_stage_epochs(
    epochs: object, joint_epochs: int
) -> None:
    # A joint run has no stage 1: it takes the base's prediction-stage epochs (one number written for both stages
    # is that number), so it is the same run as the joint study written with that number.
    grid = {"train.schedule": ["joint", "two_stage"]}
    runs = expand(study(seeds=1, objective=LAYER_LOSS, train={"schedule": "two_stage", "epochs": epochs}, grid=grid))
    by_schedule = {r.config.train.schedule: r for r in runs}
    assert by_schedule["joint"].config.train.epochs == joint_epochs
    assert by_schedule["joint"].config_data()["train"]["epochs"] == joint_epochs
    plain = expand(study(seeds=1, objective=LAYER_LOSS, train={"epochs": joint_epochs}))
    assert by_schedule["joint"].run_id == plain[0].run_id
    stages = by_schedule["two_stage"].config.train.epochs
    assert not isinstance(stages, int) and (stages.intermediate, stages.prediction) == (
        (epochs, epochs) if isinstance(epochs, int) else (epochs["intermediate"], epochs["prediction"])
    )


def test_a_joint_variant_over_a_two_stage_base_and_per_stage_factors() -> None:
    base = {"schedule": "two_stage", "epochs": {"intermediate": 2, "prediction": 4}}
    runs = expand(study(seeds=1, objective=LAYER_LOSS, train=base, variants={"s": {"j": {"train.schedule": "joint"}}}))
    assert [r.config.train.epochs for r in runs] == [4]
    # a factor over the prediction stage's epochs reaches the joint cells; one over stage 1 cannot change them
    runs = expand(
        study(
            seeds=1,
            objective=LAYER_LOSS,
            train=base,
            grid={"train.schedule": ["joint"], "train.epochs.prediction": [1, 5], "train.epochs.intermediate": [1, 2]},
        )
    )
    assert [r.config.train.epochs for r in runs] == [1, 1, 5, 5]
    assert len({r.run_id for r in runs}) == 2


def test_per_stage_epochs_written_with_a_joint_base_are_still_refused() -> None:
    with pytest.raises(ValidationError, match="use one integer with schedule 'joint'"):
        study(train={"schedule": "joint", "epochs": {"intermediate": 2, "prediction": 4}})
    with pytest.raises(ValidationError, match="use one integer with schedule 'joint'"):
        study(train={"epochs": {"intermediate": 2, "prediction": 4}})


def test_a_filter_matches_a_level_by_its_number() -> None:
    # exclude's 0 is the level written 0.0 (the cell's level is the text "0.0"); include's 1e-4 is 0.0001
    grid = {"objective.intermediate.alpha": [0.0, 0.5], "train.lr": [0.0001, 2e-5]}
    runs = expand(
        study(
            seeds=1,
            objective=LAYER_LOSS,
            grid=grid,
            exclude=[{"objective.intermediate.alpha": 0}],
            include=[{"train.lr": 1e-4}],
        )
    )
    assert [r.cell for r in runs] == ["objective.intermediate.alpha=0.5, train.lr=0.0001"]
    # text is still compared as text
    runs = expand(study(seeds=1, grid={"teacher.model": ["minilm-l6"]}, exclude=[{"teacher.model": "minilm"}]))
    assert len(runs) == 1
