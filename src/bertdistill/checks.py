"""Checks the engine runs before training, so that a run that cannot work stops with one clear line instead of
a traceback mid-step or, worse, a run that trains on garbage.

Each check is method-agnostic: it reads what every method exposes through the protocol (the tokenizer the
student is saved with, the bundle, the teacher's needs). Checks that depend on one method's losses (TinyBERT's
head counts, kd's hidden MSE widths, DistilBERT's pre-trained student) live in that method's file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .config import ConfigError, RunConfig
from .hub import TOKENIZER_FILES, UNTRAINED_ATTR, from_pretrained, has_weights, resolve_model_path
from .protocol import Needs


def max_positions(model: nn.Module) -> int | None:
    """How many token positions ``model`` can embed: its first learned ``position_embeddings`` table, less the
    offset of models that number positions after the padding id (RoBERTa); ``None`` when it has no such table
    (sinusoidal positions, a BiLSTM)."""
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] == "position_embeddings" and isinstance(mod, nn.Embedding):
            return int(mod.num_embeddings) - position_offset(mod)
    return None


def position_offset(table: nn.Embedding) -> int:
    """The row of position 0 in a learned position table: 0 (BERT), or the padding id + 1 for models that
    number positions after it (RoBERTa: ``padding_idx`` set)."""
    return table.padding_idx + 1 if table.padding_idx is not None else 0


def check_positions(
    max_length: int, models: dict[str, nn.Module | None], reads: tuple[int, str] | None = None
) -> None:
    """``data.max_length`` must fit every model's position table: a longer example would index past it (an
    ``IndexError`` at the first long batch, possibly hours into a run). ``reads``: the most tokens the models read
    at that ``max_length`` and why, when it is not ``max_length`` itself (C-MLM's teacher reads source and target)."""
    length, why = reads or (max_length, "")
    for who, model in models.items():
        limit = None if model is None else max_positions(model)
        if limit is not None and length > limit:
            where = getattr(model, "name_or_path", "") or ""
            at_most = limit if length == max_length else max_length * limit // length
            raise ConfigError(
                (
                    f"data.max_length {max_length} is longer than the {who}'s {limit} positions"
                    if length == max_length
                    else f"data.max_length {max_length} makes the {who} read up to {length} tokens ({why}), more "
                    f"than its {limit} positions"
                )
                + (f" ({where})" if where else "")
                + f"; set data.max_length to at most {at_most}"
            )


def check_shared_vocab(run: RunConfig, tokenizer: Any, student_tokenizer: Any, student: nn.Module) -> None:
    """A student that reads the teacher's token ids (every method whose student keeps the run's tokenizer:
    all but a student with its own vocabulary, such as the BiLSTM's words) must embed every one of them, and a
    pre-trained student must have been trained on the same vocabulary, or its embeddings mean other tokens."""
    if student_tokenizer is not tokenizer:
        return  # the student tokenises the text itself
    method = run.method.name
    get_emb = getattr(student, "get_input_embeddings", None)
    try:
        emb = get_emb() if callable(get_emb) else None
    except NotImplementedError:
        emb = None
    if isinstance(emb, nn.Embedding) and emb.num_embeddings < len(tokenizer):
        raise ConfigError(
            f"the student embeds {emb.num_embeddings} token ids, the teacher's tokenizer has {len(tokenizer)}: "
            f"{method} feeds the student the teacher's token ids, so both must share one vocabulary; build the "
            "student from the teacher (student.init: teacher or random)"
        )
    st = run.student
    if st.init != "pretrained" or not st.path or st.path in (run.teacher.path, None):
        return
    try:
        theirs = from_pretrained(_auto_tokenizer(), st.path)
    except ConfigError:
        return  # a model dir without a tokenizer: the embedding size above is all there is to compare
    ours = tokenizer.get_vocab()
    if theirs.get_vocab() != ours:
        diff = differing_pairs(ours, theirs.get_vocab())
        raise ConfigError(
            f"student.path {st.path!r} has its own vocabulary ({len(theirs)} tokens, the teacher's tokenizer "
            f"{len(tokenizer)}; e.g. differing (token, id) pairs {diff}): {method} feeds the student the teacher's "
            "token ids, so both must share one vocabulary; use a student pre-trained with the teacher's "
            "tokenizer, or student.init: teacher / random"
        )


def _auto_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer


def differing_pairs(a: Mapping[str, int], b: Mapping[str, int], n: int = 3) -> list[tuple[str, int]]:
    """The first ``n`` (token, id) pairs that one vocabulary has and the other has not, by id."""
    return sorted(set(a.items()) ^ set(b.items()), key=lambda kv: (kv[1], kv[0]))[:n]


def vocab_difference(a: Any, b: Any) -> str | None:
    """How two tokenizers' vocabularies differ (sizes and a few differing (token, id) pairs), ``None`` when they
    are the same or either has no ``get_vocab`` (then the sizes are compared)."""
    va = a.get_vocab() if callable(getattr(a, "get_vocab", None)) else None
    vb = b.get_vocab() if callable(getattr(b, "get_vocab", None)) else None
    if va is None or vb is None:
        sa, sb = len(a), len(b)
        return None if sa == sb else f"{sa} against {sb} tokens"
    if va == vb:
        return None
    return f"{len(va)} against {len(vb)} tokens; e.g. differing (token, id) pairs {differing_pairs(va, vb)}"


def check_teacher_vocab(path: str, tokenizer: Any, what: str) -> None:
    """A teacher loaded from its own dir (a stage's or a task's teacher) reads the run's token ids: its tokenizer,
    where the dir has one, must have the run's vocabulary, or it reads other tokens — silently, when the sizes
    agree."""
    local = Path(resolve_model_path(path))
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        return  # a model dir without a tokenizer (transformers would make an empty one): nothing to compare
    try:
        theirs = from_pretrained(_auto_tokenizer(), path)
    except (ConfigError, OSError, ValueError):
        return  # no tokenizer to be had: its embeddings are checked against the ids when they run
    diff = vocab_difference(theirs, tokenizer)
    if diff is not None:
        raise ConfigError(
            f"{what} {path!r} has another vocabulary than the run's tokenizer ({diff}): it would read the run's token "
            "ids as other tokens; every teacher of a run must share one tokenizer"
        )


def check_teacher_labels(
    teacher: Any,
    task: Any,
    role: str = "teacher",
    fix: str = "set teacher.path to a model fine-tuned on this task (`bertdistill finetune --task TASK ...`)",
) -> None:
    """A sequence-classification teacher must have one output per label of ``task`` (one for regression): a
    model fine-tuned on another task would otherwise fail mid-step on a shape error, or — where the student
    copies its head — train a student that predicts classes the task does not have. Tasks without labels
    (raw text, translation) and teachers that are not sequence classifiers are not checked."""
    n = getattr(task, "num_labels", 0)
    if not n:
        return
    for member in getattr(teacher, "members", None) or [teacher]:
        model = getattr(member, "model", member)
        if not type(model).__name__.endswith("ForSequenceClassification"):
            continue
        have = model.config.num_labels
        path = getattr(model, "name_or_path", "") or "teacher.path"
        if have != n:
            wants = "1 (a regression score)" if task.regression else f"{n} ({list(task.labels)})"
            raise ConfigError(
                f"{role} {path!r} has {have} output(s) but task {task.name!r} needs {wants}; {fix}"
            )
        theirs = teacher_label_names(model.config)
        ours = list(task.labels)
        if (
            theirs
            and theirs != [x.lower() for x in ours]
            and sorted(theirs) == sorted(x.lower() for x in ours)
        ):
            raise ConfigError(
                f"{role} {path!r} orders its labels {theirs}, task {task.name!r} {ours}: its logits would be read "
                f"against the wrong classes (e.g. roberta-large-mnli against GLUE MNLI). For your own data set "
                f"data.labels in the teacher's order; else use a teacher fine-tuned with the task's order "
                "(`bertdistill finetune`)"
            )


def teacher_label_names(config: Any) -> list[str]:
    """The teacher's class names in output order, lowercased; empty when it has only HF's placeholders
    (``LABEL_0`` …), which say nothing about the order."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))).lower() for i in range(len(id2label))]
    if not names or all(re.fullmatch(r"label_\d+", x) for x in names):
        return []
    return names


def _untrained_heads(owner: Any, unnamed: str) -> list[tuple[str, list[str]]]:
    """(path, weights its checkpoint lacked) of each model of ``owner`` — a model, a teacher or runner (its
    ``model``), or an ensemble (its ``members``) — that ``from_pretrained`` had to draw at random (``UNTRAINED_ATTR``)."""
    out = []
    for member in getattr(owner, "members", None) or [owner]:
        model = getattr(member, "model", member)
        missing = getattr(model, UNTRAINED_ATTR, None)
        if missing:
            out.append((getattr(model, "name_or_path", "") or unnamed, list(missing)))
    return out


def check_teacher_outputs(teacher: Any, needs: Needs, task: Any) -> None:
    """Refuse to read logits from a teacher whose head ``from_pretrained`` initialised at random (a bare
    encoder or a masked LM given where a fine-tuned classifier is needed): its soft targets would be noise;
    or from a classifier with another number of outputs than ``task`` has labels (:func:`check_teacher_labels`)."""
    if not needs.logits:
        return
    check_teacher_labels(teacher, task)
    for path, missing in _untrained_heads(teacher, "teacher.path"):
        raise ConfigError(
            f"teacher {path!r} has no trained head for the logits this method reads (the checkpoint lacks "
            f"{missing[:3]}{' …' if len(missing) > 3 else ''}, so they would be random); fine-tune it on the "
            f"task first (`bertdistill finetune --model {path} --task TASK -o DIR`) and set teacher.path to DIR"
        )


def check_trained_head(runner: Any) -> None:
    """A model scored by ``evaluate`` / ``compare`` whose checkpoint lacked weights (a bare encoder or a masked LM
    loaded as a classifier: ``from_pretrained`` drew its head at random) would be scored on noise; refuse it."""
    for path, missing in _untrained_heads(runner, "the model"):
        raise ConfigError(
            f"model {path!r} lacks trained weights for this task's outputs ({missing[:3]}"
            f"{' …' if len(missing) > 3 else ''} are not in its checkpoint, so they would be random); fine-tune "
            f"it first (`bertdistill finetune --model {path} --task TASK -o DIR`)"
        )


def check_resume(out: Path, run: RunConfig, config_file: str) -> None:
    """``--resume`` into an output dir made by a run of another method or task would load a checkpoint of
    another model; name the difference instead (other settings may change on purpose: more epochs, ...)."""
    prev_path = out / config_file
    if not prev_path.is_file():
        return
    try:
        prev = yaml.safe_load(prev_path.read_text()) or {}
    except yaml.YAMLError:
        return  # a hand-edited file: the checkpoint itself is compared when it is loaded
    for section, key, now in (("method", "name", run.method.name), ("data", "task", run.data.task)):
        was = (prev.get(section) or {}).get(key) if isinstance(prev, dict) else None
        if was is not None and was != now:
            raise ConfigError(
                f"--resume: {out} holds a run with {section}.{key} {was!r}, this recipe has {now!r}; resume with "
                f"the recipe that made it ({prev_path}) or write this run to another --output"
            )


def refuse_occupied_output(
    out: Path, what: str, how: str, ours: Callable[[Path], bool] | None = None
) -> None:
    """``what`` would write into ``out``: refuse when it already holds a run or a saved model (weights, scores,
    checkpoints) that is not an earlier output of the same command (``ours``), so that nothing finished is written over by
    mistake; ``how`` says what to do instead."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a dir")
    if not out.is_dir():
        return
    # what would be lost: saved weights (any name, sharded too), a finished run's scores, its checkpoints; a run that
    # stopped on a configuration error before its first checkpoint leaves only its bertdistill.yaml
    ckpts = out / "checkpoints"
    held = [
        name
        for name, present in (
            ("model weights", has_weights(out)),
            ("metrics.json", (out / "metrics.json").is_file()),
            ("checkpoints", ckpts.is_dir() and any(ckpts.iterdir())),
        )
        if present
    ]
    if held and not (ours is not None and ours(out)):
        raise ConfigError(
            f"--output {out} already holds a run or a model ({', '.join(held)}); {what} would write over it: {how}"
        )
