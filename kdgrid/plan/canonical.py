"""Canonical run configs and run ids.

A run id is the hash of the canonical resolved config, so the same cell in two
studies is the same run. Settings that cannot change the result are reset to a
fixed value first: a factor without effect (the attention loss when alpha = 0)
collapses cells instead of computing them twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from kdgrid.study.schema import Intermediate, Mapping, Objective, Prediction, RunConfig


def named_layer_terms(objective: dict[str, Any]) -> bool:
    """Whether a dumped objective's ``terms`` hold a layer term of non-zero weight (it uses the mapping).

    Read from the dump, not a RunConfig: the plan canonicalises dumped blocks it shares between runs."""
    terms = objective.get("terms") or {}
    if not terms:  # the built-ins only: no registry lookup
        return False
    from kdgrid.plugins import registry

    return any(
        float(v.get("weight", 1.0)) > 0 and registry().spec("losses", name).stage == "intermediate"
        for name, v in terms.items()
    )


# Where the data is read from, on which device, and how often the dev set is scored do not define the experiment.
_IDENTITY_EXCLUDED = (
    ("data", "dir"),
    ("train", "device"),
    ("train", "teacher_cache"),
    ("train", "eval_every_epoch"),
    ("teacher", "trust_remote_code"),
)
_NEUTRAL_INTERMEDIATE = Intermediate().model_dump(mode="json")
_NEUTRAL_PREDICTION = Prediction().model_dump(mode="json")
_NEUTRAL_MAPPING = Mapping().model_dump(mode="json")


def config_data(cfg: RunConfig) -> dict[str, Any]:
    """A run config's JSON form: what a worker's job, a run's result, the store's ``runs.config`` and the run id hold.

    The one place it is made from the model (``PlannedRun.config_data`` holds it for a planned run; the plan's
    cached path assembles the same dict from its block dumps, which tests/test_plan_fast.py checks); the
    way back is ``RunConfig.model_validate``.
    """
    return cfg.model_dump(mode="json")


def canonical_config(cfg: RunConfig) -> RunConfig:
    """The resolved config with settings that have no effect reset to their defaults (the objective block only)."""
    return with_objective(cfg, canonicalize(config_data(cfg))["objective"])


def with_objective(cfg: RunConfig, objective: dict[str, Any]) -> RunConfig:
    """``cfg`` with its objective replaced by a canonical objective's dump (from :func:`canonicalize`).

    The objective is validated on its own; the run is not validated again: its cross-checks passed on the
    resolved config, and canonicalising may leave a combination they would refuse (a two-stage run whose only
    layer loss has no weight) while meaning the same run.
    """
    return cfg.model_copy(update={"objective": Objective.model_validate(objective)})


#: What :func:`canonicalize` reads: whole blocks, or dotted settings; it changes the objective block only.
#: The plan caches each canonical objective by these values (kdgrid/plan/expand.py): keep this up to date.
CANONICAL_READS = ("objective", "train.schedule")


def canonicalize(out: dict[str, Any]) -> dict[str, Any]:
    """:func:`canonical_config` of a dumped RunConfig (``model_dump(mode="json")``).

    Only the objective block changes, and it is copied first: the plan shares the other blocks, dumped
    once per distinct value, between the runs that have them.
    """
    out = {**out, "objective": {k: dict(v) if isinstance(v, dict) else v for k, v in out["objective"].items()}}
    obj = out["objective"]
    inter = obj["intermediate"]
    att_active = inter["alpha"] > 0 and inter["weight"] > 0
    hid_active = inter["alpha"] < 1 and inter["weight"] > 0
    if not att_active:
        inter["attention"] = "none"
        inter["value"] = "none"
    if not hid_active:
        inter["hidden"] = "none"
    if inter["attention"] == "none" and inter["value"] == "none":
        inter["head_match"] = _NEUTRAL_INTERMEDIATE["head_match"]
    if inter["attention"] != "mse":
        inter["att_mse_padding"] = _NEUTRAL_INTERMEDIATE["att_mse_padding"]
    if inter["hidden"] != "cls_contrast":
        for key in ("contrast_temperature", "contrast_momentum", "contrast_negatives"):
            inter[key] = _NEUTRAL_INTERMEDIATE[key]
    layer_terms = inter["attention"] != "none" or inter["value"] != "none" or inter["hidden"] != "none"
    if (
        not layer_terms
        and inter["embedding"] == 0
        and out["train"]["schedule"] == "joint"
        and not named_layer_terms(obj)
    ):
        # No layer loss at all: alpha, weight and the mapping cannot matter.
        out["objective"]["intermediate"] = dict(_NEUTRAL_INTERMEDIATE)
        out["objective"]["mapping"] = Mapping().model_dump(mode="json")
    elif obj["mapping"]["kind"] != "learnable":
        for key in ("init", "init_weight", "lr", "schedule"):
            obj["mapping"][key] = _NEUTRAL_MAPPING[key]
    elif obj["mapping"]["init"] == "diagonal":  # an alias: one run for both names
        obj["mapping"]["init"] = "fixed"
    if obj["mapping"]["kind"] == "learnable" and obj["mapping"]["init"] != "fixed":
        obj["mapping"]["init_weight"] = _NEUTRAL_MAPPING["init_weight"]
    pred = obj["prediction"]
    if pred["beta"] == 0:
        pred["temperature"] = _NEUTRAL_PREDICTION["temperature"]
        pred["t_squared"] = _NEUTRAL_PREDICTION["t_squared"]
    return out


def identity_view(config: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(json.dumps(config))
    for block, key in _IDENTITY_EXCLUDED:
        view.get(block, {}).pop(key, None)
    return view


def config_hash(obj: Any, length: int = 16) -> str:
    return hash_blob(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str), length)


def run_id_of(config: RunConfig) -> str:
    """The id of a (canonical) run config: the hash of its JSON form without the settings that do not define it."""
    return data_run_id(config_data(config))


def data_run_id(data: dict[str, Any]) -> str:
    """:func:`run_id_of` from the config's JSON form (:func:`config_data`), when the plan already holds it."""
    return config_hash(identity_view(data))


def identity_text(parts: dict[str, str]) -> str:
    """The text :func:`run_id_of` hashes, from each top-level key's JSON text (:func:`identity_part`):
    ``json.dumps(view, sort_keys=True, separators=(",", ":"))`` written out one key at a time, so that
    the plan can reuse the text of a block shared by many runs."""
    return "{" + ",".join(f"{_key_json(k)}:{parts[k]}" for k in sorted(parts)) + "}"


@functools.lru_cache(maxsize=64)
def _key_json(key: str) -> str:
    return json.dumps(key)


def identity_part(key: str, value: Any) -> str:
    """The JSON text of one top-level entry of a config in its identity view; ``value`` must be JSON data
    (a dumped RunConfig's: str keys, lists, numbers, strings), where the round trip of :func:`identity_view`
    changes nothing."""
    drop = [k for block, k in _IDENTITY_EXCLUDED if block == key]
    if drop and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in drop}
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def hash_blob(blob: str, length: int = 16) -> str:
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
