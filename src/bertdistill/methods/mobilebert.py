"""MobileBERT — Sun et al. 2020, "MobileBERT: a Compact Task-Agnostic BERT for Resource-Limited Devices".

The student is HF ``MobileBertForSequenceClassification``: as deep as the teacher, with *bottlenecks* (each
block reads and writes the teacher's width — the inter-block width ``hidden_size`` — and works inside at a
narrow intra-block width ``intra_bottleneck_size``), stacked FFNs, NoNorm, ReLU and narrow trigram-input
embeddings (``embedding_size``). Shapes come from a named preset (:data:`PRESETS`: ``paper``,
``paper-tiny``, ``minilm-l6``, ``minilm-l6-tiny``) plus ``student.config_overrides``, and are checked against the teacher
(:func:`check_shapes`). The teacher is an IB-BERT (a ``MobileBertConfig`` model with inverted bottlenecks) or
a plain BERT, which *is* an IB-BERT whose intra- and inter-block widths are equal; when its width differs from
the student's inter-block width, learned per-layer projections (student width → teacher width) in the bundle
bridge them (our extension, ``allow_projection``).

Knowledge transfer per layer l (student layer l ↔ teacher layer l; the official code's losses and weights):

* feature-map transfer ``100 · MSE(LN(H_S^l), LN(H_T^l))`` (parameter-free layer norm, real tokens only),
  plus ``5000 · mean_tokens (μ_T − μ_S)²`` and ``5 · mean_tokens |σ²_T − σ²_S|`` — with the teacher
  statistics read from the *same* teacher layer (the official code reads them from the stack of all teacher
  layers: a bug, not reproduced);
* attention transfer ``1 · mean_{batch, heads, real queries} −Σ_keys p_T log p_S`` on softmaxed pre-softmax
  scores with padded keys excluded; a teacher with r× the student's heads is read as group averages of its
  head distributions.

Strategies (``method.strategy``): ``progressive`` — stage ``transfer_l`` switches on layer l's losses only,
trains layer l at the stage's lr, the layers below at ``lower_lr_scale`` × lr (official 0.1; 0 = frozen) and
freezes the layers above, each stage with its own warm-up; ``joint`` — one stage, all layers' losses, all
layers trained (L × the per-layer steps); ``auxiliary`` — no separate transfer: the transfer losses of all
layers are added to the next distillation stage, which runs the transfer steps on top of its own; ``none`` —
no transfer (baselines). Embeddings, pooler and head are frozen during transfer (copied from the teacher where
shapes allow: :func:`copy_embeddings`, :func:`svd_embeddings`, :func:`copy_head`); embeddings that could not be
copied train with layer 0. The transfer reads the task's training set (``transfer_data: task``) or, as the paper,
a raw-text corpus (``corpus``, masked as for pre-training), optionally with its own teacher (``transfer_teacher``,
e.g. the pre-trained model the fine-tuned teacher came from). Then an optional ``pretrain_distill`` stage
(masked LM on a corpus, targets ``0.5·p_teacher + 0.5·one-hot``) and the task stage ``task`` (``finetune`` on
gold labels, or Hinton ``kd``). The exported model is a plain MobileBERT dir (``AutoModelForSequenceClassification``).
Every difference from the paper and the official code is listed in ``docs/methods/mobilebert.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    MobileBertConfig,
    MobileBertForMaskedLM,
    MobileBertForSequenceClassification,
)
from transformers.utils import ModelOutput

from ..checks import max_positions, position_offset
from ..config import ConfigError, MethodConfig
from ..data.corpus import CorpusConfig, MLMCollator, corpus_datasets
from ..data.loading import Collator
from ..features import register_score_attention, use_score_attention
from ..hub import from_pretrained
from ..losses import (
    attention_cross_entropy,
    hard_ce,
    hinton_terms,
    layer_norm_mse,
    mean_variance_transfer,
    regression_mse,
    soft_label_mlm_ce,
)
from ..protocol import Batch, BuiltStudent, Features, Method, MethodTestConfig, Needs, ParamGroups, Stage
from ..registry import register
from ..students import label_kwargs

STRATEGIES = ("progressive", "joint", "auxiliary", "none")
TASK_MODES = ("kd", "finetune", "none")
TRANSFER_DATA = ("task", "corpus")
EMBEDDING_INITS = ("auto", "copy", "svd", "random")
EMBEDDING_TRAINING = ("auto", "frozen", "train")
PRETRAIN = "pretrain_distill"
TASK = "task"

_MOBILE = {
    "use_bottleneck": True,
    "trigram_input": True,
    "normalization_type": "no_norm",
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.1,
}
PRESETS: dict[str, dict[str, Any]] = {
    # MobileBERT (paper Table 1; official uncased_L-24_H-128_B-512_A-4_F-4_OPT.json) of a 24-layer 512 IB-BERT
    "paper": {
        **_MOBILE,
        "num_hidden_layers": 24,
        "hidden_size": 512,
        "intra_bottleneck_size": 128,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "num_feedforward_networks": 4,
        "embedding_size": 128,
        "key_query_shared_bottleneck": True,
        "use_bottleneck_attention": False,
    },
    # MobileBERT-TINY (official uncased_L-24_H-128_B-512_A-4_F-2_tiny_OPT.json): attention reads the bottleneck
    "paper-tiny": {
        **_MOBILE,
        "num_hidden_layers": 24,
        "hidden_size": 512,
        "intra_bottleneck_size": 128,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "num_feedforward_networks": 2,
        "embedding_size": 128,
        "key_query_shared_bottleneck": False,
        "use_bottleneck_attention": True,
    },
    # for a 6-layer / 384-wide teacher such as MiniLM-L6 (12 heads): 5.4M parameters (MiniLM-L6: 22.7M)
    "minilm-l6": {
        **_MOBILE,
        "num_hidden_layers": 6,
        "hidden_size": 384,
        "intra_bottleneck_size": 128,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "num_feedforward_networks": 2,
        "embedding_size": 64,
        "key_query_shared_bottleneck": True,
        "use_bottleneck_attention": False,
    },
    # the TINY design (attention reads the bottleneck) for the same teacher, with one FFN: 4.2M parameters, 8
    # matmuls per layer against 11, for batch-1 CPU latency (docs/methods/mobilebert.md: the measured speed)
    "minilm-l6-tiny": {
        **_MOBILE,
        "num_hidden_layers": 6,
        "hidden_size": 384,
        "intra_bottleneck_size": 128,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "num_feedforward_networks": 1,
        "embedding_size": 64,
        "key_query_shared_bottleneck": False,
        "use_bottleneck_attention": True,
    },
}
_INHERITED = ("vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id")
"""Student config fields taken from the teacher: they fix the tokenizer and the position range."""


@dataclass
class MobileBertMethodConfig(CorpusConfig, MethodConfig):
    """MobileBERT's options. The corpus and masking options (``corpus``, ``hf_dataset``, ``mlm_probability``
    ...) are those of every masked-LM method and only matter with ``pretrain_distill`` or ``transfer_data:
    corpus``."""

    name: str = "mobilebert"
    preset: str | None = "minilm-l6"
    """A student shape of :data:`PRESETS`; ``null`` = MobileBERT defaults at the teacher's depth and width.
    ``student.config_overrides`` (any ``MobileBertConfig`` field) and ``student.num_layers`` apply on top."""
    strategy: str = "progressive"
    """``progressive`` (paper) | ``joint`` | ``auxiliary`` (the paper's ablation) | ``none`` (no layer-wise
    transfer: the task stage only — the KD-only and no-KD baselines of the same student)."""
    lower_lr_scale: float = 0.1
    """Progressive: lr multiplier of the layers below the stage's layer (official 0.1); 0 = frozen."""
    layer_steps: int | None = None
    """Optimizer steps of each progressive stage (joint: L ×, auxiliary: L × on top of its stage's)."""
    layer_epochs: float = 1.0
    """Epochs over the task's training set of each progressive stage when ``layer_steps`` is unset."""
    transfer_data: str = "task"
    """What the transfer stages read: ``task`` (the task's training set) or ``corpus`` (``method.corpus`` /
    ``hf_dataset``, dynamically masked as for pre-training: the paper's task-agnostic transfer); progressive and
    joint only (auxiliary rides on the next stage's data)."""
    transfer_teacher: str | None = None
    """A teacher for the transfer stages only — any encoder with the run teacher's layers, width, heads and
    vocabulary, no head needed (e.g. the pre-trained model the fine-tuned ``teacher.path`` came from, or an
    IB-BERT); unset = ``teacher.path``."""
    transfer_lr: float | None = None
    """Learning rate of the transfer stages (default ``train.lr``)."""
    transfer_warmup: float = 0.1
    """Warm-up share of each transfer stage (then a constant lr), as the official per-phase warm-up."""
    feature_weight: float = 100.0
    mean_weight: float = 5000.0
    variance_weight: float = 5.0
    attention_weight: float = 1.0
    embedding_init: str = "auto"
    """``copy`` (an IB-BERT teacher with the student's embedding shapes), ``svd`` (rank-``embedding_size``
    factorisation of the teacher's word embeddings, its position / token-type tables and its LayerNorm folded
    into NoNorm), ``random``; ``auto`` = copy, else svd, else random (widths differ)."""
    embedding_training: str = "auto"
    """``frozen`` during transfer (paper: they are copied), ``train`` with layer 0 (then as the lower
    layers); ``auto`` = frozen when copied or pre-trained, else train."""
    copy_head: bool = True
    """Copy the teacher's pooler and classifier into the student when the widths and labels match."""
    allow_projection: bool = True
    """Bridge a teacher whose width differs from the student's inter-block width with learned projections
    (our extension); false = such a teacher is an error."""
    cache_transfer: bool = False
    """Cache the teacher's hidden states and attention scores of the transfer stages (large: L×heads×T² per
    example); default: run the teacher live."""
    pretrain_distill: bool = False
    """Add the pre-training distillation stage (masked LM on ``corpus``) before the task stage."""
    pretrain_teacher: str | None = None
    """A masked-LM teacher with a trained head for ``pretrain_distill`` (its shape must be the run teacher's)."""
    pretrain_steps: int | None = None
    pretrain_lr: float | None = None
    ground_truth_ratio: float = 0.5
    """``pretrain_distill`` target: (1 − r)·teacher distribution + r·one-hot (official 0.5)."""
    task: str = "kd"
    """The last stage: ``kd`` (Hinton KD from ``teacher.path``), ``finetune`` (gold labels) or ``none``."""
    task_steps: int | None = None
    task_epochs: float | None = None
    task_lr: float | None = None
    alpha: float = 0.5
    """``kd``: weight of the soft targets (1 − alpha on the gold labels)."""
    temperature: float = 4.0

    def __post_init__(self) -> None:
        _one_of("transfer_data", self.transfer_data, TRANSFER_DATA)
        if self.pretrain_distill or self.transfer_data == "corpus":
            super().__post_init__()  # corpus and masking options
        if self.pretrain_distill and not self.pretrain_teacher:
            raise ConfigError("method.pretrain_distill needs method.pretrain_teacher (a masked-LM dir)")
        _one_of("strategy", self.strategy, STRATEGIES)
        if self.strategy not in ("progressive", "joint") and (
            self.transfer_data != "task" or self.transfer_teacher
        ):
            raise ConfigError(
                f"method.transfer_data / transfer_teacher apply to the transfer stages of strategy progressive or "
                f"joint; strategy {self.strategy} has none (auxiliary adds the transfer losses to the next stage, "
                "on its data and teacher)"
            )
        if self.cache_transfer and self.transfer_data == "corpus":
            raise ConfigError(
                "method.cache_transfer needs transfer_data: task — the corpus is masked anew every epoch, so the "
                "teacher's outputs on it cannot be cached"
            )
        _one_of("task", self.task, TASK_MODES)
        _one_of("embedding_init", self.embedding_init, EMBEDDING_INITS)
        _one_of("embedding_training", self.embedding_training, EMBEDDING_TRAINING)
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown method.preset {self.preset!r}; known: {sorted(PRESETS)} (or null)")
        if self.strategy == "none" and self.task == "none" and not self.pretrain_distill:
            raise ConfigError("method.strategy none and method.task none: there is nothing to train")
        if self.strategy == "auxiliary" and self.task == "none" and not self.pretrain_distill:
            raise ConfigError(
                "strategy auxiliary adds the transfer losses to a distillation stage: set method.task to kd "
                "or finetune, or enable method.pretrain_distill"
            )
        if not 0.0 <= self.lower_lr_scale <= 1.0:
            raise ConfigError(
                f"method.lower_lr_scale must be in [0, 1] (0 = frozen), got {self.lower_lr_scale}"
            )
        if not 0.0 <= self.transfer_warmup < 1.0:
            raise ConfigError(f"method.transfer_warmup must be in [0, 1), got {self.transfer_warmup}")
        weights = ("feature_weight", "mean_weight", "variance_weight", "attention_weight")
        if any(getattr(self, k) < 0 for k in weights) or not any(getattr(self, k) > 0 for k in weights):
            raise ConfigError(f"method.{', '.join(weights)} must be >= 0, at least one > 0")
        for k in ("layer_steps", "task_steps", "pretrain_steps"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ConfigError(f"method.{k} must be >= 1 (or unset), got {v}")
        if self.layer_epochs <= 0 or (self.task_epochs is not None and self.task_epochs <= 0):
            raise ConfigError("method.layer_epochs and method.task_epochs must be > 0")
        if not 0.0 <= self.alpha <= 1.0 or not 0.0 <= self.ground_truth_ratio <= 1.0:
            raise ConfigError("method.alpha and method.ground_truth_ratio must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")


def _one_of(key: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ConfigError(f"method.{key} must be one of {list(valid)}, got {value!r}")


# ----------------------------------------------------------------------------------------------- student shape


def student_config(
    teacher_config: Any, shape: Mapping[str, Any], labels: Mapping[str, Any]
) -> MobileBertConfig:
    """The student's ``MobileBertConfig``: ``shape`` (preset + overrides) on MobileBERT's defaults, with the
    teacher's vocabulary, position range, token types and padding id, and the task's labels."""
    inherited = {
        k: getattr(teacher_config, k) for k in _INHERITED if getattr(teacher_config, k, None) is not None
    }
    if not inherited.get("type_vocab_size", 1):  # DeBERTa-v2: 0 = no segment table; the student keeps one
        del inherited["type_vocab_size"]
    known = {f.name for f in dataclasses.fields(MobileBertConfig)}
    unknown = sorted(set(shape) - known)
    if unknown:
        raise ConfigError(
            f"student.config_overrides: {unknown} are not MobileBertConfig fields; known: {sorted(known)}"
        )
    try:
        cfg = MobileBertConfig(**{**inherited, **shape, **labels})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid MobileBERT student config {dict(shape)}: {e}") from None
    cfg._attn_implementation = "eager"
    return cfg


def check_shapes(student: Any, teacher: Any, allow_projection: bool) -> None:
    """Refuse a student that cannot learn from ``teacher`` layer by layer; one error lists every problem."""
    s_layers, t_layers = int(student.num_hidden_layers), int(teacher.num_hidden_layers)
    s_heads, t_heads = int(student.num_attention_heads), int(teacher.num_attention_heads)
    inter, intra, width = (
        int(student.hidden_size),
        int(student.intra_bottleneck_size),
        int(teacher.hidden_size),
    )
    problems = []
    if s_layers != t_layers:
        problems.append(
            f"the student has {s_layers} layers, the teacher {t_layers}: MobileBERT's student is as deep as its "
            "teacher (layer l learns teacher layer l); pick a preset or student.num_layers of the teacher's depth"
        )
    if not student.use_bottleneck:
        problems.append(
            "the student needs use_bottleneck: true (narrow intra-block, teacher-wide inter-block)"
        )
    elif intra >= inter:
        problems.append(
            f"intra_bottleneck_size {intra} must be narrower than the inter-block width hidden_size {inter}"
        )
    if intra % s_heads:
        problems.append(f"intra_bottleneck_size {intra} is not a multiple of num_attention_heads {s_heads}")
    if s_heads > t_heads or t_heads % s_heads:
        problems.append(
            f"the student has {s_heads} heads, the teacher {t_heads}: the attention transfer needs equal counts "
            "or a student count that divides the teacher's (teacher heads are averaged in groups)"
        )
    if inter != width and not allow_projection:
        problems.append(
            f"the student's inter-block width {inter} differs from the teacher's width {width}: set hidden_size "
            f"to {width} (MobileBERT), or method.allow_projection: true (learned projections, our extension)"
        )
    if int(student.vocab_size) != int(teacher.vocab_size):
        problems.append(
            f"the student's vocabulary ({student.vocab_size}) is not the teacher's ({teacher.vocab_size})"
        )
    if problems:
        raise ConfigError("mobilebert student/teacher mismatch: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------- initialisation


def _embeddings(model: nn.Module) -> Any:
    """The embeddings module of a BERT-family model (``model.base_model.embeddings``)."""
    return getattr(model, "base_model", model).embeddings


def _table(emb: Any, name: str) -> nn.Embedding | None:
    """``emb``'s learned ``position_embeddings`` / ``token_type_embeddings`` table; None where the model has
    none (DistilBERT: no token types; DeBERTa-v2: relative positions only)."""
    table = getattr(emb, name, None)
    return table if isinstance(table, nn.Embedding) else None


def factorise_problem(teacher: nn.Module) -> str | None:
    """Why the teacher's embeddings cannot seed a MobileBERT student's (word, position, token-type tables and a
    LayerNorm summed as in BERT), or None when they can. A missing token-type table is fine (the student's is
    zeroed: the teacher adds none); a missing absolute position table or LayerNorm is not."""
    emb = _embeddings(teacher)
    if not isinstance(getattr(emb, "word_embeddings", None), nn.Embedding):
        return "no word_embeddings table"
    if _table(emb, "position_embeddings") is None:
        return "no learned absolute position table (relative positions)"
    if not isinstance(getattr(emb, "LayerNorm", None), nn.LayerNorm):
        return "no embedding LayerNorm"
    return None


def _norm_type(module: nn.Module) -> str:
    return "layer_norm" if isinstance(module, nn.LayerNorm) else "no_norm"


@torch.no_grad()
def embedding_scale(teacher: nn.Module, inputs: Mapping[str, Tensor]) -> float:
    """σ̄: the root-mean-square over real tokens of the per-token standard deviation of what the teacher's
    embedding LayerNorm normalises (word + position + token-type embeddings), on a sample batch. Folding
    that LayerNorm into a NoNorm uses ``γ/σ̄``."""
    emb: Any = _embeddings(teacher)
    captured: list[Tensor] = []
    hook = emb.LayerNorm.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    kwargs: dict[str, Tensor | None] = {"input_ids": inputs["input_ids"]}
    if _table(emb, "token_type_embeddings") is not None:  # DistilBERT's embeddings take no token types
        kwargs["token_type_ids"] = inputs.get("token_type_ids")
    try:
        emb(**kwargs)
    finally:
        hook.remove()
    z = captured[0].float()
    var = z.var(-1, unbiased=False)
    m = inputs["attention_mask"].to(var.dtype)
    return float(((var * m).sum() / m.sum().clamp_min(1.0)).sqrt())


def _centre_rows(t: Tensor) -> Tensor:
    return t - t.mean(-1, keepdim=True)


@torch.no_grad()
def _copy_tables(s_emb: Any, t_emb: Any, sigma: float | None) -> None:
    """Position and token-type tables and the norm. ``sigma`` set = fold the teacher's LayerNorm into the
    student's NoNorm: tables centred per row (so their sum is zero-mean per token, as LayerNorm makes it),
    NoNorm weight ``γ/σ̄`` and bias ``β``."""
    fold = sigma is not None
    for name in ("position_embeddings", "token_type_embeddings"):
        s_tab, t_tab = getattr(s_emb, name).weight, _table(t_emb, name)
        if t_tab is None:
            # no token types (DistilBERT): the teacher adds nothing, so neither does the student
            s_tab.zero_()
            continue
        # RoBERTa numbers positions after its padding id: the student's position i is the teacher's row i + offset
        start = position_offset(t_tab) if name == "position_embeddings" else 0
        w = t_tab.weight[start : start + s_tab.shape[0]].float()
        s_tab[: w.shape[0]].copy_(_centre_rows(w) if fold else w)
    s_norm, t_norm = s_emb.LayerNorm, t_emb.LayerNorm
    s_norm.weight.copy_(t_norm.weight / sigma if fold else t_norm.weight)
    s_norm.bias.copy_(t_norm.bias)


@torch.no_grad()
def svd_embeddings(student: nn.Module, teacher: nn.Module, sigma: float | None) -> None:
    """Low-rank initialisation of the student's narrow embeddings from a teacher of the same width.

    With ``W`` the teacher's ``[V, H]`` word embeddings (row-centred when folding a LayerNorm) and
    ``W ≈ U_k S_k V_kᵀ`` its rank-k SVD (k = ``embedding_size``): word embeddings ``U_k √S_k``, and the
    ``embedding_transformation`` maps the centre token of the trigram window through ``√S_k V_kᵀ`` (its
    neighbours through zeros), so that the student's embedding sum equals the teacher's up to the rank-k
    truncation. Position / token-type tables and the norm: :func:`_copy_tables`."""
    s_emb: Any = _embeddings(student)
    t_emb: Any = _embeddings(teacher)
    w = t_emb.word_embeddings.weight.float()
    if sigma is not None:
        w = _centre_rows(w)
    k = int(s_emb.embedding_size)
    transformed = bool(s_emb.trigram_input) or k != int(s_emb.hidden_size)
    if not transformed:
        s_emb.word_embeddings.weight.copy_(w)
    else:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[:k].sqrt()
        s_emb.word_embeddings.weight.copy_(u[:, :k] * root)
        proj = s_emb.embedding_transformation
        proj.weight.zero_()
        proj.bias.zero_()
        centre = k if s_emb.trigram_input else 0  # trigram order: [next, this, previous]
        proj.weight[:, centre : centre + k] = (root[:, None] * vh[:k]).T
    _copy_tables(s_emb, t_emb, sigma)


@torch.no_grad()
def copy_embeddings(student: nn.Module, teacher: nn.Module, sigma: float | None) -> None:
    """The embeddings of an IB-BERT teacher with the student's embedding shapes (the paper's initialisation);
    a teacher LayerNorm is folded into the student's NoNorm (``sigma`` set): the transformation's output
    rows and the tables centred, NoNorm weight ``γ/σ̄``."""
    s_emb: Any = _embeddings(student)
    t_emb: Any = _embeddings(teacher)
    s_emb.word_embeddings.weight.copy_(t_emb.word_embeddings.weight)
    w, b = t_emb.embedding_transformation.weight.float(), t_emb.embedding_transformation.bias.float()
    if sigma is not None:
        w, b = w - w.mean(0, keepdim=True), b - b.mean()
    s_emb.embedding_transformation.weight.copy_(w)
    s_emb.embedding_transformation.bias.copy_(b)
    _copy_tables(s_emb, t_emb, sigma)


def can_copy_embeddings(student: nn.Module, teacher: nn.Module) -> bool:
    """Whether every embedding tensor of the student has a same-named, same-shaped one in the teacher."""
    s = _embeddings(student).state_dict()
    t = _embeddings(teacher).state_dict()
    return all(k in t and t[k].shape == v.shape for k, v in s.items())


def can_factorise_embeddings(student: nn.Module, teacher: nn.Module) -> bool:
    """Whether the teacher's word embeddings live in the student's inter-block width and reach its layers
    without a transformation (a BERT; a MobileBERT without trigram input and with ``embedding_size`` =
    ``hidden_size``): then :func:`svd_embeddings` applies."""
    if factorise_problem(teacher) is not None:
        return False
    t_emb = _embeddings(teacher)
    width = int(getattr(student.config, "hidden_size"))  # noqa: B009
    transformed = bool(getattr(t_emb, "trigram_input", False)) or (
        hasattr(t_emb, "embedding_transformation") and int(t_emb.embedding_size) != int(t_emb.hidden_size)
    )
    return not transformed and int(t_emb.word_embeddings.weight.shape[1]) == width


@torch.no_grad()
def copy_head(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy the teacher's pooler dense layer and classifier where the shapes match; return what was copied."""
    copied = []
    t_pool = getattr(getattr(teacher, "base_model", teacher), "pooler", None)
    s_pool = getattr(getattr(student, "base_model", student), "pooler", None)
    pairs = [
        ("pooler", getattr(s_pool, "dense", None), getattr(t_pool, "dense", None)),
        ("classifier", getattr(student, "classifier", None), getattr(teacher, "classifier", None)),
    ]
    for name, s, t in pairs:
        if isinstance(s, nn.Linear) and isinstance(t, nn.Linear) and s.weight.shape == t.weight.shape:
            s.load_state_dict(t.state_dict())
            copied.append(name)
    return copied


# ----------------------------------------------------------------------------------------------- bundle


@dataclass
class MobileBertOutput(ModelOutput):
    logits: Tensor | None = None
    """Classifier logits ``[B, C]``, or (masked-LM batches) the logits ``[M, V]`` of the predicted positions."""
    hidden: dict[int, Tensor] | None = None
    """Layer l (0-based) → the student's output of layer l, projected to the teacher's width ``[B, T, H_T]``."""
    attentions: dict[int, Tensor] | None = None
    """Layer l → the student's pre-softmax attention scores ``[B, heads, T, T]`` (additive mask included)."""
    labels: Tensor | None = None
    """Masked-LM batches: the original ids ``[M]`` of the predicted positions."""


class MobileBertStudent(nn.Module):
    """The HF student (``model``), per-layer projections to the teacher's width (``proj``; empty when the
    widths are equal) and, with ``pretrain_distill``, a masked LM sharing the student's body (``mlm``)."""

    def __init__(
        self, model: nn.Module, teacher_width: int, train_embeddings: bool, mlm: nn.Module | None = None
    ) -> None:
        super().__init__()
        cfg: Any = model.config
        self.model = model
        width, n = int(cfg.hidden_size), int(cfg.num_hidden_layers)
        self.proj = nn.ModuleList(
            [nn.Linear(width, teacher_width) for _ in range(n)] if width != teacher_width else []
        )
        self.mlm = mlm
        self.train_embeddings = train_embeddings
        self.num_layers = n

    def forward(
        self, layers: Sequence[int] = (), mlm_labels: Tensor | None = None, **inputs: Any
    ) -> MobileBertOutput:
        kw = {"output_hidden_states": True, "output_attentions": True} if layers else {}
        labels = None
        if mlm_labels is None:
            out = self.model(**inputs, **kw)
            logits = out.logits
        else:
            mlm: Any = self.mlm
            out = mlm.mobilebert(**inputs, **kw)
            keep = mlm_labels != -100
            logits, labels = mlm.cls(out.last_hidden_state[keep]), mlm_labels[keep]
        if not layers:
            return MobileBertOutput(logits=logits, labels=labels)
        hidden = {i: self._project(i, out.hidden_states[i + 1]) for i in layers}
        att = {i: out.attentions[i] for i in layers}
        return MobileBertOutput(logits=logits, hidden=hidden, attentions=att, labels=labels)

    def _project(self, layer: int, h: Tensor) -> Tensor:
        return self.proj[layer](h) if len(self.proj) else h


def shared_mlm(model: nn.Module) -> MobileBertForMaskedLM:
    """A ``MobileBertForMaskedLM`` whose body *is* ``model``'s (one set of weights) and whose decoder is tied
    to its word embeddings."""
    mlm = MobileBertForMaskedLM(model.config)  # type: ignore[arg-type]
    body: Any = getattr(model, "mobilebert")  # noqa: B009
    mlm.mobilebert = body
    mlm.cls.predictions.decoder.weight = body.embeddings.word_embeddings.weight
    return mlm


# ----------------------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class _Plan:
    """What a stage computes: the layers whose transfer losses are on, and its other terms."""

    layers: tuple[int, ...] = ()
    task: bool = False
    mlm: bool = False


def _sum_steps(own: int | None, transfer: int | None, what: str) -> int | None:
    if own is None and transfer is None:
        return None
    if own is None or transfer is None:
        raise ConfigError(
            f"strategy auxiliary runs the transfer steps inside {what}: give both method.layer_steps and "
            f"method.{what}_steps (or neither), so that the total steps equal the other strategies'"
        )
    return own + transfer


def _named(
    module: nn.Module, prefix: str, keep: Callable[[str], bool] = lambda n: True
) -> list[tuple[str, Any]]:
    return [(f"{prefix}{n}", p) for n, p in module.named_parameters() if keep(n)]


@register("mobilebert")
class MobileBert(Method):
    """MobileBERT: a bottleneck student as deep as its teacher, layer-wise feature-map and attention transfer."""

    config_cls = MobileBertMethodConfig
    cfg: MobileBertMethodConfig

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        # the same MobileBERT student and init (embeddings, head) fine-tuned on the gold labels for the same
        # total steps: no layer-wise transfer, no pre-training distillation, no soft targets
        recipe["method"].update(strategy="none", pretrain_distill=False, task="finetune", task_steps=steps)
        recipe["method"]["task_epochs"] = None
        return recipe

    test_config = MethodTestConfig(
        sections={
            "method": {"preset": None, "transfer_lr": 1e-3, "task_lr": 1e-3},
            "student": {
                "num_layers": None,
                "config_overrides": {
                    "intra_bottleneck_size": 16,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                    "embedding_size": 8,
                    "num_feedforward_networks": 2,
                },
            },
        },
        # one stage, one objective: the joint transfer of all layers
        overfit={"method": {"strategy": "joint", "task": "none", "transfer_lr": 3e-3}},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        st = self.run.student
        if st.preset or st.layers:
            raise ConfigError(
                "mobilebert's student shape is method.preset (+ student.config_overrides, student.num_layers); "
                "student.preset and student.layers do not apply"
            )
        self._plans: dict[str, _Plan] | None = None

    def needs_attentions(self) -> bool:
        return self.cfg.attention_weight > 0

    # ------------------------------------------------------------------ teacher / student
    def load_teacher_model(self, path: str, stage: Stage | None = None) -> nn.Module:
        """Classifier teachers (the headless ``transfer_teacher``, the masked-LM teacher of ``pretrain_distill``)
        returning pre-softmax attention scores as ``attentions``."""
        kwargs: dict[str, Any] = {
            "trust_remote_code": self.run.teacher.trust_remote_code,
            "attn_implementation": register_score_attention(),
        }
        if stage is None or stage.name != PRETRAIN:
            if stage is None or not stage.teacher:  # the run teacher
                return from_pretrained(  # type: ignore[no-any-return]
                    AutoModelForSequenceClassification, path, mark_untrained=True, **kwargs
                )
            model = from_pretrained(AutoModel, path, **kwargs)  # method.transfer_teacher: no head needed
            self._check_same_shape(model.config, path, "transfer_teacher")
            return model  # type: ignore[no-any-return]
        model, info = from_pretrained(AutoModelForMaskedLM, path, output_loading_info=True, **kwargs)
        missing = sorted(
            k for k in info.get("missing_keys", ()) if not k.endswith(("position_ids", "token_type_ids"))
        )
        if missing:
            raise ConfigError(
                f"method.pretrain_teacher {path!r} has no trained masked-LM head (missing {missing[:3]}); train "
                f"one with `bertdistill finetune --task mlm --model {path} --corpus FILE -o DIR`"
            )
        self._check_same_shape(model.config, path, "pretrain_teacher")
        return model  # type: ignore[no-any-return]

    def _check_same_shape(self, config: Any, path: str, option: str) -> None:
        if not self.run.teacher.path:
            return
        ref = from_pretrained(AutoConfig, self.run.teacher.path)
        keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
        got, want = tuple(getattr(config, k) for k in keys), tuple(getattr(ref, k) for k in keys)
        if got != want:
            raise ConfigError(
                f"method.{option} {path!r} has (layers, width, heads, vocab) {got}, the run teacher {want}: "
                "the student's shape, projections and tokenizer follow teacher.path"
            )

    def _shape(self) -> dict[str, Any]:
        """Preset, then ``student.config_overrides``, then ``student.num_layers``; with no preset the
        teacher's depth and width."""
        st = self.run.student
        shape: dict[str, Any] = dict(PRESETS[self.cfg.preset]) if self.cfg.preset else {}
        if not self.cfg.preset and self.run.teacher.path:
            t = from_pretrained(AutoConfig, self.run.teacher.path)
            shape.update(num_hidden_layers=t.num_hidden_layers, hidden_size=t.hidden_size)
        shape.update(st.config_overrides)
        if st.num_layers is not None:
            shape["num_hidden_layers"] = st.num_layers
        return shape

    def _depth(self) -> int:
        st = self.run.student
        if st.init == "pretrained" and st.path:
            return int(from_pretrained(AutoConfig, st.path).num_hidden_layers)
        shape = self._shape()
        return int(shape.get("num_hidden_layers", MobileBertConfig().num_hidden_layers))

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        if teacher is None:
            raise ConfigError("mobilebert distils layer by layer from a teacher: set teacher.path")
        t_cfg: Any = teacher.config
        model = self._new_student(teacher)
        check_shapes(model.config, t_cfg, self.cfg.allow_projection)
        use_score_attention(model)
        emb_init = self._init_embeddings(model, teacher, datasets)
        head = copy_head(model, teacher) if self._copies_from_teacher() and self.cfg.copy_head else []
        train_emb = self.cfg.embedding_training == "train" or (
            self.cfg.embedding_training == "auto" and emb_init in ("svd", "random")
        )
        mlm = shared_mlm(model) if self.cfg.pretrain_distill else None
        bundle = MobileBertStudent(model, int(t_cfg.hidden_size), train_emb, mlm)
        s_cfg: Any = model.config
        info = {
            "init": self.run.student.init,
            "shape": f"{s_cfg.num_hidden_layers} layers, inter-block {s_cfg.hidden_size}, intra-block "
            f"{s_cfg.intra_bottleneck_size}, {s_cfg.num_attention_heads} heads, "
            f"{s_cfg.num_feedforward_networks} FFNs × {s_cfg.intermediate_size}, embeddings {s_cfg.embedding_size}",
            "teacher": f"{t_cfg.model_type}, width {t_cfg.hidden_size}, {t_cfg.num_attention_heads} heads",
            "projections": len(bundle.proj),
            "embeddings": f"{emb_init}, {'trained with layer 0' if train_emb else 'frozen during transfer'}",
            "copied head": head,
            "strategy": self.cfg.strategy,
        }
        return BuiltStudent(bundle, info)

    def _copies_from_teacher(self) -> bool:
        return self.run.student.init == "teacher"

    def _new_student(self, teacher: nn.Module) -> nn.Module:
        st = self.run.student
        if st.init == "pretrained":
            if not st.path:
                raise ConfigError("student.init: pretrained needs student.path (a MobileBERT dir)")
            return from_pretrained(  # type: ignore[no-any-return]
                MobileBertForSequenceClassification,
                st.path,
                attn_implementation=register_score_attention(),
                **label_kwargs(self.task),
            )
        t_cfg: Any = teacher.config
        shape = self._shape()
        positions = max_positions(teacher)  # RoBERTa: its table less the rows before the padding id
        if positions is not None and "max_position_embeddings" not in shape:
            shape["max_position_embeddings"] = positions
        if "classifier_activation" not in shape:
            pooler = getattr(getattr(teacher, "base_model", teacher), "pooler", None)
            shape["classifier_activation"] = isinstance(getattr(pooler, "dense", None), nn.Linear)
        return MobileBertForSequenceClassification(student_config(t_cfg, shape, label_kwargs(self.task)))

    def _init_embeddings(self, model: nn.Module, teacher: nn.Module, datasets: Mapping[str, Dataset]) -> str:
        """Initialise the student's embeddings as ``method.embedding_init`` says; return what was done."""
        want = self.cfg.embedding_init
        if not self._copies_from_teacher():
            if want not in ("auto", "random"):
                raise ConfigError(f"method.embedding_init {want!r} needs student.init: teacher")
            return "pretrained" if self.run.student.init == "pretrained" else "random"
        copyable = can_copy_embeddings(model, teacher)
        factorable = can_factorise_embeddings(model, teacher)
        if want == "auto":
            want = "copy" if copyable else "svd" if factorable else "random"
        if want == "copy" and not copyable:
            raise ConfigError(
                "method.embedding_init copy needs a teacher with the student's embedding shapes (an IB-BERT with "
                "the same embedding_size, trigram_input and width); use svd or random"
            )
        if want == "svd" and not factorable:
            problem = factorise_problem(teacher)
            raise ConfigError(
                "method.embedding_init svd needs a teacher whose word embeddings have the student's inter-block "
                "width and feed its layers directly (a BERT of that width)"
                + (f"; the teacher's embeddings have {problem}" if problem else "")
                + "; use copy or random"
            )
        if want == "random":
            return want
        s_emb: Any = getattr(model, "mobilebert").embeddings  # noqa: B009
        t_emb: Any = _embeddings(teacher)
        fold = _norm_type(s_emb.LayerNorm) == "no_norm" and _norm_type(t_emb.LayerNorm) == "layer_norm"
        sigma = embedding_scale(teacher, self._sample_inputs(datasets)) if fold else None
        (copy_embeddings if want == "copy" else svd_embeddings)(model, teacher, sigma)
        return want

    def _sample_inputs(self, datasets: Mapping[str, Dataset], n: int = 256) -> dict[str, Tensor]:
        data: Any = datasets["train"]
        items = [data[i] for i in range(min(n, len(data)))]
        return Collator(0)(items)["inputs"]  # type: ignore[no-any-return]

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
        if stage is not None and stage.name == PRETRAIN:
            return bundle.mlm
        return bundle.model

    def export_extras(self, bundle: nn.Module) -> dict[str, Tensor]:
        """The projections (``proj.<layer>.weight/bias``), when the widths differ."""
        proj: Any = bundle.proj
        return {f"proj.{k}": v for k, v in proj.state_dict().items()}

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[Stage]:
        c, n = self.cfg, self._depth()
        plans: dict[str, _Plan] = {}
        out: list[Stage] = []
        if c.strategy == "progressive":
            for layer in range(n):
                name = f"transfer_{layer}"
                out.append(self._transfer_stage(name, c.layer_steps, c.layer_epochs, (layer,), range(layer)))
                plans[name] = _Plan(layers=(layer,))
        elif c.strategy == "joint":
            steps = None if c.layer_steps is None else n * c.layer_steps
            out.append(self._transfer_stage("transfer", steps, n * c.layer_epochs, range(n), ()))
            plans["transfer"] = _Plan(layers=tuple(range(n)))
        aux = tuple(range(n)) if c.strategy == "auxiliary" else ()
        extra_steps = None if c.layer_steps is None else n * c.layer_steps
        if c.pretrain_distill:
            steps = _sum_steps(c.pretrain_steps, extra_steps, "pretrain") if aux else c.pretrain_steps
            out.append(self._pretrain_stage(steps, bool(aux)))
            plans[PRETRAIN] = _Plan(layers=aux, mlm=True)
            aux = ()
        if c.task != "none":
            out.append(self._task_stage(n, aux, extra_steps))
            plans[TASK] = _Plan(layers=aux, task=True)
        self._plans = plans
        return out

    def _plan(self, stage: Stage) -> _Plan:
        if self._plans is None or stage.name not in self._plans:
            self.stages()
        assert self._plans is not None
        return self._plans[stage.name]

    def _transfer_stage(
        self, name: str, steps: int | None, epochs: float, active: Iterable[int], lower: Iterable[int]
    ) -> Stage:
        corpus = self.cfg.transfer_data == "corpus"
        return Stage(
            name,
            data="corpus" if corpus else "train",
            teacher=self.cfg.transfer_teacher,
            max_steps=steps,
            epochs=epochs,
            lr=self.cfg.transfer_lr,
            scheduler="constant",
            warmup_ratio=self.cfg.transfer_warmup,
            param_groups=self._transfer_groups(tuple(active), tuple(lower)),
            evaluate=False,
            cacheable=self.cfg.cache_transfer and not corpus,
        )

    def _pretrain_stage(self, steps: int | None, with_transfer: bool) -> Stage:
        return Stage(
            PRETRAIN,
            data="corpus",
            max_steps=steps,
            lr=self.cfg.pretrain_lr,
            param_groups=self._pretrain_groups(with_transfer),
            evaluate=False,
            cacheable=False,
            teacher=self.cfg.pretrain_teacher,
        )

    def _task_stage(self, n: int, aux: tuple[int, ...], extra_steps: int | None) -> Stage:
        c = self.cfg
        steps, epochs = c.task_steps, c.task_epochs
        if aux:
            steps = _sum_steps(c.task_steps, extra_steps, "task")
            if steps is None:
                epochs = (c.task_epochs or self.run.train.epochs) + n * c.layer_epochs
        return Stage(
            TASK,
            max_steps=steps,
            epochs=epochs,
            lr=c.task_lr,
            param_groups=self._task_groups(bool(aux)),
            uses_teacher=c.task == "kd" or bool(aux),
            cacheable=c.cache_transfer or not aux,
        )

    # ------------------------------------------------------------------ parameter groups
    def _transfer_groups(
        self, active: tuple[int, ...], lower: tuple[int, ...]
    ) -> Callable[[nn.Module], ParamGroups]:
        """Layers ``active`` (and their projections) at the stage's lr, layers ``lower`` at
        ``lower_lr_scale`` × (none when 0); the embeddings, when they train, go with layer 0. Everything
        else is frozen."""

        def groups(bundle: nn.Module) -> ParamGroups:
            b: Any = bundle
            emb = (
                _named(b.model.mobilebert.embeddings, "model.mobilebert.embeddings.")
                if b.train_embeddings
                else []
            )
            main = [p for i in active for p in self._layer_params(b, i, with_proj=True)]
            below = [p for i in lower for p in self._layer_params(b, i, with_proj=False)]
            if 0 in active:
                main += emb
            else:
                below += emb
            out: ParamGroups = [{"params": main}]
            if below and self.cfg.lower_lr_scale > 0:
                out.append({"params": below, "lr_scale": self.cfg.lower_lr_scale})
            return out

        return groups

    @staticmethod
    def _layer_params(bundle: Any, layer: int, with_proj: bool) -> list[tuple[str, Any]]:
        params = _named(
            bundle.model.mobilebert.encoder.layer[layer], f"model.mobilebert.encoder.layer.{layer}."
        )
        if with_proj and len(bundle.proj):
            params += _named(bundle.proj[layer], f"proj.{layer}.")
        return params

    @staticmethod
    def _task_groups(with_projections: bool) -> Callable[[nn.Module], ParamGroups]:
        """The whole student (embeddings, pooler and head train from here on); the projections too when the
        stage also carries the transfer losses (auxiliary)."""

        def groups(bundle: nn.Module) -> ParamGroups:
            b: Any = bundle
            params = _named(b.model, "model.")
            if with_projections:
                params += _named(b.proj, "proj.")
            return [{"params": params}]

        return groups

    @staticmethod
    def _pretrain_groups(with_projections: bool) -> Callable[[nn.Module], ParamGroups]:
        """The shared body and the masked-LM head (not the pooler and classifier, which get no gradient)."""

        def groups(bundle: nn.Module) -> ParamGroups:
            b: Any = bundle
            body = _named(b.model.mobilebert, "model.mobilebert.", lambda n: not n.startswith("pooler."))
            ids = {id(p) for _, p in body}
            head = [(n, p) for n, p in _named(b.mlm.cls, "mlm.cls.") if id(p) not in ids]
            extra = _named(b.proj, "proj.") if with_projections else []
            return [{"params": body + head + extra}]

        return groups

    # ------------------------------------------------------------------ data
    def _reads_corpus(self) -> bool:
        return self.cfg.pretrain_distill or self.cfg.transfer_data == "corpus"

    def datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        out = super().datasets(tokenizer)
        if self._reads_corpus():
            out["corpus"] = corpus_datasets(self.cfg, self.run, tokenizer, subsample=False)["train"]
        return out

    def collator(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        task = Collator(tokenizer.pad_token_id or 0, regression=self.task.regression)
        if not self._reads_corpus():
            return task
        corpus: Any = datasets["corpus"]
        mlm = MLMCollator(tokenizer, corpus.mask_weights, self.cfg, self.run.train.seed)

        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            # task examples carry labels; corpus sequences are raw text, masked here
            return task(items) if "labels" in items[0] else mlm(items)

        return collate

    # ------------------------------------------------------------------ step
    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        c, plan = self.cfg, self._plan(stage)
        hidden = bool(plan.layers) and (c.feature_weight > 0 or c.mean_weight > 0 or c.variance_weight > 0)
        att = bool(plan.layers) and c.attention_weight > 0
        return Needs(
            logits=plan.mlm or (plan.task and c.task == "kd"),
            hidden_states=hidden,
            attentions=att,
            hidden_layers=tuple(layer + 1 for layer in plan.layers) if hidden else None,
            attention_layers=plan.layers if att else None,
        )

    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        plan = self._plan(stage)
        extra = {"mlm_labels": batch["mlm_labels"]} if plan.mlm else {}
        return {**batch["inputs"], "layers": plan.layers, **extra}

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        plan, c = self._plan(stage), self.cfg
        terms: dict[str, Tensor] = {}
        if plan.layers:
            assert teacher_out is not None
            terms.update(
                self.transfer_terms(plan.layers, student_out, teacher_out, batch["inputs"]["attention_mask"])
            )
        if plan.mlm:
            assert teacher_out is not None and teacher_out.logits is not None
            t_logits = teacher_out.logits[batch["mlm_labels"] != -100]
            terms["mlm"] = soft_label_mlm_ce(
                student_out.logits, t_logits, student_out.labels, c.ground_truth_ratio
            )
        if plan.task:
            terms.update(self._task_terms(student_out.logits, teacher_out, batch))
        return terms

    def transfer_terms(
        self, layers: Sequence[int], s: MobileBertOutput, t: Features, mask: Tensor
    ) -> dict[str, Tensor]:
        """The weighted transfer terms, each averaged over ``layers``: ``fmt`` (feature map), ``mean``,
        ``var`` and ``att``."""
        c, n = self.cfg, len(layers)
        terms: dict[str, Tensor] = {}
        if c.feature_weight > 0 or c.mean_weight > 0 or c.variance_weight > 0:
            assert s.hidden is not None
            fmt, mean, var = [], [], []
            for layer in layers:
                h_s, h_t = s.hidden[layer], t.hidden_states[layer + 1].to(s.hidden[layer].dtype)
                fmt.append(layer_norm_mse(h_s, h_t, mask))
                m, v = mean_variance_transfer(h_s, h_t, mask)
                mean.append(m)
                var.append(v)
            for key, weight, values in (
                ("fmt", c.feature_weight, fmt),
                ("mean", c.mean_weight, mean),
                ("var", c.variance_weight, var),
            ):
                if weight > 0:
                    terms[key] = weight * torch.stack(values).sum() / n
        if c.attention_weight > 0:
            assert s.attentions is not None
            att = [
                attention_cross_entropy(
                    s.attentions[layer], t.attentions[layer].to(s.attentions[layer].dtype), mask
                )
                for layer in layers
            ]
            terms["att"] = c.attention_weight * torch.stack(att).sum() / n
        return terms

    def _task_terms(self, logits: Tensor, teacher_out: Features | None, batch: Batch) -> dict[str, Tensor]:
        c, labels = self.cfg, batch.get("labels")
        if c.task == "kd":
            assert teacher_out is not None and teacher_out.logits is not None
            return hinton_terms(
                logits, teacher_out.logits, labels, c.alpha, c.temperature, self.task.regression
            )
        if labels is None:
            raise ConfigError("method.task finetune needs labelled training data")
        if self.task.regression:
            return {"mse": regression_mse(logits, labels)}
        return {"ce": hard_ce(logits, labels)}


__all__ = [
    "PRESETS",
    "MobileBert",
    "MobileBertMethodConfig",
    "MobileBertOutput",
    "MobileBertStudent",
    "can_copy_embeddings",
    "can_factorise_embeddings",
    "check_shapes",
    "copy_embeddings",
    "copy_head",
    "embedding_scale",
    "shared_mlm",
    "student_config",
    "svd_embeddings",
]
