"""Batched adaptive inference for FastBERT models: rows leave the batch as soon as their branch is sure.

At layer i (1..L-1) each remaining row's branch gives ``u = entropy / ln C``; rows with ``u < speed`` exit
with that branch's prediction and are dropped from the batch, so later layers run on fewer rows (the
measured speed-up follows the exit layers, not only the FLOPs). Rows that never exit get the teacher
classifier on layer L. ``speed = 0`` never exits early and reproduces the full model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers.masking_utils import create_bidirectional_mask

from .methods.fastbert import normalized_entropy


@dataclass
class EarlyExitResult:
    logits: Tensor  # [B, C]
    exit_layer: Tensor  # [B], 1-based layer after which each row left (L = full depth)
    flops: Tensor  # [B], estimated forward FLOPs of each row


def _layer_flops(t: int, h: int, inter: int) -> float:
    """Multiply-adds ×2 of one BERT layer over a sequence of t tokens."""
    return 2.0 * t * (4 * h * h + 2 * h * inter) + 4.0 * t * t * h


def _branch_flops(t: int, h: int, b: int, c: int) -> float:
    return 2.0 * t * (h * b + 4 * b * b) + 4.0 * t * t * b + 2.0 * (b * b + b * c)


def full_flops(model: Any, t: int) -> float:
    """FLOPs of the full model without branches (the teacher) for t tokens."""
    bc = model.bert.config
    return bc.num_hidden_layers * _layer_flops(t, bc.hidden_size, bc.intermediate_size) + 2.0 * (
        bc.hidden_size * bc.hidden_size + bc.hidden_size * model.config.num_labels
    )


@torch.inference_mode()
def early_exit(model: Any, inputs: Mapping[str, Tensor], speed: float) -> EarlyExitResult:
    bert = model.bert
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    n = ids.shape[0]
    layers = bert.encoder.layer
    n_layers = len(layers)
    hidden = bert.embeddings(input_ids=ids, token_type_ids=inputs.get("token_type_ids"))
    ext = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask)
    logits = torch.zeros((n, model.config.num_labels), dtype=hidden.dtype, device=ids.device)
    exit_layer = torch.full((n,), n_layers, dtype=torch.long, device=ids.device)
    active = torch.arange(n, device=ids.device)
    lengths = mask.sum(-1)
    bc = bert.config
    per_layer = torch.tensor(
        [_layer_flops(int(t), bc.hidden_size, bc.intermediate_size) for t in lengths.tolist()]
    )
    per_branch = torch.tensor(
        [
            _branch_flops(int(t), bc.hidden_size, model.config.branch_hidden, model.config.num_labels)
            for t in lengths.tolist()
        ]
    )
    flops = torch.zeros(n, dtype=torch.float64)
    for i, layer in enumerate(layers):
        hidden = layer(hidden, ext)
        flops[active.cpu()] += per_layer[active.cpu()].double()
        if i == n_layers - 1:
            logits[active] = model.teacher_head(hidden).to(logits.dtype)
            break
        if speed <= 0:
            continue
        z = model.branches[i](hidden, mask)
        flops[active.cpu()] += per_branch[active.cpu()].double()
        done = normalized_entropy(z) < speed
        if done.any():
            rows = active[done]
            logits[rows] = z[done].to(logits.dtype)
            exit_layer[rows] = i + 1
            keep = ~done
            if not keep.any():
                break
            active, hidden, mask = active[keep], hidden[keep], mask[keep]
            if isinstance(ext, Tensor) and ext.shape[0] > 1:
                ext = ext[keep]
    return EarlyExitResult(logits=logits, exit_layer=exit_layer, flops=flops)
