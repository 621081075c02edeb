"""run_one in process on a tiny BERT: objectives, student shapes, two-stage reuse, determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdgrid.plan import expand
from kdgrid.study.schema import Study
from kdgrid.train.run import run_one


def make_runs(model: Path, data: Path, **blocks: Any) -> list[Any]:
    base: dict[str, Any] = {
        "name": "t",
        "tasks": ["cola"],
        "seeds": [0],
        "teacher": {"model": str(model), "finetune": {"epochs": 1, "batch_size": 8}},
        "student": {"layers": 2},
        "data": {"dir": str(data), "max_seq_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
    }
    for key, value in blocks.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return expand(Study.model_validate(base))


def final(result: dict[str, Any], split: str = "dev") -> dict[str, float]:
    return {m["name"]: m["value"] for m in result["metrics"] if m.get("stage") == "final" and m.get("split") == split}


@pytest.fixture
def data(tmp_path: Path, make_cola_dir: Any) -> Path:
    return make_cola_dir(tmp_path / "glue", n_train=32, n_dev=8)


INTERMEDIATE = [
    {"attention": "mse", "alpha": 1.0},
    {"attention": "kl", "hidden": "seq"},
    {"hidden": "cls", "alpha": 0.0},
    {"hidden": "cls_contrast", "alpha": 0.0, "contrast_negatives": 8},
    {"attention": "kl", "hidden": "seq", "value": "kl", "embedding": 1.0},
]


@pytest.mark.parametrize("inter", INTERMEDIATE, ids=lambda d: "+".join(f"{k}={v}" for k, v in d.items()))
def test_each_objective_trains_and_logs_its_terms(
    tiny_model_dir: Path, data: Path, tmp_path: Path, inter: dict
) -> None:
    run = make_runs(tiny_model_dir, data, objective={"intermediate": inter})[0]
    res = run_one(run.config, tmp_path / "runs" / run.run_id, workdir=tmp_path)
    terms = {m["name"] for m in res["metrics"] if m.get("split") == "train"}
    expected = {"loss", "loss.soft"}
    if inter.get("attention"):
        expected.add("loss.att")
    if inter.get("hidden") in ("seq", "cls"):
        expected.add("loss.hid")
    if inter.get("hidden") == "cls_contrast":
        expected.add("loss.contrast")
    if inter.get("value"):
        expected.add("loss.val")
    assert expected <= terms
    assert "mcc" in final(res) and final(res, "efficiency")["params"] > 0


@pytest.mark.parametrize(
    "student",
    [
        {"layers": 1},
        {"layers": 3},
        {"layers": 2, "init_layers": [1, 4]},
        {"layers": 2, "heads": 2},  # fewer heads, teacher weights re-split
        {"layers": 2, "heads": 2, "hidden_size": 16, "intermediate_size": 32, "init": "width_slice"},
        {"layers": 5, "init": "random"},
    ],
    ids=["1L", "3L", "init-list", "2AH", "16D-slice", "5L-random"],
)
def test_student_shapes_run(tiny_model_dir: Path, data: Path, tmp_path: Path, student: dict) -> None:
    run = make_runs(
        tiny_model_dir,
        data,
        student=student,
        objective={"intermediate": {"hidden": "seq", "alpha": 0.0}, "mapping": "first_last"},
    )[0]
    res = run_one(run.config, tmp_path / "runs" / run.run_id, workdir=tmp_path)
    assert res["status"] == "done"


def test_learnable_mapping_weights_are_logged_each_epoch(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    run = make_runs(
        tiny_model_dir,
        data,
        train={"epochs": 2},
        objective={
            "intermediate": {"attention": "kl", "hidden": "seq"},
            "mapping": {"kind": "learnable", "init": "diagonal"},
        },
    )[0]
    res = run_one(run.config, tmp_path / "runs" / run.run_id, workdir=tmp_path)
    w = [m for m in res["metrics"] if m.get("split") == "mapping"]
    assert {m["epoch"] for m in w} == {0, 1, 2}  # 0: the initial weights
    start = {m["name"]: m["value"] for m in w if m["epoch"] == 0}
    assert max(v for k, v in start.items() if k.startswith("s1.")) == pytest.approx(0.9, abs=1e-6)  # diagonal init
    assert any(abs(m["value"] - start[m["name"]]) > 1e-6 for m in w if m["epoch"] == 2)  # and training moved it
    for epoch in (0, 1, 2):
        for s in (1, 2):
            row = sum(m["value"] for m in w if m["epoch"] == epoch and m["name"].startswith(f"s{s}."))
            assert row == pytest.approx(1.0, abs=1e-5)


def test_two_stage_shares_stage_one_between_cells(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    runs = make_runs(
        tiny_model_dir,
        data,
        train={"schedule": "two_stage", "epochs": {"intermediate": 1, "prediction": 1}},
        objective={"intermediate": {"attention": "kl"}},
        grid={"objective.prediction.temperature": [1.0, 3.0]},
    )
    assert len({r.run_id for r in runs}) == 2
    first = run_one(runs[0].config, tmp_path / "runs" / runs[0].run_id, workdir=tmp_path)
    second = run_one(runs[1].config, tmp_path / "runs" / runs[1].run_id, workdir=tmp_path)
    names = lambda r: {(m["stage"], m["name"]) for m in r["metrics"]}  # noqa: E731
    assert ("intermediate", "loss.att") in names(first) and ("intermediate", "stage1_reused") not in names(first)
    assert ("intermediate", "stage1_reused") in names(second) and ("intermediate", "loss.att") not in names(second)
    assert ("prediction", "loss.soft") in names(second)


def test_same_run_twice_gives_the_same_metrics(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    run = make_runs(tiny_model_dir, data, objective={"intermediate": {"attention": "kl", "hidden": "seq"}})[0]
    a = run_one(run.config, tmp_path / "a", workdir=tmp_path)
    b = run_one(run.config, tmp_path / "b", workdir=tmp_path)
    keep = lambda r: [  # noqa: E731
        (m["stage"], m.get("epoch"), m["split"], m["name"], m["value"])
        for m in r["metrics"]
        if m["split"] in ("train", "dev", "teacher")
    ]
    assert keep(a) == keep(b)


def test_on_epoch_sees_dev_metrics_and_can_stop_the_run(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    run = make_runs(tiny_model_dir, data, train={"epochs": 3})[0]
    seen: list[tuple[str, int, dict]] = []

    class Stop(Exception):
        pass

    def hook(stage: str, epoch: int, metrics: dict) -> None:
        seen.append((stage, epoch, metrics))
        if epoch == 2:
            raise Stop  # what a search does to prune a trial

    with pytest.raises(Stop):
        run_one(run.config, tmp_path / "r", workdir=tmp_path, on_epoch=hook)
    assert [(s, e) for s, e, _ in seen] == [("joint", 1), ("joint", 2)]
    assert "mcc" in seen[0][2]


def test_final_dev_metrics_are_the_last_epochs_scored_once(
    tiny_model_dir: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdgrid.train.loop as loop
    import kdgrid.train.run as run_mod

    calls: list[int] = []
    real = loop.evaluate

    def counting(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", counting)
    monkeypatch.setattr(run_mod, "evaluate", counting)
    run = make_runs(tiny_model_dir, data, train={"epochs": 2})[0]
    result = run_one(run.config, tmp_path / "r", workdir=tmp_path)
    last = {
        m["name"]: m["value"]
        for m in result["metrics"]
        if m["stage"] == "joint" and m["split"] == "dev" and m.get("epoch") == 2
    }
    assert final(result) == last and "mcc" in last
    assert len(calls) == 2  # once per epoch, not again for the final row

    # eval_every_epoch: false scores the last epoch only; same run id, same trained weights, same final scores.
    calls.clear()
    quiet = make_runs(tiny_model_dir, data, train={"epochs": 2, "eval_every_epoch": False})[0]
    assert quiet.run_id == run.run_id
    result2 = run_one(quiet.config, tmp_path / "r2", workdir=tmp_path)
    assert len(calls) == 1
    assert {m.get("epoch") for m in result2["metrics"] if m["stage"] == "joint" and m["split"] == "dev"} == {2}
    assert final(result2) == final(result)


def test_result_names_the_data_files_it_read(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    import hashlib

    run = make_runs(tiny_model_dir, data)[0]
    result = run_one(run.config, tmp_path / "r", workdir=tmp_path)
    train_tsv = data / "CoLA" / "train.tsv"
    assert result["data"]["train"] == "sha256:" + hashlib.sha256(train_tsv.read_bytes()).hexdigest()
    assert result["data"]["dev"].startswith("sha256:") and result["data"]["dev"] != result["data"]["train"]


def test_result_records_copied_and_mapped_layers(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    """The tiny teacher has 4 layers: first_last on 2 student layers maps 1, 4 and (by the rule) copies 1, 4;
    init_layers makes them differ on purpose; vanilla KD copies every k-th and maps nothing."""
    cases = [
        (
            {"objective": {"intermediate": {"hidden": "seq", "alpha": 0.0}, "mapping": "first_last"}},
            {"copied.s1": 1, "copied.s2": 4, "mapped.s1": 1, "mapped.s2": 4, "learnable": 0},
        ),
        (
            {
                "objective": {"intermediate": {"hidden": "seq", "alpha": 0.0}, "mapping": "first_last"},
                "student": {"layers": 2, "init_layers": [1, 2]},
            },
            {"copied.s1": 1, "copied.s2": 2, "mapped.s1": 1, "mapped.s2": 4, "learnable": 0},
        ),
        ({}, {"copied.s1": 2, "copied.s2": 4}),
    ]
    for blocks, want in cases:
        run = make_runs(tiny_model_dir, data, **blocks)[0]
        res = run_one(run.config, tmp_path / "runs" / run.run_id, workdir=tmp_path)
        assert final(res, "layers") == want


def test_init_head_is_part_of_the_run_id(tiny_model_dir: Path, data: Path) -> None:
    a = make_runs(tiny_model_dir, data)[0]
    b = make_runs(tiny_model_dir, data, student={"layers": 2, "init_head": "teacher"})[0]
    assert a.run_id != b.run_id and a.config_data()["student"]["init_head"] == "random"


def test_peak_memory_is_per_run_not_per_process() -> None:
    """A worker that once held 256 MB reports the next run's peak, not its own lifetime peak (ru_maxrss)."""
    import resource
    import time

    import torch

    from kdgrid.train.evaluate import PeakMemory

    big = torch.ones(64 * 2**20)  # 256 MB, touched; freed below (large blocks go back to the OS)
    del big
    lifetime_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    with PeakMemory(torch.device("cpu")) as quiet:
        torch.ones(1000).sum()
    assert quiet.rows()["peak_memory_mb"] < lifetime_mb - 150
    with PeakMemory(torch.device("cpu")) as busy:
        mid = torch.ones(32 * 2**20)  # 128 MB inside the run: the sampler must see it
        time.sleep(0.2)
        del mid
    rows = busy.rows()
    assert rows["peak_memory_mb"] - rows["rss_start_mb"] > 100


def test_cached_teacher_logits_use_the_runs_precision(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    """bf16: the cached table holds what the teacher gives under the loop's autocast, row for row (one row
    per batch, so no padding differs); and it is not the fp32 table."""
    import numpy as np
    import torch

    from kdgrid.train.data import Collator, load_tokenized
    from kdgrid.train.evaluate import model_inputs
    from kdgrid.train.models import load_classifier, load_tokenizer
    from kdgrid.train.run import _autocast
    from kdgrid.train.teacher_cache import cached_teacher_logits

    teacher = load_classifier(str(tiny_model_dir), 2).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    full = load_tokenized("cola", "train", str(data), tok, 32, tmp_path / "tok")
    positions = np.arange(len(full))
    cpu = torch.device("cpu")
    bf16 = _autocast(cpu, "bf16")
    table = cached_teacher_logits(
        teacher, "k", full, positions, tmp_path, cpu, 0, batch_size=1, precision="bf16", autocast=bf16
    )
    fp32 = cached_teacher_logits(teacher, "k", full, positions, tmp_path, cpu, 0, batch_size=1)
    collate = Collator(0)
    with torch.no_grad():
        for i in range(4):
            batch = collate([full[i]])
            with bf16():
                want = teacher(**model_inputs(batch, cpu)).logits.float()
            assert torch.equal(table[i], want[0])
    assert not torch.equal(table, fp32)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_a_run_with_and_without_the_activation_cache_gives_the_same_metrics(
    tiny_model_dir: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    """Stored activations (kdgrid.train.activation_cache) change only the rounding: fp32 storage gives the
    recomputed run's losses to 1e-5 (or 1e-8 absolute) and its dev metrics exactly; fp16 its losses to 1e-2 (tests/test_activation_cache.py)."""
    run = make_runs(
        tiny_model_dir,
        data,
        train={"epochs": 2},
        objective={"intermediate": {"attention": "kl", "hidden": "seq", "value": "kl"}},
    )[0]
    monkeypatch.setenv("KDGRID_ACTIVATION_DTYPE", dtype)
    monkeypatch.setenv("KDGRID_ACTIVATION_CACHE_GB", "0")
    plain = run_one(run.config, tmp_path / "a" / run.run_id, workdir=tmp_path)
    monkeypatch.setenv("KDGRID_ACTIVATION_CACHE_GB", "1")
    cached = run_one(run.config, tmp_path / "b" / run.run_id, workdir=tmp_path)
    flag = {res is cached: [m["value"] for m in res["metrics"] if m["split"] == "cache"] for res in (plain, cached)}
    assert flag == {False: [0.0], True: [1.0]}
    assert list((tmp_path / "cache" / "teacher_activations").glob("*/L2.qk.*.bin"))

    def losses(res: dict[str, Any]) -> dict[tuple[int, str], float]:
        return {(m["epoch"], m["name"]): m["value"] for m in res["metrics"] if m["split"] == "train"}

    got, want = losses(cached), losses(plain)
    assert got.keys() == want.keys() and len(got) == 2 * 5  # loss, soft, att, hid, val per epoch
    # abs: the logit table itself differs from a forward by float reordering (~1e-8 on these 1e-5 losses)
    assert got == pytest.approx(want, rel=1e-5 if dtype == "fp32" else 1e-2, abs=1e-8)
    if dtype == "fp32":
        assert final(cached) == final(plain)
