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

from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import AutoModelForMaskedLM

from ..config import ConfigError, MethodConfig
from ..data.corpus import CorpusConfig, MLMCollator, corpus_datasets
from ..hub import from_pretrained
from ..losses import mlm_ce
from ..mlm_head import MLMRunner, SparseMLM
from ..protocol import Batch, BuiltStudent, Features, Method, MethodTestConfig, ParamGroups, Stage
from ..registry import register


@dataclass
class MLMConfig(CorpusConfig, MethodConfig):
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

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        return None

    @classmethod
    def control_unavailable(cls) -> str:
        return "mlm trains a masked-LM head without a teacher: there is nothing to compare it against"

    runner_cls = MLMRunner
    cfg: MLMConfig
    test_config = MethodTestConfig(
        sections={
            "method": {"corpus": ["{corpus}"], "heldout_fraction": 0.1, "train_body": True},
            "teacher": {"path": None},
            "student": {"init": "pretrained", "path": "{mlm_teacher}", "num_layers": None},
            "data": {"task": "mlm", "path": None, "max_length": 24},
        },
        # masks are redrawn for every batch, so the loss is bounded below by the toy corpus's word entropy
        # (≈ ln 24 ≈ 3.2 nats against ≈ 3.9 at the start): a fall of 15 % is all there is to learn
        overfit={"train": {"lr": 1e-2}},
        overfit_ratio=0.85,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.task.name != "mlm":
            raise ConfigError("method mlm trains on raw text: set data.task: mlm and method.corpus")
        if self.run.student.init != "pretrained" or not self.run.student.path:
            raise ConfigError(
                "method mlm trains an existing encoder: set student.init: pretrained and student.path "
                "(e.g. minilm-l6)"
            )

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
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
        info = {"init": "pretrained", "path": path, "newly_initialised": new}
        # the bundle projects only the masked positions onto the vocabulary (mlm_head.py): same loss, a
        # fraction of the cost, since the output projection dominates a small encoder's step
        return BuiltStudent(SparseMLM(model), info)

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
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
        return corpus_datasets(self.cfg, self.run, tokenizer)

    def collator(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        return MLMCollator(tokenizer, datasets["train"].mask_weights, self.cfg, self.run.train.seed)  # type: ignore[attr-defined]

    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        return {**batch["inputs"], "mlm_labels": batch["mlm_labels"]}

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        return {"mlm": mlm_ce(student_out.logits, student_out.labels)}
