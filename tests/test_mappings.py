"""Layer maps as written-out literals, and the learnable mapping."""

from __future__ import annotations

import math

import pytest
import torch

from kdgrid.errors import PlanError
from kdgrid.train.mappings import (
    LearnableMapping,
    attention_layer_map,
    first_last_layer_map,
    last_layer_map,
    layer_map,
    uniform_layer_map,
)

SHAPES = [(12, 4), (12, 3), (6, 2), (6, 3)]

UNIFORM = {(12, 4): [3, 6, 9, 12], (12, 3): [4, 8, 12], (6, 2): [3, 6], (6, 3): [2, 4, 6]}
LAST = {
    (12, 4): [None, None, None, 12],
    (12, 3): [None, None, 12],
    (6, 2): [None, 6],
    (6, 3): [None, None, 6],
}
# 1 + (m-1)(T-1)/(S-1), half up: 12→4: 1, 4.67, 8.33, 12; 12→3: 1, 6.5, 12; 6→3: 1, 3.5, 6
FIRST_LAST = {(12, 4): [1, 5, 8, 12], (12, 3): [1, 7, 12], (6, 2): [1, 6], (6, 3): [1, 4, 6]}


@pytest.mark.parametrize("shape", SHAPES)
def test_fixed_maps_literals(shape: tuple[int, int]) -> None:
    t, s = shape
    assert uniform_layer_map(t, s) == UNIFORM[shape]
    assert layer_map("uniform", t, s) == UNIFORM[shape]
    assert attention_layer_map(t, s) == UNIFORM[shape]
    assert last_layer_map(t, s) == LAST[shape]
    assert layer_map("last", t, s) == LAST[shape]
    assert first_last_layer_map(t, s) == FIRST_LAST[shape]
    assert layer_map("first_last", t, s) == FIRST_LAST[shape]


@pytest.mark.parametrize("shape", SHAPES)
def test_tinybert_indices_agree_with_one_based_maps(shape: tuple[int, int]) -> None:
    t, s = shape
    k = t // s
    # task_distill.py, attentions: new_teacher_atts = [teacher_atts[i * k + k - 1] for i in range(S)] (0-based list)
    att_zero_based = [i * k + k - 1 for i in range(s)]
    assert attention_layer_map(t, s) == [j + 1 for j in att_zero_based]
    # hidden states: new_teacher_reps = [teacher_reps[i * k] for i in range(S + 1)], reps[0] = embeddings,
    # so reps index j is the output of 1-based layer j; student reps[m] is student layer m.
    reps_index = [i * k for i in range(s + 1)]
    assert reps_index[0] == 0  # embeddings <- embeddings
    assert uniform_layer_map(t, s) == reps_index[1:]


def test_first_last_other_shapes() -> None:
    assert first_last_layer_map(12, 6) == [1, 3, 5, 8, 10, 12]
    assert first_last_layer_map(12, 9) == [1, 2, 4, 5, 7, 8, 9, 11, 12]  # 2.375, 3.75, ... half up
    assert first_last_layer_map(12, 1) == [12]
    assert first_last_layer_map(12, 12) == list(range(1, 13))


def test_explicit_map_validation() -> None:
    assert layer_map("explicit", 12, 4, [2, 5, 9, 12]) == [2, 5, 9, 12]
    with pytest.raises(PlanError, match=r"allowed: 1\.\.12"):
        layer_map("explicit", 12, 4, [0, 5, 9, 13])
    with pytest.raises(PlanError, match="student has 4 layers"):
        layer_map("explicit", 12, 4, [2, 5])
    with pytest.raises(PlanError):
        layer_map("explicit", 12, 4, None)


def test_bad_kinds_and_shapes() -> None:
    with pytest.raises(PlanError, match="at most as many layers"):
        uniform_layer_map(3, 4)
    with pytest.raises(PlanError):
        layer_map("learnable", 12, 4)
    with pytest.raises(PlanError, match="allowed"):
        layer_map("diagonalish", 12, 4)
    with pytest.raises(PlanError):
        last_layer_map(0, 2)
    assert uniform_layer_map(6, 4) == [1, 2, 3, 4]  # floor k = 1, like TinyBERT's int(T / S)


@pytest.mark.parametrize("init", ["uniform", "diagonal", "random"])
def test_learnable_weights_rows_sum_to_one(init: str) -> None:
    lm = LearnableMapping(12, 4, init, seed=3)  # type: ignore[arg-type]
    w = lm.weights()
    assert w.shape == (4, 12)
    assert torch.allclose(w.sum(-1), torch.ones(4), atol=1e-6)
    assert (w > 0).all()


def test_learnable_inits() -> None:
    w = LearnableMapping(12, 4, "uniform").weights()
    assert torch.allclose(w, torch.full((4, 12), 1 / 12))
    d = LearnableMapping(12, 4, "diagonal").weights()
    assert d.argmax(-1).tolist() == [2, 5, 8, 11]  # 0-based of [3, 6, 9, 12]
    assert torch.allclose(d.max(-1).values, torch.full((4,), 0.9), atol=1e-6)
    assert torch.allclose(d[0, 0], torch.tensor(0.1 / 11), atol=1e-6)
    r1, r2 = LearnableMapping(6, 2, "random", seed=1), LearnableMapping(6, 2, "random", seed=1)
    r3 = LearnableMapping(6, 2, "random", seed=2)
    assert torch.equal(r1.logits, r2.logits) and not torch.equal(r1.logits, r3.logits)
    with pytest.raises(PlanError):
        LearnableMapping(6, 2, "peaked")  # type: ignore[arg-type]


def test_learnable_mix_is_weighted_sum_and_grads_reach_logits() -> None:
    lm = LearnableMapping(3, 2, "random", seed=0)
    xs = [torch.full((2, 2), float(k + 1)) for k in range(3)]  # layer k has value k+1
    w = lm.weights().detach()
    for m in (1, 2):
        expected = sum(w[m - 1, k].item() * (k + 1) for k in range(3))
        assert torch.allclose(lm.mix(xs, m), torch.full((2, 2), expected), atol=1e-6)
    lm.mix(xs, 2).sum().backward()
    assert lm.logits.grad is not None
    assert lm.logits.grad[1].abs().sum() > 0 and lm.logits.grad[0].abs().sum() == 0
    with pytest.raises(PlanError):
        lm.mix(xs, 3)
    with pytest.raises(PlanError):
        lm.mix(xs[:2], 1)


def test_learnable_mix_log_probs_is_log_of_mixture() -> None:
    lm = LearnableMapping(3, 1, "random", seed=4)
    g = torch.Generator().manual_seed(0)
    ps = [torch.softmax(torch.randn(2, 5, generator=g), -1) for _ in range(3)]
    w = lm.weights()[0].tolist()
    expected = [[math.log(sum(w[k] * ps[k][b, j].item() for k in range(3))) for j in range(5)] for b in range(2)]
    got = lm.mix_log_probs([p.log() for p in ps], 1)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)
    assert torch.allclose(got.exp().sum(-1), torch.ones(2), atol=1e-5)


# --------------------------------------------------------------------------- a planted mapping is recovered


def _planted_run(init: str, lr: float, epochs: int, steps: int, layers: list[int] | None = None) -> torch.Tensor:
    """A 4-layer teacher, a student copied from its layers 1 and 2 and held fixed: student layer m's hidden
    states ARE teacher layer m's, so Hid-Seq through a learnable mapping is 0 exactly at s1->t1, s2->t2.
    Trained by the real stage loop (optimiser groups, schedules, clipping); returns the final weights [2, 4]."""
    from conftest import tiny_bert, tiny_objective

    from kdgrid.study.schema import Student
    from kdgrid.train.loop import StageSettings, TeacherOutputs, train_stage
    from kdgrid.train.models import build_student

    teacher = tiny_bert(4, seed=0, vocab=50, dropout=0.0, max_positions=32).eval()
    student = build_student(teacher, Student(layers=2, init_layers=[1, 2]), seed=0)
    for p in student.parameters():
        p.requires_grad_(False)
    mapping: dict = {"kind": "learnable", "init": init, "lr": lr, "schedule": "constant"}
    if layers is not None:
        mapping["layers"] = layers
    dist = tiny_objective(
        {"intermediate": {"hidden": "seq", "alpha": 0.0}, "mapping": mapping}, "intermediate", n_train=64
    )
    gen = torch.Generator().manual_seed(1)
    data = [
        {
            "input_ids": torch.randint(5, 50, (8, 12), generator=gen),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
            "labels": torch.zeros(8, dtype=torch.long),
            "indices": torch.arange(8),
        }
        for _ in range(steps)
    ]
    settings = StageSettings(
        stage="intermediate",
        epochs=epochs,
        lr=1e-3,
        weight_decay=0.0,
        warmup_ratio=0.1,
        max_grad_norm=1.0,
        task="cola",
        evaluate_each_epoch=False,
        evaluate_last_epoch=False,
    )
    train_stage(
        student,
        dist,
        TeacherOutputs(teacher, dist, torch.device("cpu"), None),
        lambda epoch: data,
        steps,
        [],
        settings,
        torch.device("cpu"),
    )
    w = dist.mapping_weights()
    assert w is not None
    return w


@pytest.mark.parametrize(("init", "layers"), [("uniform", None), ("fixed", [3, 4])])
def test_learnable_mapping_recovers_a_planted_mapping(init: str, layers: list[int] | None) -> None:
    """From uniform weights, and from a confident start on the wrong layers (0.9 on 3 and 4), 90 steps at
    the default lr 0.1 with the mapping's own constant schedule end one-hot on the planted layers 1, 2."""
    w = _planted_run(init, lr=0.1, epochs=3, steps=30, layers=layers)
    assert w.argmax(dim=1).tolist() == [0, 1]
    assert float(w.max(dim=1).values.min()) > 0.9


def test_old_mapping_budget_cannot_leave_uniform() -> None:
    """The budget of the first -cpu studies (lr 0.01, 25 steps): Adam moves a logit at most ~lr per step, so
    no teacher layer can get much past exp(0.5)/(exp(0.5) + 3 exp(-0.5)) = 0.38 of the weight."""
    w = _planted_run("uniform", lr=0.01, epochs=1, steps=25)
    assert w.argmax(dim=1).tolist() == [0, 1]  # the direction is right ...
    assert float(w.max()) < 0.4  # ... but it never gets far
