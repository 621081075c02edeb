"""GLUE examples: loading, subsampling, tokenizing (cached on disk) and batching.

Torch is imported only inside the functions that build tensors, so planning can
check data availability (``load_split``, ``data_fingerprint``) without paying
for torch.

Data source, in order: an explicit GLUE directory (``data.dir``), the
``KDGRID_DATA_DIR`` environment variable, the Hugging Face hub (``nyu-mll/glue``).
Note the hub's MRPC text is tokenized (SentEval copy) while the original GLUE
TSV is not: the data fingerprint differs, so caches never mix them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdgrid.errors import DataError
from kdgrid.tasks import TaskSpec, get_task

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

ENV_DATA_DIR = "KDGRID_DATA_DIR"
# Bump when the tokenized cache format or tokenization recipe changes.
_TOKENIZED_FORMAT = 1
# Fields can be long (MNLI parses); the csv default of 128 KiB is enough but be explicit.
csv.field_size_limit(1 << 24)


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float  # label id (index into TaskSpec.label_list), or the STS-B score
    index: int  # row number in the source file (0-based, header excluded) or the hub's idx


# --- where the data comes from ------------------------------------------------------------------


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """Explicit directory > $KDGRID_DATA_DIR > None (the hub)."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else None


def _canonical_split(spec: TaskSpec, split: str) -> str:
    if split in ("dev", "validation"):
        return spec.dev_split
    if split not in spec.splits:
        allowed = dict.fromkeys([*spec.splits, "dev"])  # ordered, without a duplicate 'dev'
        raise DataError(f"task {spec.name} has no split '{split}' (allowed: {', '.join(allowed)})")
    return split


def _tsv_path(spec: TaskSpec, split: str, root: Path) -> Path:
    if not root.is_dir():
        raise DataError(
            f"data dir {root} does not exist (task {spec.name}; set data.dir or {ENV_DATA_DIR} "
            "to a folder in the original GLUE layout)"
        )
    path = root / spec.glue_dir / spec.tsv_file(split)
    if not path.is_file():
        raise DataError(
            f"data dir {root} has no {spec.glue_dir}/{spec.tsv_file(split)} "
            f"(task {spec.name}; expected the original GLUE layout)"
        )
    return path


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime): data and model fingerprints hash big files once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def data_fingerprint(task: str, split: str, data_dir: str | None) -> str:
    """Identity of a split's data: the TSV's sha256, or the hub dataset/config/split.

    The hub form does not pin a revision; ``nyu-mll/glue`` has been stable, and
    resolving a revision would need the network.
    """
    spec = get_task(task)
    split = _canonical_split(spec, split)
    root = resolve_data_dir(data_dir)
    if root is not None:
        return "sha256:" + file_sha256(_tsv_path(spec, split, root))
    return f"hub:{spec.hub[0]}/{spec.hub[1]}/{spec.hub_split(split)}"


# --- reading ------------------------------------------------------------------------------------


def _parse_label(spec: TaskSpec, raw: str, where: str) -> int | float:
    raw = raw.strip()
    if spec.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{where}: score '{raw}' is not a number (task {spec.name})") from None
        if not np.isfinite(value):
            raise DataError(f"{where}: score '{raw}' is not finite (task {spec.name})")
        return value
    names = spec.label_list or ()
    if raw in names:
        return names.index(raw)
    if raw.isdigit() and int(raw) < spec.num_labels:
        return int(raw)
    allowed = ", ".join([*names, *map(str, range(spec.num_labels))])
    raise DataError(f"{where}: label '{raw}' is not one of {allowed} (task {spec.name})")


def _read_tsv(spec: TaskSpec, path: Path) -> list[Example]:
    layout = spec.tsv
    examples: list[Example] = []
    # utf-8-sig: the GLUE script writes MRPC's header with a BOM.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] | None = None
        if layout.header:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}:1: empty file (task {spec.name})")
            missing = [c for c in (layout.text_a, layout.text_b, layout.label) if c is not None and c not in header]
            if missing:
                raise DataError(
                    f"{path}:1: header has no column {', '.join(map(repr, missing))} "
                    f"(task {spec.name}; columns: {', '.join(header)})"
                )
            pos = {name: header.index(name) for name in header}
            ia, il = pos[str(layout.text_a)], pos[str(layout.label)]
            ib = pos[str(layout.text_b)] if layout.text_b is not None else None
            width = len(header)
        else:
            ia, il = int(layout.text_a), int(layout.label)
            ib = int(layout.text_b) if layout.text_b is not None else None
            width = 4  # CoLA: source, label, mark, sentence
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or row == [""]:
                continue  # a blank line (e.g. a trailing newline) is not a row
            if len(row) != width:
                raise DataError(f"{where}: expected {width} tab-separated columns, got {len(row)} (task {spec.name})")
            examples.append(
                Example(
                    text_a=row[ia],
                    text_b=row[ib] if ib is not None else None,
                    label=_parse_label(spec, row[il], where),
                    index=len(examples),
                )
            )
    if not examples:
        raise DataError(f"{path}: no data rows (task {spec.name})")
    return examples


def _read_hub(spec: TaskSpec, split: str) -> list[Example]:
    hub_split = spec.hub_split(split)
    try:
        import datasets

        ds = datasets.load_dataset(spec.hub[0], spec.hub[1], split=hub_split)
    except Exception as exc:  # network, auth, cache: all mean "no data"; one line for the user
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(
            f"cannot load GLUE task {spec.name}: no data dir given (data.dir or {ENV_DATA_DIR}) "
            f"and the hub is unreachable: {type(exc).__name__}: {first}"
        ) from None
    examples: list[Example] = []
    for n, row in enumerate(ds):
        label = row["label"]
        if not spec.is_regression and not 0 <= int(label) < spec.num_labels:
            raise DataError(
                f"hub {spec.hub[0]}/{spec.hub[1]}/{hub_split} row {n}: label {label} is not a label id "
                f"0..{spec.num_labels - 1} (task {spec.name}; the test split is unlabeled)"
            )
        examples.append(
            Example(
                text_a=row[spec.text_a],
                text_b=row[spec.text_b] if spec.text_b is not None else None,
                label=float(label) if spec.is_regression else int(label),
                index=int(row.get("idx", n)),
            )
        )
    return examples


def load_split(task: str, split: str, data_dir: str | None) -> list[Example]:
    """All examples of a split ('train', 'dev' or the task's dev split name) in file order."""
    spec = get_task(task)
    split = _canonical_split(spec, split)
    root = resolve_data_dir(data_dir)
    if root is not None:
        return _read_tsv(spec, _tsv_path(spec, split, root))
    return _read_hub(spec, split)


def subsample_positions(n: int, fraction: float, max_examples: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset of ``round(fraction * n)`` rows (at most ``max_examples``).

    Subsets of one seed are nested (a smaller fraction is a prefix of the same
    permutation), so data-size factors compare like with like.
    """
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"data.fraction: {fraction} is outside (0, 1]")
    if max_examples is not None and max_examples < 1:
        raise DataError(f"max examples: {max_examples} must be positive (allowed: a positive integer or none)")
    k = max(1, round(fraction * n)) if n else 0
    if max_examples is not None:
        k = min(k, max_examples)
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def subsample(examples: Sequence[Example], fraction: float, max_examples: int | None, seed: int) -> list[Example]:
    """The examples at ``subsample_positions`` (file order kept)."""
    return [examples[int(i)] for i in subsample_positions(len(examples), fraction, max_examples, seed)]


# --- tokenization, cached on disk -----------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of everything that decides token ids: the fast tokenizer's full JSON, else the vocab."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Calling the tokenizer stores its truncation/padding arguments in the backend: not identity.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__
    return hashlib.sha256(blob.encode()).hexdigest()


class TokenizedSet:
    """Token ids of a list of examples, unpadded; item ``i`` carries ``index = i``.

    Stored flat (one int32 array plus offsets) so a cache of 400k MNLI rows loads
    in milliseconds. ``index`` is the position in this set, which is what teacher
    output caches and contrastive memory banks are keyed by.
    """

    def __init__(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        type_ids: np.ndarray | None,
        labels: np.ndarray,
        source_index: np.ndarray,
    ) -> None:
        self.ids = ids
        self.offsets = offsets
        self.type_ids = type_ids
        self.labels = labels
        self.source_index = source_index

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def has_token_type_ids(self) -> bool:
        return self.type_ids is not None

    def __getitem__(self, i: int) -> dict[str, Any]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        item: dict[str, Any] = {"input_ids": self.ids[lo:hi], "label": self.labels[i], "index": i}
        if self.type_ids is not None:
            item["token_type_ids"] = self.type_ids[lo:hi]
        return item

    def subset(self, positions: Sequence[int] | np.ndarray) -> TokenizedSet:
        """A new set of the given rows, re-indexed 0..k-1."""
        pos = np.asarray(positions, dtype=np.int64)
        lengths = self.lengths[pos]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        take = (
            np.concatenate([np.arange(self.offsets[p], self.offsets[p + 1]) for p in pos])
            if len(pos)
            else np.zeros(0, dtype=np.int64)
        )
        return TokenizedSet(
            ids=self.ids[take],
            offsets=offsets,
            type_ids=self.type_ids[take] if self.type_ids is not None else None,
            labels=self.labels[pos],
            source_index=self.source_index[pos],
        )

    def save(self, path: Path) -> None:
        """Write atomically (temp file + os.replace): a crash never leaves a half cache."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {
            "ids": self.ids,
            "offsets": self.offsets,
            "labels": self.labels,
            "source_index": self.source_index,
        }
        if self.type_ids is not None:
            arrays["type_ids"] = self.type_ids
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> TokenizedSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                ids=z["ids"],
                offsets=z["offsets"],
                labels=z["labels"],
                source_index=z["source_index"],
                type_ids=z["type_ids"] if "type_ids" in z.files else None,
            )


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    *,
    is_regression: bool | None = None,
) -> TokenizedSet:
    """Tokenize pairs with 'longest_first' truncation to ``max_seq_length``; no padding."""
    if max_seq_length < 8:
        raise DataError(f"data.max_seq_length: {max_seq_length} is too short (allowed: >= 8)")
    if is_regression is None:
        is_regression = any(isinstance(e.label, float) for e in examples)
    use_tt = "token_type_ids" in tokenizer.model_input_names
    ids: list[np.ndarray] = []
    tts: list[np.ndarray] = []
    chunk = 4096  # bounds peak memory of the tokenizer's Python output on 400k-row sets
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        texts_a = [e.text_a for e in part]
        texts_b = [e.text_b or "" for e in part] if part and part[0].text_b is not None else None
        enc = tokenizer(
            texts_a,
            texts_b,
            truncation=True,
            max_length=max_seq_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=use_tt,
        )
        ids.extend(np.asarray(x, dtype=np.int32) for x in enc["input_ids"])
        if use_tt:
            tts.extend(np.asarray(x, dtype=np.int8) for x in enc["token_type_ids"])
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return TokenizedSet(
        ids=flat,
        offsets=offsets,
        type_ids=(np.concatenate(tts) if tts else np.zeros(0, dtype=np.int8)) if use_tt else None,
        labels=np.array([e.label for e in examples], dtype=np.float32 if is_regression else np.int64),
        source_index=np.array([e.index for e in examples], dtype=np.int64),
    )


def tokenized_cache_path(
    cache_dir: Path, task: str, split: str, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, fingerprint: str
) -> Path:
    key = json.dumps(
        {
            "format": _TOKENIZED_FORMAT,
            "task": task,
            "split": split,
            # No tokenizer path: the teacher's saved copy and its base model tokenize alike and share one file.
            "tokenizer_sha": tokenizer_fingerprint(tokenizer),
            "max_seq_length": max_seq_length,
            "data": fingerprint,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{task}-{split}-{digest}.npz"


def load_tokenized(
    task: str,
    split: str,
    data_dir: str | None,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    cache_dir: Path,
) -> TokenizedSet:
    """The whole split tokenized, from ``cache_dir`` when present.

    Tokenize once per split, subset per run: ``tset.subset(subsample_positions(len(tset), ...))``.
    """
    spec = get_task(task)
    split = _canonical_split(spec, split)
    path = tokenized_cache_path(
        Path(cache_dir), task, split, tokenizer, max_seq_length, data_fingerprint(task, split, data_dir)
    )
    if path.is_file():
        try:
            return TokenizedSet.load(path)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a corrupt cache is rebuilt, not reported
    tset = tokenize_examples(
        load_split(task, split, data_dir), tokenizer, max_seq_length, is_regression=spec.is_regression
    )
    tset.save(path)
    return tset


# --- batching -------------------------------------------------------------------------------------


class Collator:
    """Pads a list of TokenizedSet items into tensors.

    Dynamic padding (to the longest row in the batch) unless ``fixed_length`` is
    given (benchmarks want every batch the same shape).
    """

    def __init__(self, pad_token_id: int, *, fixed_length: int | None = None, is_regression: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.fixed_length = fixed_length
        self.is_regression = is_regression

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        longest = max(len(it["input_ids"]) for it in items)
        width = self.fixed_length if self.fixed_length is not None else longest
        if longest > width:
            raise DataError(f"a batch row has {longest} tokens, more than the fixed length {width}")
        b = len(items)
        input_ids = np.full((b, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        has_tt = "token_type_ids" in items[0]
        tt = np.zeros((b, width), dtype=np.int64) if has_tt else None
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            input_ids[r, :n] = it["input_ids"]
            mask[r, :n] = 1
            if tt is not None:
                tt[r, :n] = it["token_type_ids"]
        labels = np.array([it["label"] for it in items])
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.tensor(labels, dtype=torch.float32 if self.is_regression else torch.long),
            "indices": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }
        if tt is not None:
            batch["token_type_ids"] = torch.from_numpy(tt)
        return batch


def length_batches(lengths: np.ndarray, max_rows: int, max_tokens: int) -> list[np.ndarray]:
    """Positions in batches, longest rows first, each batch at most ``max_rows`` rows and ``max_tokens``
    token slots (rows x its longest row): long rows go in small batches, so little is computed on padding.
    For passes without gradients (teacher tables, evaluation), where the batch size is free."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        width = max(1, int(lengths[order[start]]))
        rows = max(1, min(max_rows, max_tokens // width))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class LengthGroupedBatchSampler:
    """Seeded batches of similar length ("group_by_length"): less padding, nearly the randomness of random batches.

    Each epoch: a seeded permutation is cut into chunks of ``group`` batches, each
    chunk sorted by length (ties in the permutation's order) and cut into batches, then
    the batch order is shuffled. A chunk holds at most 1/``min_chunks`` of the set
    (at least one batch): a small set sorted as one chunk would give the same batches
    every epoch (41-64 % of within-batch pairs recurred on 300 examples); with 8 or more
    chunks about 6 % recur, near random batches' 5 % (tests/test_data.py measures it).
    The epoch advances on every ``__iter__`` (or set it with ``set_epoch``), so a
    run that iterates once per epoch sees the same order for the same seed.
    With ``shuffle=False`` the whole set is sorted by length (fast evaluation;
    rows come back out of order: use the batch's ``indices``).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        group: int = 50,
        drop_last: bool = False,
        min_chunks: int = 8,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size: {batch_size} must be positive")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group = group
        self.drop_last = drop_last
        self.min_chunks = min_chunks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            # Stable sort, longest first: the first batch shows the peak memory at once.
            order = np.argsort(-self.lengths, kind="stable")
            yield from (b.tolist() for b in self._cut(order))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        perm = rng.permutation(n)
        chunk = self.batch_size * max(1, min(self.group, n // (self.batch_size * self.min_chunks)))
        order = (
            np.concatenate(
                [
                    perm[i : i + chunk][np.argsort(-self.lengths[perm[i : i + chunk]], kind="stable")]
                    for i in range(0, n, chunk)
                ]
            )
            if n
            else perm
        )
        # Cut within the global order: only the final batch may be short.
        batches = self._cut(order)
        for j in rng.permutation(len(batches)):
            yield batches[j].tolist()


class RandomBatchSampler(LengthGroupedBatchSampler):
    """Plain seeded shuffling (no length grouping), with the same epoch semantics."""

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            yield from (b.tolist() for b in self._cut(np.arange(n)))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        yield from (b.tolist() for b in self._cut(rng.permutation(n)))


def make_loader(
    dataset: TokenizedSet,
    batch_size: int,
    *,
    pad_token_id: int,
    shuffle: bool,
    seed: int = 0,
    group_by_length: bool = True,
    fixed_length: int | None = None,
    drop_last: bool = False,
    is_regression: bool | None = None,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader[Any]:
    """A DataLoader over ``dataset``; see :class:`LengthGroupedBatchSampler` for the order.

    ``pin_memory``: collated batches in page-locked memory, so that ``.to(cuda, non_blocking=True)`` is a
    true asynchronous copy (bench/gpu.py measures whether it pays); only for a CUDA device."""
    import torch
    from torch.utils.data import DataLoader

    if is_regression is None:
        is_regression = dataset.labels.dtype.kind == "f"
    cls = LengthGroupedBatchSampler if group_by_length else RandomBatchSampler
    sampler = cls(dataset.lengths, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
    # num_workers=0: collation is a few numpy copies; worker processes would cost more than they save.
    # Own generator: DataLoader draws a base seed per iteration from it; from the global RNG that
    # draw would shift dropout masks whenever an extra evaluation pass happens.
    return DataLoader(
        dataset,  # type: ignore[arg-type]  # a map-style dataset (__getitem__/__len__), not a torch Dataset subclass
        batch_sampler=sampler,
        collate_fn=Collator(pad_token_id, fixed_length=fixed_length, is_regression=is_regression),
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )
