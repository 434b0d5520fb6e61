"""BiLSTM student — Tang, Lu, Liu, Mou, Vechtomova & Lin 2019, "Distilling Task-Specific Knowledge from BERT
into Simple Neural Networks" (official code: ``castorini/d-bert``, ``dbert/distill``).

The first student here that is not a transformer and does not share the teacher's tokenizer:

* **Student**: its own word vocabulary (:class:`~bertdistill.data.words.WordVocab`, built from the training
  split plus the augmented rows; lower-cased; OOV → ``<unk>``), embeddings initialised from a GloVe/word2vec
  text file (``vectors``; none = U(−0.25, 0.25), the official ``rand`` mode) and fine-tuned, a one-layer
  BiLSTM whose final forward and backward states are concatenated (official ``use_maxpool: false``;
  ``pooling: max`` is an option), then ``ReLU(W₁h)`` → dropout → ``W₂`` → logits. Pairs: a *siamese*
  encoder (one BiLSTM for both sentences) and ``[h₁, h₂, h₁⊙h₂, |h₁−h₂|]`` into the same MLP.
  Paper sizes: 150 per direction and an MLP of 200 (300 / 400 in the larger configuration).
* **Loss**, per example: ``α·CE(z_S, y) + (1−α)·MSE(z_S, z_T)`` on logits — rows without a gold label (the
  augmented ones) take the MSE term only; averaged over the batch. Regression: ``α·(z_S−y)² + (1−α)·(z_S−z_T)²``.
  ``hard_labels: teacher`` reproduces the official pipeline instead: ``join_logits.py`` overwrites every
  transfer-set row's label with the teacher's argmax, so the CE term applies to every row.
* **Soft targets**: the teacher sees its own WordPiece tokenisation of each row (the dataset's teacher view,
  ``batch["teacher_inputs"]``); its logits come per example from the teacher cache, keyed by the teacher's
  tokens — computed once per (example, teacher) and shared with every other student of the same text.
* **Optimiser**: AdaDelta (lr 1.0, ρ 0.95 = ``train.adadelta_rho``), batch 50, constant rate (the stage's own
  settings); the recipes set ``train.adam_eps: 1e-6`` (torch's AdaDelta default), no weight decay, no clipping.

The saved student is ``model.safetensors`` + ``config.json`` (``model_type: bertdistill-bilstm``) +
``vocab.json`` + ``bertdistill.yaml``; :class:`BiLSTMRunner` runs it on raw text for ``evaluate``, ``compare``
and ``predict``. Every difference from the paper and the official code: ``docs/methods/bilstm.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import Dataset
from transformers.modeling_outputs import SequenceClassifierOutput

from ..config import ConfigError, MethodConfig
from ..data.loading import (
    Collator,
    Examples,
    extra_training_rows,
    run_eval_examples,
    run_train_examples,
    subsample,
    tokenize,
)
from ..data.tasks import TaskSpec
from ..data.words import (
    UNK_INIT_RANGE,
    WordDataset,
    WordVocab,
    load_word_vectors,
    split_segments,
    word_dataset,
)
from ..protocol import (
    Batch,
    BuiltStudent,
    Features,
    Method,
    MethodTestConfig,
    Needs,
    OnnxGraph,
    Runner,
    Stage,
)
from ..registry import register

MODEL_TYPE = "bertdistill-bilstm"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NO_LABEL = -1
"""The label of a row without a gold label (classification); regression rows use NaN."""
PAPER_EMBEDDING_DIM = 300
"""Width of random embeddings when no vectors file is given (the paper's word2vec width)."""


# ----------------------------------------------------------------------------------------------- the student


@dataclass
class BiLSTMModelConfig:
    """The saved student's shape (``config.json``)."""

    vocab_size: int
    embedding_dim: int = PAPER_EMBEDDING_DIM
    hidden_size: int = 150
    mlp_size: int = 200
    num_labels: int = 2
    dropout: float = 0.1
    pooling: str = "last"
    siamese: bool = False
    id2label: dict[int, str] = field(default_factory=dict)
    model_type: str = MODEL_TYPE

    @property
    def num_hidden_layers(self) -> int:
        return 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BiLSTMModelConfig:
        if d.get("model_type") != MODEL_TYPE:
            raise ConfigError(f"not a BiLSTM student config (model_type {d.get('model_type')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        cfg.id2label = {int(k): v for k, v in cfg.id2label.items()}
        return cfg


def pair_features(h1: Tensor, h2: Tensor) -> Tensor:
    """``[h₁, h₂, h₁⊙h₂, |h₁−h₂|]`` (Tang et al. §3.2; the official code orders the last two the other way)."""
    return torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1)


class BiLSTMClassifier(nn.Module):
    """Embeddings → one-layer BiLSTM → [final states | max-pool] → ReLU MLP → logits; siamese for pairs."""

    def __init__(self, config: BiLSTMModelConfig) -> None:
        super().__init__()
        if config.pooling not in ("last", "max"):
            raise ConfigError(f"pooling must be last or max, got {config.pooling!r}")
        self.config = config
        h = config.hidden_size
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(config.embedding_dim, h, num_layers=1, batch_first=True, bidirectional=True)
        self.mlp = nn.Linear(2 * h * (4 if config.siamese else 1), config.mlp_size)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.mlp_size, config.num_labels)

    def encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``[B, 2H]`` sentence vectors of right-padded word ids with their lengths."""
        packed = pack_padded_sequence(
            self.embedding(ids), lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        seq, (h_n, _) = self.lstm(packed)
        if self.config.pooling == "last":
            return torch.cat([h_n[0], h_n[1]], dim=-1)  # final forward state, final backward state
        out, _ = pad_packed_sequence(seq, batch_first=True, padding_value=-math.inf)
        return out.max(dim=1).values

    def features(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        if not self.config.siamese:
            return self.encode(input_ids, attention_mask.sum(1))
        if token_type_ids is None:
            raise ConfigError("a siamese BiLSTM needs token_type_ids marking the two sentences")
        (a, len_a), (b, len_b) = split_segments(input_ids, attention_mask, token_type_ids)
        width = max(a.shape[1], b.shape[1])
        both = torch.cat([F.pad(a, (0, width - a.shape[1])), F.pad(b, (0, width - b.shape[1]))])
        h = self.encode(both, torch.cat([len_a, len_b]))  # one LSTM call for both sides (shared weights)
        return pair_features(h[: a.shape[0]], h[a.shape[0] :])

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.features(input_ids, attention_mask, token_type_ids)
        return SequenceClassifierOutput(logits=self.out(self.dropout(F.relu(self.mlp(x)))))

    def save_pretrained(self, out_dir: str | os.PathLike[str], **_: Any) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_model(self, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=1))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> BiLSTMClassifier:
        p = Path(path)
        if not (p / CONFIG_FILE).is_file():
            raise ConfigError(f"{p}: no {CONFIG_FILE}; not a saved BiLSTM student")
        model = cls(BiLSTMModelConfig.from_dict(json.loads((p / CONFIG_FILE).read_text())))
        load_model(model, str(p / WEIGHTS_FILE))
        return model.eval()


class PaddedBiLSTM(nn.Module):
    """The student's forward without packed sequences, which ``torch.export`` cannot trace (their lengths
    are read on the host): the same weights and numbers. The forward direction runs over the padded rows and is
    read at each row's last real word; the backward direction runs over each row reversed *within its length*
    (then padding), which is what the packed backward pass sees. Pairs are split at full width (no
    data-dependent shape). What ``bertdistill export`` traces."""

    def __init__(self, model: BiLSTMClassifier) -> None:
        super().__init__()
        self.model = model
        lstm = model.lstm
        self.fwd = nn.LSTM(lstm.input_size, lstm.hidden_size, batch_first=True)
        self.bwd = nn.LSTM(lstm.input_size, lstm.hidden_size, batch_first=True)
        weights = lstm.state_dict()
        self.fwd.load_state_dict({k: v for k, v in weights.items() if not k.endswith("_reverse")})
        self.bwd.load_state_dict(
            {k[: -len("_reverse")]: v for k, v in weights.items() if k.endswith("_reverse")}
        )

    def encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        emb = self.model.embedding(ids)
        b, t, e = emb.shape
        h = self.fwd.hidden_size
        pos = torch.arange(t, device=ids.device).unsqueeze(0)
        last = (lengths.clamp(min=1) - 1).unsqueeze(1)  # [B, 1]
        rev = (last - pos).clamp(min=0)  # reversed position t holds word last − t
        fwd, _ = self.fwd(emb)
        bwd_rev, _ = self.bwd(emb.gather(1, rev.unsqueeze(-1).expand(b, t, e)))
        if self.model.config.pooling == "last":
            at_last = last.unsqueeze(-1).expand(b, 1, h)
            return torch.cat([fwd.gather(1, at_last)[:, 0], bwd_rev.gather(1, at_last)[:, 0]], dim=-1)
        bwd = bwd_rev.gather(1, rev.unsqueeze(-1).expand(b, t, h))
        out = torch.cat([fwd, bwd], dim=-1).masked_fill((pos > last).unsqueeze(-1), -math.inf)
        return out.max(dim=1).values

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        m = self.model
        if m.config.siamese:
            if token_type_ids is None:
                raise ConfigError("a siamese BiLSTM needs token_type_ids marking the two sentences")
            real = attention_mask.bool()
            len_a, len_b = (real & (token_type_ids == 0)).sum(1), (real & (token_type_ids == 1)).sum(1)
            pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            ids_a = input_ids.masked_fill(pos >= len_a.unsqueeze(1), 0)
            idx_b = (len_a.unsqueeze(1) + pos).clamp(max=input_ids.shape[1] - 1)
            ids_b = input_ids.gather(1, idx_b).masked_fill(pos >= len_b.unsqueeze(1), 0)
            h = self.encode(torch.cat([ids_a, ids_b]), torch.cat([len_a, len_b]))
            x = pair_features(h[: input_ids.shape[0]], h[input_ids.shape[0] :])
        else:
            x = self.encode(input_ids, attention_mask.sum(1))
        return m.out(m.dropout(F.relu(m.mlp(x))))  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------------- losses


def has_label(labels: Tensor) -> Tensor:
    """Rows with a gold label: ``label ≥ 0`` (classes) or not NaN (regression)."""
    return ~torch.isnan(labels) if labels.is_floating_point() else labels >= 0


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``mean((z_S − z_T)²)`` over rows and logits — Tang et al.'s distillation objective (``nn.MSELoss``)."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


LOW_COVERAGE = 0.5
"""Below this share of the vocabulary with a pre-trained vector, the run warns: the embeddings are mostly random."""


def warn_low_coverage(described: Mapping[str, Any], n_words: int) -> None:
    """Warn when few of the ``n_words`` training words have a vector in ``method.vectors`` (``described``:
    :meth:`WordVectors.describe`) — a file of another language or casing, or a subset that misses the task's
    words: most of the student's embeddings then start at random."""
    if described["coverage"] < LOW_COVERAGE:
        logging.getLogger(__name__).warning(
            "only %.1f%% of the %d training words have a vector in %s: most of the BiLSTM's embeddings start at "
            "random; check that the file matches the text's language and casing",
            100 * described["coverage"],
            n_words,
            described["vectors"],
        )


def partial_label_loss(logits: Tensor, labels: Tensor, regression: bool) -> Tensor:
    """``(1/B)·Σ_i m_i·ℓ_i`` with ``m_i`` = row i has a gold label and ``ℓ_i`` its CE (or squared error for
    regression): unlabelled rows add nothing, and a labelled row weighs the same whatever the batch's mix."""
    mask = has_label(labels)
    if regression:
        err = (logits.float().reshape(-1) - torch.nan_to_num(labels.float())) ** 2
        return (err * mask).sum() / labels.shape[0]
    ce = F.cross_entropy(logits.float(), labels.long().clamp(min=0), reduction="none")
    return (ce * mask).sum() / labels.shape[0]


# ----------------------------------------------------------------------------------------------- config


@dataclass
class BiLSTMConfig(MethodConfig):
    name: str = "bilstm"
    train_defaults: ClassVar[Mapping[str, Any]] = {
        "epochs": 30,  # official configs
        "adam_eps": 1e-6,  # AdaDelta's eps: torch's default, as the official code
        "adadelta_rho": 0.95,
        "weight_decay": 0.0,  # official: AdaDelta without weight decay
        "max_grad_norm": None,  # official: clip at 30000 on non-embedding weights, i.e. never
    }
    alpha: float = 0.5
    """Weight of the hard term; 1 − α weighs the logit MSE. The official code adds both with weight 1 (the
    same as 0.5 / 0.5 up to a factor 2, which AdaDelta's update is nearly blind to). α = 1: labels only."""
    hard_labels: str = "gold"
    """``gold``: CE on gold labels, rows without one take the MSE only; ``teacher``: CE on the teacher's argmax
    for every row (the official ``join_logits.py`` pipeline)."""
    vectors: str | None = None
    """GloVe/word2vec text file (.txt or .txt.gz) for the embeddings; none = random U(−0.25, 0.25)."""
    embedding_dim: int | None = None
    """Default: the vectors file's width, or 300 without vectors."""
    freeze_embeddings: bool = False
    hidden_size: int = 150
    """Per direction (paper 150; 300 in the larger configuration)."""
    mlp_size: int = 200
    """Paper 200 (400 in the larger configuration)."""
    dropout: float = 0.1
    pooling: str = "last"
    """``last`` (final forward + backward states, official) or ``max`` (max over time)."""
    pair_mode: str = "auto"
    """``auto`` (siamese when the task has two texts), ``siamese``, or ``joint`` (one sequence a + b)."""
    augmented_data: str | None = None
    """A file of ``bertdistill augment --style tang`` (unlabelled rows, added to the labelled training split)."""
    min_count: int = 1
    lowercase: bool = True
    max_vocab: int | None = None
    optimizer: str = "adadelta"
    lr: float = 1.0
    batch_size: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"method.alpha must be in [0, 1], got {self.alpha}")
        choices = {
            "hard_labels": ("gold", "teacher"),
            "pooling": ("last", "max"),
            "pair_mode": ("auto", "siamese", "joint"),
            "optimizer": ("adadelta", "adamw", "sgd"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"method.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if self.alpha == 1.0 and self.hard_labels == "gold" and self.augmented_data:
            raise ConfigError(
                "method.alpha = 1 trains on gold labels only, which the augmented rows do not have: "
                "drop method.augmented_data or lower alpha"
            )
        if min(self.hidden_size, self.mlp_size, self.batch_size) < 1 or not self.lr > 0:
            raise ConfigError("method.hidden_size, mlp_size, batch_size and lr must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")

    def uses_teacher(self) -> bool:
        return self.alpha < 1.0 or self.hard_labels == "teacher"


# ----------------------------------------------------------------------------------------------- inference


class BiLSTMRunner(Runner):
    """A saved BiLSTM student: raw text → words (its ``vocab.json``) → logits."""

    @classmethod
    def load(cls, path: Any, recipe: Mapping[str, Any], task: TaskSpec | None) -> Runner:
        p = str(path)
        return cls(BiLSTMClassifier.from_pretrained(p), WordVocab.from_pretrained(p), task, p, recipe)

    def encode(self, examples: Examples, max_length: int) -> Dataset:
        return word_dataset(examples, self.tokenizer, max_length)

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return Collator(self.tokenizer.pad_token_id, regression=bool(self.task and self.task.regression))

    def describe(self) -> dict[str, Any]:
        cfg: BiLSTMModelConfig = self.model.config  # type: ignore[assignment]
        return {
            "params": sum(p.numel() for p in self.model.parameters()),
            "layers": 1,
            "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size,
        }

    def is_pair(self) -> bool:
        if self.task is not None:
            return self.task.is_pair
        return bool(getattr(self.model.config, "siamese", False))

    def onnx_graphs(self, batch: Batch, **options: Any) -> list[OnnxGraph]:
        inputs = batch["inputs"]
        names = ("input_ids", "attention_mask", "token_type_ids")
        model: Any = self.model
        given = {k: inputs[k] for k in names if k in inputs}
        return [OnnxGraph("model", PaddedBiLSTM(model), given, ("logits",))]


# ----------------------------------------------------------------------------------------------- the method


@register("bilstm")
class BiLSTM(Method):
    """Tang et al. 2019: a word-level BiLSTM learns the teacher's logits (MSE) and the labels, with augmentation."""

    config_cls = BiLSTMConfig

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        # the same BiLSTM on the gold labels only (alpha 1: no logit MSE; gold, not the teacher's argmax), without
        # the teacher-labelled augmented rows (they have no gold label), for the same number of steps
        recipe["method"].update(alpha=1.0, augmented_data=None, hard_labels="gold")
        recipe["train"]["max_steps"] = steps
        return recipe

    runner_cls = BiLSTMRunner
    cfg: BiLSTMConfig
    test_config = MethodTestConfig(
        sections={
            "method": {"vectors": "{glove}", "hidden_size": 16, "mlp_size": 16, "dropout": 0.0},
            "train": {"adam_eps": 1.0e-6, "weight_decay": 0.0, "max_grad_norm": None},
        },
        # the MSE term alone: a random teacher and the gold labels disagree
        overfit={"method": {"alpha": 0.0}},
    )

    # ------------------------------------------------------------------ data
    def datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        d, cfg, seed = self.run.data, self.cfg, self.run.train.seed
        train = subsample(run_train_examples(d, self.task), d.max_train_examples, seed)
        extra = self._augmented_rows(train)
        texts = train.texts + extra.texts
        vocab = WordVocab.build(
            (t for row in texts for t in row), cfg.min_count, cfg.lowercase, cfg.max_vocab
        )
        missing: int | float = math.nan if self.task.regression else NO_LABEL
        gold = train.labels if train.labels is not None else [missing] * len(train)
        rows = Examples(texts, [*gold, *([missing] * len(extra))], train.source)
        view = tokenize(rows, tokenizer, d.max_length) if self.cfg.uses_teacher() else None
        out: dict[str, Dataset] = {"train": word_dataset(rows, vocab, d.max_length, teacher=view)}
        ev = run_eval_examples(d, self.task)
        if ev is not None and ev.labels is not None:
            out["eval"] = word_dataset(subsample(ev, d.max_eval_examples, seed), vocab, d.max_length)
        return out

    def _augmented_rows(self, train: Examples) -> Examples:
        """The augmented file's rows that are not training rows (its originals are dropped: they keep their
        gold labels from the training split)."""
        if not self.cfg.augmented_data:
            return Examples([], None)
        # never evaluation text, nor a variant of a selection-slice sentence (data.selection_fraction)
        aug = extra_training_rows(self.cfg.augmented_data, self.run.data, self.task, "method.augmented_data")
        known = set(train.texts)
        keep = [i for i, t in enumerate(aug.texts) if t not in known]
        return Examples([aug.texts[i] for i in keep], None, aug.source)

    @staticmethod
    def _vocab(datasets: Mapping[str, Dataset]) -> WordVocab:
        train = datasets["train"]
        if not isinstance(train, WordDataset) or train.vocab is None:
            raise ConfigError("bilstm: the training dataset carries no word vocabulary")
        return train.vocab

    def student_tokenizer(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        return self._vocab(datasets)

    def collator(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        return Collator(
            self._vocab(datasets).pad_token_id,
            regression=self.task.regression,
            teacher_pad_id=getattr(tokenizer, "pad_token_id", None) or 0,
        )

    # ------------------------------------------------------------------ student
    def siamese(self) -> bool:
        mode = self.cfg.pair_mode
        if mode == "siamese" and not self.task.is_pair:
            raise ConfigError(
                f"method.pair_mode: siamese needs a sentence-pair task; {self.task.name} has one text"
            )
        return self.task.is_pair if mode == "auto" else mode == "siamese"

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        cfg = self.cfg
        vocab = self._vocab(datasets)
        vectors = (
            load_word_vectors(cfg.vectors, vocab, cfg.embedding_dim, seed=self.run.train.seed)
            if cfg.vectors
            else None
        )
        described = vectors.describe(vocab) if vectors is not None else {}
        if described:
            warn_low_coverage(described, max(1, len(vocab) - 2))
        dim = vectors.dim if vectors is not None else cfg.embedding_dim or PAPER_EMBEDDING_DIM
        model = BiLSTMClassifier(
            BiLSTMModelConfig(
                vocab_size=len(vocab),
                embedding_dim=dim,
                hidden_size=cfg.hidden_size,
                mlp_size=cfg.mlp_size,
                num_labels=self.task.num_labels,
                dropout=cfg.dropout,
                pooling=cfg.pooling,
                siamese=self.siamese(),
                id2label=dict(enumerate(self.task.labels)) if not self.task.regression else {0: "score"},
            )
        )
        with torch.no_grad():
            if vectors is not None:
                model.embedding.weight.copy_(vectors.weight)
            else:
                model.embedding.weight.uniform_(-UNK_INIT_RANGE, UNK_INIT_RANGE)
                model.embedding.weight[vocab.pad_token_id] = 0.0
        model.embedding.weight.requires_grad_(not cfg.freeze_embeddings)
        info: dict[str, Any] = {
            "student": "bilstm",
            "vocab": len(vocab),
            "embedding_dim": dim,
            "siamese": model.config.siamese,
            "params": sum(p.numel() for p in model.parameters()),
            "train_rows": len(datasets["train"]),  # type: ignore[arg-type]
        }
        info.update(described)
        return BuiltStudent(model, info)

    def stages(self) -> list[Stage]:
        c = self.cfg
        return [
            Stage(
                "train",
                optimizer=c.optimizer,
                lr=c.lr,
                batch_size=c.batch_size,
                scheduler="constant",
                warmup_ratio=0.0,
                uses_teacher=c.uses_teacher(),
                param_groups=self._trainable if c.freeze_embeddings else None,
            )
        ]

    @staticmethod
    def _trainable(bundle: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [(n, p) for n, p in bundle.named_parameters() if not n.startswith("embedding.")]}]

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        return Needs(logits=True)

    # ------------------------------------------------------------------ loss
    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        c, z = self.cfg, student_out.logits
        z_t = teacher_out.logits if teacher_out is not None else None
        terms: dict[str, Tensor] = {}
        if c.alpha > 0:
            if c.hard_labels == "teacher" and not self.task.regression:
                assert z_t is not None
                terms["ce"] = c.alpha * F.cross_entropy(z.float(), z_t.argmax(-1))
            else:
                labels = batch["labels"]
                name = "mse_gold" if self.task.regression else "ce"
                terms[name] = c.alpha * partial_label_loss(z, labels, self.task.regression)
        if c.alpha < 1:
            assert z_t is not None, "bilstm: alpha < 1 needs the teacher's logits"
            terms["mse"] = (1 - c.alpha) * logit_mse(z, z_t)
        return terms


__all__ = [
    "BiLSTM",
    "BiLSTMClassifier",
    "BiLSTMConfig",
    "BiLSTMModelConfig",
    "BiLSTMRunner",
    "has_label",
    "logit_mse",
    "pair_features",
    "partial_label_loss",
]
