"""Building students: copy chosen layers of a teacher, shrink a config, or load any HF model / config."""

from __future__ import annotations

import copy
import re
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .checks import check_teacher_labels
from .config import ConfigError, StudentConfig, did_you_mean
from .data.tasks import TaskSpec
from .hub import from_pretrained
from .layer_map import select_layers

# Named student sizes. Layer counts are what a preset fixes; widths that differ from the teacher's mean the
# student cannot be copied from it (init: random, or a method that trains projections).
PRESETS: dict[str, dict[str, Any]] = {
    # TinyBERT4 of the paper (for a BERT-base teacher): 14.5M parameters.
    "tinybert4": {
        "num_hidden_layers": 4,
        "hidden_size": 312,
        "intermediate_size": 1200,
        "num_attention_heads": 12,
    },
    # Narrow students for a 6-layer / 384-wide teacher such as MiniLM-L6.
    "minilm-4x192": {
        "num_hidden_layers": 4,
        "hidden_size": 192,
        "intermediate_size": 768,
        "num_attention_heads": 12,
    },
    "minilm-2x192": {
        "num_hidden_layers": 2,
        "hidden_size": 192,
        "intermediate_size": 768,
        "num_attention_heads": 12,
    },
}

_WIDTH_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of transformer blocks and its qualified name (``bert.encoder.layer``, ...)."""
    n = model.config.num_hidden_layers  # type: ignore[union-attr]
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList)
        and len(mod) == n
        and re.search(r"(^|\.)(layer|layers|blocks?)$", name)
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot find the encoder's layer list in {type(model).__name__} "
            f"(candidates: {[f[0] for f in found]}); build this student with init: random or pretrained"
        )
    return found[0]


def shared_layer_groups(model: nn.Module) -> int | None:
    """ALBERT's number of layer groups (each shared by several depths), ``None`` for a model with a block per
    layer. ALBERT's config says ``num_hidden_groups``; its encoder has no list of ``num_hidden_layers`` blocks."""
    groups = getattr(model.config, "num_hidden_groups", None)
    return int(groups) if groups is not None else None


def num_layers(model: nn.Module) -> int:
    cfg: Any = model.config
    return int(cfg.num_hidden_layers)


def copy_layers(
    teacher: PreTrainedModel,
    layers: list[int],
    attn_implementation: str | None = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A model of the teacher's class and width with ``len(layers)`` blocks: student block i is a copy of
    teacher block ``layers[i]``; embeddings, pooler and head are copied too. ``config_overrides`` set
    shape-neutral config fields (dropout, ...) of the student.

    ALBERT has no blocks of its own per layer: one layer group (``num_hidden_groups`` of them) is applied at
    every depth. Its student is the same weights applied ``len(layers)`` times: shallower, so faster, but not
    smaller, and which teacher layers ``layers`` names makes no difference."""
    n_t = num_layers(teacher)
    bad = [i for i in layers if not 0 <= i < n_t]
    if bad or not layers:
        raise ValueError(f"layers {layers} are not valid 0-based layer numbers of a {n_t}-layer teacher")
    shared = shared_layer_groups(teacher)
    inner = int(getattr(teacher.config, "inner_group_num", 1) or 1)
    if shared is not None and inner != 1:
        raise ValueError(
            f"this ALBERT runs {inner} layers per depth (inner_group_num), so its hidden states are not one per "
            "layer; ALBERT with inner_group_num 1 (every released ALBERT) is supported"
        )
    if shared is not None and len(layers) < shared:
        raise ValueError(
            f"an ALBERT with {shared} layer groups needs at least {shared} layers, got {len(layers)}"
        )
    cfg = copy.deepcopy(teacher.config)
    for k, v in config_overrides.items():
        setattr(cfg, k, v)
    cfg.num_hidden_layers = len(layers)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    student = type(teacher)(cfg)
    prefix = encoder_layers(teacher)[0] if shared is None else "(shared)"  # ALBERT: every weight by its name
    t_state = teacher.state_dict()
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    new_state = {}
    for key in student.state_dict():
        m = pat.match(key)
        src = f"{prefix}.{layers[int(m.group(1))]}.{m.group(2)}" if m else key
        if src not in t_state:
            raise KeyError(f"cannot copy {key!r}: the teacher has no {src!r}")
        new_state[key] = t_state[src].detach().clone()
    student.load_state_dict(new_state, strict=True)
    student.config.bertdistill_copied_layers = list(layers)
    return student


def shrink_config(config: PretrainedConfig, **overrides: Any) -> PretrainedConfig:
    cfg = copy.deepcopy(config)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def student_overrides(cfg: StudentConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg.preset:
        if cfg.preset not in PRESETS:
            raise ConfigError(f"unknown student.preset {cfg.preset!r}; known presets: {sorted(PRESETS)}")
        out.update(PRESETS[cfg.preset])
    out.update(cfg.config_overrides)
    if cfg.num_layers is not None:
        out["num_hidden_layers"] = cfg.num_layers
    if cfg.layers is not None:
        out["num_hidden_layers"] = len(cfg.layers)
    return out


def check_override_fields(cfg: StudentConfig, config: Any) -> None:
    """Every ``student.config_overrides`` key must be a field of the student's config class: transformers stores
    an unknown one as a new attribute that nothing reads, so a typo (``hidden_sizee``) would leave the field it
    meant at its old value without a word."""
    unknown = [k for k in cfg.config_overrides if not hasattr(config, k)]
    if unknown:
        known = sorted(k for k in config.to_dict() if not k.startswith("_"))
        raise ConfigError(
            f"student.config_overrides: {unknown} {'is not a field' if len(unknown) == 1 else 'are not fields'} of "
            f"{type(config).__name__}{did_you_mean(unknown[0], known)}"
        )
    trial = copy.deepcopy(config)
    for k, v in cfg.config_overrides.items():
        try:  # transformers validates a field's type where its config class declares one
            setattr(trial, k, v)
        except Exception as e:  # huggingface_hub's StrictDataclassFieldValidationError, TypeError, ValueError
            detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise ConfigError(
                f"student.config_overrides.{k}: {detail[-1] if detail else type(e).__name__}"
            ) from None


def build_student(
    cfg: StudentConfig,
    teacher: PreTrainedModel | None,
    task: TaskSpec,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Build a sequence-classification student as ``cfg`` says; return it with a description of its init."""
    overrides = student_overrides(cfg)
    if cfg.init == "teacher":
        if teacher is None:
            raise ConfigError(
                "student.init: teacher needs a teacher (set teacher.path) — or use init: pretrained"
            )
        widths = {k: v for k, v in overrides.items() if k in _WIDTH_KEYS and getattr(teacher.config, k) != v}
        if widths:
            raise ConfigError(
                f"student.init: teacher copies the teacher's weights, so widths must match, but {widths} differ "
                "from the teacher's; use init: random (or a method with projections, e.g. tinybert)"
            )
        check_override_fields(cfg, teacher.config)
        n_t = num_layers(teacher)
        check_teacher_labels(teacher, task)
        extra = {k: v for k, v in overrides.items() if k != "num_hidden_layers"}
        try:
            layers = cfg.layers or select_layers(
                n_t, overrides.get("num_hidden_layers", n_t), cfg.layer_selection
            )
            student = copy_layers(teacher, layers, attn_implementation, **extra)
        except ValueError as e:  # layer numbers or counts the teacher does not have
            raise ConfigError(f"student.layers / student.num_layers: {e}") from None
        for k, v in label_kwargs(task).items():
            setattr(student.config, k, v)
        return student, {"init": "teacher", "teacher_layers": layers}
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    label_kw = label_kwargs(task)
    if cfg.init == "pretrained":
        if not cfg.path:
            raise ConfigError("student.init: pretrained needs student.path (a hub name or a model dir)")
        if cfg.config_overrides:
            check_override_fields(cfg, from_pretrained(AutoConfig, cfg.path))
        model = from_pretrained(
            AutoModelForSequenceClassification, cfg.path, **label_kw, **overrides, **kwargs
        )
        return model, {"init": "pretrained", "path": cfg.path}
    # random
    if cfg.path:
        base = from_pretrained(AutoConfig, cfg.path)
    elif teacher is not None:
        base = copy.deepcopy(teacher.config)
    else:
        raise ConfigError(
            "student.init: random needs student.path (a config) or a teacher to take the config from"
        )
    check_override_fields(cfg, base)
    base = shrink_config(base, **overrides, **label_kw)
    model = AutoModelForSequenceClassification.from_config(base, **kwargs)
    return model, {"init": "random", "config_from": cfg.path or "teacher"}


def label_kwargs(task: TaskSpec) -> dict[str, Any]:
    if task.regression:
        return {"num_labels": 1, "problem_type": "regression"}
    return {
        "num_labels": task.num_labels,
        "id2label": dict(enumerate(task.labels)),
        "label2id": {lab: i for i, lab in enumerate(task.labels)},
    }
