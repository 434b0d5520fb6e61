"""Optimizer and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..config import TrainConfig

_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


OPTIMIZERS = ("adamw", "adadelta", "sgd")


def build_optimizer(
    groups: list[dict], train: TrainConfig, lr: float, kind: str | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``kind`` (default ``train.optimizer``: AdamW) over ``groups`` (each with ``params`` and an
    optional ``lr_scale``), with weight decay on weights only (not biases or norm parameters). AdaDelta uses
    ``train.adadelta_rho`` and ``train.adam_eps``; SGD ``train.momentum``."""
    param_groups = []
    for g in groups:
        named = g["params"]
        scale = float(g.get("lr_scale", 1.0))
        decay = [p for n, p in named if p.requires_grad and not any(k in n for k in _NO_DECAY)]
        no_decay = [p for n, p in named if p.requires_grad and any(k in n for k in _NO_DECAY)]
        for ps, wd in ((decay, train.weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "weight_decay": wd, "lr": lr * scale})
    if not param_groups:
        raise ValueError("no trainable parameters in this stage")
    kind = kind or train.optimizer
    if kind == "adadelta":
        return torch.optim.Adadelta(param_groups, lr=lr, rho=train.adadelta_rho, eps=train.adam_eps)
    if kind == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=train.momentum)
    if kind != "adamw":
        raise ValueError(f"unknown optimizer {kind!r}; known: {list(OPTIMIZERS)}")
    b1, b2 = train.adam_betas
    kwargs = {"fused": True} if train.fused_adam and _fused_ok(param_groups) else {}
    return torch.optim.AdamW(param_groups, lr=lr, betas=(b1, b2), eps=train.adam_eps, **kwargs)


def _fused_ok(param_groups: list[dict]) -> bool:
    """torch's fused AdamW takes floating-point tensors on CPU or CUDA, all on one device type."""
    params = [p for g in param_groups for p in g["params"]]
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and kinds <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int
) -> LambdaLR:
    """``linear``: warm-up then linear decay to 0; ``constant``: warm-up then flat; ``cosine``: warm-up then
    half-cosine to 0."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return LambdaLR(optimizer, factor)
