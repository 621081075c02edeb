"""Models: resolving teacher names, loading classifiers, building students, fine-tuning teachers once.

Torch and transformers are imported inside functions only (names and shapes of
models live in the torch-free :mod:`kdgrid.model_names`).

Student construction (DESIGN §5) works on BERT-style encoders (BERT, RoBERTa,
MiniLM): parameters named ``...layer.<i>.attention.self.{query,key,value}`` and
``...attention.output.dense``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from kdgrid.errors import ModelError, RunFailed
from kdgrid.model_names import resolve_model_path, shape_from_config
from kdgrid.study.schema import Student, Teacher
from kdgrid.tasks import TaskSpec, get_task, majority_baseline
from kdgrid.train.data import file_sha256

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from kdgrid.train.data import TokenizedSet

# Bump when the fine-tuning recipe changes, so cached teachers are not silently reused.
# 1: kdgrid 0.1-0.2 (its own non-fused AdamW, warm-up of ceil(ratio * steps), 128-row dev batches).
# 2: the student's optimiser and schedule (kdgrid.train.optim: fused AdamW, warm-up of int(ratio * steps)) and the
#    shared evaluation (kdgrid.train.evaluate); the weight-decay rule is the same (biases, LayerNorm, 1-D: none).
TEACHER_RECIPE = 2
# Gradient norm clip of teacher fine-tuning (BERT's); not a study setting, so teacher keys and run ids stay put.
TEACHER_MAX_GRAD_NORM = 1.0


# --- loading ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence the LOAD REPORT table and progress bars (a missing classifier head is expected here)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"


_REMOTE_CODE_REFUSED = (
    "it ships its own Python code, which kdgrid runs only when the study sets teacher.trust_remote_code: true"
)


def _load_error(what: str, exc: BaseException) -> ModelError:
    # transformers refuses a model with custom code when trust_remote_code is False; its message names the flag.
    if "trust_remote_code" in str(exc):
        return ModelError(f"cannot load {what}: {_REMOTE_CODE_REFUSED}")
    return ModelError(f"cannot load {what}: {_one_line(exc)}")


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            # Explicit False: transformers' default (None) asks on a terminal and may then run the code.
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise _load_error(f"the tokenizer of {path}", exc) from None


def load_classifier(
    path: str,
    num_labels: int,
    attn_implementation: str = "sdpa",
    *,
    label_list: tuple[str, ...] | None = None,
    new_head_ok: bool = True,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """AutoModelForSequenceClassification; ``num_labels=1`` means regression (STS-B).

    A checkpoint whose head has another size (e.g. an MNLI model as an SST-2 teacher)
    gets a new head when ``new_head_ok``; a new head is drawn from torch's global
    RNG: seed around the call. Cached fine-tuned teachers load with ``new_head_ok=False``.
    """
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "num_labels": num_labels,
        "attn_implementation": attn_implementation,
        "ignore_mismatched_sizes": new_head_ok,
        "trust_remote_code": trust_remote_code,
    }
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["problem_type"] = "single_label_classification"
    if label_list is not None:
        kwargs["id2label"] = dict(enumerate(label_list))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_list)}
    try:
        with quiet_transformers():
            model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
            return model
    except Exception as exc:
        raise _load_error(f"model {path}", exc) from None


def check_label_order(model: PreTrainedModel, spec: TaskSpec, where: str) -> None:
    """A teacher's head must be indexed like the task's labels (DESIGN §5: check it)."""
    if spec.is_regression:
        if model.config.num_labels != 1:
            raise ModelError(f"{where}: model has {model.config.num_labels} outputs; task {spec.name} needs 1")
        return
    want = list(spec.label_list or ())
    id2label: dict[Any, str] = dict(model.config.id2label or {})
    got = [str(id2label.get(i, "")) for i in range(model.config.num_labels or 0)]
    if got != want:
        raise ModelError(f"{where}: model labels {got} differ from task {spec.name}'s {want} (label order matters)")


# --- students -------------------------------------------------------------------------------------------


def student_layer_choice(
    teacher_layers: int, student_cfg: Student, pointed: list[int | None] | None = None
) -> list[int]:
    """1-based teacher layers a student copies: ``init_layers``, else the layers its mapping points to
    (``pointed``, one entry per student layer; None entries and ``pointed=None`` take every k-th,
    k = L_T // L_S). The rule lives in :func:`kdgrid.train.mappings.copied_layers`."""
    from kdgrid.train.mappings import copied_layers

    if student_cfg.init_layers is not None:
        for i, layer in enumerate(student_cfg.init_layers):
            if not 1 <= layer <= teacher_layers:
                raise ModelError(f"student.init_layers[{i}]: layer {layer} out of range (allowed: 1..{teacher_layers})")
        return list(student_cfg.init_layers)
    if student_cfg.layers > teacher_layers:
        raise ModelError(
            f"student.layers: {student_cfg.layers} layers but the teacher has {teacher_layers}; "
            f"init '{student_cfg.init}' copies teacher layers (allowed: 1..{teacher_layers}, or init: random)"
        )
    return copied_layers(teacher_layers, student_cfg.layers, None, pointed)


_LAYER_RE = re.compile(r"\.layer\.(\d+)\.")
_QKV_RE = re.compile(r"\.attention\.self\.(query|key|value)\.(weight|bias)$")
_ATT_OUT_RE = re.compile(r"\.attention\.output\.dense\.weight$")


def _head_index(t_heads: int, t_dhead: int, s_heads: int, s_dhead: int) -> np.ndarray:
    """Rows of the first ``s_heads`` teacher heads, first ``s_dhead`` dims of each: keeps Q/K/V per head."""
    return np.concatenate([h * t_dhead + np.arange(s_dhead) for h in range(s_heads)])


def _slice_into(dst: torch.Tensor, src: torch.Tensor, name: str, head_idx: np.ndarray | None) -> None:
    import torch

    index: list[Any] = [torch.arange(n) for n in dst.shape]  # leading slice on every dimension
    if head_idx is not None and _QKV_RE.search(name):
        index[0] = torch.from_numpy(head_idx)
    if head_idx is not None and _ATT_OUT_RE.search(name):
        index[1] = torch.from_numpy(head_idx)
    piece = src.detach().to(dst.device, dst.dtype)
    for dim, idx in enumerate(index):
        piece = piece.index_select(dim, idx.to(piece.device))
    dst.copy_(piece)


def _check_student(student_cfg: Student, t: dict[str, int], s: dict[str, int]) -> None:
    if s["hidden"] % s["heads"]:
        raise ModelError(f"student.heads: {s['heads']} heads do not divide hidden size {s['hidden']}")
    # Equal widths give equal weight shapes: a different head count only re-splits the copied projections.
    if student_cfg.init == "teacher_layers" and (s["hidden"], s["intermediate"]) != (t["hidden"], t["intermediate"]):
        raise ModelError(
            "student.init: 'teacher_layers' needs the teacher's hidden and intermediate size "
            f"({t['hidden']}, {t['intermediate']}; allowed for other shapes: width_slice, random)"
        )
    if student_cfg.init == "width_slice":
        for key, fld in (("hidden", "hidden_size"), ("heads", "heads"), ("intermediate", "intermediate_size")):
            if s[key] > t[key]:
                raise ModelError(
                    f"student.{fld}: {s[key]} is larger than the teacher's {t[key]} (init 'width_slice' slices)"
                )
        if s["hidden"] // s["heads"] > t["hidden"] // t["heads"]:
            raise ModelError(
                f"student.hidden_size: head size {s['hidden'] // s['heads']} exceeds the teacher's "
                f"{t['hidden'] // t['heads']} (init 'width_slice' slices each head; use more heads)"
            )


def build_student(
    teacher_model: PreTrainedModel, student_cfg: Student, seed: int, pointed: list[int | None] | None = None
) -> PreTrainedModel:
    """A student from the teacher's config with the overrides in ``student_cfg``, initialised per ``init``.

    - ``teacher_layers``: embeddings, the chosen layers (:func:`student_layer_choice`: ``init_layers``,
      else the layers the mapping ``pointed`` to) and the pooler copied (equal widths only; a
      different head count re-splits the same Q/K/V projections into more or fewer heads).
    - ``width_slice``: the leading slices of embeddings, chosen layers and pooler; Q/K/V rows and
      the attention output's columns take the first ``heads`` teacher heads and the first
      ``d_head`` dims of each, so every student head is a piece of one teacher head.
    - ``random``: random encoder; embeddings and pooler copied when the hidden size is equal.
    The classifier is the teacher's (its leading slice for ``width_slice``) with ``init_head: teacher``
    where the student is no wider than the teacher and not ``random`` with another width; otherwise
    random, drawn from ``seed`` (the caller's RNG is left untouched). ``init_layers`` is ignored by ``random``.
    """
    import torch

    tcfg = teacher_model.config
    t = shape_from_config(tcfg.to_dict())
    s = {
        "layers": student_cfg.layers,
        "heads": student_cfg.heads or t["heads"],
        "hidden": student_cfg.hidden_size or t["hidden"],
        "intermediate": student_cfg.intermediate_size or t["intermediate"],
    }
    _check_student(student_cfg, t, s)
    cfg = copy.deepcopy(tcfg)
    cfg.num_hidden_layers = s["layers"]
    cfg.num_attention_heads = s["heads"]
    cfg.hidden_size = s["hidden"]
    cfg.intermediate_size = s["intermediate"]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with quiet_transformers():
            student = type(teacher_model)(cfg)

    copy_layers = student_cfg.init in ("teacher_layers", "width_slice")
    chosen = student_layer_choice(t["layers"], student_cfg, pointed) if copy_layers else []
    same_width = s["hidden"] == t["hidden"]
    head_idx = None
    if student_cfg.init == "width_slice":
        head_idx = _head_index(t["heads"], t["hidden"] // t["heads"], s["heads"], s["hidden"] // s["heads"])

    teacher_params = dict(teacher_model.named_parameters())
    with torch.no_grad():
        for name, param in student.named_parameters():
            if name.startswith("classifier"):
                src = teacher_params.get(name)
                head_fits = (
                    src is not None and src.dim() == param.dim() and all(d <= e for d, e in zip(param.shape, src.shape))
                )
                if student_cfg.init_head == "teacher" and (copy_layers or same_width) and head_fits:
                    _slice_into(param, src, name, None)  # type: ignore[arg-type]
                continue
            m = _LAYER_RE.search(name)
            if m:
                if not copy_layers:
                    continue
                src_name = name[: m.start()] + f".layer.{chosen[int(m.group(1))] - 1}." + name[m.end() :]
            else:
                is_embedding = ".embeddings." in name
                is_pooler = ".pooler." in name
                if not (is_embedding or is_pooler) or not (copy_layers or same_width):
                    continue
                src_name = name
            src = teacher_params.get(src_name)
            if src is None:
                raise ModelError(
                    f"student.init: '{student_cfg.init}' cannot find teacher parameter {src_name} "
                    "(BERT-style encoders only)"
                )
            _slice_into(param, src, name, head_idx)
    return student


def build_registered_student(
    teacher_model: PreTrainedModel, student_cfg: Student, seed: int, pointed: list[int | None] | None = None
) -> PreTrainedModel:
    """The student from the builder registered as ``student.init`` (built-ins: :func:`build_student`).

    A plug-in builder is called as ``impl(teacher_model, student_cfg, seed, pointed, settings)`` with its
    validated settings, under a forked RNG seeded by ``seed`` (the caller's stream is left untouched).
    """
    import torch

    from kdgrid.plugins import load_impl, registry, validate_settings

    entry = registry().get("students", student_cfg.init)
    if entry.source.builtin:
        return build_student(teacher_model, student_cfg, seed, pointed)
    settings = validate_settings(entry.spec, student_cfg.settings, "student.settings")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_impl(entry.spec.impl)(teacher_model, student_cfg, seed, pointed, settings)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"student builder '{student_cfg.init}' ({entry.source}) returned {type(model).__name__}, not a model"
        )
    return cast("PreTrainedModel", model)  # a plug-in's student is any Module called like an HF classifier


# --- batches ---------------------------------------------------------------------------------------------


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}


# --- teacher fine-tuning, once per cache key ------------------------------------------------------------


@dataclass
class TeacherRecord:
    key: str
    task: str
    model: str  # as written in the study
    resolved_model: str  # local dir or hub id it resolved to
    path: str  # fine-tuned model + tokenizer directory
    finetune: dict[str, Any]
    max_seq_length: int
    data: dict[str, str]  # split -> fingerprint
    official_metric: str
    dev_metrics: dict[str, float]
    majority_baseline: float
    flag_no_better_than_majority: bool
    train_time_s: float
    n_train: int
    n_dev: int
    steps: int
    final_train_loss: float
    device: str
    created: str
    versions: dict[str, str] = field(default_factory=dict)
    trained: bool = False  # True only in the call that fine-tuned it (not stored)

    @property
    def dev_score(self) -> float:
        return self.dev_metrics[self.official_metric]

    # Short names used by kdgrid.train.run.
    @property
    def metrics(self) -> dict[str, float]:
        return self.dev_metrics

    @property
    def majority(self) -> float:
        return self.majority_baseline

    @property
    def flagged(self) -> bool:
        return self.flag_no_better_than_majority

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trained")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TeacherRecord:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "trained"})


def _model_identity(resolved: str) -> str:
    """Content hash of a local model (config + weights), so a changed folder never hits an old teacher."""
    local = Path(resolved)
    if not local.is_dir():
        return f"hub:{resolved}"
    files = sorted(p for p in local.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def teacher_cache_key(
    task: str, teacher_cfg: Teacher, data_dir: str | None, max_seq_length: int
) -> tuple[str, dict[str, Any]]:
    """The key (and what it hashes): task, model content, fine-tune settings, max length, data files."""
    from kdgrid.train.data import data_fingerprint

    spec = get_task(task)
    resolved = resolve_model_path(teacher_cfg.model)
    payload = {
        "recipe": TEACHER_RECIPE,
        "task": spec.name,
        "model": _model_identity(resolved),
        "finetune": teacher_cfg.finetune.model_dump(mode="json"),
        "max_seq_length": max_seq_length,
        "data": {split: data_fingerprint(task, split, data_dir) for split in ("train", spec.dev_split)},
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    return f"{spec.name}-{digest}", payload


def _resolve_device(device: torch.device | str) -> torch.device:
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _task_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    if spec.is_regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def _train_teacher(
    spec: TaskSpec,
    resolved: str,
    teacher_cfg: Teacher,
    data_dir: str | None,
    max_seq_length: int,
    cache_root: Path,
    device: torch.device,
    out_dir: Path,
    on_step: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Fine-tune and save into ``out_dir``; returns the fields of the teacher.json it writes."""
    import torch
    import transformers

    from kdgrid.train.data import load_tokenized, make_loader, subsample_positions
    from kdgrid.train.evaluate import eval_batches, evaluate
    from kdgrid.train.optim import adamw, keep_freed_memory, warmup_decay

    ft = teacher_cfg.finetune
    tok = load_tokenizer(resolved, trust_remote_code=teacher_cfg.trust_remote_code)
    tok_cache = cache_root / "tokenized"
    train = load_tokenized(spec.name, "train", data_dir, tok, max_seq_length, tok_cache)
    train = train.subset(subsample_positions(len(train), 1.0, ft.max_train_examples, ft.seed))
    dev = load_tokenized(spec.name, spec.dev_split, data_dir, tok, max_seq_length, tok_cache)
    pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)

    if device.type == "cpu":
        keep_freed_memory()  # the teacher's embedding gradient is page-faulted in every step otherwise
    t0 = time.perf_counter()
    # fork_rng: the caller's RNG state is the same whether the teacher was trained or loaded from cache.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ft.seed)
        model = load_classifier(
            resolved, spec.num_labels, label_list=spec.label_list, trust_remote_code=teacher_cfg.trust_remote_code
        ).to(device)  # type: ignore[arg-type]  # transformers wraps .to() and mis-types the bound call
        loader = make_loader(
            train, ft.batch_size, pad_token_id=pad_id, shuffle=True, seed=ft.seed, is_regression=spec.is_regression
        )
        total = ft.epochs * len(loader)
        opt = adamw(model, ft.lr, ft.weight_decay)
        sched = warmup_decay(opt, total, ft.warmup_ratio)
        model.train()
        step, loss_value = 0, float("nan")
        for _ in range(ft.epochs):
            for batch in loader:
                logits = model(**model_inputs(batch, device)).logits
                loss = _task_loss(spec, logits, batch["labels"].to(device))
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise RunFailed(
                        f"teacher fine-tune of {resolved} on {spec.name}: loss is {loss_value} at step {step}"
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), TEACHER_MAX_GRAD_NORM)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if on_step is not None:
                    on_step(step, total)
    train_time = time.perf_counter() - t0

    metrics = evaluate(model, eval_batches(dev, pad_id, device), spec.name, device)
    baseline = majority_baseline(spec, train.labels, dev.labels)
    with quiet_transformers():
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    score = metrics[spec.official_metric]
    return {
        "official_metric": spec.official_metric,
        "dev_metrics": metrics,
        "majority_baseline": baseline,
        "flag_no_better_than_majority": bool(not score > baseline),
        "train_time_s": train_time,
        "n_train": len(train),
        "n_dev": len(dev),
        "steps": step,
        "final_train_loss": loss_value,
        "device": str(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def finetune_teacher(
    task: str,
    teacher_cfg: Teacher,
    data_cfg_dir: str | None,
    max_seq_length: int,
    cache_root: Path,
    device: torch.device | str,
    on_step: Callable[[int, int], None] | None = None,
) -> TeacherRecord:
    """The fine-tuned teacher for this task, trained at most once per cache key across processes.

    Layout: ``cache_root/teachers/<key>/`` (model, tokenizer, teacher.json), built in a
    temp dir and renamed into place, so a complete dir is the only thing readers see.
    A file lock ``<key>.lock`` makes a second process wait and then load.
    """
    from filelock import FileLock

    spec = get_task(task)
    key, payload = teacher_cache_key(task, teacher_cfg, data_cfg_dir, max_seq_length)
    root = Path(cache_root) / "teachers"
    final = root / key
    cached = _read_record(final)
    if cached is not None:  # fast path without the lock: rename made it complete
        return cached
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        cached = _read_record(final)
        if cached is not None:
            return cached
        for stale in root.glob(f".tmp-{key}-*"):  # left by a crashed process; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a folder without teacher.json is not a teacher
            shutil.rmtree(final)
        resolved = resolve_model_path(teacher_cfg.model)
        tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            fields = _train_teacher(
                spec,
                resolved,
                teacher_cfg,
                data_cfg_dir,
                max_seq_length,
                Path(cache_root),
                _resolve_device(device),
                tmp,
                on_step,
            )
            record = TeacherRecord(
                key=key,
                task=spec.name,
                model=teacher_cfg.model,
                resolved_model=resolved,
                path=str(final),
                finetune=payload["finetune"],
                max_seq_length=max_seq_length,
                data=payload["data"],
                created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                **fields,
            )
            (tmp / "teacher.json").write_text(json.dumps(record.to_json(), indent=2, sort_keys=True))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    record.trained = True
    return record


def _read_record(final: Path) -> TeacherRecord | None:
    meta = final / "teacher.json"
    if not meta.is_file():
        return None
    try:
        record = TeacherRecord.from_json(json.loads(meta.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"{meta}: unreadable teacher record ({_one_line(exc)}); delete the folder to retrain"
        ) from None
    record.path = str(final)  # the cache may have moved
    return record


def load_teacher(
    record: TeacherRecord,
    device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
    *,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The cached teacher in eval mode with its tokenizer; its label order is checked against the task."""
    spec = get_task(record.task)
    # No label_list here: the saved config's labels must speak for themselves.
    model = load_classifier(
        record.path, spec.num_labels, attn_implementation, new_head_ok=False, trust_remote_code=trust_remote_code
    )
    check_label_order(model, spec, record.path)
    model.to(_resolve_device(device)).eval()  # type: ignore[arg-type]  # transformers wraps .to() and mis-types the bound call
    return model, load_tokenizer(record.path, trust_remote_code=trust_remote_code)


# --- teachers kept in memory between the runs of one process ---------------------------------------------


@dataclass
class LoadedTeacher:
    """A cached teacher loaded into this process, with the splits its tokenizer produced.

    A pool worker (kdgrid.execute.worker) and the in-process executor run many runs in one process; runs of
    the same task and teacher then share one loaded model, tokenizer and tokenized data (read-only: runs
    freeze the teacher and subset the data into new sets) instead of loading them again per run.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    splits: dict[tuple[str, str, str, int], TokenizedSet] = field(default_factory=dict)

    def tokenized(
        self, task: str, split: str, data_dir: str | None, max_seq_length: int, cache_dir: Path
    ) -> TokenizedSet:
        """:func:`kdgrid.train.data.load_tokenized` with this teacher's tokenizer, once per process and
        data file content (its fingerprint is memoised by size and mtime, so a changed file loads again)."""
        from kdgrid.train.data import data_fingerprint, load_tokenized

        key = (task, split, data_fingerprint(task, split, data_dir), max_seq_length)
        if key not in self.splits:
            self.splits[key] = load_tokenized(task, split, data_dir, self.tokenizer, max_seq_length, cache_dir)
        return self.splits[key]


# How many loaded teachers a process keeps (least recently used dropped first); 0 loads every run afresh.
KEEP_TEACHERS = 1
_LOADED: dict[tuple[str, ...], LoadedTeacher] = {}


def loaded_teacher(
    record: TeacherRecord, device: torch.device | str = "cpu", *, trust_remote_code: bool = False
) -> LoadedTeacher:
    """:func:`load_teacher` once per process for the same cached teacher (its key, folder, creation time and
    teacher.json file, so a retrained folder loads again), device and trust setting; the last
    ``KEEP_TEACHERS`` are kept."""
    try:  # a folder retrained under the same key is another file, even within the same second
        st = (Path(record.path) / "teacher.json").stat()
        written = f"{st.st_ino}:{st.st_mtime_ns}"
    except OSError:
        written = ""
    key = (record.key, record.path, record.created, written, str(_resolve_device(device)), str(trust_remote_code))
    entry = _LOADED.pop(key, None)
    if entry is None:
        model, tokenizer = load_teacher(record, device, trust_remote_code=trust_remote_code)
        for p in model.parameters():
            p.requires_grad_(False)
        entry = LoadedTeacher(model, tokenizer)
    if KEEP_TEACHERS > 0:
        _LOADED[key] = entry  # re-inserted last: the most recently used
        while len(_LOADED) > KEEP_TEACHERS:
            del _LOADED[next(iter(_LOADED))]
    return entry


def clear_loaded_teachers() -> None:
    """Forget the teachers this process keeps (the next run loads its teacher from disk)."""
    _LOADED.clear()
