"""Masked-LM training of an encoder on raw text — to give an encoder without an MLM head (a sentence
encoder such as MiniLM-L6) the trained head that DistilBERT's teacher needs.

``L = CE(z, x)`` over the masked tokens (Devlin et al. 2019 BERT's MLM objective; masking as in
:mod:`bertdistill.data.corpus`: 15%, 80/10/10, dynamic, frequency-smoothed positions). The model is
``AutoModelForMaskedLM`` of ``student.path``; its output projection is tied to the word embeddings (BERT's
convention), so by default only the head's transform (dense + LayerNorm) and output bias train and the
encoder is unchanged; ``train_body: true`` trains the encoder too (``body_lr_scale`` × the learning rate).
Run it as ``bertdistill finetune --task mlm --model minilm-l6 --corpus FILE -o DIR``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM

from ..config import ConfigError
from ..data.corpus import CorpusConfig, MLMCollator, corpus_datasets
from ..features import Features
from ..hub import from_pretrained
from ..losses import mlm_ce
from ..mlm_head import SparseMLM
from ..registry import register
from .base import Method, ParamGroups, Stage, mlm_metrics


@dataclass
class MLMConfig(CorpusConfig):
    name: str = "mlm"
    train_body: bool = False
    """Also train the encoder (and the tied word embeddings); default: the MLM head only."""
    body_lr_scale: float = 1.0
    """With ``train_body``: the encoder's learning rate = this × train.lr."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.body_lr_scale <= 0:
            raise ConfigError(f"method.body_lr_scale must be > 0, got {self.body_lr_scale}")


@register("mlm")
class MaskedLM(Method):
    """Masked-LM training of an encoder's MLM head (tied to the word embeddings), optionally its body too."""

    config_cls = MLMConfig
    cfg: MLMConfig
    requires_teacher = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.task.name != "mlm":
            raise ConfigError("method mlm trains on raw text: set data.task: mlm and method.corpus")
        if self.run.student.init != "pretrained" or not self.run.student.path:
            raise ConfigError(
                "method mlm trains an existing encoder: set student.init: pretrained and student.path "
                "(e.g. minilm-l6)"
            )
        self.token_probs: Tensor | None = None

    def build_student(self, teacher: nn.Module | None) -> nn.Module:
        path = self.run.student.path
        assert path is not None
        model, info = from_pretrained(
            AutoModelForMaskedLM,
            path,
            trust_remote_code=self.run.teacher.trust_remote_code,
            output_loading_info=True,
        )
        if model.get_output_embeddings() is None:
            raise ConfigError(f"{type(model).__name__} has no output embeddings to tie")
        model.config.tie_word_embeddings = True
        model.tie_weights()
        new = sorted(k for k in info.get("missing_keys", ()) if "position_ids" not in k)
        self.student_info = {"init": "pretrained", "path": path, "newly_initialised": new}
        # the bundle projects only the masked positions onto the vocabulary (mlm_head.py): same loss, a
        # fraction of the cost, since the output projection dominates a small encoder's step
        return SparseMLM(model)

    def export_model(self, bundle: nn.Module) -> Any:
        return bundle.model

    @staticmethod
    def _body_prefix(bundle: nn.Module) -> str:
        return "model." + getattr(bundle.model, "base_model_prefix", "") + "."

    def _head_only(self, bundle: nn.Module) -> ParamGroups:
        prefix = self._body_prefix(bundle)
        # named_parameters lists a tied weight once, under the encoder's embeddings: the head's output
        # projection (= the word embeddings) therefore stays frozen
        return [{"params": [(n, p) for n, p in bundle.named_parameters() if not n.startswith(prefix)]}]

    def _with_body(self, bundle: nn.Module) -> ParamGroups:
        prefix = self._body_prefix(bundle)
        named = list(bundle.named_parameters())
        head = [(n, p) for n, p in named if not n.startswith(prefix)]
        body = [(n, p) for n, p in named if n.startswith(prefix)]
        return [{"params": head}, {"params": body, "lr_scale": self.cfg.body_lr_scale}]

    def stages(self) -> list[Stage]:
        groups = self._with_body if self.cfg.train_body else self._head_only
        return [Stage("train", uses_teacher=False, cacheable=False, param_groups=groups)]

    def datasets(self, tokenizer: Any) -> dict[str, Any]:
        data, self.token_probs = corpus_datasets(self.cfg, self.run, tokenizer)
        return data

    def collator(self, tokenizer: Any) -> Any:
        if self.token_probs is None:
            raise RuntimeError("call datasets() before collator(): masking weights come from the corpus")
        return MLMCollator(tokenizer, self.token_probs, self.cfg, self.run.train.seed)

    def student_forward(self, bundle: nn.Module, batch: Mapping[str, Any], stage: Stage) -> Any:
        return bundle(batch["inputs"], batch["mlm_labels"])

    def loss(
        self, stage: Stage, batch: Mapping[str, Any], student_out: Any, teacher_out: Features | None
    ) -> dict[str, Tensor]:
        logits, labels = student_out
        return {"mlm": mlm_ce(logits, labels)}

    @torch.no_grad()
    def evaluate(self, bundle: nn.Module, loader: Any, gather: Any = None) -> dict[str, float]:
        return mlm_metrics(self.export_model(bundle), loader, gather)
