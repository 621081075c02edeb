"""GLUE loading (real files when present), subsampling, tokenized cache, padding and length grouping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdgrid.errors import DataError
from kdgrid.train import data as data_mod
from kdgrid.train.data import (
    Collator,
    Example,
    LengthGroupedBatchSampler,
    RandomBatchSampler,
    data_fingerprint,
    load_split,
    load_tokenized,
    make_loader,
    subsample,
    subsample_positions,
    tokenize_examples,
)

# --------------------------------------------------------------------------- real GLUE files

REAL_COUNTS = [
    ("cola", "train", 8551),
    ("cola", "dev", 1043),
    ("sst2", "train", 67349),
    ("sst2", "dev", 872),
    ("mrpc", "train", 3668),
    ("mrpc", "dev", 408),
    ("stsb", "train", 5749),
    ("stsb", "dev", 1500),
    ("rte", "train", 2490),
    ("rte", "dev", 277),
    ("qnli", "dev", 5463),
]


@pytest.mark.parametrize(("task", "split", "rows"), REAL_COUNTS)
def test_real_glue_row_counts(glue_dir: Path, task: str, split: str, rows: int) -> None:
    examples = load_split(task, split, str(glue_dir))
    assert len(examples) == rows
    assert [e.index for e in examples[:3]] == [0, 1, 2]
    assert all(e.text_a for e in examples)


def test_real_glue_labels_and_columns(glue_dir: Path) -> None:
    d = str(glue_dir)
    assert Counter(e.label for e in load_split("cola", "train", d)) == {1: 6023, 0: 2528}
    assert Counter(e.label for e in load_split("sst2", "train", d)) == {1: 37569, 0: 29780}
    mrpc = load_split("mrpc", "train", d)  # header with a UTF-8 BOM, quotes kept verbatim (QUOTE_NONE)
    assert Counter(e.label for e in mrpc) == {1: 2474, 0: 1194}
    assert mrpc[0].text_a.startswith('Amrozi accused his brother, whom he called "the witness"')
    assert mrpc[0].text_b is not None
    rte = load_split("rte", "dev", d)  # label strings -> hub ids: entailment 0, not_entailment 1
    assert Counter(e.label for e in rte) == {0: 146, 1: 131}
    assert Counter(e.label for e in load_split("qnli", "dev", d)) == {0: 2702, 1: 2761}
    stsb = load_split("stsb", "train", d)
    assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in stsb)
    assert (stsb[0].text_a, stsb[0].text_b, stsb[0].label) == (
        "A plane is taking off.",
        "An air plane is taking off.",
        5.0,
    )
    cola = load_split("cola", "train", d)
    assert cola[0].text_b is None
    assert data_fingerprint("cola", "train", d).startswith("sha256:cb368ebeb9f27d7a")  # per SOURCES.md


def test_real_qnli_has_no_train(glue_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        load_split("qnli", "train", str(glue_dir))
    assert str(err.value) == f"data dir {glue_dir} has no QNLI/train.tsv (task qnli; expected the original GLUE layout)"


# --------------------------------------------------------------------------- small synthetic GLUE dirs


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_file_and_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_split("cola", "train", str(tmp_path))
    assert str(err.value) == f"data dir {tmp_path} has no CoLA/train.tsv (task cola; expected the original GLUE layout)"
    with pytest.raises(DataError) as err:
        load_split("cola", "train", "/x")
    assert str(err.value) == (
        "data dir /x does not exist (task cola; set data.dir or KDGRID_DATA_DIR to a folder in the original GLUE layout)"
    )
    with pytest.raises(DataError) as err:
        load_split("cola", "test", str(tmp_path))
    assert str(err.value) == "task cola has no split 'test' (allowed: train, dev)"
    with pytest.raises(DataError, match="allowed: train, dev_matched, dev_mismatched, dev"):
        load_split("mnli", "test", str(tmp_path))


def test_malformed_rows_name_file_and_line(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "RTE" / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly two\tcolumns\n",
    )
    with pytest.raises(DataError) as err:
        load_split("rte", "train", str(tmp_path))
    assert str(err.value) == f"{f}:3: expected 4 tab-separated columns, got 3 (task rte)"
    _write(f, "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataError) as err:
        load_split("rte", "train", str(tmp_path))
    assert str(err.value) == f"{f}:2: label 'maybe' is not one of entailment, not_entailment, 0, 1 (task rte)"
    g = _write(tmp_path / "STS-B" / "dev.tsv", "sentence1\tsentence2\n a\tb\n")
    with pytest.raises(DataError) as err:
        load_split("stsb", "dev", str(tmp_path))
    assert str(err.value) == f"{g}:1: header has no column 'score' (task stsb; columns: sentence1, sentence2)"


def test_quotes_are_data_not_syntax(tmp_path: Path) -> None:
    # An unbalanced quote must not swallow the following rows (csv.QUOTE_NONE).
    _write(tmp_path / "SST-2" / "dev.tsv", 'sentence\tlabel\n"it was\t1\nfine "ok" \t0\n')
    ex = load_split("sst2", "dev", str(tmp_path))
    assert [(e.text_a, e.label) for e in ex] == [('"it was', 1), ('fine "ok" ', 0)]


def test_hub_fallback_error_and_resolution_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_cola_dir: Callable[..., Path]
) -> None:
    monkeypatch.delenv("KDGRID_DATA_DIR", raising=False)
    with pytest.raises(DataError) as err:  # conftest sets HF_DATASETS_OFFLINE=1: fails fast
        load_split("cola", "train", None)
    assert str(err.value).startswith(
        "cannot load GLUE task cola: no data dir given (data.dir or KDGRID_DATA_DIR) and the hub is unreachable: "
    )
    env_dir = make_cola_dir(tmp_path / "env", n_train=5)
    explicit = make_cola_dir(tmp_path / "explicit", n_train=7)
    monkeypatch.setenv("KDGRID_DATA_DIR", str(env_dir))
    assert len(load_split("cola", "train", None)) == 5
    assert len(load_split("cola", "train", str(explicit))) == 7
    assert data_fingerprint("cola", "train", None) != data_fingerprint("cola", "train", str(explicit))


# --------------------------------------------------------------------------- subsampling


def _examples(n: int) -> list[Example]:
    return [Example(text_a=f"s{i}", text_b=None, label=i % 2, index=i) for i in range(n)]


def test_subsample_deterministic_nested_and_bounded() -> None:
    ex = _examples(100)
    a = subsample(ex, 0.3, None, seed=1)
    assert a == subsample(ex, 0.3, None, seed=1)
    assert len(a) == 30 and [e.index for e in a] == sorted(e.index for e in a)
    assert a != subsample(ex, 0.3, None, seed=2)
    small = subsample(ex, 0.1, None, seed=1)
    assert {e.index for e in small} <= {e.index for e in a}  # nested for one seed
    assert len(subsample(ex, 1.0, 12, seed=0)) == 12
    assert subsample(ex, 1.0, None, seed=5) == ex
    assert len(subsample(ex, 0.001, None, seed=0)) == 1
    assert list(subsample_positions(100, 0.3, None, 1)) == [e.index for e in a]
    with pytest.raises(DataError, match=r"data.fraction: 0.0 is outside \(0, 1\]"):
        subsample(ex, 0.0, None, seed=0)


# --------------------------------------------------------------------------- tokenization, cache, batches


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from kdgrid.train.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_tokenized_cache_roundtrip(
    tmp_path: Path,
    tiny_tokenizer,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    make_cola_dir: Callable[..., Path],
) -> None:
    d = str(make_cola_dir(tmp_path / "glue"))
    cache = tmp_path / "cache"
    first = load_tokenized("cola", "train", d, tiny_tokenizer, 16, cache)
    files = list(cache.glob("cola-train-*.npz"))
    assert len(first) == 40 and len(files) == 1
    assert first.lengths.max() <= 16 and first.has_token_type_ids

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("cache miss")

    monkeypatch.setattr(data_mod, "load_split", boom)
    again = load_tokenized("cola", "train", d, tiny_tokenizer, 16, cache)
    assert np.array_equal(again.ids, first.ids) and np.array_equal(again.offsets, first.offsets)
    assert np.array_equal(again.labels, first.labels)
    monkeypatch.undo()
    load_tokenized("cola", "train", d, tiny_tokenizer, 32, cache)  # another length: another file
    assert len(list(cache.glob("cola-train-*.npz"))) == 2
    assert not list(cache.glob("*.tmp"))


def test_subset_reindexes(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = [Example(text_a="the dog " * (i + 1), text_b="the cat", label=i % 2, index=100 + i) for i in range(6)]
    full = tokenize_examples(ex, tiny_tokenizer, 32)
    sub = full.subset([4, 1])
    assert len(sub) == 2 and [sub[i]["index"] for i in range(2)] == [0, 1]
    assert list(sub.source_index) == [104, 101]
    assert np.array_equal(sub[0]["input_ids"], full[4]["input_ids"])
    assert np.array_equal(sub[1]["token_type_ids"], full[1]["token_type_ids"])


def test_dynamic_and_fixed_padding(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch

    ex = [Example(text_a=" ".join(["the"] * n), text_b=None, label=n % 2, index=n) for n in (1, 5, 3)]
    tset = tokenize_examples(ex, tiny_tokenizer, 64)
    items = [tset[i] for i in range(3)]
    batch = Collator(0)(items)
    assert batch["input_ids"].shape == (3, 7)  # longest: 5 words + [CLS] + [SEP]
    assert batch["attention_mask"].sum(1).tolist() == [3, 7, 5]
    assert batch["token_type_ids"].shape == (3, 7)
    assert batch["labels"].dtype == torch.long and batch["indices"].tolist() == [0, 1, 2]
    assert batch["input_ids"][0, 3:].eq(0).all()
    fixed = Collator(0, fixed_length=64)(items)
    assert fixed["input_ids"].shape == (3, 64) and fixed["attention_mask"].sum().item() == 15
    reg = Collator(0, is_regression=True)([{**items[0], "label": 2.5}])
    assert reg["labels"].dtype == torch.float32
    with pytest.raises(DataError, match="more than the fixed length 4"):
        Collator(0, fixed_length=4)(items)


def test_length_grouping_is_seeded_complete_and_saves_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, size=1000)
    s = LengthGroupedBatchSampler(lengths, 16, seed=7, group=5)
    epoch0, epoch1 = list(s), list(s)
    assert sorted(i for b in epoch0 for i in b) == list(range(1000))  # every row once per epoch
    assert epoch0 != epoch1  # the epoch advances
    s2 = LengthGroupedBatchSampler(lengths, 16, seed=7, group=5)
    assert list(s2) == epoch0
    s2.set_epoch(1)
    assert list(s2) == epoch1
    assert len(s) == 63 and sum(len(b) < 16 for b in epoch0) == 1

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    rand = list(RandomBatchSampler(lengths, 16, seed=7))
    assert padded(epoch0) < 0.8 * padded(rand)
    # Evaluation order: longest first, all rows.
    ev = list(LengthGroupedBatchSampler(lengths, 16, shuffle=False))
    assert lengths[ev[0][0]] == lengths.max() and sorted(i for b in ev for i in b) == list(range(1000))
    dropped = list(LengthGroupedBatchSampler(lengths, 16, seed=1, drop_last=True))
    assert all(len(b) == 16 for b in dropped) and len(dropped) == 62


def test_make_loader_batches(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = [Example(text_a=" ".join(["the"] * (1 + i % 9)), text_b=None, label=float(i), index=i) for i in range(50)]
    tset = tokenize_examples(ex, tiny_tokenizer, 32, is_regression=True)
    loader = make_loader(tset, 8, pad_token_id=0, shuffle=True, seed=3)
    seen = []
    for batch in loader:
        assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
        seen += batch["indices"].tolist()
        # labels travel with their rows
        assert batch["labels"].tolist() == [float(i) for i in batch["indices"].tolist()]
    assert sorted(seen) == list(range(50))
    fixed = make_loader(tset, 8, pad_token_id=0, shuffle=False, group_by_length=False, fixed_length=32)
    first = next(iter(fixed))
    assert first["input_ids"].shape == (8, 32) and first["indices"].tolist() == list(range(8))
    # Page-locked batches for asynchronous copies to a GPU are asked for, never the default (bench/gpu.py --parts pin).
    assert make_loader(tset, 8, pad_token_id=0, shuffle=False, pin_memory=True).pin_memory is True
    assert loader.pin_memory is False


def _pair_recurrence(sampler: Any, epochs: int = 4) -> float:
    """Share of within-batch pairs of one epoch that are within-batch pairs again in the next (mean)."""
    import itertools

    def pairs(batches: list[list[int]]) -> set[tuple[int, int]]:
        return {(min(a, b), max(a, b)) for batch in batches for a, b in itertools.combinations(batch, 2)}

    per_epoch = [pairs(list(sampler)) for _ in range(epochs)]
    return float(np.mean([len(a & b) / len(a) for a, b in zip(per_epoch, per_epoch[1:])]))


def test_length_grouping_on_a_small_set_does_not_repeat_batches() -> None:
    """300 rows, batch 16: one sorted chunk made the same batches every epoch (about 61 % of pairs recurred;
    min_chunks=1 reproduces it); now about 8 %, against about 5 % for random batches."""
    from kdgrid.train.data import LengthGroupedBatchSampler, RandomBatchSampler

    lengths = np.random.default_rng(0).integers(5, 64, 300)
    grouped = _pair_recurrence(LengthGroupedBatchSampler(lengths, 16, seed=0))
    random_ = _pair_recurrence(RandomBatchSampler(lengths, 16, seed=0))
    old = _pair_recurrence(LengthGroupedBatchSampler(lengths, 16, seed=0, min_chunks=1))
    assert old > 0.5
    assert grouped < 0.12 and grouped < 2 * random_

    # Still grouped by length: less padding than random batches.
    def padded(sampler: Any) -> int:
        return sum(len(b) * int(lengths[b].max()) for b in sampler)

    assert padded(LengthGroupedBatchSampler(lengths, 16, seed=0)) < 0.9 * padded(
        RandomBatchSampler(lengths, 16, seed=0)
    )
