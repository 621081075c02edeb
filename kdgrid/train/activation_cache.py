"""The frozen teacher's layer activations, computed once per example and shared by every epoch and run.

A layer objective (attention, value, hidden-state or embedding loss) needs, besides the teacher's logits, what
the teacher computes inside the mapped layers. The teacher runs in eval mode (no dropout), so these are the same
for an example in every epoch and in every run that shares the teacher, the training data and the max length.
They are stored once, on disk, and read back per batch instead of running the teacher every step.

What is stored (per teacher layer, one file per layer and kind, only for the kinds a run's terms need):

* ``qk``     the outputs of the layer's query and key projections, [n, 2·H·d_head] per example (terms needing
  ``qk``: Att-MSE, Att-KL; the scores Q Kᵀ/√d are recomputed from them, which costs one small matmul per
  mapped layer instead of a teacher forward);
* ``v``      the value projection, [n, H·d_head] (``values``: Val-KL);
* ``hidden`` the layer's output hidden state, [n, D] (``hidden``: Hid-Seq; layer 0 = the embeddings for
  ``embeddings``);
* ``cls``    position 0 of the hidden state only, [1, D] (``cls`` without ``hidden``: Hid-CLS, contrastive).

n is the example's true length: rows are ragged, padding is never stored. Disk size of a run's rows is

    bytes = Σ_rows n_i · Σ_layers (2·D_att·[qk] + D_att·[values] + D·[hidden]) · itemsize  (+ D · itemsize per
            row and layer for ``cls``)

with D_att = H·d_head (= D for BERT/RoBERTa), itemsize 2 for fp16/bf16. Q and K are stored rather than the
attention scores (H·n² per layer and example) because they grow with n, not n², and serve MSE on scores,
KL on probabilities and either ``head_match`` alike; at n = 64 and 12 heads of 32 the two are the same size
(2·384·64 = 12·64²), below it scores would be smaller, above it Q/K are.

Layout (``cache_root/teacher_activations/<teacher key>-<data digest>-<precision>/``): per (layer, kind) an
append-only data file ``L<layer>.<kind>.<dtype>.bin`` ([tokens, width] raw) and an index
``L<layer>.<kind>.<dtype>.idx.npy`` (int64 [rows + 1]: each row's first token in the data file, -1 when not
stored; the last entry is the number of tokens written). Filling holds a file lock on the folder, truncates
the data file to the index's end (a crashed filler's tail), appends the missing rows, fsyncs, and then
replaces the index atomically: a reader sees either the old or the new index, and the rows an index names
never change. Readers memory-map the data files without the lock.

Storage rounding: fp16 keeps 11 significant bits (relative error ≤ 2⁻¹¹ ≈ 4.9e-4 per value), bf16 8 bits
(≤ 2⁻⁸ ≈ 3.9e-3); ``fp32`` stores exactly what the teacher computed. ``KDGRID_ACTIVATION_DTYPE`` chooses
(default fp16); ``KDGRID_ACTIVATION_CACHE_GB`` is the disk budget of all activation caches under one
``cache_root`` together (default 20; 0 switches the cache off). A run whose rows would not fit, or whose values
overflow fp16, recomputes the teacher every step as before; the choice is logged (logger
``kdgrid.train.activation_cache``) and recorded as the run's metric row ``cache/teacher_activations`` (1 cached,
0 recomputed).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor, nn

from kdgrid.errors import KdgridError
from kdgrid.train.capture import capture_qkv, encoder_layers, split_heads
from kdgrid.train.data import Collator, TokenizedSet, length_batches
from kdgrid.train.models import model_inputs
from kdgrid.train.teacher_cache import add_teacher_logits
from kdgrid.train.terms import Captured

log = logging.getLogger(__name__)

ENV_BUDGET_GB = "KDGRID_ACTIVATION_CACHE_GB"
ENV_DTYPE = "KDGRID_ACTIVATION_DTYPE"
DEFAULT_BUDGET_GB = 20.0
KINDS = ("qk", "v", "hidden", "cls")
_DTYPES: dict[str, tuple[torch.dtype, np.dtype[Any]]] = {
    # numpy has no bf16: 2-byte types are stored as their raw bits and viewed back in torch.
    "fp16": (torch.float16, np.dtype(np.int16)),
    "bf16": (torch.bfloat16, np.dtype(np.int16)),
    "fp32": (torch.float32, np.dtype(np.float32)),
}
_RAW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.float32}


@dataclass(frozen=True)
class ActivationNeeds:
    """Which teacher layers (1-based; 0 = embeddings) a stage reads, per kind."""

    qk: tuple[int, ...] = ()
    v: tuple[int, ...] = ()
    hidden: tuple[int, ...] = ()
    cls: tuple[int, ...] = ()

    def files(self) -> list[tuple[str, int]]:
        return [(kind, layer) for kind in KINDS for layer in getattr(self, kind)]

    def __bool__(self) -> bool:
        return bool(self.files())


def activation_needs(objective: Any) -> ActivationNeeds:
    """What ``objective`` (a :class:`~kdgrid.train.objectives.DistillObjective`) reads from the teacher's layers."""
    needs = objective.needs
    layers = tuple(sorted(objective.teacher_layers_needed()))
    hidden = layers if "hidden" in needs else ()
    if "embeddings" in needs:
        hidden = (0, *hidden)
    return ActivationNeeds(
        qk=layers if "qk" in needs else (),
        v=layers if "values" in needs else (),
        hidden=hidden,
        cls=layers if "cls" in needs and "hidden" not in needs else (),
    )


def teacher_widths(teacher: nn.Module) -> dict[str, int]:
    """Stored width per kind: 2·D_att, D_att, D, D."""
    block: Any = encoder_layers(teacher)[0]
    config: Any = teacher.config
    d_att = int(block.attention.self.query.out_features)
    d = int(config.hidden_size)
    return {"qk": 2 * d_att, "v": d_att, "hidden": d, "cls": d}


def tokens_per_row(kind: str, lengths: np.ndarray) -> np.ndarray:
    return np.ones_like(lengths) if kind == "cls" else lengths


def disk_bytes(lengths: np.ndarray, needs: ActivationNeeds, widths: dict[str, int], itemsize: int = 2) -> int:
    """The module docstring's formula: bytes to store ``needs`` for rows of these true lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(sum(int(tokens_per_row(kind, lengths).sum()) * widths[kind] * itemsize for kind, _ in needs.files()))


def budget_bytes() -> int:
    """``KDGRID_ACTIVATION_CACHE_GB`` (GiB, default 20) as bytes; 0 switches the cache off."""
    raw = os.environ.get(ENV_BUDGET_GB, "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_BUDGET_GB
    except ValueError:
        raise KdgridError(f"{ENV_BUDGET_GB}={raw!r} is not a number (allowed: GiB >= 0, 0 = off)") from None
    if gb < 0:
        raise KdgridError(f"{ENV_BUDGET_GB}={raw!r} is negative (allowed: GiB >= 0, 0 = off)")
    return int(gb * 2**30)


def storage_dtype() -> str:
    name = os.environ.get(ENV_DTYPE, "").strip() or "fp16"
    if name not in _DTYPES:
        raise KdgridError(f"{ENV_DTYPE}={name!r} (allowed: {', '.join(_DTYPES)})")
    return name


def data_digest(data: TokenizedSet) -> str:
    """Rows are read by position, so the key hashes the token ids in order (a sum would miss a permutation)."""
    h = hashlib.blake2b(digest_size=10)
    for arr in (data.ids, data.offsets, data.type_ids):
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    return f"{len(data)}-{h.hexdigest()}"


def cache_dir(cache_root: Path, teacher_key: str, data: TokenizedSet, precision: str) -> Path:
    return Path(cache_root) / "teacher_activations" / f"{teacher_key}-{data_digest(data)}-{precision}"


def _used_bytes(root: Path) -> int:
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class _File:
    """One (kind, layer) pair: its index in memory, its data file on disk."""

    def __init__(self, folder: Path, kind: str, layer: int, dtype: str, width: int, n_rows: int) -> None:
        self.kind, self.layer, self.width = kind, layer, width
        self.torch_dtype, self.np_dtype = _DTYPES[dtype]
        self.data = folder / f"L{layer}.{kind}.{dtype}.bin"
        self.index_path = folder / f"L{layer}.{kind}.{dtype}.idx.npy"
        if self.index_path.is_file():
            self.index = np.load(self.index_path)
            if self.index.shape != (n_rows + 1,):
                raise KdgridError(f"{self.index_path}: index has {self.index.shape[0] - 1} rows, the data {n_rows}")
        else:
            self.index = np.full(n_rows + 1, -1, dtype=np.int64)
            self.index[-1] = 0

    @property
    def row_bytes(self) -> int:
        return self.width * self.np_dtype.itemsize

    def memmap(self) -> np.ndarray:
        end = int(self.index[-1])
        if end == 0:
            return np.zeros((0, self.width), dtype=self.np_dtype)
        return np.memmap(self.data, dtype=self.np_dtype, mode="r", shape=(end, self.width))

    def save_index(self) -> None:
        tmp = self.index_path.with_suffix(".tmp.npy")
        np.save(tmp, self.index)
        os.replace(tmp, self.index_path)


class ActivationCache:
    """The stored activations a stage reads, memory-mapped; :meth:`captured` builds a batch's teacher outputs."""

    def __init__(self, files: list[_File], heads: int, n_layers: int) -> None:
        self.heads = heads
        self.n_layers = n_layers
        self.files = [(f.kind, f.layer, f.memmap(), f.index[:-1].copy(), f.torch_dtype) for f in files]

    def _gather(self, data: np.ndarray, starts: np.ndarray, counts: np.ndarray, dtype: torch.dtype) -> Tensor:
        """The rows' tokens, concatenated in batch order, as float32."""
        total = int(counts.sum())
        first = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        raw = torch.from_numpy(np.ascontiguousarray(data[first + np.arange(total)]))
        return raw.view(dtype).float()

    def captured(self, example_ids: Tensor, host_mask: Tensor, attention_mask: Tensor, logits: Tensor) -> Captured:
        """The teacher's outputs for a batch of full-set rows ``example_ids`` padded as ``attention_mask``
        (right padding; ``host_mask``: the same on the CPU, so no device sync): stored values at real tokens,
        0 at padding. Layers and kinds the stage does not read are empty tensors."""
        ids = example_ids.cpu().numpy()
        counts = host_mask.sum(1).numpy()
        valid = attention_mask.bool()
        device = attention_mask.device
        batch, seq = valid.shape
        empty = torch.empty(0, device=device)
        hidden: list[Tensor] = [empty] * (self.n_layers + 1)
        parts: dict[int, dict[str, Tensor]] = {}
        for kind, layer, data, index, dtype in self.files:
            starts = index[ids]
            if (starts < 0).any():
                raise KdgridError(f"teacher activations L{layer}.{kind} miss rows {ids[starts < 0].tolist()[:5]}")
            if kind == "cls":
                hidden[layer] = self._gather(data, starts, np.ones_like(counts), dtype).to(device)[:, None]
                continue
            rows = self._gather(data, starts, counts, dtype).to(device, non_blocking=True)
            out = rows.new_zeros(batch, seq, rows.size(-1))
            out[valid] = rows
            if kind == "hidden":
                hidden[layer] = out
            elif kind == "qk":
                half = out.size(-1) // 2
                parts.setdefault(layer, {}).update(
                    q=split_heads(out[..., :half], self.heads), k=split_heads(out[..., half:], self.heads)
                )
            else:
                parts.setdefault(layer, {})["v"] = split_heads(out, self.heads)
        qkv = {layer: (p.get("q", empty), p.get("k", empty), p.get("v", empty)) for layer, p in parts.items()}
        return Captured(logits=logits, hidden_states=tuple(hidden), qkv=qkv, attention_mask=attention_mask)


def _batch_tensors(kind: str, layer: int, out: Any, qkv: dict[int, tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """[B, T, width] of one kind from the teacher's forward (Q/K/V merged back from [B, H, T, d])."""

    def merge(x: Tensor) -> Tensor:
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    if kind == "qk":
        return torch.cat([merge(qkv[layer][0]), merge(qkv[layer][1])], dim=-1)
    if kind == "v":
        return merge(qkv[layer][2])
    hs: Tensor = out.hidden_states[layer]
    return hs[:, :1] if kind == "cls" else hs


@torch.no_grad()
def cached_teacher_activations(
    teacher: nn.Module,
    teacher_key: str,
    full: TokenizedSet,
    positions: np.ndarray,
    needs: ActivationNeeds,
    cache_root: Path,
    device: torch.device,
    pad_id: int,
    *,
    precision: str = "fp32",
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    budget: int | None = None,
    dtype: str | None = None,
    batch_size: int = 128,
    max_tokens: int | None = None,
) -> ActivationCache | None:
    """The stored activations ``needs`` names for the rows ``positions`` of ``full``, filled where missing;
    None (logged) when they would not fit in the disk ``budget`` (default: ``KDGRID_ACTIVATION_CACHE_GB``) or
    overflow the storage ``dtype`` (default: ``KDGRID_ACTIVATION_DTYPE``): the caller then runs the teacher.

    The teacher runs in eval mode under ``autocast``, as it does uncached in the loop.
    """
    budget = budget_bytes() if budget is None else budget
    dtype = dtype or storage_dtype()
    if budget <= 0:
        log.info("teacher activations: recomputed every step (%s=0)", ENV_BUDGET_GB)
        return None
    folder = cache_dir(cache_root, teacher_key, full, precision)
    folder.mkdir(parents=True, exist_ok=True)
    widths = teacher_widths(teacher)
    block: Any = encoder_layers(teacher)[0]
    config: Any = teacher.config
    heads = int(block.attention.self.num_attention_heads)
    n_layers = int(config.num_hidden_layers)
    positions = np.unique(np.asarray(positions, dtype=np.int64))
    with FileLock(str(folder) + ".lock"):
        files = [_File(folder, kind, layer, dtype, widths[kind], len(full)) for kind, layer in needs.files()]
        missing = {id(f): positions[f.index[positions] < 0] for f in files}
        lengths = full.lengths
        new_bytes = sum(int(tokens_per_row(f.kind, lengths[missing[id(f)]]).sum()) * f.row_bytes for f in files)
        if new_bytes:
            used = _used_bytes(folder.parent)
            if used + new_bytes > budget:
                log.warning(
                    "teacher activations: recomputed every step: storing them needs %.1f MiB more, %.1f "
                    "of the %.1f MiB budget (%s) are used",
                    new_bytes / 2**20,
                    used / 2**20,
                    budget / 2**20,
                    ENV_BUDGET_GB,
                )
                return None
            filled = _fill(teacher, full, files, missing, device, pad_id, autocast, batch_size, max_tokens)
            if filled is None:
                log.warning(
                    "teacher activations: recomputed every step: values overflow %s (set %s=bf16 or fp32)",
                    dtype,
                    ENV_DTYPE,
                )
                return None
            # The same forward gave the logits: the logit table needs no pass of its own for these rows.
            add_teacher_logits(teacher_key, full, filled[0], filled[1], cache_root, precision)
        log.info(
            "teacher activations: read from %s (%d rows, %d new)",
            folder,
            len(positions),
            max((len(m) for m in missing.values()), default=0),
        )
        return ActivationCache(files, heads, n_layers)


def _fill(
    teacher: nn.Module,
    full: TokenizedSet,
    files: list[_File],
    missing: dict[int, np.ndarray],
    device: torch.device,
    pad_id: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    batch_size: int,
    max_tokens: int | None,
) -> tuple[np.ndarray, Tensor] | None:
    """Append the missing rows of every file; return the rows computed and their logits, or None (indexes
    untouched) when a value overflows the dtype."""
    todo = np.unique(np.concatenate(list(missing.values())))
    need_rows = {id(f): set(missing[id(f)].tolist()) for f in files}
    qkv_layers = sorted({f.layer for f in files if f.kind in ("qk", "v")})
    want_hidden = any(f.kind in ("hidden", "cls") for f in files)
    subset = full.subset(todo)
    collate = Collator(pad_id, is_regression=full.labels.dtype.kind == "f")
    budget = max_tokens or (2048 if torch.device(device).type == "cpu" else 32768)
    was_training = teacher.training
    teacher.eval()  # no dropout: the stored values are what every epoch would compute
    handles: dict[int, Any] = {}
    files_open = contextlib.ExitStack()
    new_index = {id(f): f.index.copy() for f in files}
    logits: list[Tensor] = []
    done: list[np.ndarray] = []
    try:
        for f in files:
            if len(missing[id(f)]):
                end = int(f.index[-1]) * f.row_bytes
                with open(f.data, "ab") as fh:  # a crashed filler may have left bytes past the index's end
                    fh.truncate(end)
                handles[id(f)] = files_open.enter_context(open(f.data, "ab"))  # noqa: SIM115 (closed by the ExitStack)
        with capture_qkv(teacher, qkv_layers) as qkv:
            for rows in length_batches(subset.lengths, batch_size, budget):
                batch = collate([subset[int(i)] for i in rows])
                inputs = model_inputs(batch, device)
                with autocast():
                    out = teacher(**inputs, output_hidden_states=want_hidden)
                valid = inputs["attention_mask"].bool()
                full_rows = todo[rows]
                logits.append(out.logits.float().cpu())
                done.append(full_rows)
                for f in files:
                    keep = [r for r, p in enumerate(full_rows.tolist()) if p in need_rows[id(f)]]
                    if not keep:
                        continue
                    x = _batch_tensors(f.kind, f.layer, out, qkv)[keep]
                    x = x.reshape(-1, x.size(-1)) if f.kind == "cls" else x[valid[keep]]
                    counts = tokens_per_row(f.kind, full.lengths[full_rows[keep]])
                    if x.size(0) != int(counts.sum()):
                        raise KdgridError(f"teacher activations: {x.size(0)} tokens for rows of {int(counts.sum())}")
                    stored = x.to(f.torch_dtype)
                    if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(x).all()):
                        return None
                    raw = stored.view(_RAW[f.torch_dtype]).cpu().numpy()
                    index = new_index[id(f)]
                    index[full_rows[keep]] = index[-1] + np.concatenate([[0], np.cumsum(counts)[:-1]])
                    index[-1] += int(counts.sum())
                    handles[id(f)].write(raw.tobytes())
                qkv.clear()
        for f in files:
            if id(f) in handles:
                handles[id(f)].flush()
                os.fsync(handles[id(f)].fileno())
    finally:
        files_open.close()
        teacher.train(was_training)
    for f in files:  # data first, then the index that names it: a reader never sees a row before its bytes
        if id(f) in handles:
            f.index = new_index[id(f)]
            f.save_index()
    return np.concatenate(done), torch.cat(logits)
