"""Study files: valid ones load, every kind of bad input gives one line naming file:line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdgrid.errors import StudyError
from kdgrid.study import load_study


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(StudyError) as exc:
        load_study(write(tmp_path, text))
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_minimal_study_gets_defaults(tmp_path: Path) -> None:
    s = load_study(write(tmp_path, "name: s\ntasks: [cola]\n")).study
    assert s.seed_list == [0, 1, 2]
    assert s.teacher.model == "minilm-l6"
    assert s.objective.prediction.temperature == 1.0


def test_seed_list_kept_in_order(tmp_path: Path) -> None:
    s = load_study(write(tmp_path, "name: s\ntasks: [cola]\nseeds: [7, 3]\n")).study
    assert s.seed_list == [7, 3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: s\ntasks: [cola]\nfoo: 1\n", "study.yaml:3: foo: unknown key (allowed: name, description, teacher"),
        ("name: s\ntasks: [cola]\ntrain: {lr: fast}\n", "study.yaml:3: train.lr: Input should be a valid number"),
        ("name: s\ntasks: [cola]\ntrain: {lr: -1.0}\n", "study.yaml:3: train.lr: Input should be greater than 0"),
        ("name: s\ntasks: [cola]\ntrain: {epochs: 0}\n", "study.yaml:3: train.epochs: Input should be greater than 0"),
        (
            "name: s\ntasks: [cola]\ntrain: {batch_size: 0}\n",
            "study.yaml:3: train.batch_size: Input should be greater than 0",
        ),
        (
            "name: s\ntasks: [cola]\nobjective:\n  intermediate: {alpha: 1.5}\n",
            "study.yaml:4: objective.intermediate.alpha: Input should be less than or equal to 1",
        ),
        (
            "name: s\ntasks: [cola]\nobjective:\n  prediction: {beta: -0.1}\n",
            "study.yaml:4: objective.prediction.beta: Input should be greater than or equal to 0",
        ),
        (
            "name: s\ntasks: [cola]\nobjective:\n  prediction: {temperature: 0}\n",
            "study.yaml:4: objective.prediction.temperature: Input should be greater than 0",
        ),
        (
            "name: s\ntasks: [cola, qqq]\n",
            "study.yaml:2: tasks.1: 'qqq' is not allowed (allowed: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte)",
        ),
        (
            "name: s\ntasks: [cola]\nobjective:\n  intermediate: {attention: l1}\n",
            "study.yaml:4: objective.intermediate.attention: 'l1' is not allowed (allowed: none, mse, kl)",
        ),
        ("name: s\ntasks: [cola]\nseeds: [1, 2, 1]\n", "study.yaml:3: seeds: duplicate seeds [1]"),
        ("name: s\ntasks: []\n", "study.yaml:2: tasks: List should have at least 1 item"),
        (
            "name: s\ntasks: [cola]\ngrid:\n  train.lr: []\n",
            "study.yaml:4: grid.train.lr: List should have at least 1 item",
        ),
        (
            "name: s\ntasks: [cola]\nstudent: {hidden_size: 100, heads: 3}\n",
            "study.yaml:3: student: hidden_size 100 is not divisible by heads 3",
        ),
        ("name: s\ntasks: [cola\n", "study.yaml:3: not valid YAML"),
        ("- just\n- a list\n", "study.yaml:1: a study file must be a YAML mapping"),
    ],
)
def test_bad_study_files(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


def test_several_errors_are_counted_on_one_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "name: s\ntasks: [cola]\nfoo: 1\nbar: 2\n")
    assert msg.endswith("(and 1 more error in this file)")


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StudyError, match="cannot read study file"):
        load_study(p)


def test_yaml_tags_that_run_code_are_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "name: !!python/object/apply:os.system ['true']\ntasks: [cola]\n")
    assert "not valid YAML" in msg


def test_analysis_block_seed_defaults_on_and_is_a_bool(tmp_path: Path) -> None:
    assert load_study(write(tmp_path, "name: s\ntasks: [cola]\n")).study.analysis.block_seed is True
    off = load_study(write(tmp_path, "name: s\ntasks: [cola]\nanalysis: {block_seed: false}\n")).study
    assert off.analysis.block_seed is False
    assert "analysis.block_seed: Input should be a valid boolean" in error_of(
        tmp_path, "name: s\ntasks: [cola]\nanalysis: {block_seed: maybe}\n"
    )


def test_exponent_levels_without_a_dot_are_numbers(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 5e-5 and 1e3 as strings; a study reads them as YAML 1.2 does, as floats, so a cell's
    # label, a filter and a baseline see the number 5e-05 however it is written.
    s = load_study(
        write(
            tmp_path,
            "name: s\ntasks: [cola]\ngrid:\n  train.lr: [5e-5, 1E-4, 2.0e-5, 3e+2, 0.00007]\n"
            "  data.max_train_examples: [1e3]\nexclude:\n  - {train.lr: 1e-4}\nanalysis:\n  baseline: {train.lr: 5e-5}\n",
        )
    ).study
    assert s.grid["train.lr"] == [5e-5, 1e-4, 2e-5, 300.0, 7e-5]
    assert all(type(x) is float for x in s.grid["train.lr"])
    assert s.exclude == [{"train.lr": 1e-4}] and s.analysis.baseline == {"train.lr": 5e-5}
    # keys keep YAML 1.1 (a variant level may be named 1e-4) and ints stay ints
    s = load_study(
        write(tmp_path, "name: s\ntasks: [cola]\nseeds: 2\nvariants:\n  lr:\n    1e-4: {train.lr: 1e-4}\n")
    ).study
    assert list(s.variants["lr"]) == ["1e-4"] and s.variants["lr"]["1e-4"] == {"train.lr": 1e-4}
    assert s.seeds == 2


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ("[0.00005, 5e-5]", "study.yaml:4: grid.train.lr: levels '0.00005' and '5e-5' are the same number (5e-05)"),
        ("[1.0e-4, 2e-5, 1E-4]", "study.yaml:4: grid.train.lr: levels '1.0e-4' and '1E-4' are the same number"),
        ("[0.5, 0.5]", "study.yaml:4: grid.train.lr: level '0.5' is given twice"),
        ("\n    - 3e-4\n    - 0.0003", "study.yaml:6: grid.train.lr: levels '3e-4' and '0.0003' are the same number"),
    ],
)
def test_one_number_spelled_twice_in_a_factor_is_refused(tmp_path: Path, levels: str, expected: str) -> None:
    msg = error_of(tmp_path, f"name: s\ntasks: [cola]\ngrid:\n  train.lr: {levels}\n")
    assert f"/{expected}" in msg, msg


def test_an_int_and_a_float_level_of_one_number_are_the_same_level(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "name: s\ntasks: [cola]\ngrid:\n  objective.prediction.beta: [0, 1, 1.0]\n")
    assert "/study.yaml:4: grid.objective.prediction.beta: levels '1' and '1.0' are the same number" in msg


def test_per_stage_epochs_with_a_joint_schedule_in_one_block_name_the_line(tmp_path: Path) -> None:
    msg = error_of(
        tmp_path, "name: s\ntasks: [cola]\ntrain:\n  schedule: joint\n  epochs: {intermediate: 2, prediction: 3}\n"
    )
    assert msg.endswith("/study.yaml:5: train: epochs: use one integer with schedule 'joint' (allowed: int)")
