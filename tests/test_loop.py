"""The stage loop's bookkeeping and allocator setting (issue 18 item 3): the logged losses are the exact
means of the per-step loss values, and the malloc thresholds are set once, only where glibc is asked."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from conftest import tiny_bert, tiny_objective

from kdgrid.study.schema import Student
from kdgrid.train import optim
from kdgrid.train.loop import StageSettings, TeacherOutputs, _LossSums, train_stage
from kdgrid.train.models import build_student
from kdgrid.train.objectives import DistillObjective

CPU = torch.device("cpu")


def test_loss_sums_equal_python_float_sums_exactly() -> None:
    """float32 and bf16 terms (as under autocast), 200 steps: each mean is the Python-float sum / n, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    sums = _LossSums()
    ref: dict[str, float] = {"loss": 0.0, "kd": 0.0, "att": 0.0}
    for _ in range(200):
        terms = {
            "loss": torch.rand((), generator=gen) * 3,
            "kd": torch.rand((), generator=gen).to(torch.bfloat16),
            "att": torch.rand((), generator=gen) * 1e-4,
        }
        sums.add(terms)
        for k, v in terms.items():
            ref[k] += float(v)
    assert sums.means() == {k: v / 200 for k, v in ref.items()}


def test_loss_sums_refuse_a_changed_term_set() -> None:
    sums = _LossSums()
    sums.add({"loss": torch.tensor(1.0)})
    with pytest.raises(RuntimeError, match="loss terms changed"):
        sums.add({"loss": torch.tensor(1.0), "kd": torch.tensor(2.0)})
    assert _LossSums().means() == {}


class _Recording(DistillObjective):
    """The objective, recording each step's terms as Python floats (the reference of the logged means)."""

    steps: list[dict[str, float]]

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        terms = super().forward(*args, **kwargs)
        self.steps.append({k: float(v.detach()) for k, v in terms.items()})
        return terms


@pytest.mark.parametrize(
    "spec",
    [
        {"prediction": {"beta": 0.5, "temperature": 2.0}},
        {"prediction": {"beta": 1.0}, "intermediate": {"attention": "kl", "hidden": "seq", "alpha": 0.5}},
    ],
)
def test_train_stage_logs_the_exact_mean_of_each_term(spec: dict[str, Any]) -> None:
    teacher = tiny_bert(layers=4).eval()
    student = build_student(teacher, Student(layers=2, init="teacher_layers"), seed=0)
    objective = tiny_objective(spec, cls=_Recording, n_train=64)
    objective.steps = []
    gen = torch.Generator().manual_seed(1)
    data = [
        {
            "input_ids": torch.randint(5, 60, (8, 10), generator=gen),
            "attention_mask": torch.ones(8, 10, dtype=torch.long),
            "labels": torch.randint(0, 2, (8,), generator=gen),
            "indices": torch.arange(8),
        }
        for _ in range(5)
    ]
    settings = StageSettings(
        stage="joint",
        epochs=2,
        lr=1e-3,
        weight_decay=0.01,
        warmup_ratio=0.1,
        max_grad_norm=1.0,
        task="sst2",
        evaluate_each_epoch=False,
        evaluate_last_epoch=False,
    )
    rows, _ = train_stage(
        student, objective, TeacherOutputs(teacher, objective, CPU, None), lambda e: data, 5, [], settings, CPU
    )
    train = [r for r in rows if r["split"] == "train"]
    assert len(objective.steps) == 10 and len(objective.steps[0]) >= 2
    for epoch in (1, 2):
        steps = objective.steps[5 * (epoch - 1) : 5 * epoch]
        got = {r["name"]: r["value"] for r in train if r["epoch"] == epoch}
        want = {(k if k == "loss" else f"loss.{k}"): sum(s[k] for s in steps) / 5 for k in steps[0]}
        assert got == want


def test_keep_freed_memory_leaves_explicit_glibc_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optim, "_malloc_tuned", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert optim.keep_freed_memory() is False
    assert optim._malloc_tuned is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_sets_the_thresholds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("no glibc mallopt")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert optim.keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")  # set once per process: later calls keep it
    assert optim.keep_freed_memory() is True
