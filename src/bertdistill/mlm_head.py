"""Masked-LM logits at the predicted positions only.

An MLM loss reads the logits of the masked positions (≈15 % of the tokens), but ``XForMaskedLM.forward``
projects *every* token onto the vocabulary (hidden × 30K multiply-adds per token), which dominates the cost of
a small encoder. :func:`masked_token_logits` runs the encoder, keeps the hidden states of the positions whose
label is not −100, and applies the model's own MLM head to those rows only. The result equals
``model(**inputs).logits[labels != -100]`` (tested); models whose head we cannot split fall back to exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers.utils import ModelOutput

from .config import ConfigError
from .protocol import Prediction, Runner

Head = Callable[[Tensor], Tensor]


def split_mlm(model: nn.Module) -> tuple[nn.Module, Head] | None:
    """``(encoder, head)`` of an HF masked LM whose head maps final hidden states position-wise to vocabulary
    logits (BERT, DistilBERT, RoBERTa-style ``lm_head``, ELECTRA's generator, ALBERT), or ``None`` when the layout is unknown."""
    prefix = getattr(model, "base_model_prefix", "")
    m: Any = model
    body = getattr(model, prefix, None) if prefix else None
    if not isinstance(body, nn.Module):
        return None
    if isinstance(getattr(model, "cls", None), nn.Module):  # BertForMaskedLM: BertOnlyMLMHead
        return body, m.cls
    names = ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")
    if all(isinstance(getattr(model, n, None), nn.Module) for n in names):  # DistilBertForMaskedLM

        def distilbert_head(h: Tensor) -> Tensor:
            return m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(h))))  # type: ignore[no-any-return]

        return body, distilbert_head
    if isinstance(getattr(model, "lm_head", None), nn.Module):  # RoBERTa / XLM-R-style heads
        return body, m.lm_head
    if isinstance(getattr(model, "predictions", None), nn.Module):  # AlbertForMaskedLM: AlbertMLMHead
        return body, m.predictions
    generator = ("generator_predictions", "generator_lm_head")
    if all(isinstance(getattr(model, n, None), nn.Module) for n in generator):  # ElectraForMaskedLM

        def electra_head(h: Tensor) -> Tensor:
            return m.generator_lm_head(m.generator_predictions(h))  # type: ignore[no-any-return]

        return body, electra_head
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


@dataclass
class MaskedTokenOutput(ModelOutput):
    logits: Tensor | None = None
    """``[M, V]``: logits of the M predicted positions of the batch."""
    labels: Tensor | None = None
    """``[M]``: their target ids."""


class SparseMLM(nn.Module):
    """A trainable bundle around an HF masked LM whose ``forward(mlm_labels=..., **inputs)`` returns the logits
    of the predicted positions only (:func:`masked_token_logits`). One module call per step, so a DDP wrapper
    around the bundle still sees (and synchronises) every step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, mlm_labels: Tensor, **inputs: Any) -> MaskedTokenOutput:
        logits, labels = masked_token_logits(self.model, inputs, mlm_labels)
        return MaskedTokenOutput(logits=logits, labels=labels)


@torch.no_grad()
def mlm_metrics(
    model: nn.Module, loader: Any, gather: Callable[[Tensor], Tensor] | None = None
) -> dict[str, float]:
    """Masked-LM loss and perplexity on batches with ``mlm_labels`` (−100 = not predicted):
    ``mlm_loss`` = mean cross-entropy over all predicted tokens of the loader, ``perplexity`` = exp of it,
    ``neg_perplexity`` = −perplexity (higher is better, for model selection)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros(()), torch.zeros(())
    for batch in loader:
        labels = batch["mlm_labels"]
        logits, picked = masked_token_logits(model, batch["inputs"], labels)  # predicted positions only
        per_token = torch.nn.functional.cross_entropy(logits.float(), picked, reduction="none")
        # per sequence, so that gathering drops padded duplicates correctly
        ce = torch.zeros(labels.shape[0], dtype=per_token.dtype, device=per_token.device)
        keep = (labels != -100).to(ce.device)
        ce.index_add_(0, keep.nonzero()[:, 0], per_token)
        n = keep.sum(-1).to(ce.dtype)
        if gather is not None:
            ce, n = gather(ce), gather(n)
        total += ce.sum().cpu()
        count += n.sum().cpu()
    model.train(was_training)
    loss = float(total / count.clamp_min(1.0))
    ppl = float(np.exp(min(loss, 50.0)))
    return {"mlm_loss": loss, "perplexity": ppl, "neg_perplexity": -ppl}


class MLMRunner(Runner):
    """Masked-LM students (DistilBERT's pre-training stage, ``mlm``) at evaluation: the loss and perplexity of
    the masked positions of batches with ``mlm_labels``. Per row, :meth:`predict` returns the summed
    cross-entropy and the number of predicted tokens, so gathering across processes stays exact."""

    @classmethod
    def load(cls, path: Any, recipe: Mapping[str, Any], task: Any) -> Runner:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from .hub import from_pretrained

        p = str(path)
        model = from_pretrained(AutoModelForMaskedLM, p).eval()
        return cls(model, from_pretrained(AutoTokenizer, p), task, p, recipe)

    def predict(self, batch: Mapping[str, Any], **options: Any) -> Prediction:
        labels = batch["mlm_labels"]
        inputs = {k: v for k, v in batch["inputs"].items() if k in self.input_names()}
        logits, picked = masked_token_logits(self.model, inputs, labels)
        per_token = torch.nn.functional.cross_entropy(logits.float(), picked, reduction="none")
        keep = labels != -100
        ce = torch.zeros(labels.shape[0], dtype=per_token.dtype, device=per_token.device)
        ce.index_add_(0, keep.nonzero()[:, 0].to(ce.device), per_token)
        return Prediction(None, {"ce_sum": ce, "tokens": keep.sum(-1).to(ce.dtype)})

    def onnx_graphs(self, batch: Mapping[str, Any], **options: Any) -> list[Any]:
        raise ConfigError(
            f"{self.path}: a masked LM (scored by perplexity) is not exported to ONNX; `bertdistill export` "
            "takes task students (classifiers, regressors, seq2seq); fine-tune it on a task first"
        )

    def input_names(self) -> tuple[str, ...]:
        names = getattr(self.tokenizer, "model_input_names", None) or ("input_ids", "attention_mask")
        return tuple(names)

    def targets(self, batch: Mapping[str, Any]) -> Tensor | None:
        return None

    def metrics(
        self, logits: Tensor | None, targets: Tensor | None, extras: Mapping[str, Tensor]
    ) -> dict[str, float]:
        loss = float(extras["ce_sum"].sum() / extras["tokens"].sum().clamp_min(1.0))
        ppl = float(np.exp(min(loss, 50.0)))
        return {"mlm_loss": loss, "perplexity": ppl, "neg_perplexity": -ppl}


__all__ = ["MLMRunner", "MaskedTokenOutput", "SparseMLM", "masked_token_logits", "mlm_metrics", "split_mlm"]
