"""The records that cross layers, defined once: ``train`` writes them, ``execute`` moves them, ``store`` ingests them.

A run's result travels as JSON (``result.json`` in its run directory, a pool worker's pipe, a Slurm job's
folder), so these are ``TypedDict``\\ s: plain dicts at run time, with their keys and value types checked by mypy
wherever they are made or read. The store's tables (README: "The store") hold the same fields.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, Required, TypedDict

#: Where a metric row comes from: a training stage, or ``final`` (the trained student, its teacher, efficiency).
MetricStage = Literal["joint", "intermediate", "prediction", "final"]
#: What a value is (README: ``metrics.split``).
MetricSplit = Literal["train", "dev", "mapping", "teacher", "efficiency", "layers", "cache"]  # cache: stage1_reused
#: A result's status (the store's runs.status has more: pending, running, interrupted).
ResultStatus = Literal["done", "failed"]


class MetricRow(TypedDict):
    """One value of one run: a row of the store's ``metrics`` table (without its run_id)."""

    stage: MetricStage
    split: MetricSplit
    name: str
    value: float
    epoch: NotRequired[int | None]
    step: NotRequired[int | None]


def metric_row(
    stage: MetricStage,
    split: MetricSplit,
    name: str,
    value: float,
    *,
    epoch: int | None = None,
    step: int | None = None,
) -> MetricRow:
    row = MetricRow(stage=stage, split=split, name=name, value=float(value))
    if epoch is not None:
        row["epoch"] = epoch
    if step is not None:
        row["step"] = step
    return row


def metric_rows(
    values: dict[str, float],
    stage: MetricStage,
    split: MetricSplit,
    *,
    epoch: int | None = None,
    step: int | None = None,
) -> list[MetricRow]:
    """One row per named value, all of one stage, split and (optionally) epoch and step."""
    return [metric_row(stage, split, k, v, epoch=epoch, step=step) for k, v in values.items()]


class TeacherRow(TypedDict):
    """A fine-tuned teacher as a run result carries it and the store's ``teachers`` table holds it (train.models.TeacherRecord has more)."""

    key: str
    task: str
    model: str
    seed: int | None
    path: str
    metrics: dict[str, float]
    majority: float | None
    flagged: bool


class RunResult(TypedDict, total=False):
    """One attempt of one run, done or failed: what ``result.json`` holds and the store ingests.

    A done run (``train.run.run_one``) has every field but ``retryable``; a failed one
    (``execute.job.failed_record``) has no ``device``, ``versions``, ``data`` or ``teacher`` and no metrics.
    ``unsaved``: the coordinator got the record but ``result.json`` could not be written.
    """

    run_id: Required[str]
    status: Required[ResultStatus]
    task: str | None
    seed: int | None
    config: (
        dict[str, Any] | None
    )  # the canonical run config's JSON form (PlannedRun.config_data(), plan.canonical.config_data)
    error: str | None
    retryable: bool
    attempt: int
    started: str | None
    finished: str | None
    duration_s: float
    host: str
    device: str
    versions: dict[str, str]
    git_sha: str | None
    metrics: list[MetricRow]
    data: dict[str, str]  # per split ("train", "dev"): the data fingerprint (train.data.data_fingerprint)
    teacher: TeacherRow
    unsaved: bool
