"""Running a model for what a method needs (:class:`~bertdistill.protocol.Needs`), read from HF ``ModelOutput``
fields by name.

Indexing convention, stated once: ``hidden_states`` has L+1 entries, index 0 = the embedding output and
index m = the output of layer m (1-based); ``attentions`` has L entries, index i = layer i (0-based).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .config import ConfigError
from .protocol import Features, Needs, TokenTopK


class MissingAttentionsError(RuntimeError):
    pass


def select_features(output: object, needs: Needs) -> Features:
    """Pick the needed fields out of a HF ``ModelOutput`` by name."""
    feats = Features(logits=getattr(output, "logits", None) if needs.logits else None)
    if needs.hidden_states:
        hs = getattr(output, "hidden_states", None)
        if hs is None:
            raise RuntimeError("the model returned no hidden_states; call it with output_hidden_states=True")
        keep = range(len(hs)) if needs.hidden_layers is None else needs.hidden_layers
        for i in keep:
            if not -len(hs) <= i < len(hs):
                raise IndexError(f"hidden_states index {i} out of range: the model has {len(hs) - 1} layers")
            feats.hidden_states[i] = hs[i][:, :1] if needs.cls_only else hs[i]
    if needs.attentions:
        att = getattr(output, "attentions", None)
        if not att or any(a is None for a in att):
            raise MissingAttentionsError(
                "the model returned no attention maps: transformers' sdpa/flash attention cannot return them. "
                "Load it with attn_implementation='eager' (bertdistill does this when a method needs attentions)."
            )
        keep = range(len(att)) if needs.attention_layers is None else needs.attention_layers
        for i in keep:
            feats.attentions[i] = att[i]
    if needs.token_topk:
        feats.topk = token_topk(output, needs.token_topk)
    return feats


def token_topk(output: object, k: int) -> TokenTopK:
    """The top-k of every row of the output's token-level ``logits``: ragged rows ``[M, V]`` with ``row_counts``
    ``[B]``, or ``[B, T, V]`` (then every position is a row)."""
    logits = getattr(output, "logits", None)
    if logits is None:
        raise RuntimeError("Needs.token_topk: the model returned no logits")
    counts = getattr(output, "row_counts", None)
    if counts is None:
        if logits.dim() != 3:
            raise RuntimeError(
                f"Needs.token_topk: logits [B, T, V] or ragged rows with row_counts, got {tuple(logits.shape)}"
            )
        b, t = logits.shape[:2]
        counts = torch.full((b,), t, dtype=torch.long, device=logits.device)
        logits = logits.reshape(b * t, -1)
    if k > logits.shape[-1]:
        raise ConfigError(
            f"top-k {k} (method.topk) is larger than the teacher's vocabulary ({logits.shape[-1]}); lower it"
        )
    values, indices = logits.float().topk(k, dim=-1)
    return TokenTopK(values, indices, counts)


def check_layer_outputs(model: nn.Module, output: object) -> None:
    """The convention above, checked against what ``model`` returned: one hidden state per layer plus the
    embeddings, one attention map per layer (``config.num_hidden_layers``). A model that records more — ALBERT
    with ``inner_group_num`` > 1 records every inner layer of each depth — would have its maps read at the wrong
    layers, silently; it is refused instead."""
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(layers, int):
        return
    for name, got, want in (
        ("hidden states", getattr(output, "hidden_states", None), layers + 1),
        ("attention maps", getattr(output, "attentions", None), layers),
    ):
        if got and len(got) != want:
            inner = getattr(model.config, "inner_group_num", 1)
            why = (
                f"this ALBERT runs {inner} layers per depth (inner_group_num) and records each; ALBERT with "
                "inner_group_num 1 (every released ALBERT) is supported"
                if inner not in (None, 1)
                else "bertdistill's layer maps need one per layer"
            )
            raise ConfigError(
                f"{type(model).__name__} returned {len(got)} {name} for its {layers} layers, where {want} were "
                f"expected, so its layers cannot be matched to another model's: {why}"
            )


def forward_features(model: nn.Module, inputs: Mapping[str, Tensor], needs: Needs) -> tuple[object, Features]:
    """Run ``model`` asking for exactly what ``needs`` says; return the raw output and the selection."""
    out = model(**inputs, output_hidden_states=needs.hidden_states, output_attentions=needs.attentions)
    check_layer_outputs(model, out)
    return out, select_features(out, needs)


# ----------------------------------------------------------------------------------------------- pre-softmax scores

SCORES_ATTENTION = "bertdistill_scores"
"""Name of the attention implementation whose ``attentions`` output is the **pre-softmax** scores.

``softmax(QKᵀ·scale + mask)`` is computed exactly as transformers' eager attention does (same dropout on the
probabilities, same output), but the per-layer ``attentions`` a model returns with ``output_attentions=True``
are the scaled scores *with the additive mask already added* (masked keys hold the dtype's minimum,
≈ −3.4e38 in float32) — what TinyBERT and MobileBERT distil. No fork of the model: the function is
registered in transformers' ``AttentionInterface``, with the eager mask registered for the same name in
``AttentionMaskInterface`` (without it the mask never arrives)."""


def _scores_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, scores


def register_score_attention() -> str:
    """Register :data:`SCORES_ATTENTION` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(SCORES_ATTENTION, _scores_attention)
    AttentionMaskInterface.register(SCORES_ATTENTION, eager_mask)
    return SCORES_ATTENTION


def use_score_attention(model: nn.Module) -> nn.Module:
    """Switch a loaded HF model to :data:`SCORES_ATTENTION` in place (its outputs are unchanged; only the
    returned ``attentions`` become pre-softmax scores). Not saved in ``config.json``: a saved model loads
    with transformers' default attention."""
    register_score_attention()
    model.set_attn_implementation(SCORES_ATTENTION)  # type: ignore[operator]
    return model


__all__ = [
    "SCORES_ATTENTION",
    "Features",
    "MissingAttentionsError",
    "Needs",
    "forward_features",
    "register_score_attention",
    "select_features",
    "token_topk",
    "use_score_attention",
]
