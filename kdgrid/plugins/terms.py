"""An objective as a weighted sum of registered loss terms (torch-free: validate and plan use it too).

The study's ``objective.prediction`` and ``objective.intermediate`` blocks are the built-in terms'
settings, exactly as before the registries (DESIGN §5)::

    L_pred  = (1 − β)·kd_hard + β·kd_soft
    L_layer = α·(att_mse | att_kl) + α·val_kl + (1 − α)·(hid_cls | hid_seq | hid_contrast) + embedding·emb_mse
    joint: L_pred + weight·L_layer;  intermediate stage: L_layer;  prediction stage: L_pred

and every entry of ``objective.terms`` (``name: {weight: w, ...settings}``) adds ``w·term`` to the
stages its spec trains in ('prediction' terms: joint and prediction; 'intermediate': joint and
intermediate). Terms of weight 0 are not computed at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from kdgrid.plugins import LossSpec, NoSettings, registry, settings_hash, validate_settings
from kdgrid.plugins.builtin import AttMseSettings, ContrastSettings, ExplicitSettings, HeadSettings, SoftSettings

if TYPE_CHECKING:
    from kdgrid.study.schema import Mapping, Objective, RunConfig

STAGES: tuple[str, ...] = ("joint", "intermediate", "prediction")


@dataclass(frozen=True)
class TermUse:
    """One term of one stage: registry name, its weight there, validated settings, and its log name."""

    name: str
    weight: float
    settings: BaseModel
    spec: LossSpec
    label: str  # metric row name of the unweighted term ('hard', 'soft', 'att', ... for built-ins)


def _use(name: str, weight: float, settings: BaseModel, label: str | None = None) -> TermUse:
    return TermUse(name, weight, settings, registry().spec("losses", name), label or name)


def legacy_prediction_terms(objective: Objective) -> list[TermUse]:
    pred = objective.prediction
    out = []
    if pred.beta < 1.0:
        out.append(_use("kd_hard", 1.0 - pred.beta, NoSettings(), "hard"))
    if pred.beta > 0.0:
        out.append(
            _use("kd_soft", pred.beta, SoftSettings(temperature=pred.temperature, t_squared=pred.t_squared), "soft")
        )
    return out


def legacy_layer_terms(objective: Objective, scale: float) -> list[TermUse]:
    """``objective.intermediate`` as built-in terms, each weight multiplied by ``scale``."""
    inter = objective.intermediate
    out = []
    if inter.alpha > 0.0:
        if inter.attention == "mse":
            out.append(
                _use(
                    "att_mse",
                    scale * inter.alpha,
                    AttMseSettings(head_match=inter.head_match, padding=inter.att_mse_padding),
                    "att",
                )
            )
        elif inter.attention == "kl":
            out.append(_use("att_kl", scale * inter.alpha, HeadSettings(head_match=inter.head_match), "att"))
        if inter.value == "kl":
            out.append(_use("val_kl", scale * inter.alpha, HeadSettings(head_match=inter.head_match), "val"))
    if inter.alpha < 1.0:
        if inter.hidden in ("cls", "seq"):
            out.append(_use(f"hid_{inter.hidden}", scale * (1.0 - inter.alpha), NoSettings(), "hid"))
        elif inter.hidden == "cls_contrast":
            out.append(
                _use(
                    "hid_contrast",
                    scale * (1.0 - inter.alpha),
                    ContrastSettings(
                        temperature=inter.contrast_temperature,
                        momentum=inter.contrast_momentum,
                        negatives=inter.contrast_negatives,
                    ),
                    "contrast",
                )
            )
    if inter.embedding > 0.0:
        out.append(_use("emb_mse", scale * inter.embedding, NoSettings(), "emb"))
    return out


def named_terms(objective: Objective) -> list[TermUse]:
    """The ``objective.terms`` entries (already validated by the schema), in the study's order."""
    out = []
    for name, values in objective.terms.items():
        spec = registry().spec("losses", name)
        rest = {k: v for k, v in values.items() if k != "weight"}
        out.append(
            TermUse(name, float(values.get("weight", 1.0)), validate_settings(spec, rest, f"terms.{name}"), spec, name)
        )
    return out


def resolve_terms(objective: Objective, stage: str) -> list[TermUse]:
    """The terms of one stage with their weights (zero-weight terms dropped)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}' (allowed: {', '.join(STAGES)})")
    out: list[TermUse] = []
    if stage in ("joint", "prediction"):
        out += legacy_prediction_terms(objective)
    if stage == "intermediate":
        out += legacy_layer_terms(objective, 1.0)
    elif stage == "joint" and objective.intermediate.active:
        out += legacy_layer_terms(objective, objective.intermediate.weight)
    own = "prediction" if stage == "prediction" else "intermediate" if stage == "intermediate" else None
    out += [t for t in named_terms(objective) if own is None or t.spec.stage == own]
    return [t for t in out if t.weight > 0.0]


def layer_loss_active(objective: Objective) -> bool:
    """Whether any term reads layers (so the mapping is used and a two-stage schedule has a stage 1)."""
    if objective.intermediate.active:
        return True
    return any(t.weight > 0 and t.spec.stage == "intermediate" for t in named_terms(objective))


def mapping_settings(mapping: Mapping) -> BaseModel:
    """The mapping's settings: the built-in 'explicit' reads ``mapping.layers``; plug-ins ``mapping.settings``."""
    spec = registry().spec("mappings", mapping.kind)
    if mapping.kind == "explicit":
        return ExplicitSettings(layers=list(mapping.layers or []))
    return validate_settings(spec, mapping.settings, "mapping.settings")


def plugins_used(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """Every non-built-in registered thing the run uses: ``kind.name -> {package, version, settings}``.

    Recorded in the run's resolved config, so a plug-in of another version (or with other default
    settings) gives other run ids. Built-ins are not listed: a built-in-only run keeps its id.
    """
    reg = registry()
    used: list[tuple[str, str, BaseModel]] = [("losses", t.name, t.settings) for t in named_terms(cfg.objective)]
    if layer_loss_active(cfg.objective):
        used.append(("mappings", cfg.objective.mapping.kind, mapping_settings(cfg.objective.mapping)))
    st = reg.spec("students", cfg.student.init)
    used.append(("students", cfg.student.init, validate_settings(st, cfg.student.settings, "student.settings")))
    used += [("metrics", m, NoSettings()) for m in cfg.metrics]
    out: dict[str, dict[str, str]] = {}
    for kind, name, settings in used:
        src = reg.get(kind, name).source  # type: ignore[arg-type]
        if not src.builtin:
            out[f"{kind}.{name}"] = {
                "package": src.package,
                "version": src.version,
                "settings_sha": settings_hash(settings),
            }
    return out
