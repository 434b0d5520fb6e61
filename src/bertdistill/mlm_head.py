"""Masked-LM logits at the predicted positions only.

An MLM loss reads the logits of the masked positions (≈15 % of the tokens), but ``XForMaskedLM.forward``
projects *every* token onto the vocabulary (hidden × 30K multiply-adds per token), which dominates the cost of
a small encoder. :func:`masked_token_logits` runs the encoder, keeps the hidden states of the positions whose
label is not −100, and applies the model's own MLM head to those rows only. The result equals
``model(**inputs).logits[labels != -100]`` (tested); models whose head we cannot split fall back to exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

Head = Callable[[Tensor], Tensor]


def split_mlm(model: nn.Module) -> tuple[nn.Module, Head] | None:
    """``(encoder, head)`` of an HF masked LM whose head maps final hidden states position-wise to vocabulary
    logits (BERT, DistilBERT, RoBERTa-style ``lm_head``), or ``None`` when the layout is unknown."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if not isinstance(body, nn.Module):
        return None
    if isinstance(getattr(model, "cls", None), nn.Module):  # BertForMaskedLM: BertOnlyMLMHead
        return body, model.cls
    names = ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")
    if all(isinstance(getattr(model, n, None), nn.Module) for n in names):  # DistilBertForMaskedLM

        def distilbert_head(h: Tensor) -> Tensor:
            return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))

        return body, distilbert_head
    if isinstance(getattr(model, "lm_head", None), nn.Module):  # RoBERTa / XLM-R / Electra-style heads
        return body, model.lm_head
    return None


def masked_token_logits(model: nn.Module, inputs: Mapping[str, Any], labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits [M, V], labels [M])`` of the M positions whose label is not −100, for ``inputs`` ``[B, T]``."""
    keep = labels != -100
    parts = split_mlm(model)
    if parts is None:
        return model(**inputs).logits[keep], labels[keep]
    body, head = parts
    hidden = body(**inputs, return_dict=True).last_hidden_state
    return head(hidden[keep]), labels[keep]


class SparseMLM(nn.Module):
    """A trainable bundle around an HF masked LM whose ``forward(inputs, labels)`` returns the logits of the
    predicted positions only (:func:`masked_token_logits`). One module call per step, so a DDP wrapper around
    the bundle still sees (and synchronises) every step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Mapping[str, Any], labels: Tensor) -> tuple[Tensor, Tensor]:
        return masked_token_logits(self.model, inputs, labels)


__all__ = ["SparseMLM", "masked_token_logits", "split_mlm"]
