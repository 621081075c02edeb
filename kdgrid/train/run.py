"""One run, start to finish: teacher (cached), data, student, distillation stages, evaluation.

``run_one`` is what the coordinator (or a worker process) calls; it returns the
result record that is written to ``result.json`` and ingested into the store.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from kdgrid.errors import RunFailed
from kdgrid.plan.canonical import config_data, config_hash
from kdgrid.plugins import registry
from kdgrid.plugins.terms import layer_loss_active, mapping_settings
from kdgrid.records import MetricRow, RunResult, metric_row, metric_rows
from kdgrid.study.schema import Epochs, RunConfig
from kdgrid.tasks import get_task
from kdgrid.train.activation_cache import activation_needs, cached_teacher_activations
from kdgrid.train.data import data_fingerprint, make_loader, subsample_positions
from kdgrid.train.evaluate import PeakMemory, count_parameters, eval_batches, evaluate, inference_speed
from kdgrid.train.loop import StageSettings, TeacherOutputs, train_stage
from kdgrid.train.mappings import copied_layers, pointed_layers
from kdgrid.train.models import build_registered_student, finetune_teacher, loaded_teacher
from kdgrid.train.objectives import DistillObjective, Stage
from kdgrid.train.teacher_cache import cached_teacher_logits
from kdgrid.train.versions import library_versions


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RunFailed("train.device is 'cuda' but no CUDA device is available (allowed here: auto, cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # Same run, same hardware, same numbers: deterministic GPU kernels where torch has them.
        # (CPU kernels already are; the switch costs seconds of imports, so only where it matters.)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def configure_gpu(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def stage_plan(cfg: RunConfig) -> list[tuple[Stage, int]]:
    if cfg.train.schedule == "two_stage":
        ep = (
            cfg.train.epochs
            if isinstance(cfg.train.epochs, Epochs)
            else Epochs(intermediate=cfg.train.epochs, prediction=cfg.train.epochs)
        )
        return [("intermediate", ep.intermediate), ("prediction", ep.prediction)]
    assert isinstance(cfg.train.epochs, int)  # guaranteed by the Train validator
    return [("joint", cfg.train.epochs)]


def run_pointed_layers(cfg: RunConfig, n_teacher: int) -> list[int | None] | None:
    """Where the run's mapping points (per student layer), or None when it has no layer loss at all."""
    if not layer_loss_active(cfg.objective):
        return None
    m = cfg.objective.mapping
    return pointed_layers(m.kind, n_teacher, cfg.student.layers, m.layers, mapping_settings(m))


def layer_rows(cfg: RunConfig, n_teacher: int, pointed: list[int | None] | None) -> list[MetricRow]:
    """Which teacher layer each student layer copied and is mapped to, as metric rows (split 'layers').

    ``copied.sM`` = teacher layer copied into student layer M (absent for init 'random');
    ``mapped.sM`` = teacher layer it is trained towards (absent when unmapped; for a learnable
    mapping the layer its 'fixed' start points to, with ``learnable`` = 1).
    """
    rows: list[MetricRow] = []
    if registry().spec("students", cfg.student.init).copies_layers:
        copied = copied_layers(n_teacher, cfg.student.layers, cfg.student.init_layers, pointed)
        rows += [metric_row("final", "layers", f"copied.s{m}", n) for m, n in enumerate(copied, start=1)]
    if pointed is not None:
        rows += [
            metric_row("final", "layers", f"mapped.s{m}", n) for m, n in enumerate(pointed, start=1) if n is not None
        ]
        rows.append(metric_row("final", "layers", "learnable", float(cfg.objective.mapping.kind == "learnable")))
    return rows


def stage1_key(cfg: RunConfig, teacher_key: str) -> str:
    """Stage-1 checkpoints depend only on stage-1 settings: cells differing in stage 2 share them."""
    c = config_data(cfg)
    stage1 = {
        "teacher": teacher_key,
        "task": c["task"],
        "seed": c["seed"],
        "student": c["student"],
        "data": {k: v for k, v in c["data"].items() if k != "dir"},
        "intermediate": c["objective"]["intermediate"],
        "mapping": c["objective"]["mapping"],
        "train": {
            k: c["train"][k] for k in ("lr", "batch_size", "weight_decay", "warmup_ratio", "max_grad_norm", "precision")
        },
        "epochs": stage_plan(cfg)[0][1],
    }
    # Plug-in terms train in stage 1 too (and their packages' versions matter); absent for built-in-only runs,
    # so their checkpoints keep their keys.
    for key in ("terms",):
        if c["objective"].get(key):
            stage1[key] = c["objective"][key]
    if c.get("plugins"):
        stage1["plugins"] = c["plugins"]
    return config_hash(stage1, 20)


def run_one(
    config: RunConfig, run_dir: Path, *, workdir: Path, on_progress: Any = None, on_epoch: Any = None
) -> RunResult:
    """Train and evaluate one run (its planned, canonical config); raise RunFailed (or another KdgridError) when
    it cannot finish.

    ``on_epoch(stage, epoch, dev_metrics)`` is called after every dev evaluation (a search prunes there).
    """
    device = pick_device(config.train.device)
    # Peak memory from here on, whatever earlier runs of this worker process used (PeakMemory's docstring).
    with contextlib.ExitStack() as stage1_lock, PeakMemory(device) as memory:  # released however the run ends
        return _run_one(config, run_dir, workdir, on_progress, stage1_lock, on_epoch, memory)


def _run_one(
    cfg: RunConfig,
    run_dir: Path,
    workdir: Path,
    on_progress: Any,
    stage1_lock: contextlib.ExitStack,
    on_epoch: Any = None,
    memory: PeakMemory | None = None,
) -> RunResult:
    spec = get_task(cfg.task)
    device = pick_device(cfg.train.device)
    configure_gpu(device)
    seed_everything(cfg.seed, device)
    cache_root = Path(workdir) / "cache"
    t_start = time.perf_counter()
    rows: list[MetricRow] = []

    teacher_rec = finetune_teacher(cfg.task, cfg.teacher, cfg.data.dir, cfg.data.max_seq_length, cache_root, device)
    # Checks the head's label order against the task; the teacher's own code runs only if the study trusts it.
    # Kept in memory (frozen) with its tokenized splits for the next run of this process (a pool worker's).
    loaded = loaded_teacher(teacher_rec, device, trust_remote_code=cfg.teacher.trust_remote_code)
    teacher, tokenizer = loaded.model, loaded.tokenizer
    tok_cache = cache_root / "tokenized"
    full_train = loaded.tokenized(cfg.task, "train", cfg.data.dir, cfg.data.max_seq_length, tok_cache)
    positions = subsample_positions(len(full_train), cfg.data.fraction, cfg.data.max_train_examples, cfg.seed)
    train_set = full_train.subset(positions)
    full_dev = loaded.tokenized(cfg.task, "dev", cfg.data.dir, cfg.data.max_seq_length, tok_cache)
    # Every run of a task is scored on the same dev rows, whatever its seed.
    dev_set = full_dev.subset(subsample_positions(len(full_dev), 1.0, cfg.data.max_eval_examples, 0))
    pad_id = int(tokenizer.pad_token_id or 0)
    # Collated once, longest first in token-budget batches; every evaluation of the run reuses them.
    dev_loader = eval_batches(dev_set, pad_id, device, is_regression=spec.is_regression)

    n_teacher = teacher.config.num_hidden_layers
    pointed = run_pointed_layers(cfg, n_teacher)
    student = build_registered_student(teacher, cfg.student, cfg.seed, pointed).to(device)  # type: ignore[arg-type]  # transformers wraps .to() and mis-types the bound call
    t_cfg, s_cfg = teacher.config, student.config
    rows += layer_rows(cfg, n_teacher, pointed)

    autocast = _autocast(device, cfg.train.precision)
    train_time = 0.0
    last_eval: dict[str, float] | None = None  # dev metrics after the last trained epoch, if the loop scored it
    for stage, epochs in stage_plan(cfg):
        if epochs == 0:
            continue
        if (
            stage == "prediction"
        ):  # the same random stream (dropout) whether stage 1 trained here or came from its cache
            seed_everything(cfg.seed + 1, device)
        objective = DistillObjective(
            cfg.objective,
            stage=stage,
            is_regression=spec.is_regression,
            n_teacher_layers=t_cfg.num_hidden_layers,
            n_student_layers=s_cfg.num_hidden_layers,
            teacher_hidden=t_cfg.hidden_size,
            student_hidden=s_cfg.hidden_size,
            teacher_heads=t_cfg.num_attention_heads,
            student_heads=s_cfg.num_attention_heads,
            num_train_examples=len(train_set),
        ).to(device)
        if stage == "intermediate":
            ckpt = cache_root / "stage1" / stage1_key(cfg, teacher_rec.key)
            reused = _load_stage1(student, ckpt)
            if not reused:  # one process trains this checkpoint; others wait for it here, then load it
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                stage1_lock.enter_context(FileLock(str(ckpt) + ".lock"))
                reused = _load_stage1(student, ckpt)
            if reused:
                stage1_lock.close()
                rows.append({"stage": stage, "split": "cache", "name": "stage1_reused", "value": 1.0})
                continue
        cached = None
        activations = None
        needs = activation_needs(objective)
        if cfg.train.teacher_cache and needs:
            # Layer objectives read stored activations when they fit the disk budget; the choice is a metric row.
            if not objective.reads_teacher_padding():
                activations = cached_teacher_activations(
                    teacher,
                    teacher_rec.key,
                    full_train,
                    positions,
                    needs,
                    cache_root,
                    device,
                    pad_id,
                    precision=cfg.train.precision,
                    autocast=autocast,
                )
            rows.append(
                {
                    "stage": stage,
                    "split": "cache",
                    "name": "teacher_activations",
                    "value": float(activations is not None),
                }
            )
        if cfg.train.teacher_cache and (not needs or activations is not None):
            cached = cached_teacher_logits(
                teacher,
                teacher_rec.key,
                full_train,
                positions,
                cache_root,
                device,
                pad_id,
                precision=cfg.train.precision,
                autocast=autocast,
            )
        settings = StageSettings(
            stage=stage,
            epochs=epochs,
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            warmup_ratio=cfg.train.warmup_ratio,
            max_grad_norm=cfg.train.max_grad_norm,
            task=cfg.task,
            evaluate_each_epoch=stage != "intermediate" and cfg.train.eval_every_epoch,
            evaluate_last_epoch=stage != "intermediate",
            metrics=tuple(cfg.metrics),
        )
        loader = make_loader(
            train_set,
            cfg.train.batch_size,
            pad_token_id=pad_id,
            shuffle=True,
            seed=cfg.seed,
            is_regression=spec.is_regression,
        )
        full_positions = torch.as_tensor(positions)

        def batches(
            epoch: int, _loader: Iterable[dict[str, torch.Tensor]] = loader
        ) -> Iterable[dict[str, torch.Tensor]]:
            _loader.batch_sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            for batch in _loader:
                batch["example_ids"] = full_positions[batch["indices"]]  # noqa: B023 (consumed within this stage)
                yield batch

        stage_rows, seconds = train_stage(
            student,
            objective,
            TeacherOutputs(teacher, objective, device, cached, activations),
            batches,
            len(loader),
            dev_loader,
            settings,
            device,
            on_progress,
            autocast,
            on_epoch=on_epoch,
        )
        rows += stage_rows
        train_time += seconds
        last_eval = {r["name"]: r["value"] for r in stage_rows if r["split"] == "dev" and r["epoch"] == epochs} or None
        if stage == "intermediate":
            _save_stage1(student, cache_root / "stage1" / stage1_key(cfg, teacher_rec.key))
            stage1_lock.close()

    # The loop already scored the final weights after their last epoch; scoring them again would only cost time.
    final = last_eval if last_eval is not None else evaluate(student, dev_loader, cfg.task, device, cfg.metrics)
    rows += metric_rows(final, "final", "dev")
    rows += metric_rows(
        {
            **teacher_rec.metrics,
            "majority_baseline": teacher_rec.majority,
            "no_better_than_majority": float(teacher_rec.flagged),
        },
        "final",
        "teacher",
    )
    efficiency = {
        "params": count_parameters(student),
        "teacher_params": count_parameters(teacher),
        "train_time_s": train_time,
        "train_examples": len(train_set),
        "train_ex_per_s": len(train_set) * sum(e for _, e in stage_plan(cfg)) / train_time if train_time else 0.0,
        **inference_speed(student, vocab_size=s_cfg.vocab_size, device=device),
        **(memory.rows() if memory is not None else {}),
    }
    rows += metric_rows(efficiency, "final", "efficiency")
    return {
        "run_id": run_dir.name,
        "task": cfg.task,
        "seed": cfg.seed,
        "config": config_data(cfg),
        "status": "done",
        "error": None,
        "duration_s": time.perf_counter() - t_start,
        "host": socket.gethostname(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "versions": library_versions(),
        "metrics": rows,
        "data": {split: data_fingerprint(cfg.task, split, cfg.data.dir) for split in ("train", "dev")},
        "teacher": {
            "key": teacher_rec.key,
            "task": cfg.task,
            "model": cfg.teacher.model,
            "seed": cfg.teacher.finetune.seed,
            "path": str(teacher_rec.path),
            "metrics": teacher_rec.metrics,
            "majority": teacher_rec.majority,
            "flagged": teacher_rec.flagged,
        },
    }


def _save_stage1(student: torch.nn.Module, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "student.pt.tmp"
    torch.save(student.state_dict(), tmp)
    os.replace(tmp, path / "student.pt")


def _load_stage1(student: torch.nn.Module, path: Path) -> bool:
    f = path / "student.pt"
    if not f.is_file():
        return False
    student.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
    return True
