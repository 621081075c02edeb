"""Task catalogue and metrics against hand-computed values (no sklearn)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from kdgrid.errors import DataError, KdgridError
from kdgrid.tasks import TASKS, compute_metrics, get_task, majority_baseline


def test_catalogue_facts() -> None:
    assert list(TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
    sizes = {t: s.train_size for t, s in TASKS.items()}
    assert sizes == {
        "cola": 8551,
        "sst2": 67349,
        "mrpc": 3668,
        "qqp": 363846,
        "stsb": 5749,
        "mnli": 392702,
        "qnli": 104743,
        "rte": 2490,
    }
    official = {t: s.official_metric for t, s in TASKS.items()}
    assert official == {
        "cola": "mcc",
        "sst2": "accuracy",
        "mrpc": "f1",
        "qqp": "f1",
        "stsb": "pearson",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
    }
    for spec in TASKS.values():
        assert spec.official_metric in spec.metrics
        assert spec.hub == ("nyu-mll/glue", spec.name)
        assert spec.num_labels == (1 if spec.is_regression else len(spec.label_list or ()))
    # Hub label order: the teacher head is indexed by it.
    assert get_task("rte").label_list == ("entailment", "not_entailment")
    assert get_task("qnli").label_list == ("entailment", "not_entailment")
    assert get_task("mnli").label_list == ("entailment", "neutral", "contradiction")
    assert get_task("stsb").label_list is None and get_task("stsb").is_regression
    assert get_task("mnli").dev_split == "dev_matched" and get_task("cola").dev_split == "dev"
    assert get_task("mrpc").metrics == ("f1", "accuracy")
    assert get_task("stsb").metrics == ("pearson", "spearman")
    assert get_task("sst2").glue_dir == "SST-2" and get_task("stsb").glue_dir == "STS-B"


def test_the_study_schema_names_exactly_the_catalogue_tasks() -> None:
    from kdgrid.study.schema import TASKS as STUDY_TASKS

    assert list(STUDY_TASKS) == list(TASKS)


def test_get_task_unknown_lists_allowed() -> None:
    with pytest.raises(DataError) as err:
        get_task("squad")
    assert str(err.value) == "unknown task 'squad' (allowed: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte)"
    assert isinstance(err.value, KdgridError)


def _from_confusion(tp: int, tn: int, fp: int, fn: int) -> tuple[np.ndarray, np.ndarray]:
    pred = np.array([1] * tp + [0] * tn + [1] * fp + [0] * fn)
    gold = np.array([1] * tp + [0] * tn + [0] * fp + [1] * fn)
    return pred, gold


def test_mcc_from_written_out_confusion_matrix() -> None:
    # tp=3 tn=2 fp=1 fn=2: (3*2 - 1*2) / sqrt((3+1)(3+2)(2+1)(2+2)) = 4 / sqrt(240)
    pred, gold = _from_confusion(3, 2, 1, 2)
    assert compute_metrics("cola", pred, gold) == {"mcc": pytest.approx(4 / math.sqrt(240))}
    # Perfect and inverted predictions.
    assert compute_metrics("cola", gold, gold)["mcc"] == pytest.approx(1.0)
    assert compute_metrics("cola", 1 - gold, gold)["mcc"] == pytest.approx(-1.0)
    # An empty confusion row (constant prediction) scores 0, as sklearn does.
    assert compute_metrics("cola", np.ones_like(gold), gold)["mcc"] == 0.0


def test_f1_and_accuracy() -> None:
    pred, gold = _from_confusion(3, 2, 1, 2)  # F1 = 2*3 / (2*3 + 1 + 2) = 6/9
    m = compute_metrics("mrpc", pred, gold)
    assert m == {"f1": pytest.approx(6 / 9), "accuracy": pytest.approx(5 / 8)}
    assert list(m) == ["f1", "accuracy"]
    assert compute_metrics("qqp", np.zeros(4, int), np.zeros(4, int)) == {"f1": 0.0, "accuracy": 1.0}
    assert compute_metrics("rte", np.array([0, 1, 1]), np.array([0, 1, 0])) == {"accuracy": pytest.approx(2 / 3)}


def test_pearson_spearman_by_hand() -> None:
    # dx = [-1.5,-.5,.5,1.5], dy = [-3,-1,0,4]: r = 11 / sqrt(5 * 26); y is monotone in x: rho = 1.
    m = compute_metrics("stsb", np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 5, 9]))
    assert m["pearson"] == pytest.approx(11 / math.sqrt(130))
    assert m["spearman"] == pytest.approx(1.0)
    # Ties get average ranks: x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5).
    m = compute_metrics("stsb", np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4]))
    assert m["spearman"] == pytest.approx(4.5 / math.sqrt(22.5))
    # A constant prediction has no association (0, not NaN, so it is not dropped from tests).
    assert compute_metrics("stsb", np.full(4, 2.5), np.array([1.0, 2, 3, 4])) == {"pearson": 0.0, "spearman": 0.0}
    assert math.isnan(compute_metrics("stsb", np.array([1.0, np.nan]), np.array([1.0, 2]))["pearson"])


def test_compute_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(DataError, match="task cola: predictions"):
        compute_metrics("cola", np.zeros(3), np.zeros(4))
    with pytest.raises(DataError, match="no predictions"):
        compute_metrics("cola", np.zeros(0), np.zeros(0))


def test_majority_baseline() -> None:
    # CoLA: majority 'acceptable' -> constant prediction -> MCC 0.
    assert majority_baseline("cola", [1] * 6023 + [0] * 2528, [1] * 721 + [0] * 322) == 0.0
    # MRPC dev 279 positive of 408: F1 of always-1 = 2*279 / (2*279 + 129).
    assert majority_baseline("mrpc", [1] * 2474 + [0] * 1194, [1] * 279 + [0] * 129) == pytest.approx(558 / 687)
    assert majority_baseline("sst2", [1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.25)
    # Ties go to the smaller id: RTE entailment (0).
    assert majority_baseline("rte", [0, 1], [0, 0, 1]) == pytest.approx(2 / 3)
    # STS-B predicts the train mean: Pearson undefined -> 0.
    assert majority_baseline("stsb", [0.0, 5.0, 2.5], [1.0, 4.0]) == 0.0
    with pytest.raises(DataError):
        majority_baseline("cola", [], [1])


def test_tasks_module_is_torch_free() -> None:
    code = "import sys, kdgrid.tasks; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
