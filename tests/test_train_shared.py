"""The training path teacher fine-tuning and distillation share (kdgrid.train.optim, eval_batches/evaluate),
and what a process keeps between runs (loaded teachers, latency probes)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_bert, tiny_objective
from torch import nn

from kdgrid.study.schema import FineTune, Teacher
from kdgrid.train import evaluate as ev
from kdgrid.train import models, optim
from kdgrid.train.data import TokenizedSet, length_batches


class _Named(nn.Module):
    """Parameters named the way non-BERT models name them."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.layer_norm = nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.ones(()))  # 0-D
        self.table = nn.Parameter(torch.zeros(3, 4))


def test_one_weight_decay_rule_for_every_model() -> None:
    """No decay on biases, LayerNorm/layer_norm weights and any parameter with fewer than 2 dimensions."""
    model = _Named()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = optim.decay_groups(model, 0.1)
    assert {names[id(p)] for p in decay["params"]} == {"proj.weight", "table"}
    assert {names[id(p)] for p in no_decay["params"]} == {"proj.bias", "layer_norm.weight", "layer_norm.bias", "scale"}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)

    bert = tiny_bert()
    decayed = {n for n, p in bert.named_parameters() if optim.decays(n, p)}
    assert decayed and all(p.ndim == 2 for n, p in bert.named_parameters() if n in decayed)
    assert not any("LayerNorm" in n or "bias" in n for n in decayed)
    assert "bert.embeddings.word_embeddings.weight" in decayed


def test_student_and_teacher_optimisers_have_the_same_groups() -> None:
    """The loop's optimiser is the shared one plus the objective's groups, fused on this CPU where torch has it."""
    from kdgrid.train.loop import StageSettings, _optimizer

    student = tiny_bert()
    objective = tiny_objective(
        {"intermediate": {"hidden": "seq", "alpha": 0.0}, "mapping": {"kind": "learnable"}}, "intermediate"
    )
    settings = StageSettings("intermediate", 1, 1e-3, 0.01, 0.1, 1.0, "cola")
    s_opt = _optimizer(student, objective, settings)
    t_opt = optim.adamw(student, 1e-3, 0.01)
    for a, b in zip(s_opt.param_groups[:2], t_opt.param_groups, strict=True):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert a["weight_decay"] == b["weight_decay"]
    assert s_opt.param_groups[-1].get("schedule") == "constant"  # the mapping's own group follows
    assert s_opt.defaults["fused"] == t_opt.defaults["fused"] == optim.fused_supported(list(student.parameters()))


def test_warmup_then_linear_decay() -> None:
    # total 10, warm-up int(10 * 0.25) = 2 steps: (s + 1) / 2, then (10 - s) / 8.
    f = optim.warmup_decay_factor(10, 0.25)
    assert [f(s) for s in range(11)] == [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    g = optim.warmup_decay_factor(10, 0.0)  # no warm-up: decay from the first step
    assert g(0) == 1.0 and g(5) == 0.5
    opt = optim.adamw(_Named(), 1.0, 0.0, [{"params": [nn.Parameter(torch.ones(2))], "schedule": "warmup"}])
    sched = optim.warmup_decay(opt, 10, 0.25)
    lrs = []
    for _ in range(4):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs == [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [7 / 8, 7 / 8, 1.0]]


def test_teacher_fine_tuning_uses_the_shared_optimiser_and_evaluation(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, make_cola_dir: Callable[..., Path]
) -> None:
    calls: dict[str, list[Any]] = {"adamw": [], "warmup_decay": [], "eval_batches": []}
    for mod, name in ((optim, "adamw"), (optim, "warmup_decay"), (ev, "eval_batches")):
        real = getattr(mod, name)

        def spy(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            calls[_name].append(a)
            return _real(*a, **k)

        monkeypatch.setattr(mod, name, spy)
    data = str(make_cola_dir(tmp_path / "glue"))
    cfg = Teacher(model=str(tiny_model_dir), finetune=FineTune(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.05))
    rec = models.finetune_teacher("cola", cfg, data, 32, tmp_path / "cache", "cpu")
    assert rec.trained and rec.steps == 5
    (model, lr, wd), (_, total, ratio) = calls["adamw"][0], calls["warmup_decay"][0]
    assert (lr, wd, total, ratio) == (1e-3, 0.05, 5, 0.1) and model.config.num_labels == 2
    assert len(calls["eval_batches"]) == 1 and len(calls["eval_batches"][0][0]) == rec.n_dev


def _lengths_set(lengths: list[int]) -> TokenizedSet:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, size=int(offsets[-1])).astype(np.int32)
    labels = rng.integers(0, 2, size=len(lengths)).astype(np.int64)
    return TokenizedSet(ids, offsets, None, labels, np.arange(len(lengths)))


def test_eval_batches_cover_every_row_once_within_the_budget() -> None:
    lengths = [3, 30, 7, 12, 30, 1, 9, 22, 5, 16] * 5
    data = _lengths_set(lengths)
    batches = ev.eval_batches(data, 0, "cpu", max_rows=8, max_tokens=64)
    seen = torch.cat([b["indices"] for b in batches]).tolist()
    assert sorted(seen) == list(range(len(lengths)))
    for b in batches:
        rows, width = b["input_ids"].shape
        assert rows <= 8 and (rows * width <= 64 or rows == 1)
        assert width == max(lengths[i] for i in b["indices"].tolist())  # padded to its own longest row
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    assert [len(x) for x in length_batches(np.array(lengths), 8, 64)] == [len(b["indices"]) for b in batches]


def test_evaluate_on_length_batches_equals_one_row_at_a_time() -> None:
    """Token-budget batches score the same as unpadded single rows (logits to float rounding, metrics equal)."""
    from kdgrid.train.data import Collator

    model = tiny_bert().eval()
    data = _lengths_set([3, 30, 7, 12, 30, 1, 9, 22, 5, 16] * 3)
    collate = Collator(0)
    single = [collate([data[i]]) for i in range(len(data))]
    batched = ev.eval_batches(data, 0, "cpu", max_tokens=128)
    cpu = torch.device("cpu")
    lo_one, y_one = ev.predict(model, single, cpu)
    lo_b, y_b = ev.predict(model, batched, cpu)
    order = torch.cat([b["indices"] for b in batched]).numpy()
    np.testing.assert_allclose(lo_b, lo_one[order], rtol=0, atol=1e-5)
    assert np.array_equal(y_b, y_one[order])
    assert ev.evaluate(model, batched, "cola", cpu) == ev.evaluate(model, single, "cola", cpu)


def test_latency_probe_runs_once_per_shape() -> None:
    ev.clear_speed_cache()
    fast: dict[str, Any] = {"warmup": 0, "min_repeats": 1, "min_seconds": 0.0, "seq_len": 16}
    cpu = torch.device("cpu")
    a, b, wide = tiny_bert(), tiny_bert(), tiny_bert(hidden=16)
    with torch.no_grad():
        b.classifier.weight.add_(1.0)  # other weights, same shape
    first = ev.inference_speed(a, vocab_size=60, device=cpu, **fast)
    again = ev.inference_speed(b, vocab_size=60, device=cpu, **fast)
    assert first["bench_reused"] == 0.0 and again["bench_reused"] == 1.0
    assert {k: v for k, v in again.items() if k != "bench_reused"} == {
        k: v for k, v in first.items() if k != "bench_reused"
    }
    assert ev.inference_speed(wide, vocab_size=60, device=cpu, **fast)["bench_reused"] == 0.0
    assert ev.inference_speed(a, vocab_size=60, device=cpu, batch_size=8, **fast)["bench_reused"] == 0.0
    assert ev.inference_speed(a, vocab_size=60, device=cpu, reuse=False, **fast)["bench_reused"] == 0.0
    ev.clear_speed_cache()
    assert ev.inference_speed(a, vocab_size=60, device=cpu, **fast)["bench_reused"] == 0.0
    ev.clear_speed_cache()


def test_a_process_keeps_its_loaded_teacher_and_tokenized_splits(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, make_cola_dir: Callable[..., Path]
) -> None:
    data = str(make_cola_dir(tmp_path / "glue"))
    cfg = Teacher(model=str(tiny_model_dir), finetune=FineTune(epochs=1, batch_size=8))
    rec = models.finetune_teacher("cola", cfg, data, 32, tmp_path / "cache", "cpu")
    models.clear_loaded_teachers()
    loads: list[str] = []
    real = models.load_teacher

    def counting(record: Any, *a: Any, **k: Any) -> Any:
        loads.append(record.path)
        return real(record, *a, **k)

    monkeypatch.setattr(models, "load_teacher", counting)
    try:
        first = models.loaded_teacher(rec, "cpu")
        assert not any(p.requires_grad for p in first.model.parameters()) and not first.model.training
        train = first.tokenized("cola", "train", data, 32, tmp_path / "cache" / "tokenized")
        again = models.loaded_teacher(rec, "cpu")
        assert again is first and loads == [rec.path]
        assert again.tokenized("cola", "train", data, 32, tmp_path / "cache" / "tokenized") is train
        assert again.tokenized("cola", "train", data, 16, tmp_path / "cache" / "tokenized") is not train
        # A teacher retrained under the same key (a new folder) is loaded again, and replaces the old one.
        models.loaded_teacher(models.TeacherRecord.from_json({**rec.to_json(), "created": "later"}), "cpu")
        assert len(loads) == 2 and len(models._LOADED) == 1
        # So is a folder rewritten within the same second (same record, another teacher.json).
        models.loaded_teacher(rec, "cpu")
        meta = Path(rec.path) / "teacher.json"
        os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 1))
        models.loaded_teacher(rec, "cpu")
        assert len(loads) == 4
        monkeypatch.setattr(models, "KEEP_TEACHERS", 0)
        models.clear_loaded_teachers()
        models.loaded_teacher(rec, "cpu")
        models.loaded_teacher(rec, "cpu")
        assert len(loads) == 6 and not models._LOADED
    finally:
        models.clear_loaded_teachers()


def test_students_built_from_a_kept_teacher_are_the_same(
    tmp_path: Path, tiny_model_dir: Path, make_cola_dir: Callable[..., Path]
) -> None:
    """Reusing the loaded teacher changes nothing a run computes: two runs of one process, and a run in a
    fresh process state, give the same metrics (timings aside)."""
    from kdgrid.plan import expand
    from kdgrid.study.schema import Study
    from kdgrid.train.run import run_one

    data = make_cola_dir(tmp_path / "glue", n_train=32, n_dev=8)
    study = Study.model_validate(
        {
            "name": "keep",
            "tasks": ["cola"],
            "seeds": [0],
            "teacher": {"model": str(tiny_model_dir), "finetune": {"epochs": 1, "batch_size": 8}},
            "student": {"layers": 2, "init": "teacher_layers"},
            "data": {"dir": str(data), "max_seq_length": 32},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
        }
    )
    run = expand(study)[0]
    timings = {"latency_ms", "throughput_ex_s", "train_time_s", "train_ex_per_s", "peak_memory_mb", "rss_start_mb"}
    timings |= {"bench_repeats", "bench_reused"}

    def metrics(n: int) -> dict[tuple[Any, ...], float]:
        res = run_one(run.config, tmp_path / "runs" / f"{run.run_id}-{n}", workdir=tmp_path)
        return {
            (m["stage"], m["split"], m["name"], m.get("epoch")): m["value"]
            for m in res["metrics"]
            if m["name"] not in timings
        }

    models.clear_loaded_teachers()
    ev.clear_speed_cache()
    try:
        cold = metrics(1)
        warm = metrics(2)
        assert len(models._LOADED) == 1
        models.clear_loaded_teachers()
        assert cold == warm == metrics(3)
    finally:
        models.clear_loaded_teachers()
        ev.clear_speed_cache()
