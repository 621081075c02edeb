"""The search space: checking a ``search:`` block against the run config, and sampling it.

Pydantic checks each parameter on its own (bounds, log scale, sampler needs); what needs
the rest of the study is checked here: that each dotted path names a setting of the run,
that the values the search can take make a valid run, that ``task`` and ``metric`` exist,
and that there are enough seeds. Errors carry the study file's line, like every other
study error.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kdgrid.errors import PlanError, StudyError
from kdgrid.plan.canonical import config_hash
from kdgrid.plan.expand import check_path, set_path
from kdgrid.study.loader import LoadedStudy
from kdgrid.study.schema import RunConfig, Search, SearchParam, Study
from kdgrid.tasks import TASKS

if TYPE_CHECKING:
    import optuna

# Trials fix these themselves: the seeds come from seeds_per_trial, the tasks from search.task.
_NOT_SEARCHABLE = ("task", "seed")


def search_tasks(study: Study) -> list[str]:
    """The tasks every trial runs: ``search.task`` or, for ``mean``, all of the study's tasks."""
    assert study.search is not None
    return list(study.tasks) if study.search.task == "mean" else [study.search.task]


def trial_seeds(study: Study) -> list[int]:
    """The seeds of every trial: the first ``seeds_per_trial`` of the study's seeds (the same for all trials,
    so trials are compared on the same seeds)."""
    assert study.search is not None
    return study.seed_list[: study.search.seeds_per_trial]


def metric_of(search: Search, task: str) -> str:
    return TASKS[task].official_metric if search.metric == "auto" else search.metric


def check_search(loaded: LoadedStudy) -> None:
    """Raise StudyError (``file:line: field: message``) when the search block cannot work with this study."""
    study = loaded.study
    search = study.search
    if search is None:
        return
    try:
        _check(study, search)
    except PlanError as exc:
        line = loaded.line_of(exc.loc) if exc.loc else None
        where = f"{loaded.path}:{line}" if line else str(loaded.path)
        raise StudyError(f"{where}: {exc}") from None


def run_template() -> dict[str, Any]:
    """A run config with every optional block filled, so any settable dotted path exists in it."""
    tpl = RunConfig(task="cola", seed=0).model_dump(mode="json")
    tpl["train"]["epochs"] = {"intermediate": 1, "prediction": 1}  # either form of epochs is a valid target
    return tpl


def _check(study: Study, search: Search) -> None:
    template = run_template()
    base = study.base_config()
    for path, param in search.params.items():
        where = f"search.params.{path}"
        loc = ("search", "params", path)
        if path in _NOT_SEARCHABLE:
            raise PlanError(
                f"{where}: '{path}' cannot be searched (trials use the study's tasks and the first "
                f"seeds_per_trial seeds)",
                loc=loc,
            )
        check_path(path, template, where, loc)
        for value in probe_values(param):
            _probe(base, {path: value}, where, loc)
    if search.task != "mean" and search.task not in study.tasks:
        raise PlanError(
            f"search.task: '{search.task}' is not a task of this study (allowed: mean, {', '.join(study.tasks)})",
            loc=("search", "task"),
        )
    for task in search_tasks(study):
        allowed = TASKS[task].metrics
        if search.metric != "auto" and search.metric not in allowed:
            raise PlanError(
                f"search.metric: '{search.metric}' is not a dev metric of {task} (allowed: auto, {', '.join(allowed)})",
                loc=("search", "metric"),
            )
    if search.seeds_per_trial > len(study.seed_list):
        raise PlanError(
            f"search.seeds_per_trial: {search.seeds_per_trial} but the study has only "
            f"{len(study.seed_list)} seed(s) (raise 'seeds')",
            loc=("search", "seeds_per_trial"),
        )
    for path, value in (search.baseline or {}).items():
        loc = ("search", "baseline", path)
        if path in _NOT_SEARCHABLE:
            raise PlanError(f"search.baseline: '{path}' cannot be set in a baseline", loc=loc)
        check_path(path, template, "search.baseline", loc)
        _probe(base, {path: value}, "search.baseline", loc)


def probe_values(param: SearchParam) -> list[Any]:
    """Values that stand for the whole range: the ends, or every choice."""
    if param.type == "categorical":
        return list(param.choices or [])
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def _probe(base: dict[str, Any], overrides: Mapping[str, Any], where: str, loc: tuple[Any, ...]) -> None:
    cfg = copy.deepcopy(base)
    for path, value in overrides.items():
        set_path(cfg, path, value)
    try:
        RunConfig.model_validate({**cfg, "task": "cola", "seed": 0})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        msg = err["msg"].removeprefix("Value error, ")
        if err.get("type") == "literal_error":
            allowed = str((err.get("ctx") or {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
            msg = f"{err.get('input')!r} is not allowed (allowed: {allowed})"
        raise PlanError(f"{where}: {shown} makes an invalid run: {field}: {msg}", loc=loc) from None


def apply_params(base: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    for path, value in params.items():
        set_path(cfg, path, value)
    return cfg


def grid_space(search: Search) -> dict[str, list[Any]]:
    """The grid sampler's search space (the schema guarantees every parameter has points)."""
    out: dict[str, list[Any]] = {}
    for path, param in search.params.items():
        values = param.grid_values()
        assert values is not None
        out[path] = values
    return out


def grid_size(search: Search) -> int:
    n = 1
    for values in grid_space(search).values():
        n *= len(values)
    return n


def distribution(param: SearchParam) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if param.type == "categorical":
        return CategoricalDistribution(list(param.choices or []))
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
    return FloatDistribution(param.low, param.high, log=param.log, step=param.step)


def suggest(trial: optuna.Trial, search: Search) -> dict[str, Any]:
    """Sample every parameter of a trial (an enqueued trial gets its fixed values back)."""
    out: dict[str, Any] = {}
    for path, p in search.params.items():
        if p.type == "categorical":
            out[path] = trial.suggest_categorical(path, list(p.choices or []))
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            out[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            assert p.low is not None and p.high is not None
            out[path] = trial.suggest_float(path, p.low, p.high, step=p.step, log=p.log)
    return out


def fingerprint(study: Study) -> str:
    """What makes trials comparable: the space, the objective, the seeds, the tasks and the base run.

    The budget (trials, timeout), the sampler and the pruner may change between sessions; anything
    in this hash may not, or old trial values would mean something else.
    """
    assert study.search is not None
    s = study.search
    return config_hash(
        {
            "params": {k: v.model_dump(mode="json") for k, v in s.params.items()},
            "metric": s.metric,
            "task": s.task,
            "direction": s.direction,
            "seeds": trial_seeds(study),
            "tasks": search_tasks(study),
            "base": study.base_config(),
        }
    )


def describe_search(study: Study) -> str:
    """One line for ``kdgrid validate``: what the search will do."""
    assert study.search is not None
    s = study.search
    seeds = trial_seeds(study)
    tasks = search_tasks(study)
    runs = len(seeds) * len(tasks)
    return (
        f"search: {len(s.params)} parameter(s) ({', '.join(s.params)}); {s.trials} trials x {runs} run(s) "
        f"({', '.join(tasks)}; seeds {', '.join(map(str, seeds))}); sampler {s.sampler}, pruner {s.pruner}; "
        f"confirmation seeds from {max(seeds) + 1}"
    )
