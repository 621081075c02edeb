"""The eight GLUE tasks: where their data lives, their labels and their metrics.

Torch-free on purpose (docs/CONTRACTS.md): ``kdgrid validate``, ``plan``,
``analyze`` and ``report`` read this catalogue and must start fast.

Label lists follow the order of the Hugging Face ``nyu-mll/glue`` dataset,
because a fine-tuned teacher's head is indexed by it. The original GLUE TSVs
use the same ids (0/1 for CoLA, SST-2, MRPC, QQP) or label strings that map
through ``label_list`` (RTE, QNLI, MNLI). Note that some older processors
(e.g. TinyBERT's, HF ``glue.py``) order MNLI as contradiction/entailment/neutral:
teachers trained with those are not interchangeable with ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdgrid.errors import DataError

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class TsvLayout:
    """How a task's original GLUE TSV is laid out.

    Columns are header names when ``header`` is true, else 0-based positions
    (only CoLA has no header).
    """

    header: bool
    text_a: str | int
    text_b: str | int | None
    label: str | int
    # Split name -> file name inside the task's GLUE directory.
    files: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    glue_dir: str  # directory name in the original GLUE layout
    hub: tuple[str, str]  # (dataset id, config) for datasets.load_dataset
    text_a: str  # hub column names
    text_b: str | None
    label_list: tuple[str, ...] | None  # None for regression; index = label id
    num_labels: int
    is_regression: bool
    metrics: tuple[str, ...]
    official_metric: str
    train_size: int  # official GLUE train rows
    dev_split: str  # "dev", or "dev_matched" for MNLI
    dev_size: int
    tsv: TsvLayout
    # kdgrid split name -> hub split name.
    hub_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("dev", "validation"))

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.tsv.files)

    def tsv_file(self, split: str) -> str:
        return dict(self.tsv.files)[split]

    def hub_split(self, split: str) -> str:
        return dict(self.hub_splits)[split]


_STD_FILES = (("train", "train.tsv"), ("dev", "dev.tsv"))
_PAIR_METRICS = ("f1", "accuracy")

TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        name="cola",
        glue_dir="CoLA",
        hub=(HUB_DATASET, "cola"),
        text_a="sentence",
        text_b=None,
        label_list=("unacceptable", "acceptable"),
        num_labels=2,
        is_regression=False,
        metrics=("mcc",),
        official_metric="mcc",
        train_size=8551,
        dev_split="dev",
        dev_size=1043,
        # No header: source, label, mark, sentence.
        tsv=TsvLayout(header=False, text_a=3, text_b=None, label=1, files=_STD_FILES),
    ),
    "sst2": TaskSpec(
        name="sst2",
        glue_dir="SST-2",
        hub=(HUB_DATASET, "sst2"),
        text_a="sentence",
        text_b=None,
        label_list=("negative", "positive"),
        num_labels=2,
        is_regression=False,
        metrics=("accuracy",),
        official_metric="accuracy",
        train_size=67349,
        dev_split="dev",
        dev_size=872,
        tsv=TsvLayout(header=True, text_a="sentence", text_b=None, label="label", files=_STD_FILES),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        glue_dir="MRPC",
        hub=(HUB_DATASET, "mrpc"),
        text_a="sentence1",
        text_b="sentence2",
        label_list=("not_equivalent", "equivalent"),
        num_labels=2,
        is_regression=False,
        metrics=_PAIR_METRICS,
        official_metric="f1",
        train_size=3668,
        dev_split="dev",
        dev_size=408,
        tsv=TsvLayout(header=True, text_a="#1 String", text_b="#2 String", label="Quality", files=_STD_FILES),
    ),
    "qqp": TaskSpec(
        name="qqp",
        glue_dir="QQP",
        hub=(HUB_DATASET, "qqp"),
        text_a="question1",
        text_b="question2",
        label_list=("not_duplicate", "duplicate"),
        num_labels=2,
        is_regression=False,
        metrics=_PAIR_METRICS,
        official_metric="f1",
        train_size=363846,
        dev_split="dev",
        dev_size=40430,
        tsv=TsvLayout(header=True, text_a="question1", text_b="question2", label="is_duplicate", files=_STD_FILES),
    ),
    "stsb": TaskSpec(
        name="stsb",
        glue_dir="STS-B",
        hub=(HUB_DATASET, "stsb"),
        text_a="sentence1",
        text_b="sentence2",
        label_list=None,
        num_labels=1,
        is_regression=True,
        metrics=("pearson", "spearman"),
        official_metric="pearson",
        train_size=5749,
        dev_split="dev",
        dev_size=1500,
        tsv=TsvLayout(header=True, text_a="sentence1", text_b="sentence2", label="score", files=_STD_FILES),
    ),
    "mnli": TaskSpec(
        name="mnli",
        glue_dir="MNLI",
        hub=(HUB_DATASET, "mnli"),
        text_a="premise",
        text_b="hypothesis",
        label_list=("entailment", "neutral", "contradiction"),
        num_labels=3,
        is_regression=False,
        metrics=("accuracy",),
        official_metric="accuracy",
        train_size=392702,
        dev_split="dev_matched",
        dev_size=9815,
        tsv=TsvLayout(
            header=True,
            text_a="sentence1",
            text_b="sentence2",
            label="gold_label",
            files=(
                ("train", "train.tsv"),
                ("dev_matched", "dev_matched.tsv"),
                ("dev_mismatched", "dev_mismatched.tsv"),
            ),
        ),
        hub_splits=(
            ("train", "train"),
            ("dev_matched", "validation_matched"),
            ("dev_mismatched", "validation_mismatched"),
        ),
    ),
    "qnli": TaskSpec(
        name="qnli",
        glue_dir="QNLI",
        hub=(HUB_DATASET, "qnli"),
        text_a="question",
        text_b="sentence",
        label_list=("entailment", "not_entailment"),
        num_labels=2,
        is_regression=False,
        metrics=("accuracy",),
        official_metric="accuracy",
        train_size=104743,
        dev_split="dev",
        dev_size=5463,
        tsv=TsvLayout(header=True, text_a="question", text_b="sentence", label="label", files=_STD_FILES),
    ),
    "rte": TaskSpec(
        name="rte",
        glue_dir="RTE",
        hub=(HUB_DATASET, "rte"),
        text_a="sentence1",
        text_b="sentence2",
        label_list=("entailment", "not_entailment"),
        num_labels=2,
        is_regression=False,
        metrics=("accuracy",),
        official_metric="accuracy",
        train_size=2490,
        dev_split="dev",
        dev_size=277,
        tsv=TsvLayout(header=True, text_a="sentence1", text_b="sentence2", label="label", files=_STD_FILES),
    ),
}

METRIC_NAMES: tuple[str, ...] = ("mcc", "accuracy", "f1", "pearson", "spearman")


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is, decided once for every task, table, CSV and JSON.

    ``scale``: the display factor. Bounded scores (a proportion or a correlation) are shown ×100, as GLUE
    papers do, whatever values a study happened to produce, so an average over tasks never mixes raw and
    ×100 numbers. ``chance``: the score of a constant (or random) predictor when it does not depend on the
    data (0 for a correlation: MCC, Pearson, Spearman); None when it does (accuracy, F1: the majority-class
    score, which needs the labels and is stored with each teacher).
    """

    name: str
    scale: float
    chance: float | None


METRICS: dict[str, MetricInfo] = {
    "mcc": MetricInfo("mcc", 100.0, 0.0),
    "accuracy": MetricInfo("accuracy", 100.0, None),
    "f1": MetricInfo("f1", 100.0, None),
    "pearson": MetricInfo("pearson", 100.0, 0.0),
    "spearman": MetricInfo("spearman", 100.0, 0.0),
}


def display_scale(metric: str) -> float:
    """Display factor of a metric: 100 for the GLUE scores (:data:`METRICS`), 1 for any other column."""
    info = METRICS.get(str(metric))
    return info.scale if info is not None else 1.0


def chance_floor(metric: str) -> float | None:
    """Score of a predictor that ignores its input, when that does not depend on the data (else None)."""
    info = METRICS.get(str(metric))
    return info.chance if info is not None else None


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task '{name}' (allowed: {', '.join(TASKS)})") from None


def _as_task(task: str | TaskSpec) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else get_task(task)


# --- metrics (numpy/scipy only, so analysis never needs sklearn or torch) ----------------------


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1_positive(pred: np.ndarray, gold: np.ndarray) -> float:
    """F1 of class 1 (GLUE's MRPC/QQP F1); 0.0 when there are no true or predicted positives."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold != 1)))
    fn = float(np.sum((pred != 1) & (gold == 1)))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
    """Binary MCC; 0.0 when a row or column of the confusion matrix is empty (sklearn's convention)."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred != 1) & (gold != 1)))
    fp = float(np.sum((pred == 1) & (gold != 1)))
    fn = float(np.sum((pred != 1) & (gold == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; 0.0 when either side is constant.

    scipy returns NaN there. A student that collapses to a constant output is a
    real (bad) result; NaN would silently drop it from paired tests, so it scores
    "no association" instead. NaN inputs still give NaN.
    """
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if denom == 0.0:
        return 0.0
    return float(np.clip(np.sum(dx * dy) / denom, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho = Pearson r of average ranks (as scipy.stats.spearmanr)."""
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    from scipy.stats import rankdata  # imported here: scipy.stats costs ~1 s at every worker start

    return pearson(rankdata(x), rankdata(y))


def compute_metrics(
    task: str | TaskSpec,
    predictions: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    extra: Sequence[str] = (),
) -> dict[str, float]:
    """The task's metrics (``spec.metrics``), then the registered ``extra`` ones (a run's ``metrics``), of
    predicted label ids (or scores for STS-B) against gold. Every metric is looked up in the registry
    (kdgrid.plugins; the built-ins are registered there like a plug-in)."""
    spec = _as_task(task)
    pred = np.asarray(predictions)
    gold = np.asarray(labels)
    if pred.shape != gold.shape or pred.ndim != 1:
        raise DataError(
            f"task {spec.name}: predictions {pred.shape} and labels {gold.shape} must be 1-D and of equal length"
        )
    if pred.size == 0:
        raise DataError(f"task {spec.name}: no predictions to score")
    from kdgrid.plugins import load_impl, registry

    names = list(dict.fromkeys([*spec.metrics, *extra]))
    return {name: float(load_impl(registry().spec("metrics", name).impl)(pred, gold)) for name in names}


def majority_baseline(
    task: str | TaskSpec, train_labels: Sequence[float] | np.ndarray, dev_labels: Sequence[float] | np.ndarray
) -> float:
    """Official dev metric of always predicting the majority train class (STS-B: the train mean).

    Ties go to the smaller label id, so the value is deterministic. For STS-B
    (and MCC) a constant prediction scores 0.0.
    """
    spec = _as_task(task)
    train = np.asarray(train_labels)
    dev = np.asarray(dev_labels)
    if train.size == 0 or dev.size == 0:
        raise DataError(f"task {spec.name}: majority baseline needs non-empty train and dev labels")
    if spec.is_regression:
        constant: float = float(train.astype(np.float64).mean())
    else:
        values, counts = np.unique(train.astype(np.int64), return_counts=True)
        constant = int(values[np.argmax(counts)])  # argmax takes the first max: the smallest id
    pred = np.full(dev.shape, constant, dtype=np.float64 if spec.is_regression else np.int64)
    return compute_metrics(spec, pred, dev)[spec.official_metric]
