"""FastBERT — Liu et al. 2020, "FastBERT: a Self-distilling BERT with Adaptive Inference Time".

A fine-tuned backbone keeps its own classifier as the *teacher classifier* on the last layer; a small
*branch classifier* (student) sits after every other layer. Stages: ``finetune`` (optional: backbone +
teacher classifier on labels) then ``self_distill`` (backbone and teacher classifier frozen; every branch
learns ``KL(p_teacher ‖ p_branch)`` — no labels needed). At inference a sample leaves at the first layer
whose branch is certain enough: normalised entropy ``u = −Σ p log p / ln C`` below ``speed``
(:func:`early_exit`).

The backbone is the teacher's own encoder, of any family the layer-by-layer runner knows
(:class:`~bertdistill.layerwise.Layerwise`: BERT, RoBERTa / XLM-R, ELECTRA, DistilBERT, DeBERTa-v2, ALBERT), with its
own classification head as the teacher classifier; wrapping a teacher checks that the wrapped model computes the
teacher's logits, at full depth and layer by layer.

The saved model is a regular HF dir (``FastBertForSequenceClassification``, its config class registered
with the Auto classes when bertdistill is imported — no ``trust_remote_code``). At inference its runner
(:class:`FastBertRunner`) takes the option ``speed``: without it the model runs at full depth (the teacher
classifier); with it, batched early exit (:func:`early_exit`), scored with the mean exit layer and the FLOPs
speed-up, and timed against full depth in the same run. Exported to ONNX, the student is one graph per piece
(embeddings, each layer, each branch, the teacher classifier) and the same :func:`early_exit` loop runs between
them (:class:`OnnxPieces`), so the exported student exits early too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

from ..checks import check_teacher_labels
from ..config import ConfigError, MethodConfig
from ..layerwise import Layerwise
from ..losses import hard_ce, soft_target_kl
from ..protocol import (
    Batch,
    BuiltStudent,
    Features,
    InferenceOption,
    Method,
    OnnxGraph,
    OnnxRun,
    Prediction,
    Runner,
    Stage,
    takes_token_types,
)
from ..registry import register
from ..students import label_kwargs

# ----------------------------------------------------------------------------------------------- the model


class FastBertConfig(PretrainedConfig):
    model_type = "bertdistill-fastbert"

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        branch_hidden: int = 128,
        branch_heads: int = 2,
        speed: float = 0.5,
        **kwargs: Any,
    ) -> None:
        self.backbone = dict(backbone or {"model_type": "bert"})
        self.branch_hidden = branch_hidden
        self.branch_heads = branch_heads
        self.speed = speed
        super().__init__(**kwargs)

    def backbone_config(self) -> PretrainedConfig:
        d = dict(self.backbone)
        return AutoConfig.for_model(d.pop("model_type"), **d)

    # read by evaluation tables (a DistilBERT backbone names them n_layers and dim)
    @property
    def num_hidden_layers(self) -> int:  # type: ignore[override]
        return int(self.backbone.get("num_hidden_layers", self.backbone.get("n_layers", 0)))

    @property
    def hidden_size(self) -> int:  # type: ignore[override]
        return int(self.backbone.get("hidden_size", self.backbone.get("dim", 0)))


class Branch(nn.Module):
    """The paper's branch: linear H→b + tanh, b-dim multi-head self-attention, first token, linear b→b +
    tanh, linear → classes (official: b = 128, 2 heads)."""

    def __init__(self, hidden: int, width: int, heads: int, num_labels: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        x = torch.tanh(self.down(hidden))
        a, _ = self.attn(x, x, x, key_padding_mask=attention_mask == 0, need_weights=False)
        return self.out(torch.tanh(self.fc(a[:, 0])))


@dataclass
class FastBertOutput(ModelOutput):
    logits: Tensor | None = None  # the teacher classifier's (last layer)
    branch_logits: tuple[Tensor, ...] | None = None  # layers 1 .. L-1
    loss: Tensor | None = None


class FastBertForSequenceClassification(PreTrainedModel):
    config_class = FastBertConfig
    base_model_prefix = "bert"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: FastBertConfig) -> None:
        super().__init__(config)
        bcfg = config.backbone_config()
        n_labels = int(config.num_labels or 2)
        if (
            bcfg.model_type == "bert"
        ):  # the paper's backbone: BertModel (with pooler), dropout, linear classifier
            bcfg._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
            self.bert = AutoModel.from_config(bcfg)
            self.dropout = nn.Dropout(getattr(bcfg, "classifier_dropout", None) or bcfg.hidden_dropout_prob)
            self.classifier = nn.Linear(bcfg.hidden_size, n_labels)
        else:  # another family: its own sequence classifier's encoder, and its head modules under their names
            bcfg.num_labels = n_labels
            full = AutoModelForSequenceClassification.from_config(bcfg)
            for name, child in full.named_children():
                setattr(self, "bert" if name == full.base_model_prefix else name, child)
        self.head_kind = _head_kind(self)
        self._token_types = takes_token_types(self.bert)
        self.branches = nn.ModuleList(
            Branch(bcfg.hidden_size, config.branch_hidden, config.branch_heads, n_labels)
            for _ in range(bcfg.num_hidden_layers - 1)
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # only the branches are ours; the backbone initialises itself (BertModel.post_init) or is loaded
        if isinstance(module, Branch):
            for lin in (module.down, module.fc, module.out):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
        elif hasattr(self, "bert") and any(module is m for m in self.bert.modules()):
            self.bert._init_weights(module)

    def teacher_head(self, last_hidden: Tensor) -> Tensor:
        """The teacher classifier on the last layer's states, as the backbone family's own classifier runs it."""
        kind = self.head_kind
        m: Any = self  # the head modules are the family's, registered under their own names
        if kind == "sequence":  # RoBERTa, ELECTRA: the head takes the sequence and reads its first token
            return m.classifier(last_hidden)  # type: ignore[no-any-return]
        if kind == "context_pooler":  # DeBERTa: its own pooler, then dropout and the classifier
            return m.classifier(m.dropout(m.pooler(last_hidden)))  # type: ignore[no-any-return]
        if kind == "first_token_mlp":  # DistilBERT: first token, linear, ReLU, dropout, classifier
            return m.classifier(m.dropout(torch.relu(m.pre_classifier(last_hidden[:, 0]))))  # type: ignore[no-any-return]
        pooler = getattr(self.bert, "pooler", None)  # BERT: the encoder's pooler, dropout, classifier
        activation = getattr(
            self.bert, "pooler_activation", None
        )  # ALBERT: a linear pooler on the first token
        if pooler is None:
            pooled = last_hidden[:, 0]
        elif activation is not None:
            pooled = activation(pooler(last_hidden[:, 0]))
        else:
            pooled = pooler(last_hidden)
        return m.classifier(m.dropout(pooled))  # type: ignore[no-any-return]

    def encode(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Any:
        """The encoder with every layer's states (a DistilBERT takes no token types)."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._token_types:
            kwargs["token_type_ids"] = token_type_ids
        return self.bert(**kwargs, output_hidden_states=True)

    def layerwise(self) -> Layerwise:
        """The encoder as pieces for early exit (:class:`Layerwise`), built once per model, not per batch."""
        pieces: Layerwise | None = self.__dict__.get("_layerwise")
        if pieces is None:
            pieces = Layerwise(
                self.bert, "fastbert runs the teacher's encoder one layer at a time to exit early"
            )
            self.__dict__["_layerwise"] = pieces
        return pieces

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        branches: bool = True,
        frozen_backbone: bool = False,
        **kwargs: Any,
    ) -> FastBertOutput:
        """``branches=False``: the backbone and teacher classifier only (fine-tuning, full-depth inference).
        ``frozen_backbone=True`` (self-distillation): backbone and teacher classifier run in eval mode without
        a graph; only the branches compute gradients."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if frozen_backbone:
            return self._self_distill_forward(input_ids, attention_mask, token_type_ids)
        out = self.encode(input_ids, attention_mask, token_type_ids)
        hs = out.hidden_states  # L+1 entries; hs[m] = output of layer m
        logits = self.teacher_head(hs[-1])
        branch_logits = (
            tuple(b(hs[i + 1], attention_mask) for i, b in enumerate(self.branches)) if branches else None
        )
        loss = hard_ce(logits, labels) if labels is not None else None
        return FastBertOutput(logits=logits, branch_logits=branch_logits, loss=loss)

    def _self_distill_forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None
    ) -> FastBertOutput:
        frozen = [
            m for name, m in self.named_children() if name != "branches"
        ]  # backbone, teacher classifier
        was = [m.training for m in frozen]
        for m in frozen:
            m.eval()
        try:
            with torch.no_grad():  # frozen backbone and teacher classifier: no graph needed
                out = self.encode(input_ids, attention_mask, token_type_ids)
                teacher_logits = self.teacher_head(out.hidden_states[-1])
        finally:
            for m, mode in zip(frozen, was, strict=True):
                m.train(mode)
        hs = out.hidden_states
        branch_logits = tuple(b(hs[i + 1], attention_mask) for i, b in enumerate(self.branches))
        return FastBertOutput(logits=teacher_logits, branch_logits=branch_logits)


AutoConfig.register(FastBertConfig.model_type, FastBertConfig)
AutoModelForSequenceClassification.register(FastBertConfig, FastBertForSequenceClassification)


def _head_kind(model: nn.Module) -> str:
    """How the backbone family's classifier reads the last layer (see ``teacher_head``), from its modules."""
    if hasattr(model, "pre_classifier"):
        return "first_token_mlp"
    if hasattr(model, "pooler"):
        return "context_pooler"
    return "pooled" if isinstance(getattr(model, "classifier", None), nn.Linear) else "sequence"


def from_classifier(
    teacher: nn.Module, branch_hidden: int = 128, branch_heads: int = 2, speed: float = 0.5
) -> FastBertForSequenceClassification:
    """Wrap a fine-tuned sequence classifier of any family :class:`Layerwise` can run: its encoder and head
    are copied; the branches are new. The wrapped model must compute the teacher's logits, at full depth and
    layer by layer (:func:`check_wraps`), or the teacher is refused."""
    tcfg: Any = teacher.config
    prefix = getattr(teacher, "base_model_prefix", "")
    if (
        not prefix
        or not isinstance(getattr(teacher, prefix, None), nn.Module)
        or not hasattr(teacher, "classifier")
    ):
        raise ConfigError(
            f"fastbert needs a sequence classifier (an encoder and a classifier head, as "
            f"AutoModelForSequenceClassification loads); got {type(teacher).__name__}"
        )
    bdict = tcfg.to_dict()
    for k in ("architectures", "id2label", "label2id", "num_labels", "problem_type", "_name_or_path"):
        bdict.pop(k, None)
    cfg = FastBertConfig(
        backbone=bdict,
        branch_hidden=branch_hidden,
        branch_heads=branch_heads,
        speed=speed,
        num_labels=tcfg.num_labels,
        id2label=tcfg.id2label,
        label2id=tcfg.label2id,
    )
    model = FastBertForSequenceClassification(cfg)
    model.layerwise()  # refuses an encoder it cannot step through before any weight is copied
    body = prefix + "."
    state = {
        ("bert." + k[len(body) :] if k.startswith(body) else k): v for k, v in teacher.state_dict().items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("branches.") and not k.endswith(_BUFFERS)]
    unexpected = [k for k in unexpected if not k.endswith(_BUFFERS)]
    if missing or unexpected:
        raise ConfigError(
            f"fastbert cannot wrap {type(teacher).__name__}: its weights do not map onto the FastBERT model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    check_wraps(model, teacher)
    return model


_BUFFERS = ("position_ids", "token_type_ids")


@torch.no_grad()
def check_wraps(model: FastBertForSequenceClassification, teacher: nn.Module) -> None:
    """The wrapped model, run whole and layer by layer (:func:`early_exit` at full depth), must give the teacher's
    logits on a fixed two-row batch (one row padded), and the layer-by-layer states the branches read at
    inference must be the states they train on (the encoder's ``hidden_states``, one per layer, on the real
    tokens); otherwise the family's head or layers are run in a way FastBERT does not know, and the teacher is
    refused. Deterministic: no random state is drawn."""
    tcfg: Any = teacher.config
    vocab = int(tcfg.vocab_size)
    ids = torch.arange(24).reshape(2, 12) % max(vocab - 3, 1) + min(3, vocab - 1)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    device = next(teacher.parameters()).device
    dtype = next(teacher.parameters()).dtype
    modes = (teacher.training, model.training)
    teacher.eval()
    model.eval()
    try:
        want = teacher(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()
        whole = model(**inputs, branches=False).logits.float()
        stepped = early_exit(model, inputs, 0.0).logits.float()
        trained_on = [h.float() for h in model.encode(ids, mask, None).hidden_states]
        pieces = EagerPieces(model)
        run_on = [pieces.embed(inputs, mask)]
        for i in range(len(pieces.pieces)):
            run_on.append(pieces.layer(i, run_on[-1], mask))
    except ConfigError:
        raise
    except Exception as e:  # any failure of a family run in a way it does not support
        raise ConfigError(
            f"fastbert cannot wrap {type(teacher).__name__} ({tcfg.model_type}): the wrapped model fails to run "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {_SUPPORTED}"
        ) from e
    finally:
        teacher.train(modes[0])
        model.train(modes[1])
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    scale = float(want.abs().max()) + 1.0
    for how, got in (("whole", whole), ("layer by layer", stepped)):
        err = float((got - want).abs().max())
        if err > tol * scale:
            raise ConfigError(
                f"fastbert cannot wrap {type(teacher).__name__} ({tcfg.model_type}): run {how}, the wrapped model's "
                f"logits differ from the teacher's by {err:.3g}; {_SUPPORTED}"
            )
    real = mask.bool()
    if len(trained_on) != len(run_on):
        raise ConfigError(
            f"fastbert cannot wrap {type(teacher).__name__} ({tcfg.model_type}): its encoder reports "
            f"{len(trained_on)} hidden states for {len(run_on) - 1} layers, so a branch would train on other states "
            f"than it runs on; {_SUPPORTED}"
        )
    for layer, (a, b) in enumerate(zip(trained_on, run_on, strict=True)):
        err = float((a[real] - b.float()[real]).abs().max())
        if err > tol * (float(a[real].abs().max()) + 1.0):
            raise ConfigError(
                f"fastbert cannot wrap {type(teacher).__name__} ({tcfg.model_type}): run layer by layer, its state "
                f"after layer {layer} differs from the encoder's own by {err:.3g}, so a branch would train on other "
                f"states than it runs on; {_SUPPORTED}"
            )


_SUPPORTED = (
    "FastBERT supports classifiers whose encoder layers run one after another and whose head reads the last "
    "layer as BERT's, RoBERTa's, ELECTRA's, DistilBERT's, DeBERTa-v2's or ALBERT's does"
)


# ----------------------------------------------------------------------------------------------- method


def _branch_params(model: nn.Module) -> list[dict[str, Any]]:
    return [{"params": [(n, p) for n, p in model.named_parameters() if n.startswith("branches.")]}]


def _backbone_params(model: nn.Module) -> list[dict[str, Any]]:
    return [{"params": [(n, p) for n, p in model.named_parameters() if not n.startswith("branches.")]}]


@dataclass
class FastBertMethodConfig(MethodConfig):
    name: str = "fastbert"
    branch_hidden: int = 128
    """Branch width (paper: 128 for BERT-base; kept at 128 for narrower backbones such as MiniLM-L6's 384)."""
    branch_heads: int = 2
    finetune_epochs: float = 0.0
    """> 0: first fine-tune backbone + teacher classifier on labels (teacher.path is then a backbone)."""
    finetune_lr: float = 2e-5
    distill_epochs: float = 1.0
    distill_lr: float = 2e-4
    """Official code: 10× the fine-tuning lr."""
    speed: float = 0.5
    """Default exit threshold for evaluation and the saved model (0 = full depth)."""
    use_labels: bool = False
    """Ablation: train the branches on gold labels (CE) instead of self-distillation."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.speed <= 1.0:
            raise ConfigError(f"method.speed must be in [0, 1], got {self.speed}")
        if self.branch_hidden < 1 or self.branch_heads < 1:
            raise ConfigError(
                f"method.branch_hidden and branch_heads must be >= 1, got {self.branch_hidden}, {self.branch_heads}"
            )
        if self.branch_hidden % self.branch_heads:
            raise ConfigError("method.branch_hidden must be divisible by method.branch_heads")


class FastBertRunner(Runner):
    """FastBERT students at inference: full depth by default; ``speed`` = batched early exit."""

    options: ClassVar[tuple[InferenceOption, ...]] = (
        InferenceOption(
            "speed",
            float,
            "early-exit threshold in [0, 1] (0 = full depth): a row leaves at the first branch whose "
            "normalised entropy is below it; adds the exit layer, mean exit layer, FLOPs speed-up and (timed) "
            "the measured speed-up against the same model at full depth",
            valid=(lambda v: 0.0 <= v <= 1.0, "in [0, 1] (0 = full depth)"),
        ),
    )

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        # FLOPs are counted on this model: a copy at another precision (int8's quantised linears, which the FLOP
        # counter cannot see) shares it, so every form reports the same architecture's FLOPs
        self.flops_model = model

    def predict(self, batch: Batch, **options: Any) -> Prediction:
        speed = options.get("speed")
        if speed is None:
            return Prediction(self.model(**batch["inputs"], branches=False).logits)
        return self._exits(batch, early_exit(self.model, batch["inputs"], float(speed)), float(speed))

    def _exits(self, batch: Batch, res: EarlyExitResult, speed: float) -> Prediction:
        """An early-exit run as a prediction: logits, and per row the exit layer, the number of real tokens and
        whether branches ran, from which :meth:`metrics` counts the FLOPs (outside what is timed)."""
        lengths = batch["inputs"]["attention_mask"].sum(-1).cpu()
        branched = torch.full_like(lengths, speed > 0, dtype=torch.bool)
        extras = {"exit_layer": res.exit_layer.cpu(), "length": lengths, "branched": branched}
        return Prediction(res.logits, extras)

    def metrics(
        self, logits: Tensor | None, targets: Tensor | None, extras: Mapping[str, Tensor]
    ) -> dict[str, float]:
        metrics = super().metrics(logits, targets, extras)
        if "exit_layer" in extras:
            metrics["mean_exit_layer"] = float(extras["exit_layer"].float().mean())
            spent, full = exit_flops(
                self.flops_model, extras["length"], extras["exit_layer"], extras["branched"]
            )
            metrics["flops_speedup"] = float(full.sum() / spent.sum())
        return metrics

    def rows(self, pred: Prediction) -> list[dict[str, Any]]:
        extras = {k: v for k, v in pred.extras.items() if k == "exit_layer"}
        return super().rows(Prediction(pred.logits, extras))

    def reference(self, **options: Any) -> Callable[[Batch], Any] | None:
        if options.get("speed") is None:
            return None
        return lambda batch: self.model(**batch["inputs"], branches=False)

    @torch.no_grad()
    def onnx_graphs(self, batch: Batch, **options: Any) -> list[OnnxGraph]:
        """The pieces early exit runs (:class:`EagerPieces`), one graph each: ``embeddings`` (token ids →
        ``hidden_states``), ``layer_1`` .. ``layer_L`` (``hidden_states``, ``attention_mask`` → ``layer_output``),
        ``branch_1`` .. ``branch_{L-1}`` (the same inputs → ``logits``) and ``head`` (layer L's states → the
        teacher classifier's ``logits``). :meth:`onnx_predict` runs them through :func:`early_exit`, so rows
        leave the batch as they do eagerly and later graphs run on the rest only. Each graph's example inputs
        are the eager states of ``batch`` at its place."""
        model: Any = self.model
        inputs = batch["inputs"]
        mask = inputs["attention_mask"]
        pieces = model.layerwise()
        embed = {k: inputs[k] for k in pieces.embed_inputs if inputs.get(k) is not None}
        graphs = [OnnxGraph("embeddings", EmbeddingsGraph(pieces, list(embed)), embed, ("hidden_states",))]
        hidden = graphs[0].module(*embed.values())
        for i in range(len(pieces)):
            step = LayerGraph(pieces, i)
            graphs.append(
                OnnxGraph(
                    f"layer_{i + 1}",
                    step,
                    {"hidden_states": hidden, "attention_mask": mask},
                    ("layer_output",),
                )
            )
            hidden = step(hidden, mask)
            if i < len(model.branches):
                given = {"hidden_states": hidden, "attention_mask": mask}
                graphs.append(OnnxGraph(f"branch_{i + 1}", model.branches[i], given, ("logits",)))
        graphs.append(OnnxGraph("head", HeadGraph(model), {"hidden_states": hidden}, ("logits",)))
        return graphs

    def onnx_predict(self, run: OnnxRun, batch: Batch, **options: Any) -> Prediction:
        """:func:`early_exit` over the exported graphs (:class:`OnnxPieces`): the same exits, logits and FLOPs
        as eager; without ``speed``, every layer and the teacher classifier (no branch runs)."""
        speed = options.get("speed")
        res = early_exit(self.model, batch["inputs"], float(speed or 0.0), OnnxPieces(run))
        return Prediction(res.logits) if speed is None else self._exits(batch, res, float(speed))


@register("fastbert")
class FastBert(Method):
    """FastBERT: self-distilled branch classifiers at every layer, per-sample early exit by entropy."""

    config_cls = FastBertMethodConfig

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        # the same backbone fine-tuning, then branches trained on the gold labels instead of self-distillation
        # (the same stages and schedule, hence the same steps)
        recipe["method"]["use_labels"] = True
        return recipe

    runner_cls = FastBertRunner
    cfg: FastBertMethodConfig

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        if teacher is None:
            raise ConfigError(
                "fastbert: set teacher.path to a fine-tuned classifier (or a backbone with finetune_epochs > 0)"
            )
        if self.task.regression:
            raise ConfigError(
                "fastbert exits on classification entropy; it does not apply to a regression task "
                f"({self.task.name!r}): distil it with kd, pkd or tinybert"
            )
        check_teacher_labels(teacher, self.task)  # the student keeps the teacher's classifier
        model = from_classifier(teacher, self.cfg.branch_hidden, self.cfg.branch_heads, self.cfg.speed)
        for k, v in label_kwargs(self.task).items():  # the task's label names, as every other student has
            setattr(model.config, k, v)
        info = {"init": "fastbert", "layers": model.config.num_hidden_layers, "branches": len(model.branches)}
        return BuiltStudent(model, info)

    def stages(self) -> list[Stage]:
        # the teacher is the model's own last-layer classifier: no stage reads teacher.path's outputs
        out = []
        if self.cfg.finetune_epochs > 0:
            out.append(
                Stage(
                    "finetune",
                    epochs=self.cfg.finetune_epochs,
                    lr=self.cfg.finetune_lr,
                    uses_teacher=False,
                    param_groups=_backbone_params,
                )
            )
        out.append(
            Stage(
                "self_distill",
                epochs=self.cfg.distill_epochs,
                lr=self.cfg.distill_lr,
                uses_teacher=False,
                param_groups=_branch_params,
            )
        )
        return out

    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        if stage.name == "finetune":
            return {**batch["inputs"], "branches": False}
        return {**batch["inputs"], "frozen_backbone": True}

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        if stage.name == "finetune":
            return {"ce": hard_ce(student_out.logits, batch["labels"])}
        if self.cfg.use_labels:
            return {"branch_ce": sum(hard_ce(z, batch["labels"]) for z in student_out.branch_logits)}  # type: ignore[dict-item]
        # Σ_i KL(p_teacher ‖ p_branch_i), batchmean, no temperature (official: KLDivLoss(log_softmax(s), softmax(t)))
        t = student_out.logits.detach()
        return {"self_distill": sum(soft_target_kl(z, t, 1.0) for z in student_out.branch_logits)}  # type: ignore[dict-item]

    def eval_options(self, stage: Stage | None) -> dict[str, Any]:
        return {"speed": self.cfg.speed}


def normalized_entropy(logits: Tensor) -> Tensor:
    """``−Σ p log p / ln C`` in [0, 1] per row (FastBERT's uncertainty)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


# ----------------------------------------------------------------------------------------------- early exit


@dataclass
class EarlyExitResult:
    logits: Tensor  # [B, C]
    exit_layer: Tensor  # [B], 1-based layer after which each row left (L = full depth)


# ----------------------------------------------------------------------------------------------- FLOPs


def _cpu_attention_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """``q·kᵀ`` and ``softmax·v`` of the CPU kernel scaled-dot-product attention picks (shapes ``[B, heads, T, d]``):
    torch's FLOP counter knows only the GPU kernels' formulas."""
    b, heads, t_q, d = query
    t_k, d_v = key[-2], value[-1]
    return 2 * b * heads * t_q * t_k * (d + d_v)


def count_flops(fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """FLOPs of ``fn(*args)``, and its output, as ``torch.utils.flop_counter`` counts them (2 per multiply-add of every matmul and
    convolution; elementwise work is not counted), with two blind spots closed: the CPU attention kernel is
    counted as attention, and ``nn.MultiheadAttention`` (the branches) runs its unfused path, whose matmuls the
    counter sees."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops},
    )
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # not in inference mode, even when called from it: the counter's module hooks take views of parameters
        with torch.inference_mode(False), torch.no_grad(), counter:
            out = fn(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops()), out


@dataclass(frozen=True)
class PieceFlops:
    """The FLOPs of each piece early exit runs (:class:`EagerPieces`) on one row of ``t`` real tokens."""

    embed: int
    layers: tuple[int, ...]  # layer 1 .. L
    branches: tuple[int, ...]  # branch 1 .. L-1
    head: int  # the teacher classifier

    @property
    def full(self) -> int:
        """The model at full depth without branches: what the teacher computes."""
        return self.embed + sum(self.layers) + self.head


def piece_flops(model: Any, t: int) -> PieceFlops:
    """Counted by running each piece of ``model`` on a row of ``t`` tokens (:func:`count_flops`): the family's
    own layers as they run (DeBERTa's relative-position terms and first-layer convolution, ELECTRA's and ALBERT's
    embedding projection, each head's pooler), not a formula of BERT's shape. Cached per model and length."""
    table: dict[int, PieceFlops] = model.__dict__.setdefault("_piece_flops", {})
    if t not in table:
        # in eval mode and on a forked RNG: counting may run during training (evaluation), where a dropout draw
        # would move the training's random stream, and only for lengths not yet counted (a resumed run would drift)
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                table[t] = _count_pieces(model, t)
        finally:
            model.train(was_training)
    return table[t]


def _count_pieces(model: Any, t: int) -> PieceFlops:
    """Each piece of :class:`EagerPieces` run once on a row of ``t`` tokens under :func:`count_flops`."""
    pieces = EagerPieces(model)
    ids = torch.zeros((1, t), dtype=torch.long, device=next(model.parameters()).device)
    mask = torch.ones_like(ids)
    embed, hidden = count_flops(pieces.embed, {"input_ids": ids, "attention_mask": mask}, mask)
    layers, branches = [], []
    for i in range(len(pieces.pieces)):
        flops, hidden = count_flops(pieces.layer, i, hidden, mask)
        layers.append(flops)
        if i < len(model.branches):
            branches.append(count_flops(pieces.branch, i, hidden, mask)[0])
    head = count_flops(pieces.head, hidden)[0]
    return PieceFlops(embed, tuple(layers), tuple(branches), head)


def exit_flops(model: Any, lengths: Tensor, exit_layer: Tensor, branched: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the FLOPs early exit spent and those of the full model (:attr:`PieceFlops.full`). A row that left
    at layer ``e < L`` ran the embeddings, layers 1..e and branches 1..e; a row that reached layer L ran every
    layer and the teacher classifier, and branches 1..L-1 where branches ran (``branched``: ``speed > 0``)."""
    spent, full = [], []
    for t, e, b in zip(lengths.tolist(), exit_layer.tolist(), branched.tolist(), strict=True):
        f = piece_flops(model, int(t))
        if e < len(f.layers):
            spent.append(f.embed + sum(f.layers[:e]) + sum(f.branches[:e]))
        else:
            spent.append(f.full + (sum(f.branches) if b else 0))
        full.append(f.full)
    return torch.tensor(spent, dtype=torch.float64), torch.tensor(full, dtype=torch.float64)


class EagerPieces:
    """A FastBERT student run piece by piece, as :func:`early_exit` runs it: the embeddings, layer ``i``,
    branch ``i``, the teacher classifier. Eager torch; :class:`OnnxPieces` runs the exported graphs instead. What
    the layers take besides the states (the extended mask; DeBERTa's relative positions) is made once and loses
    the rows that leave (:meth:`keep`)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.pieces: Layerwise = model.layerwise()
        self.context: dict[str, Any] = {}

    def embed(self, inputs: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        hidden = self.pieces.embed(inputs["input_ids"], inputs.get("token_type_ids"), mask)
        self.context = self.pieces.context(hidden, mask)
        return hidden

    def layer(self, i: int, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.pieces.layer(i, hidden, self.context)

    def branch(self, i: int, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.model.branches[i](hidden, mask)  # type: ignore[no-any-return]

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.teacher_head(hidden)  # type: ignore[no-any-return]

    def keep(self, keep: Tensor) -> None:
        self.context = Layerwise.keep(self.context, keep)


class OnnxPieces:
    """The pieces of :class:`EagerPieces` run by ONNX Runtime: ``run(graph, inputs)`` on the graphs of
    :meth:`FastBertRunner.onnx_graphs` (each layer graph builds its mask from ``attention_mask``)."""

    def __init__(self, run: OnnxRun) -> None:
        self.run = run

    def embed(self, inputs: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        return self.run("embeddings", inputs)[0]

    def layer(self, i: int, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.run(f"layer_{i + 1}", {"hidden_states": hidden, "attention_mask": mask})[0]

    def branch(self, i: int, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.run(f"branch_{i + 1}", {"hidden_states": hidden, "attention_mask": mask})[0]

    def head(self, hidden: Tensor) -> Tensor:
        return self.run("head", {"hidden_states": hidden})[0]

    def keep(self, keep: Tensor) -> None:
        pass


class EmbeddingsGraph(nn.Module):
    """The backbone's embeddings as a function of positional tensors (``Layerwise.embed_inputs``: ``input_ids``,
    ``token_type_ids``; DeBERTa also ``attention_mask``). The backbone is registered so that the export finds
    its weights; only those the embeddings use are written."""

    def __init__(self, pieces: Layerwise, names: list[str]) -> None:
        super().__init__()
        self.backbone = pieces.base
        self.pieces = pieces
        self.names = names

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.pieces.embed(**dict(zip(self.names, tensors, strict=True)))


class LayerGraph(nn.Module):
    """Encoder layer ``i`` on ``hidden_states``, with what it takes made from the 2-D ``attention_mask``."""

    def __init__(self, pieces: Layerwise, i: int) -> None:
        super().__init__()
        self.backbone = pieces.base
        self.pieces = pieces
        self.i = i

    def forward(self, hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
        return self.pieces.layer(self.i, hidden_states, self.pieces.context(hidden_states, attention_mask))


class HeadGraph(nn.Module):
    """The teacher classifier (pooler + classifier) on the last layer's states."""

    def __init__(self, model: FastBertForSequenceClassification) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.model.teacher_head(hidden_states)


@torch.inference_mode()
def early_exit(
    model: Any, inputs: Mapping[str, Tensor], speed: float, pieces: EagerPieces | OnnxPieces | None = None
) -> EarlyExitResult:
    """Batched adaptive inference: at layer i (1..L-1) each remaining row's branch gives
    ``u = entropy / ln C``; rows with ``u < speed`` exit with that branch's prediction and leave the batch, so
    later layers run on fewer rows. Rows that never exit get the teacher classifier on layer L. ``speed = 0``
    never exits early (no branch runs) and reproduces the full model. ``pieces`` run the model (default
    :class:`EagerPieces`; :class:`OnnxPieces`: its exported graphs); ``model`` gives the sizes and FLOPs."""
    pieces = pieces if pieces is not None else EagerPieces(model)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    n = ids.shape[0]
    bc = model.bert.config
    n_layers = int(bc.num_hidden_layers)
    hidden = pieces.embed(inputs, mask)
    logits = torch.zeros((n, model.config.num_labels), dtype=hidden.dtype, device=ids.device)
    exit_layer = torch.full((n,), n_layers, dtype=torch.long, device=ids.device)
    active = torch.arange(n, device=ids.device)
    for i in range(n_layers):
        hidden = pieces.layer(i, hidden, mask)
        if i == n_layers - 1:
            logits[active] = pieces.head(hidden).to(logits.dtype)
            break
        if speed <= 0:
            continue
        z = pieces.branch(i, hidden, mask)
        done = normalized_entropy(z) < speed
        if done.any():
            rows = active[done]
            logits[rows] = z[done].to(logits.dtype)
            exit_layer[rows] = i + 1
            keep = ~done
            if not keep.any():
                break
            active, hidden, mask = active[keep], hidden[keep], mask[keep]
            pieces.keep(keep)
    return EarlyExitResult(logits=logits, exit_layer=exit_layer)
