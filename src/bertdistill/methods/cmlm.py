"""C-MLM — Chen, Gan, Cheng, Liu & Liu 2020, "Distilling Knowledge Learned in BERT for Text Generation".

A BERT teacher, fine-tuned as a *conditional masked LM* on ``[CLS] source [SEP] target [SEP]``, sees both sides
of every target token; its per-token distributions teach a left-to-right seq2seq student, which cannot see the
future. Three stages (``method.stages``; default all three):

* ``teacher`` — C-MLM fine-tuning of ``teacher.path`` (an HF masked LM, or an encoder without an MLM head such
  as the MiniLM-L6 sentence encoder: its head is then trained from scratch, tied to the word embeddings, as in
  ``finetune --task mlm``): each target token (the final ``[SEP]``, the end of sequence, included) is replaced
  by ``[MASK]`` with probability 0.15, at least one per example, source tokens never (official ``random_word``);
  loss = cross-entropy at the masked positions. Scored by masked-token accuracy (every target token masked once,
  as for the soft labels). The model is saved to ``<output_dir>/stages/teacher/``.
* ``soft_labels`` — a preparation stage (nothing trains): for every target token, the teacher's distribution
  with that token masked. Each example becomes ``min(7, n)`` masked copies, copy j masking target positions
  j, j+7, j+14, … (official ``dump_teacher_hiddens.py``), so every target token is masked exactly once; the
  top-k (k = 8) logits of each position are stored through the teacher cache (sharded, resumable, with a
  progress bar; the extraction time is logged).
* ``student`` — an HF encoder-decoder Transformer (``M2M100ForConditionalGeneration``: pre-norm, sinusoidal
  positions, embeddings scaled by √d and shared by encoder, decoder and output layer — the OpenNMT-py
  Transformer of the official student), built from ``student.config_overrides`` over the teacher's WordPiece
  vocabulary, trained with

      L = α·L_kd + (1 − α)·L_mle,   L_kd = −Σ_j softmax(z_T^top-k / t)_j · log softmax(z_S)[id_j]

  per target token (mean over real tokens), α = 0.5, t = 10 on the teacher only, no t², ``L_mle`` with label
  smoothing 0.1. α = 0 is the no-KD control (the stage then reads no teacher). Greedy or beam decoding
  (``--beam``); BLEU with sacreBLEU on detokenised output. Saved in HF format (``AutoModelForSeq2SeqLM``).

The student shares the teacher's vocabulary by construction (the run has one tokenizer); a teacher or a
pre-trained student whose vocabulary differs is refused (:func:`check_vocab_alignment`). What is faithful and
every deliberate difference: ``docs/methods/cmlm.md``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    M2M100Config,
    M2M100ForConditionalGeneration,
)
from transformers.utils import ModelOutput

from ..config import ConfigError, MethodConfig
from ..data.loading import Examples, run_eval_examples, run_train_examples, subsample, teacher_inputs
from ..data.parallel import (
    ParallelCollator,
    decode_ids,
    encode_pairs,
    special_ids,
    translation_metrics,
)
from ..hub import from_pretrained
from ..losses import label_smoothed_ce, mlm_ce, topk_sharpness, topk_soft_ce
from ..mlm_head import MaskedTokenOutput, masked_token_logits, split_mlm
from ..protocol import (
    Batch,
    BuiltStudent,
    Features,
    InferenceOption,
    Method,
    MethodTestConfig,
    Needs,
    OnnxGraph,
    OnnxRun,
    ParamGroups,
    Prediction,
    Runner,
    Stage,
)
from ..registry import register

STAGES = ("teacher", "soft_labels", "student")
FLAT_TARGETS = 0.99
"""Soft labels whose mean entropy is above this share of the uniform's (``ln k``) at the run's temperature tell the
student almost nothing but "one of these k tokens": the soft-label stage says so (see :func:`soft_label_warning`).
The paper's setting on a well-trained teacher (top-1 logit ~6-10 above the rest, t = 10) is ≈ 0.96-0.98."""
GENERATION_CAP = 256
"""Most tokens a student generates per sentence (the width of the ``tokens`` extras of a prediction)."""

STUDENT_DEFAULTS: dict[str, Any] = {
    "d_model": 256,
    "encoder_layers": 3,
    "decoder_layers": 3,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 1024,
    "decoder_ffn_dim": 1024,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "activation_function": "relu",
    "max_position_embeddings": 512,
    "scale_embedding": True,
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
    "init_std": 0.02,
}
"""The student's ``M2M100Config`` unless ``student.config_overrides`` says otherwise (vocabulary and special
ids always come from the teacher's tokenizer)."""


@dataclass
class CMLMConfig(MethodConfig):
    name: str = "cmlm"
    stages: list[str] = field(default_factory=list)
    """Stages to run, in order, from ``teacher``, ``soft_labels``, ``student``. Default: all three, or
    ``soft_labels`` + ``student`` when ``teacher_path`` is set, or ``student`` alone when ``alpha`` is 0."""
    teacher_path: str | None = None
    """A C-MLM teacher fine-tuned earlier (the ``stages/teacher`` dir of a run): skips stage ``teacher``."""
    # ---- stage teacher
    mask_probability: float = 0.15
    """C-MLM fine-tuning: each target token becomes ``[MASK]`` with this probability (at least one per example)."""
    train_teacher_body: bool = True
    """Fine-tune the whole teacher (official); false = only its MLM head (transform + bias; the output layer is
    tied to the word embeddings)."""
    body_lr_scale: float = 1.0
    teacher_steps: int | None = None
    teacher_epochs: float | None = None
    teacher_lr: float | None = None
    teacher_batch_size: int | None = None
    # ---- stage soft_labels
    copies: int = 7
    """Masked copies per example: copy j masks target positions j, j+copies, … (official: 7)."""
    topk: int = 8
    """Teacher logits kept per target token (official: 8 used in training)."""
    # ---- stage student
    alpha: float = 0.5
    """Weight of ``L_kd`` (1 − alpha on ``L_mle``); 0 = the student without the KD term."""
    temperature: float = 10.0
    """Divides the teacher's top-k logits (the student's logits are not scaled)."""
    label_smoothing: float = 0.1
    student_steps: int | None = None
    student_epochs: float | None = None
    student_lr: float | None = None
    student_batch_size: int | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or len(set(self.stages)) != len(self.stages):
            raise ConfigError(
                f"method.stages: each of {list(STAGES)} at most once, in that order; got {self.stages}"
            )
        if self.stages != sorted(self.stages, key=STAGES.index):
            raise ConfigError(f"method.stages must keep the order {list(STAGES)}; got {self.stages}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"method.alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.mask_probability < 1.0:
            raise ConfigError(f"method.mask_probability must be in (0, 1), got {self.mask_probability}")
        for k in ("temperature", "body_lr_scale"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"method.{k} must be > 0, got {getattr(self, k)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"method.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.copies < 1 or self.topk < 1:
            raise ConfigError(f"method.copies and method.topk must be >= 1, got {self.copies}, {self.topk}")

    def stage_names(self) -> list[str]:
        if self.stages:
            return list(self.stages)
        if self.alpha == 0.0:
            return ["student"]
        return ["soft_labels", "student"] if self.teacher_path else list(STAGES)


# ----------------------------------------------------------------------------------------------- vocabulary


def soft_label_warning(stats: Mapping[str, float], k: int, temperature: float, alpha: float) -> str | None:
    """What to tell the user when the soft labels are nearly uniform (:data:`FLAT_TARGETS`); ``None`` otherwise
    or when the run does not use them (``alpha`` 0)."""
    if alpha <= 0 or stats["entropy_ratio"] <= FLAT_TARGETS:
        return None
    return (
        f"the soft labels are nearly uniform over the teacher's top {k} at method.temperature {temperature:g} "
        f"(mean p(top-1) {stats['top1_prob']:.3f} against {1 / k:.3f} for uniform; entropy "
        f"{100 * stats['entropy_ratio']:.1f}% of the uniform's): the teacher's top-1 and {k}-th logits are only "
        f"{stats['logit_gap']:.1f} apart on average (at t = 1 its p(top-1) is {stats['top1_prob_t1']:.2f}), so "
        f"{alpha:g} of the student's loss teaches it to spread its probability over {k} tokens. The paper's "
        "teacher (multilingual BERT, 100k steps) has far larger gaps. Train the teacher longer "
        "(method.teacher_epochs) or lower method.temperature, and check the student against its no-KD control "
        "(distill --control)."
    )


def check_vocab_alignment(
    reference: Any, other: Any = None, *, other_size: int | None = None, what: str = "the student"
) -> None:
    """Refuse a teacher or student whose vocabulary is not the run's: C-MLM soft labels are distributions over
    the teacher's vocabulary that the student reads by token id, so both must be one vocabulary (Chen et al.
    2020: one shared WordPiece). ``other`` is a tokenizer to compare token by token, ``other_size`` the size of a
    model's vocabulary (its embedding / output layer)."""
    ref = reference.get_vocab()
    problems = []
    if other is not None:
        theirs = other.get_vocab()
        if theirs != ref:
            diff = sorted(set(ref.items()) ^ set(theirs.items()), key=lambda kv: kv[1])[:5]
            problems.append(
                f"its tokenizer has {len(theirs)} entries to the run's {len(ref)}, e.g. differing "
                f"(token, id) pairs {diff}"
            )
    if other_size is not None and other_size != len(reference):
        problems.append(f"its vocabulary has {other_size} ids, the run's tokenizer {len(reference)}")
    if problems:
        raise ConfigError(
            f"vocabulary mismatch: {what} does not share the run's vocabulary ({'; '.join(problems)}). C-MLM soft "
            "labels are teacher distributions over token ids that the student reads id by id, so teacher and "
            "student must use one vocabulary: build the student from the teacher's tokenizer (student.init: "
            "random) and fine-tune the C-MLM teacher from teacher.path itself."
        )


def output_vocab_size(model: nn.Module) -> int:
    emb = model.get_output_embeddings()  # type: ignore[operator]
    if emb is None:
        raise ConfigError(f"{type(model).__name__} has no output layer over a vocabulary")
    return int(emb.weight.shape[0])


# ----------------------------------------------------------------------------------------------- teacher


def load_masked_lm(path: str, *, trained_head: bool, trust_remote_code: bool = False) -> nn.Module:
    """``AutoModelForMaskedLM`` of ``path`` with its output layer tied to the word embeddings. With
    ``trained_head`` a checkpoint without a complete MLM head (a sentence encoder) is refused; without it (the
    base of stage ``teacher``) the missing head is initialised, to be trained."""
    model, info = from_pretrained(
        AutoModelForMaskedLM, path, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    missing = sorted(
        k for k in info.get("missing_keys", ()) if not k.endswith(("position_ids", "token_type_ids"))
    )
    if trained_head and missing:
        raise ConfigError(
            f"{path!r} is not a fine-tuned C-MLM teacher: its checkpoint lacks {missing[:4]} (the MLM head). Use "
            "the stages/teacher dir of a cmlm run, or run stage teacher (method.teacher_path unset)."
        )
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.bertdistill_new_head = missing  # type: ignore[assignment]
    return model  # type: ignore[no-any-return]


@dataclass
class MaskedCopies:
    """The masked copies of a batch of ``[CLS] source [SEP] target [SEP]`` inputs (rows ``R``): row r copies
    example ``example[r]`` with the positions ``predict[r]`` masked. ``order`` sorts the predicted positions
    (taken row by row, ``predict.nonzero()``) into (example, position) order; ``labels`` are the original ids at
    them in that order; ``counts[b]`` = the target tokens of example b."""

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor
    predict: Tensor
    example: Tensor
    order: Tensor
    labels: Tensor
    counts: Tensor


def masked_copies(
    input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor, copies: int, mask_token_id: int
) -> MaskedCopies:
    """Copy j (j < min(copies, n)) of an example with n target tokens (segment 1, the final ``[SEP]`` included)
    masks its target tokens j, j+copies, j+2·copies, …: every target token is masked in exactly one copy, and
    nothing else is ever masked (official ``convert_example``: ``min(7, n)`` copies, an identity when n ≤ 7)."""
    target = token_type_ids.eq(1) & attention_mask.bool()
    counts = target.sum(1)
    if bool((counts == 0).any()):
        raise ValueError(
            "a C-MLM input without target tokens (segment 1): expected [CLS] source [SEP] target [SEP]"
        )
    rank = target.long().cumsum(1) - 1
    copy_of = torch.where(target, rank % copies, torch.full_like(rank, -1))
    n_copies = counts.clamp(max=copies)
    example = torch.repeat_interleave(torch.arange(len(counts), device=input_ids.device), n_copies)
    first = torch.repeat_interleave(n_copies.cumsum(0) - n_copies, n_copies)
    j = torch.arange(len(example), device=input_ids.device) - first
    predict = copy_of[example] == j[:, None]
    rows, cols = predict.nonzero(as_tuple=True)
    order = (example[rows] * input_ids.shape[1] + cols).argsort()
    return MaskedCopies(
        input_ids=input_ids[example].masked_fill(predict, mask_token_id),
        attention_mask=attention_mask[example],
        token_type_ids=token_type_ids[example],
        predict=predict,
        example=example,
        order=order,
        labels=input_ids[example[rows], cols][order],
        counts=counts,
    )


@dataclass
class SoftLabelOutput(ModelOutput):
    logits: Tensor | None = None
    """``[M, V]``: the teacher's logits at every target token of the batch, each with that token masked —
    example by example, in position order."""
    row_counts: Tensor | None = None
    """``[B]``: target tokens per example."""
    labels: Tensor | None = None
    """``[M]``: the true tokens at those positions."""


class CMLMSoftLabeler(nn.Module):
    """A C-MLM teacher as the engine runs it for soft labels (``Needs.token_topk``) and for masked-token
    accuracy: ``forward`` takes ``[CLS] source [SEP] target [SEP]`` inputs, builds the masked copies
    (:func:`masked_copies`), runs the encoder on them ``max_rows`` at a time and the MLM head at the masked
    positions only. Its ``config`` is the MLM's plus ``cmlm_copies``, so the teacher cache's fingerprint
    changes with the number of copies."""

    def __init__(self, mlm: nn.Module, mask_token_id: int, copies: int = 7, max_rows: int = 256) -> None:
        super().__init__()
        parts = split_mlm(mlm)
        if parts is None:
            raise ConfigError(f"{type(mlm).__name__}: cannot find the encoder and MLM head of this masked LM")
        self.mlm = mlm
        self.mask_token_id = mask_token_id
        self.copies = copies
        self.max_rows = max_rows
        cfg: Any = copy.deepcopy(mlm.config)
        cfg.cmlm_copies = copies
        self.config = cfg

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor, **_: Any
    ) -> SoftLabelOutput:
        mc = masked_copies(input_ids, attention_mask, token_type_ids, self.copies, self.mask_token_id)
        parts = split_mlm(self.mlm)
        assert parts is not None
        body, head = parts
        picked = []
        for s in range(0, len(mc.example), self.max_rows):
            window = slice(s, s + self.max_rows)
            hidden = body(
                input_ids=mc.input_ids[window],
                attention_mask=mc.attention_mask[window],
                token_type_ids=mc.token_type_ids[window],
                return_dict=True,
            ).last_hidden_state
            picked.append(hidden[mc.predict[window]])
        logits = head(torch.cat(picked)[mc.order])
        return SoftLabelOutput(logits=logits, row_counts=mc.counts, labels=mc.labels)


def cmlm_mask(
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor,
    probability: float,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """C-MLM fine-tuning masks (official ``random_word``): each target token (segment 1, final ``[SEP]``
    included) becomes ``[MASK]`` with ``probability`` — always ``[MASK]``, no 80/10/10 — and a row where none was
    drawn is drawn again until one is; source tokens are never masked. Returns ``(masked_ids, mlm_labels)``,
    labels −100 except at the masked positions."""
    target = token_type_ids.eq(1) & attention_mask.bool()
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & target
    for _ in range(1000):
        empty = chosen.sum(1) == 0
        if not bool(empty.any()):
            break
        again = (torch.rand(input_ids.shape, generator=generator) < probability) & target
        chosen[empty] = again[empty]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return input_ids.masked_fill(chosen, mask_token_id), labels


class CMLMCollator:
    """Pairs batched by :class:`~bertdistill.data.parallel.ParallelCollator` plus, when they carry the teacher's
    view, the C-MLM fine-tuning input: ``cmlm_input_ids`` (target tokens masked by :func:`cmlm_mask`) and
    ``mlm_labels``. The masks are drawn from a generator seeded by the run's seed and the batch's example ids —
    new masks for every new batch, the same ones for a resumed run."""

    def __init__(self, tokenizer: Any, probability: float, seed: int) -> None:
        cls_id, _, pad_id = special_ids(tokenizer)
        if tokenizer.mask_token_id is None:
            raise ConfigError("C-MLM needs a tokenizer with a [MASK] token")
        self.pairs = ParallelCollator(pad_id, cls_id)
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.probability = probability
        self.seed = seed

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.pairs(items)
        if "teacher_inputs" in batch:
            t = batch["teacher_inputs"]
            key = np.asarray([self.seed, *(int(it["idx"]) for it in items)], dtype=np.int64)
            digest = hashlib.sha256(key.tobytes()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            ids, labels = cmlm_mask(
                t["input_ids"],
                t["attention_mask"],
                t["token_type_ids"],
                self.probability,
                self.mask_token_id,
                gen,
            )
            batch["cmlm_input_ids"], batch["mlm_labels"] = ids, labels
        return batch


# ----------------------------------------------------------------------------------------------- student


def student_config(tokenizer: Any, student: Any) -> M2M100Config:
    """The seq2seq student's config: :data:`STUDENT_DEFAULTS`, ``student.num_layers`` (encoder and decoder), then
    ``student.config_overrides``; the vocabulary and special ids are the tokenizer's (``[CLS]`` starts the
    decoder, ``[SEP]`` ends a sentence, ``[PAD]`` pads)."""
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    fields = dict(STUDENT_DEFAULTS)
    if student.num_layers:
        fields.update(encoder_layers=student.num_layers, decoder_layers=student.num_layers)
    fields.update(student.config_overrides or {})
    fields.update(
        vocab_size=len(tokenizer),
        pad_token_id=pad_id,
        bos_token_id=cls_id,
        eos_token_id=sep_id,
        decoder_start_token_id=cls_id,
        forced_eos_token_id=None,
        tie_word_embeddings=True,
    )
    try:
        return M2M100Config(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"student.config_overrides: not a valid M2M100Config: {e}") from e


def generation_config(
    model: nn.Module, beam: int, length_penalty: float, max_new_tokens: int
) -> GenerationConfig:
    cfg: Any = model.config
    return GenerationConfig(
        num_beams=beam,
        length_penalty=length_penalty,
        early_stopping=beam > 1,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        decoder_start_token_id=cfg.decoder_start_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    beam: int = 1,
    length_penalty: float = 1.0,
    max_new_tokens: int = 0,
) -> Tensor:
    """Decoded ids ``[B, GENERATION_CAP]`` (padded; the start token dropped): greedy (``beam`` 1) or beam search.
    ``max_new_tokens`` 0 = 1.5 × the longest source + 10, at most :data:`GENERATION_CAP`."""
    if beam < 1:
        raise ConfigError(f"--beam must be >= 1, got {beam}")
    src = inputs["input_ids"]
    n = max_new_tokens or int(1.5 * src.shape[1]) + 10
    n = min(n, GENERATION_CAP)
    gen = model.generate(  # type: ignore[operator]
        input_ids=src,
        attention_mask=inputs["attention_mask"],
        generation_config=generation_config(model, beam, length_penalty, n),
    )[:, 1:]
    pad: Any = model.config.pad_token_id  # type: ignore[union-attr]
    out = torch.full((src.shape[0], GENERATION_CAP), int(pad), dtype=torch.long, device=gen.device)
    out[:, : gen.shape[1]] = gen
    return out


class Seq2SeqEncoder(nn.Module):
    """The student's encoder: source ids and mask → its states (exported graph ``encoder``)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        encoder = self.model.get_encoder()
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # type: ignore[no-any-return]


class Seq2SeqDecoderStep(nn.Module):
    """One decoding step: the tokens so far, the encoder states and the source mask → the logits of the next
    token ``[B, V]`` (exported graph ``decoder``)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, decoder_input_ids: Tensor, encoder_hidden_states: Tensor, attention_mask: Tensor
    ) -> Tensor:
        out = self.model(
            encoder_outputs=(encoder_hidden_states,),
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        return out.logits[:, -1]  # type: ignore[no-any-return]


class CMLMBundle(nn.Module):
    """The trainable bundle: the seq2seq ``student`` and, when stage ``teacher`` runs, the C-MLM teacher being
    fine-tuned (``cmlm``). ``forward(part="cmlm", mlm_labels=…)`` gives the C-MLM logits of the masked positions
    only; ``part="student"`` the student's output."""

    def __init__(self, student: nn.Module, cmlm: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.cmlm = cmlm

    def forward(self, part: str = "student", mlm_labels: Tensor | None = None, **inputs: Any) -> Any:
        if part == "cmlm":
            if self.cmlm is None or mlm_labels is None:
                raise ConfigError(
                    "the bundle has no C-MLM teacher to train (stage teacher is not in this run)"
                )
            logits, labels = masked_token_logits(self.cmlm, inputs, mlm_labels)
            return MaskedTokenOutput(logits=logits, labels=labels)
        return self.student(**inputs)


# ----------------------------------------------------------------------------------------------- runners


class _ParallelRunner(Runner):
    """What both runners of parallel text share: the batches of :class:`ParallelCollator`; no class targets."""

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        cls_id, _, pad_id = special_ids(self.tokenizer)
        return ParallelCollator(pad_id, cls_id)

    def targets(self, batch: Batch) -> Tensor | None:
        return None


class CMLMTeacherRunner(_ParallelRunner):
    """A C-MLM teacher at evaluation: masked-token accuracy and loss over every target token, each masked once in
    the soft-label copies (what the soft labels' top-1 gets right)."""

    @classmethod
    def load(cls, path: Any, recipe: Mapping[str, Any], task: Any) -> Runner:
        p = str(path)
        mlm = load_masked_lm(p, trained_head=True)
        tok = from_pretrained(AutoTokenizer, p)
        copies = int((recipe.get("method") or {}).get("copies", 7))
        return cls(CMLMSoftLabeler(mlm, int(tok.mask_token_id), copies).eval(), tok, task, p, recipe)

    def main_metric(self) -> str:
        return "cmlm_accuracy"

    def onnx_graphs(self, batch: Batch, **options: Any) -> list[OnnxGraph]:
        raise ConfigError(
            f"{self.path}: a C-MLM teacher (scored by masked-token accuracy) is not exported to ONNX; export the "
            "seq2seq student (the run's output dir)"
        )

    def encode(self, examples: Examples, max_length: int) -> Dataset:
        return encode_pairs(examples, self.tokenizer, max_length)

    def is_pair(self) -> bool:
        return True

    def predict(self, batch: Batch, **options: Any) -> Prediction:
        t = teacher_inputs(batch)
        out = self.model(t["input_ids"], t["attention_mask"], t["token_type_ids"])
        per_token = torch.nn.functional.cross_entropy(out.logits.float(), out.labels, reduction="none")
        correct = (out.logits.argmax(-1) == out.labels).float()
        example = torch.repeat_interleave(
            torch.arange(len(out.row_counts), device=correct.device), out.row_counts
        )
        zeros = torch.zeros(len(out.row_counts), device=correct.device)
        return Prediction(
            None,
            {
                "correct": zeros.index_add(0, example, correct),
                "ce_sum": zeros.index_add(0, example, per_token),
                "tokens": out.row_counts.float(),
            },
        )

    def metrics(
        self, logits: Tensor | None, targets: Tensor | None, extras: Mapping[str, Tensor]
    ) -> dict[str, float]:
        n = extras["tokens"].sum().clamp_min(1.0)
        return {
            "cmlm_accuracy": float(extras["correct"].sum() / n),
            "cmlm_loss": float(extras["ce_sum"].sum() / n),
        }

    def describe(self) -> dict[str, Any]:
        cfg: Any = self.model.config
        return {
            "params": sum(p.numel() for p in self.model.parameters()),
            "layers": getattr(cfg, "num_hidden_layers", None),
            "hidden": getattr(cfg, "hidden_size", None),
        }


class Seq2SeqRunner(_ParallelRunner):
    """A seq2seq student at inference: translates (greedy or beam search) and is scored by BLEU / chrF of its
    detokenised output against the raw references (sacreBLEU; lowercased for an uncased vocabulary). A dir
    holding a C-MLM teacher (``stages/teacher``) loads as a :class:`CMLMTeacherRunner`."""

    options: ClassVar[tuple[InferenceOption, ...]] = (
        InferenceOption("beam", int, "beam size of the decoder (1 = greedy)", 1, (lambda v: v >= 1, ">= 1")),
        InferenceOption(
            "length_penalty",
            float,
            "beam search: score / length^penalty (HF)",
            1.0,
            (math.isfinite, "a finite number"),
        ),
        InferenceOption(
            "max_new_tokens",
            int,
            "tokens generated at most (0 = 1.5 × source + 10)",
            0,
            (lambda v: v >= 0, ">= 0"),
        ),
    )

    def __init__(self, *args: Any, references: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.references = list(references) if references is not None else None

    @classmethod
    def load(cls, path: Any, recipe: Mapping[str, Any], task: Any) -> Runner:
        p = str(path)
        config = from_pretrained(AutoConfig, p)
        if not getattr(config, "is_encoder_decoder", False):
            return CMLMTeacherRunner.load(p, recipe, task)
        model = from_pretrained(AutoModelForSeq2SeqLM, p).eval()
        return cls(model, from_pretrained(AutoTokenizer, p), task, p, recipe)

    def main_metric(self) -> str:
        return "bleu"

    def encode(self, examples: Examples, max_length: int) -> Dataset:
        data = encode_pairs(examples, self.tokenizer, max_length)
        if data.target_ids:
            self.references = data.references()
        return data

    def is_pair(self) -> bool:
        return False

    def predict(self, batch: Batch, **options: Any) -> Prediction:
        tokens = generate_ids(
            self.model,
            batch["inputs"],
            int(options.get("beam") or 1),
            float(options.get("length_penalty") or 1.0),
            int(options.get("max_new_tokens") or 0),
        )
        return Prediction(None, {"tokens": tokens, "idx": batch["idx"]})

    def onnx_graphs(self, batch: Batch, **options: Any) -> list[OnnxGraph]:
        """Two graphs: ``encoder`` (source → states) and ``decoder`` (one greedy step: the tokens so far and the
        source states → the next token's logits, no key/value cache: every step re-reads the prefix). The
        prefix traced and checked is the eager student's own greedy output on ``batch``."""
        self._greedy_only(options)
        src = {k: batch["inputs"][k] for k in ("input_ids", "attention_mask")}
        model: Any = self.model
        encoder = Seq2SeqEncoder(model)
        states = encoder(*src.values())
        start = torch.full((src["input_ids"].shape[0], 1), int(model.config.decoder_start_token_id))
        prefix = torch.cat([start, generate_ids(model, src, max_new_tokens=6)[:, :6]], dim=1)
        dec = {
            "decoder_input_ids": prefix,
            "encoder_hidden_states": states,
            "attention_mask": src["attention_mask"],
        }
        return [
            OnnxGraph("encoder", encoder, src, ("encoder_hidden_states",)),
            OnnxGraph("decoder", Seq2SeqDecoderStep(model), dec, ("logits",)),
        ]

    def onnx_predict(self, run: OnnxRun, batch: Batch, **options: Any) -> Prediction:
        """Greedy decoding with the exported graphs, as :func:`generate_ids` with ``beam`` 1 decodes: finished
        rows are padded, and decoding stops when every row has ended or after the same token budget."""
        self._greedy_only(options)
        cfg: Any = self.model.config
        src = batch["inputs"]
        states = run("encoder", src)[0]
        n_rows = src["input_ids"].shape[0]
        budget = int(options.get("max_new_tokens") or 0) or int(1.5 * src["input_ids"].shape[1]) + 10
        budget = min(budget, GENERATION_CAP)
        pad, eos = int(cfg.pad_token_id), int(cfg.eos_token_id)
        tokens = torch.full((n_rows, 1), int(cfg.decoder_start_token_id), dtype=torch.long)
        done = torch.zeros(n_rows, dtype=torch.bool)
        mask = src["attention_mask"].cpu()
        for _ in range(budget):
            logits = run(
                "decoder",
                {"decoder_input_ids": tokens, "encoder_hidden_states": states, "attention_mask": mask},
            )
            nxt = logits[0].argmax(-1).masked_fill(done, pad)
            tokens = torch.cat([tokens, nxt.unsqueeze(1)], dim=1)
            done |= nxt == eos
            if bool(done.all()):
                break
        out = torch.full((n_rows, GENERATION_CAP), pad, dtype=torch.long)
        out[:, : tokens.shape[1] - 1] = tokens[:, 1:]
        return Prediction(None, {"tokens": out, "idx": batch["idx"]})

    def _greedy_only(self, options: Mapping[str, Any]) -> None:
        if int(options.get("beam") or 1) != 1:
            raise ConfigError(
                "the ONNX export of a seq2seq student decodes greedily; beam search (--beam > 1) runs eagerly "
                "(evaluate the student dir, not the export)"
            )

    def decode(self, tokens: Tensor) -> list[str]:
        return [decode_ids(self.tokenizer, row) for row in tokens.tolist()]

    def metrics(
        self, logits: Tensor | None, targets: Tensor | None, extras: Mapping[str, Tensor]
    ) -> dict[str, float]:
        if self.references is None:
            raise ConfigError("BLEU needs the references: encode the evaluation pairs with this runner first")
        refs = [self.references[i] for i in extras["idx"].tolist()]
        lowercase = bool(getattr(self.tokenizer, "do_lower_case", False))
        return translation_metrics(self.decode(extras["tokens"]), refs, lowercase)

    def rows(self, pred: Prediction) -> list[dict[str, Any]]:
        return [{"translation": t} for t in self.decode(pred.extras["tokens"])]

    def generate(
        self, texts: Sequence[str], batch_size: int = 32, max_length: int = 128, **options: Any
    ) -> list[str]:
        """One translation per input line (an empty line gives an empty line), in input order."""
        keep = [i for i, t in enumerate(texts) if t.strip()]
        data = encode_pairs(Examples([(texts[i].strip(),) for i in keep], None), self.tokenizer, max_length)
        collate, device = self.collator(), self.device()
        out = [""] * len(texts)
        for s in range(0, len(keep), batch_size):
            batch = collate([data[i] for i in range(s, min(s + batch_size, len(keep)))])
            inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
            pred = self.predict({**batch, "inputs": inputs}, **options)
            for j, text in zip(
                range(s, s + len(batch["idx"])), self.decode(pred.extras["tokens"]), strict=True
            ):
                out[keep[j]] = text
        return out

    def describe(self) -> dict[str, Any]:
        cfg: Any = self.model.config
        return {
            "params": sum(p.numel() for p in self.model.parameters()),
            "layers": f"{cfg.encoder_layers}+{cfg.decoder_layers}",
            "hidden": cfg.d_model,
        }


# ----------------------------------------------------------------------------------------------- method


@register("cmlm")
class CMLM(Method):
    """C-MLM (Chen et al. 2020): a conditional-MLM BERT teacher's per-token soft labels teach a seq2seq student."""

    config_cls = CMLMConfig
    runner_cls = Seq2SeqRunner
    cfg: CMLMConfig

    @classmethod
    def control_recipe(cls, recipe: dict[str, Any], steps: int) -> dict[str, Any] | None:
        # the same seq2seq student, data, seed and student-stage schedule on the references alone (alpha 0: the
        # stage student without the KD term; no teacher stage, no soft labels). Its steps are the student
        # stage's, not the distilled run's total (which counts the teacher's fine-tuning too)
        m = recipe["method"]
        if "student" not in (m.get("stages") or ["student"]):
            return None
        m.update(alpha=0.0, stages=["student"])
        return recipe

    @classmethod
    def control_unavailable(cls) -> str:
        return (
            "cmlm: this run has no stage student (it trains only the teacher): there is no student to compare"
        )

    test_config = MethodTestConfig(
        sections={
            "teacher": {"path": "{mlm_teacher}"},
            "student": {
                "init": "random",
                "num_layers": 1,
                "config_overrides": {
                    "d_model": 32,
                    "encoder_ffn_dim": 64,
                    "decoder_ffn_dim": 64,
                    "encoder_attention_heads": 2,
                    "decoder_attention_heads": 2,
                    "dropout": 0.0,
                    "attention_dropout": 0.0,
                },
            },
            "data": {"task": "translation", "path": "{parallel}", "max_length": 16, "max_eval_examples": 8},
        },
        # the KD term is bounded below by the entropy of the soft labels — of a teacher itself trained for the
        # test's 40 steps, and at t = 10 nearly uniform over the top 8 (≈ ln 8): a sharper t = 1 and a faster
        # student, and a fall of 25 % from the teacher stage's first losses to the student stage's last; one
        # evaluation per stage (a one-batch epoch would decode the dev set after every step)
        overfit={"method": {"temperature": 1.0, "student_lr": 1e-2}, "train": {"eval_every": 1000}},
        overfit_ratio=0.75,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.task.name != "translation":
            raise ConfigError("cmlm distils a translation model: set data.task: translation (and data.path)")
        names = self.cfg.stage_names()
        if not {"teacher", "student"} & set(names):
            raise ConfigError(f"method.stages {names}: a run trains the teacher, the student, or both")
        reads_teacher = "soft_labels" in names or ("student" in names and self.cfg.alpha > 0)
        if reads_teacher and "teacher" not in names and not self.cfg.teacher_path:
            raise ConfigError(
                "soft labels need a C-MLM teacher: run stage teacher (add it to method.stages) or set "
                "method.teacher_path to a fine-tuned one (the stages/teacher dir of an earlier cmlm run)"
            )
        if "teacher" in names and not self.run.teacher.path:
            raise ConfigError(
                "stage teacher fine-tunes teacher.path as a conditional MLM: set it to a BERT masked LM or encoder "
                "(e.g. minilm-l6)"
            )
        st = self.run.student
        if st.init == "teacher" or st.layers or st.preset:
            raise ConfigError(
                "cmlm's student is an encoder-decoder built from student.config_overrides (student.init: random) "
                "or loaded from student.path (init: pretrained); it copies no teacher layers (no student.layers, "
                "preset)"
            )

    # ------------------------------------------------------------------ teacher and student
    @cached_property
    def tokenizer(self) -> Any:
        """The run's tokenizer (the trainer's: ``teacher.path``'s, else ``student.path``'s)."""
        src = self.run.teacher.path or self.run.student.path
        if not src:
            raise ConfigError("set teacher.path: its tokenizer is the vocabulary of teacher and student")
        return from_pretrained(AutoTokenizer, src, trust_remote_code=self.run.teacher.trust_remote_code)

    def teacher_dir(self) -> str:
        return self.cfg.teacher_path or str(self.run.resolved_output_dir() / "stages" / "teacher")

    def load_teacher_model(self, path: str, stage: Stage | None = None) -> nn.Module:
        """At start-up (``stage`` None): ``teacher.path`` as the base of stage ``teacher`` (frozen here; the bundle
        trains a copy). For the stages that read soft labels: the fine-tuned C-MLM teacher as a
        :class:`CMLMSoftLabeler`, after checking that its vocabulary is the run's."""
        trust = self.run.teacher.trust_remote_code
        if stage is None:
            model = load_masked_lm(path, trained_head=False, trust_remote_code=trust)
            return model.eval().requires_grad_(False)
        mlm = load_masked_lm(path, trained_head=True, trust_remote_code=trust)
        theirs = from_pretrained(AutoTokenizer, path, trust_remote_code=trust)
        check_vocab_alignment(
            self.tokenizer, theirs, other_size=output_vocab_size(mlm), what=f"the teacher {path!r}"
        )
        return CMLMSoftLabeler(mlm, int(self.tokenizer.mask_token_id), self.cfg.copies)

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Dataset]) -> BuiltStudent:
        student, info = self._seq2seq_student()
        cmlm = None
        if "teacher" in self.cfg.stage_names():
            if teacher is None:
                raise ConfigError("stage teacher needs teacher.path (the masked LM to fine-tune)")
            check_vocab_alignment(self.tokenizer, other_size=output_vocab_size(teacher), what="teacher.path")
            cmlm = copy.deepcopy(teacher).train().requires_grad_(True)
            cmlm.tie_weights()  # type: ignore[operator]
            info["teacher_new_head"] = list(getattr(teacher, "bertdistill_new_head", []))
        info["stages"] = self.cfg.stage_names()
        return BuiltStudent(CMLMBundle(student, cmlm), info)

    def _seq2seq_student(self) -> tuple[nn.Module, dict[str, Any]]:
        st = self.run.student
        if st.init == "pretrained":
            if not st.path:
                raise ConfigError("student.init: pretrained needs student.path (a seq2seq model dir)")
            model = from_pretrained(AutoModelForSeq2SeqLM, st.path)
            try:
                theirs = from_pretrained(AutoTokenizer, st.path)
            except ConfigError:
                theirs = None
            check_vocab_alignment(
                self.tokenizer, theirs, other_size=output_vocab_size(model), what=f"student {st.path!r}"
            )
            return model, {"init": "pretrained", "path": st.path}
        config = student_config(self.tokenizer, st)
        model = M2M100ForConditionalGeneration(config)
        params = sum(p.numel() for p in model.parameters())
        shape = f"{config.encoder_layers}+{config.decoder_layers} layers × {config.d_model}"
        return model, {"init": "random", "student": shape, "params": params}

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
        """The C-MLM teacher after stage ``teacher`` (and at the end of a run that trains only it), else the
        student."""
        b: Any = bundle
        return b.cmlm if self._part(stage) == "teacher" else b.student

    def _part(self, stage: Stage | None) -> str:
        """Which model the run has been training at ``stage``: the last training stage up to it."""
        names = self.cfg.stage_names()
        upto = names if stage is None else names[: names.index(stage.name) + 1]
        trained = [n for n in upto if n != "soft_labels"]
        return trained[-1] if trained else "student"

    # ------------------------------------------------------------------ stages
    def teacher_length(self, max_length: int) -> tuple[int, str]:
        # [CLS] source [SEP] (at most max_length) then target [SEP] (at most max_length): encode_pairs
        return 2 * max_length, "[CLS] source [SEP] target [SEP], each side up to data.max_length"

    def stages(self) -> list[Stage]:
        c, out = self.cfg, []
        for name in c.stage_names():
            if name == "teacher":
                out.append(
                    Stage(
                        "teacher",
                        max_steps=c.teacher_steps,
                        epochs=c.teacher_epochs,
                        lr=c.teacher_lr,
                        batch_size=c.teacher_batch_size,
                        param_groups=self._teacher_params,
                        uses_teacher=False,
                        cacheable=False,
                    )
                )
            elif name == "soft_labels":
                out.append(Stage("soft_labels", trains=False, teacher=self.teacher_dir(), evaluate=False))
            else:
                kd = c.alpha > 0
                out.append(
                    Stage(
                        "student",
                        max_steps=c.student_steps,
                        epochs=c.student_epochs,
                        lr=c.student_lr,
                        batch_size=c.student_batch_size,
                        param_groups=self._student_params,
                        uses_teacher=kd,
                        teacher=self.teacher_dir() if kd else None,
                    )
                )
        return out

    def _teacher_params(self, bundle: nn.Module) -> ParamGroups:
        b: Any = bundle
        body = "cmlm." + b.cmlm.base_model_prefix + "."
        named = [(n, p) for n, p in bundle.named_parameters() if n.startswith("cmlm.")]
        head = [(n, p) for n, p in named if not n.startswith(body)]
        if not self.cfg.train_teacher_body:
            # the output layer is tied to the word embeddings, which named_parameters lists under the body
            return [{"params": head}]
        rest = [(n, p) for n, p in named if n.startswith(body)]
        return [{"params": head}, {"params": rest, "lr_scale": self.cfg.body_lr_scale}]

    @staticmethod
    def _student_params(bundle: nn.Module) -> ParamGroups:
        return [{"params": [(n, p) for n, p in bundle.named_parameters() if n.startswith("student.")]}]

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        return Needs(logits=False, token_topk=self.cfg.topk)

    def prepared(self, stage: Stage, outputs: Mapping[str, Tensor]) -> dict[str, Any]:
        """The soft labels' sharpness at the run's temperature (logged with stage ``soft_labels``), and a warning
        when they are nearly uniform over the top k."""
        values = outputs.get("topk.values")
        if values is None:
            return {}
        c = self.cfg
        stats = topk_sharpness(values[:, : c.topk], c.temperature)
        out: dict[str, Any] = {"soft_labels": stats}
        warning = soft_label_warning(stats, c.topk, c.temperature, c.alpha)
        if warning:
            out["warning"] = warning
        return out

    # ------------------------------------------------------------------ data
    @cached_property
    def eval_examples(self) -> Examples | None:
        d = self.run.data
        ev = run_eval_examples(d, self.task)
        return subsample(ev, d.max_eval_examples, self.run.train.seed) if ev is not None else None

    def datasets(self, tokenizer: Any) -> dict[str, Dataset]:
        d = self.run.data
        train = subsample(run_train_examples(d, self.task), d.max_train_examples, self.run.train.seed)
        out: dict[str, Dataset] = {"train": encode_pairs(train, tokenizer, d.max_length)}
        if self.eval_examples is not None:
            out["eval"] = encode_pairs(self.eval_examples, tokenizer, d.max_length)
        return out

    def collator(self, tokenizer: Any, datasets: Mapping[str, Dataset]) -> Any:
        return CMLMCollator(tokenizer, self.cfg.mask_probability, self.run.train.seed)

    # ------------------------------------------------------------------ step
    def student_inputs(self, batch: Batch, stage: Stage) -> dict[str, Any]:
        if stage.name == "teacher":
            t = batch["teacher_inputs"]
            return {
                "part": "cmlm",
                "input_ids": batch["cmlm_input_ids"],
                "attention_mask": t["attention_mask"],
                "token_type_ids": t["token_type_ids"],
                "mlm_labels": batch["mlm_labels"],
            }
        return {
            "part": "student",
            **batch["inputs"],
            "decoder_input_ids": batch["decoder_input_ids"],
            "decoder_attention_mask": batch["decoder_attention_mask"],
        }

    def loss(
        self, stage: Stage, batch: Batch, student_out: Any, teacher_out: Features | None, bundle: nn.Module
    ) -> dict[str, Tensor]:
        if stage.name == "teacher":
            return {"mlm": mlm_ce(student_out.logits, student_out.labels)}
        c = self.cfg
        labels = batch["labels"]
        real = labels != -100
        logits = student_out.logits[real]  # [N, V]: the real target tokens, example by example
        terms: dict[str, Tensor] = {}
        if c.alpha < 1.0:
            terms["mle"] = (1.0 - c.alpha) * label_smoothed_ce(logits, labels[real], c.label_smoothing)
        if c.alpha > 0.0:
            if teacher_out is None or teacher_out.topk is None:
                raise ConfigError("stage student with alpha > 0 needs the teacher's soft labels")
            topk = teacher_out.topk
            expected = real.sum(1)
            if not torch.equal(topk.counts.to(expected.device), expected):
                raise ConfigError(
                    f"soft labels do not fit the targets: {topk.counts.tolist()} teacher rows for "
                    f"{expected.tolist()} target tokens (a cache built with other data or max_length?)"
                )
            k = c.topk
            terms["kd"] = c.alpha * topk_soft_ce(
                logits, topk.values[:, :k], topk.indices[:, :k], c.temperature
            )
        return terms

    # ------------------------------------------------------------------ evaluation
    def runner(self, bundle: nn.Module, tokenizer: Any, stage: Stage | None) -> Runner:
        b: Any = bundle
        if self._part(stage) == "teacher":
            labeler = CMLMSoftLabeler(b.cmlm, int(tokenizer.mask_token_id), self.cfg.copies)
            return CMLMTeacherRunner(labeler, tokenizer, self.task, None, self.run.to_dict())
        refs = self.eval_examples.texts if self.eval_examples is not None else []
        return Seq2SeqRunner(
            b.student, tokenizer, self.task, None, self.run.to_dict(), references=[t[1] for t in refs]
        )


__all__ = [
    "CMLM",
    "CMLMBundle",
    "CMLMCollator",
    "CMLMConfig",
    "CMLMSoftLabeler",
    "CMLMTeacherRunner",
    "Seq2SeqRunner",
    "check_vocab_alignment",
    "cmlm_mask",
    "generate_ids",
    "masked_copies",
    "student_config",
]
