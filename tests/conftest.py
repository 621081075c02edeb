"""Shared fixtures: a tiny BERT classifier + tokenizer on disk, the real GLUE dir (markers: pyproject.toml).

Tests never touch the network: the Hugging Face offline switches are set here,
before any test imports transformers or datasets (they read them at import).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Test models are tiny: intra-op threads cost more than they save (10x slower on a busy 2-core box).
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_GLUE = Path("/work/shared/data/glue")

# The paired-test table's columns, written out once: analyze's frame, the CSV and report.json must all match it.
PAIRED_TEST_COLUMNS = [
    "task",
    "metric",
    "condition",
    "baseline",
    "n",
    "mean_diff",
    "ci_low",
    "ci_high",
    "sci_low",
    "sci_high",
    "t",
    "df",
    "p",
    "test",
    "p_adj",
    "family",
    "family_size",
    "dz",
    "wilcoxon_p",
    "margin",
    "p_equiv",
    "p_equiv_adj",
    "verdict",
    "baseline_mean",
    "floor",
    "baseline_at_floor",
    "note",
]

# A WordPiece vocabulary small enough for a 100-row embedding but able to spell any lowercase text.
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = [
    "the",
    "a",
    "is",
    "was",
    "of",
    "and",
    "to",
    "in",
    "it",
    "not",
    "good",
    "bad",
    "movie",
    "man",
    "dog",
    "cat",
    "he",
    "she",
    "they",
    "ran",
    "sat",
    "on",
    "mat",
    "very",
    "this",
    "that",
    "film",
    "great",
    "boring",
    "book",
    "read",
    "who",
    "what",
    ".",
    ",",
    "?",
    "!",
    "'",
    "-",
]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
_SUFFIXES = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
TINY_VOCAB: list[str] = _SPECIALS + _WORDS + _CHARS + _SUFFIXES  # 106 entries


def build_tiny_model_dir(path: Path, *, num_labels: int = 2, seed: int = 0) -> Path:
    """A random 4-layer BERT (hidden 32, 4 heads, intermediate 64) plus a matching tokenizer, saved to ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n")
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True, model_max_length=128)
    cfg = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars in every test log otherwise
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random BERT classifier (config.json, weights, vocab/tokenizer files)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


_WORDS_FOR_ROWS = ["the", "movie", "was", "good", "bad", "very", "boring", "great", "film", "dog", "cat", "sat", "on"]


def write_cola_dir(root: Path, n_train: int = 40, n_dev: int = 12, seed: int = 0) -> Path:
    """A CoLA-layout GLUE folder (no header: source, label, mark, sentence) with rows of varied length."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [
            f"src\t{i % 2}\t\t{' '.join(rng.choice(_WORDS_FOR_ROWS, size=int(rng.integers(2, 20))))} ."
            for i in range(n)
        ]
        (root / "CoLA").mkdir(parents=True, exist_ok=True)
        (root / "CoLA" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def make_cola_dir() -> Callable[..., Path]:
    """``make_cola_dir(root, n_train=40, n_dev=12, seed=0) -> root``: a small synthetic CoLA folder."""
    return write_cola_dir


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The original-layout GLUE folder ($KDGRID_DATA_DIR or /work/shared/data/glue), or skip."""
    env = os.environ.get("KDGRID_DATA_DIR")
    path = Path(env) if env else SHARED_GLUE
    if not path.is_dir():
        pytest.skip(f"no GLUE data at {path} (set KDGRID_DATA_DIR)")
    return path


def tiny_bert(
    layers: int = 2,
    heads: int = 4,
    hidden: int = 32,
    *,
    seed: int = 0,
    vocab: int = 60,
    num_labels: int = 2,
    dropout: float | None = None,
    max_positions: int = 512,
) -> Any:
    """A random BERT classifier small enough to train in milliseconds, the same weights for the same arguments
    (SDPA attention, feed-forward 2 x hidden; ``dropout`` None keeps BERT's 0.1)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    drop = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    cfg = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        vocab_size=vocab,
        num_labels=num_labels,
        max_position_embeddings=max_positions,
        attn_implementation="sdpa",
        **drop,
    )
    return BertForSequenceClassification(cfg)


def tiny_objective(spec: dict[str, Any], stage: str = "joint", *, cls: Any = None, n_train: int = 8) -> Any:
    """The distillation objective of ``spec`` between a 4-layer and a 2-layer tiny BERT (hidden 32, 4 heads)."""
    from kdgrid.study.schema import Objective
    from kdgrid.train.objectives import DistillObjective

    return (cls or DistillObjective)(
        Objective.model_validate(spec),
        stage=stage,
        is_regression=False,
        n_teacher_layers=4,
        n_student_layers=2,
        teacher_hidden=32,
        student_hidden=32,
        teacher_heads=4,
        student_heads=4,
        num_train_examples=n_train,
    )
