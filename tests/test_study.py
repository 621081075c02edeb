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
