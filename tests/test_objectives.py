"""DistillObjective: composition of the terms, every combination runs and backprops."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
import torch
from conftest import tiny_bert
from transformers import BertForSequenceClassification

from kdgrid.errors import KdgridError, PlanError
from kdgrid.study.schema import Objective
from kdgrid.train.capture import attention_scores, capture_qkv
from kdgrid.train.losses import (
    attention_kl,
    attention_mse,
    hard_loss,
    hidden_mse,
    kd_soft_loss,
    value_relation_kl,
)
from kdgrid.train.objectives import Captured, DistillObjective, check_compatible
from kdgrid.train.terms import HiddenContrast

N_TRAIN = 16


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    return tiny_bert(4, 4, 32, seed=0, vocab=100, num_labels=3, dropout=0.0).eval()


@pytest.fixture(scope="module")
def narrow() -> BertForSequenceClassification:
    """2 layers, 2 heads, width 16: differs from the teacher in depth, heads and width."""
    return tiny_bert(2, 2, 16, seed=1, vocab=100, num_labels=3, dropout=0.0)


@pytest.fixture(scope="module")
def same_heads() -> BertForSequenceClassification:
    """2 layers, 4 heads, width 32."""
    return tiny_bert(2, 4, 32, seed=2, vocab=100, num_labels=3, dropout=0.0)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 3:] = 0
    return {
        "ids": torch.randint(0, 100, (3, 6), generator=g),
        "mask": mask,
        "labels": torch.tensor([0, 2, 1]),
        "indices": torch.tensor([0, 5, 11]),
    }


def run(
    model: BertForSequenceClassification, batch: dict[str, torch.Tensor], layers: set[int] | None = None
) -> Captured:
    n = model.config.num_hidden_layers
    with capture_qkv(model, layers if layers is not None else range(1, n + 1)) as qkv:
        out = model(batch["ids"], attention_mask=batch["mask"], output_hidden_states=True)
    return Captured(out.logits, out.hidden_states, dict(qkv), batch["mask"])


@pytest.fixture(scope="module")
def teacher_out(teacher, batch) -> Captured:
    with torch.no_grad():
        return run(teacher, batch)


def objective(**inter: Any) -> Objective:
    mapping = inter.pop("mapping", "uniform")
    prediction = inter.pop("prediction", {})
    return Objective.model_validate({"prediction": prediction, "intermediate": inter, "mapping": mapping})


def build(obj: Objective, student, stage: str = "joint", is_regression: bool = False) -> DistillObjective:
    c, t = student.config, 4
    return DistillObjective(
        obj,
        stage=stage,  # type: ignore[arg-type]
        is_regression=is_regression,
        n_teacher_layers=t,
        n_student_layers=c.num_hidden_layers,
        teacher_hidden=32,
        student_hidden=c.hidden_size,
        teacher_heads=4,
        student_heads=c.num_attention_heads,
        num_train_examples=N_TRAIN,
        seed=0,
    )


# Full product over the losses for the three kinds of pairing (one map, one pair, mixture); the other
# fixed maps only change the index list, so they get the richest combination each.
COMBOS: list[tuple[str, str, str, Any]] = [
    *itertools.product(
        ["none", "mse", "kl"], ["none", "cls", "seq", "cls_contrast"], ["none", "kl"], ["uniform", "last", "learnable"]
    ),
    ("kl", "seq", "kl", "first_last"),
    ("mse", "cls_contrast", "kl", "first_last"),
    ("kl", "seq", "kl", {"kind": "explicit", "layers": [1, 3]}),
    ("mse", "cls_contrast", "kl", {"kind": "explicit", "layers": [1, 3]}),
]


@pytest.mark.parametrize(
    ("attention", "hidden", "value", "mapping"), COMBOS, ids=lambda x: x if isinstance(x, str) else "explicit"
)
def test_every_combination_runs_and_backprops(
    attention: str, hidden: str, value: str, mapping: Any, narrow, teacher_out, batch
) -> None:
    inter = {"attention": attention, "hidden": hidden, "value": value, "head_match": "mean", "alpha": 0.5}
    embedding = 0.5 if (attention, hidden, value) in {("none", "none", "none"), ("kl", "seq", "kl")} else 0.0
    obj = objective(**inter, embedding=embedding, mapping=mapping, prediction={"beta": 0.5, "temperature": 2.0})
    dist = build(obj, narrow)
    narrow.zero_grad()
    out = dist(run(narrow, batch), teacher_out, batch["labels"], batch["indices"])

    expected = {"loss", "hard", "soft"}
    expected |= {"att"} if attention != "none" else set()
    expected |= {"val"} if value != "none" else set()
    expected |= {"hid"} if hidden in ("cls", "seq") else set()
    expected |= {"contrast"} if hidden == "cls_contrast" else set()
    expected |= {"emb"} if embedding else set()
    assert set(out) == expected
    assert torch.isfinite(out["loss"]) and all(torch.isfinite(v) for v in out.values())
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")

    out["loss"].backward()
    grads = [p.grad for p in narrow.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    if dist.proj is not None:
        assert dist.proj.weight.grad is not None and dist.proj.weight.grad.abs().sum() > 0
    layer_terms = expected & {"att", "val", "hid", "contrast"}
    if dist.learnable is not None and layer_terms:
        assert dist.learnable.logits.grad is not None and dist.learnable.logits.grad.abs().sum() > 0
    contrast = [t for t in dist.terms if isinstance(t, HiddenContrast)]
    if contrast:
        assert contrast[0].contrast.embed_s.weight.grad is not None

    # the intermediate stage of the same objective runs alone
    if layer_terms or embedding:
        stage1 = build(obj, narrow, stage="intermediate")
        out1 = stage1(run(narrow, batch), teacher_out, None, batch["indices"])
        assert set(out1) == expected - {"hard", "soft"}
        out1["loss"].backward()


def test_composition_matches_the_formula(same_heads, teacher_out, batch) -> None:
    obj = objective(
        attention="mse",
        value="kl",
        hidden="seq",
        embedding=0.7,
        alpha=0.4,
        weight=2.0,
        prediction={"beta": 0.3, "temperature": 2.0},
    )
    s = run(same_heads, batch)
    t, mask = teacher_out, batch["mask"]
    joint = build(obj, same_heads)
    out = joint(s, t, batch["labels"], batch["indices"])

    pairs = [(1, 2), (2, 4)]  # uniform 4 -> 2
    with torch.no_grad():  # references only
        att = sum(
            attention_mse(attention_scores(*s.qkv[m][:2]), attention_scores(*t.qkv[n][:2]), mask) for m, n in pairs
        )
        val = sum(value_relation_kl(s.qkv[m][2], t.qkv[n][2], mask) for m, n in pairs)
        hid = sum(hidden_mse(s.hidden_states[m], t.hidden_states[n], None, mask, False) for m, n in pairs)  # W_h = I
        emb = hidden_mse(s.hidden_states[0], t.hidden_states[0], None, mask, False)
        hard = hard_loss(s.logits, batch["labels"], False)
        soft = kd_soft_loss(s.logits, t.logits, 2.0)
    for key, ref in {"att": att, "val": val, "hid": hid, "emb": emb, "hard": hard, "soft": soft}.items():
        assert out[key].item() == pytest.approx(float(ref), rel=1e-5), key
    layer = 0.4 * (att + val) + 0.6 * hid + 0.7 * emb
    assert out["loss"].item() == pytest.approx(float(0.7 * hard + 0.3 * soft + 2.0 * layer), rel=1e-5)

    inter = build(obj, same_heads, stage="intermediate")(s, t, None, None)
    assert set(inter) == {"loss", "att", "val", "hid", "emb"}
    assert inter["loss"].item() == pytest.approx(float(layer), rel=1e-5)  # no 'weight' in stage 1
    pred = build(obj, same_heads, stage="prediction")(s, t, batch["labels"], None)
    assert set(pred) == {"loss", "hard", "soft"}
    assert pred["loss"].item() == pytest.approx(float(0.7 * hard + 0.3 * soft), rel=1e-5)


def test_att_kl_composition_and_last_mapping(same_heads, teacher_out, batch) -> None:
    obj = objective(attention="kl", hidden="cls", alpha=0.25, mapping="last", prediction={"beta": 1.0})
    s = run(same_heads, batch)
    out = build(obj, same_heads)(s, teacher_out, None, None)
    mask = batch["mask"]
    with torch.no_grad():  # references only
        att = attention_kl(*s.qkv[2][:2], *teacher_out.qkv[4][:2], mask)
        hid = hidden_mse(s.hidden_states[2], teacher_out.hidden_states[4], None, mask, True)
        soft = kd_soft_loss(s.logits, teacher_out.logits, 1.0)
    assert set(out) == {"loss", "soft", "att", "hid"}  # beta = 1: no hard loss, labels not needed
    assert out["loss"].item() == pytest.approx(float(soft + 0.25 * att + 0.75 * hid), rel=1e-5)


def test_zero_when_student_is_teacher(teacher, teacher_out, batch) -> None:
    for attention in ("mse", "kl"):
        obj = objective(attention=attention, value="kl", hidden="seq", embedding=1.0, prediction={"beta": 1.0})
        dist = DistillObjective(
            obj, stage="joint", is_regression=False, n_teacher_layers=4, n_student_layers=4,
            teacher_hidden=32, student_hidden=32, teacher_heads=4, student_heads=4, num_train_examples=N_TRAIN,
        )  # fmt: skip
        out = dist(teacher_out, teacher_out, None, None)
        for key in ("loss", "soft", "att", "val", "hid", "emb"):
            assert out[key].item() == pytest.approx(0.0, abs=1e-6), (attention, key)


def test_peaked_learnable_mapping_equals_explicit(narrow, teacher_out, batch) -> None:
    s = run(narrow, batch)
    for attention in ("mse", "kl"):
        common = dict(attention=attention, value="kl", hidden="seq", head_match="mean", prediction={"beta": 1.0})
        fixed = build(objective(**common, mapping={"kind": "explicit", "layers": [3, 1]}), narrow)
        learn = build(objective(**common, mapping="learnable"), narrow)
        learn.proj.load_state_dict(fixed.proj.state_dict())  # type: ignore[union-attr]
        with torch.no_grad():
            learn.learnable.logits.zero_()  # type: ignore[union-attr]
            learn.learnable.logits[0, 2] = 60.0  # type: ignore[union-attr]
            learn.learnable.logits[1, 0] = 60.0  # type: ignore[union-attr]
        a, b = fixed(s, teacher_out, None, None), learn(s, teacher_out, None, None)
        for key in ("att", "val", "hid", "loss"):
            assert a[key].item() == pytest.approx(b[key].item(), rel=1e-4, abs=1e-6), (attention, key)


def test_learnable_mapping_weights_and_param_groups(narrow) -> None:
    obj = objective(attention="kl", hidden="seq", head_match="mean", mapping={"kind": "learnable", "lr": 0.05})
    dist = build(obj, narrow)
    w = dist.mapping_weights()
    assert w is not None and w.shape == (2, 4)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    groups = dist.param_groups(1e-4)
    assert [g["lr"] for g in groups] == [1e-4, 0.05]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"] == [dist.learnable.logits]  # type: ignore[union-attr]
    assert dist.proj is not None and dist.proj.weight in groups[0]["params"]
    assert build(objective(attention="kl", head_match="mean"), narrow).mapping_weights() is None
    assert build(objective(), narrow).param_groups(1e-4) == []


def test_layers_needed(narrow) -> None:
    d = build(objective(attention="kl", head_match="mean"), narrow)
    assert d.teacher_layers_needed() == {2, 4} and d.student_layers_needed() == {1, 2}
    assert d.needs_qkv() and not d.needs_hidden_states()
    d = build(objective(hidden="cls", mapping="last"), narrow)
    assert d.teacher_layers_needed() == {4} and d.student_layers_needed() == {2}
    assert d.needs_hidden_states() and not d.needs_qkv()
    d = build(objective(hidden="seq", mapping="learnable"), narrow)
    assert d.teacher_layers_needed() == {1, 2, 3, 4} and d.student_layers_needed() == {1, 2}
    d = build(objective(embedding=1.0), narrow)
    assert d.teacher_layers_needed() == set() and d.needs_hidden_states() and not d.needs_qkv()
    d = build(
        objective(attention="mse", hidden="seq", head_match="mean", mapping="learnable"), narrow, stage="prediction"
    )
    assert d.teacher_layers_needed() == set() and not d.needs_qkv() and not d.needs_hidden_states()
    assert d.mapping_weights() is None and d.param_groups(1e-4) == []  # stage 2 owns no mapping / W_h
    # alpha = 1: the hidden term has weight 0 and is not computed; alpha = 0 likewise for attention
    d = build(objective(attention="mse", hidden="seq", head_match="mean", alpha=1.0), narrow)
    assert d.needs_qkv() and not d.needs_hidden_states()
    d = build(objective(attention="mse", hidden="seq", head_match="mean", alpha=0.0), narrow)
    assert not d.needs_qkv() and d.needs_hidden_states()
    # weight 0 in a joint run: no intermediate terms at all
    d = build(objective(attention="mse", head_match="mean", weight=0.0), narrow)
    assert not d.needs_qkv() and d.teacher_layers_needed() == set()


def test_regression_uses_mse(narrow, teacher_out, batch) -> None:
    s = run(narrow, batch)
    s = dataclasses.replace(s, logits=s.logits[:, :1])
    t = dataclasses.replace(teacher_out, logits=teacher_out.logits[:, :1])
    y = torch.tensor([0.5, 1.0, 4.0])
    out = build(objective(prediction={"beta": 0.5, "temperature": 3.0}), narrow, is_regression=True)(s, t, y, None)
    soft = ((s.logits - t.logits) ** 2).mean()
    hard = ((s.logits[:, 0] - y) ** 2).mean()
    assert out["soft"].item() == pytest.approx(soft.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((0.5 * soft + 0.5 * hard).item(), rel=1e-5)


def test_compatibility_errors(narrow, teacher_out, batch) -> None:
    for inter in ({"attention": "mse"}, {"attention": "kl"}, {"value": "kl"}):
        with pytest.raises(PlanError, match="head_match"):
            check_compatible(
                objective(**inter), teacher_heads=4, student_heads=2, n_teacher_layers=4, n_student_layers=2
            )
        with pytest.raises(PlanError, match="head_match"):
            build(objective(**inter), narrow)
        check_compatible(objective(**inter, head_match="mean"), 4, 2, 4, 2)
        check_compatible(objective(**inter, alpha=0.0), 4, 2, 4, 2)  # attention has weight 0
        check_compatible(objective(**inter), 4, 4, 4, 2)
    with pytest.raises(PlanError, match=r"1\.\.4"):
        check_compatible(objective(hidden="cls", mapping={"kind": "explicit", "layers": [1, 7]}), 4, 4, 4, 2)
    with pytest.raises(PlanError):
        check_compatible(objective(hidden="seq", mapping="uniform"), 4, 4, 2, 4)
    # no intermediate loss: the (default uniform) mapping is irrelevant, a deeper student is fine
    check_compatible(objective(), 4, 4, 2, 4)
    check_compatible(objective(attention="mse", weight=0.0), 4, 2, 2, 4)
    assert DistillObjective.check_compatible is check_compatible
    with pytest.raises(PlanError, match="stage 'intermediate'"):
        build(objective(prediction={"beta": 0.5}), narrow, stage="intermediate")
    with pytest.raises(PlanError, match="unknown stage"):
        build(objective(), narrow, stage="both")


def test_runtime_errors(narrow, teacher_out, batch) -> None:
    s = run(narrow, batch)
    with pytest.raises(KdgridError, match="labels"):
        build(objective(prediction={"beta": 0.5}), narrow)(s, teacher_out, None, None)
    with pytest.raises(KdgridError, match="indices"):
        build(objective(hidden="cls_contrast"), narrow)(s, teacher_out, None, None)
    partial = run(narrow, batch, layers={1})
    with pytest.raises(KdgridError, match="not captured"):
        build(objective(attention="kl", head_match="mean"), narrow)(partial, teacher_out, None, None)
    no_hidden = dataclasses.replace(s, hidden_states=None)
    with pytest.raises(KdgridError, match="hidden states"):
        build(objective(hidden="seq"), narrow)(no_hidden, teacher_out, None, None)


@pytest.mark.parametrize("attention", ["mse", "kl"])
def test_learnable_with_equal_heads_and_bf16_autocast(attention: str, same_heads, teacher_out, batch) -> None:
    obj = objective(attention=attention, value="kl", hidden="seq", embedding=0.3, mapping="learnable")
    dist = build(obj, same_heads)
    s = run(same_heads, batch)
    ref = dist(s, teacher_out, None, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s16 = run(same_heads, batch)
        low = dist(s16, teacher_out, None, None)
    assert low["loss"].dtype == torch.float32
    # attention/value terms are computed in float32 even under autocast: only the model's bf16 forward differs
    for key in ("att", "val"):
        assert low[key].item() == pytest.approx(ref[key].item(), rel=0.1), key
    low["loss"].backward()
    assert dist.learnable is not None and dist.learnable.logits.grad is not None
