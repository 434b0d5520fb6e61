"""Shared fixtures: a tiny random BERT teacher (built once per session), a tiny tokenizer, tiny GLUE data.

No network, no downloads. Learnable toy data: sentences made of "good" or "bad" words plus filler.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    PreTrainedModel,
)


def _shared_data() -> Path:
    """``$BERTDISTILL_SHARED_DATA``, else ``shared/data`` beside the checkout (or beside its parent, for a
    worktree one level deeper)."""
    env = os.environ.get("BERTDISTILL_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parents[1]
    candidates = [here.parent / "shared" / "data", here.parents[1] / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED_DATA = _shared_data()

POS = ["good", "great", "fine", "nice", "superb", "lovely"]
NEG = ["bad", "awful", "poor", "dull", "boring", "ugly"]
FILL = ["the", "movie", "film", "a", "is", "was", "plot", "acting", "very", "quite", "and", "story"]
WORDS = POS + NEG + FILL
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True)
def _persistent_embedding_grad_on_tiny_vocabularies(monkeypatch):
    """The tiny test vocabularies are far below ``embedding_grad.MIN_ROWS``: lower it so that every in-process
    training in the suite runs the persistent embedding gradient, as a real WordPiece vocabulary would
    (``tests/test_embedding_grad.py`` checks the threshold itself)."""
    from bertdistill.training import embedding_grad

    monkeypatch.setattr(embedding_grad, "MIN_ROWS", 1)


def tiny_bert_config(**kw) -> BertConfig:
    base = dict(
        vocab_size=len(SPECIAL) + len(WORDS) + 20,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        attn_implementation="eager",
    )
    base.update(kw)
    return BertConfig(**base)


def make_sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(2, 8))]
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
    return " ".join(words)


def write_sst2(root: Path, n_train: int = 96, n_dev: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            y = i % 2
            lines.append(f"{make_sentence(rng, y)} \t{y}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (root / "test.tsv").write_text(
        "index\tsentence\n" + "\n".join(f"{i}\t{make_sentence(rng, i % 2)}" for i in range(8)) + "\n"
    )
    return root


def write_stsb(root: Path, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        for i in range(n):
            a, b = make_sentence(rng, i % 2), make_sentence(rng, (i // 2) % 2)
            lines.append(f"{i}\tg\tf\t2012\t{i}\ts\ts\t{a}\t{b}\t{rng.uniform(0, 5):.3f}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_jsonl_task(
    root: Path, labels: list[str], n_train: int = 48, n_dev: int = 12, seed: int = 0
) -> Path:
    """``train.jsonl`` / ``dev.jsonl`` of a single-sentence custom task: ``{"text": ..., "label": ...}`` rows, the
    labels in turn (row i has ``labels[i % len(labels)]``)."""
    import json

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [{"text": make_sentence(rng, i % 2), "label": labels[i % len(labels)]} for i in range(n)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


_BERT_SHAPE = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64}
OTHER_ENCODERS: dict[str, tuple[str, str, dict]] = {
    "roberta": ("RobertaConfig", "Roberta", _BERT_SHAPE),
    "distilbert": (
        "DistilBertConfig",
        "DistilBert",
        {"dim": 32, "n_layers": 4, "n_heads": 4, "hidden_dim": 64},
    ),
    "electra": ("ElectraConfig", "Electra", {**_BERT_SHAPE, "embedding_size": 16}),  # projected to the width
    "deberta-v2": (  # DeBERTa-v3's layout: relative attention over position buckets, a convolution after layer 1
        "DebertaV2Config",
        "DebertaV2",
        {
            **_BERT_SHAPE,
            "relative_attention": True,
            "position_buckets": 8,
            "max_relative_positions": -1,
            "pos_att_type": ["p2c", "c2p"],
            "norm_rel_ebd": "layer_norm",
            "position_biased_input": False,
            "conv_kernel_size": 3,
        },
    ),
    "albert": (
        "AlbertConfig",
        "Albert",
        {**_BERT_SHAPE, "embedding_size": 16},
    ),  # one layer shared by 4 depths
}
"""Encoder families besides BERT: transformers' config class, model-class prefix, and the tiny shape (width 32,
4 layers, 4 heads) in the family's own field names."""


def other_encoder(arch: str, head: str = "ForSequenceClassification", **config) -> PreTrainedModel:
    """A tiny random model of another encoder family (``OTHER_ENCODERS``) on the tiny vocabulary (pad id 0):
    ``head`` picks the class (``ForSequenceClassification``, ``ForMaskedLM``); ``config`` overrides fields."""
    import transformers

    config_cls, prefix, shape = OTHER_ENCODERS[arch]
    fields = {"vocab_size": tiny_bert_config().vocab_size, "max_position_embeddings": 72, "pad_token_id": 0}
    return getattr(transformers, prefix + head)(
        getattr(transformers, config_cls)(**{**fields, **shape, **config})
    )


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    vocab = SPECIAL + WORDS + [f"w{i}" for i in range(20)]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(d)
    return d


DROPOUT = 0.3
"""Hidden and attention dropout of the ``dropout_*`` teachers: left in train mode, they answer differently on
every forward pass."""


def save_teacher(model: PreTrainedModel, d: Path, tokenizer_dir: Path) -> Path:
    """``model`` and the tiny tokenizer saved as a HF dir ``d``."""
    model.save_pretrained(d)
    BertTokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(d)
    return d


def classifier_teacher(**config) -> BertForSequenceClassification:
    """A tiny random 4-layer BERT classifier with confident, varied predictions, like a trained teacher's."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(**config))
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    return model


@pytest.fixture(scope="session")
def _teacher_session(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny random 4-layer teacher saved as a HF dir with its tokenizer (built once)."""
    return save_teacher(classifier_teacher(), tmp_path_factory.mktemp("teacher"), tiny_tokenizer_dir)


@pytest.fixture
def teacher_dir(_teacher_session) -> Path:
    return _teacher_session


@pytest.fixture(scope="session")
def _tiny_model_session() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def tiny_model(_tiny_model_session) -> BertForSequenceClassification:
    return copy.deepcopy(_tiny_model_session)


@pytest.fixture(scope="session")
def sst2_dir(tmp_path_factory) -> Path:
    return write_sst2(tmp_path_factory.mktemp("sst2"))


@pytest.fixture(scope="session")
def stsb_dir(tmp_path_factory) -> Path:
    return write_stsb(tmp_path_factory.mktemp("stsb"))


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(make_sentence(rng, i % 2) for i in range(160)) + "\n\n")
    return path


def toy_translation(words: list[str]) -> list[str]:
    """A fixed word-for-word "translation" of toy sentences: each vocabulary word maps to another one."""
    table = dict(zip(WORDS, reversed(WORDS), strict=True))
    return [table.get(w, w) for w in words]


def write_parallel(root: Path, n_train: int = 64, n_dev: int = 16, n_test: int = 8, seed: int = 0) -> Path:
    """``train.tsv`` / ``dev.tsv`` / ``test.tsv``: ``source<TAB>target`` toy pairs (learnable: a word map)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        lines = []
        for i in range(n):
            src = make_sentence(rng, i % 2).split()
            lines.append(f"{' '.join(src)}\t{' '.join(toy_translation(src))}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def parallel_dir(tmp_path_factory) -> Path:
    return write_parallel(tmp_path_factory.mktemp("parallel"))


@pytest.fixture(scope="session")
def mlm_teacher_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny random 4-layer BERT masked LM (stands in for a teacher with a trained MLM head)."""
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    return save_teacher(model, tmp_path_factory.mktemp("mlm_teacher"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def dropout_teacher_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """``teacher_dir`` with hidden and attention dropout ``DROPOUT``: a teacher run in train mode is visible."""
    model = classifier_teacher(hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT)
    return save_teacher(model, tmp_path_factory.mktemp("dropout_teacher"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def dropout_mlm_teacher_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """``mlm_teacher_dir`` with hidden and attention dropout ``DROPOUT``."""
    torch.manual_seed(0)
    model = BertForMaskedLM(
        tiny_bert_config(hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT)
    )
    return save_teacher(model, tmp_path_factory.mktemp("dropout_mlm_teacher"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny BertModel without an MLM head (like the MiniLM-L6 sentence encoder)."""
    torch.manual_seed(1)
    model = BertModel(tiny_bert_config(), add_pooling_layer=True)
    return save_teacher(model, tmp_path_factory.mktemp("encoder"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def second_teacher_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A second tiny classifier teacher (other seed, sharper logits): ensembles of two."""
    torch.manual_seed(7)
    d = tmp_path_factory.mktemp("teacher_b")
    model = BertForSequenceClassification(tiny_bert_config())
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    model.save_pretrained(d)
    BertTokenizerFast.from_pretrained(tiny_tokenizer_dir).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def glove_file(tmp_path_factory) -> Path:
    """A toy GloVe text file (8-d) with most of the toy words (some left out: OOV for the file)."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("glove") / "toy.glove.txt"
    rows = [f"{w} " + " ".join(f"{v:.5f}" for v in torch.randn(8, generator=g).tolist()) for w in WORDS[:-4]]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def recipe(
    method_name: str,
    teacher_dir: Path,
    data_dir: Path,
    out: Path,
    cache: Path,
    task: str = "sst2",
    **sections,
):
    """A small recipe dict for tests; ``sections`` update each section."""
    r = {
        "method": {"name": method_name},
        "teacher": {"path": str(teacher_dir), "cache_dir": str(cache)},
        "student": {"num_layers": 2},
        "data": {"task": task, "path": str(data_dir), "max_length": 32},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "log_every": 2, "seed": 0},
        "output_dir": str(out),
    }
    for k, v in sections.items():
        r.setdefault(k, {}).update(v)
    return r


def kill_then_resume(cfg, monkeypatch, crash_at: int, out_dir: Path, before_save: bool = False, on_kill=None):
    """Run ``cfg``, kill it (KeyboardInterrupt) right after its ``crash_at``-th checkpoint (``before_save``: right
    before writing it, so that the steps since the previous one run again), call ``on_kill()`` if given, resume
    it; return the name of the last checkpoint before the kill and the resumed run's result."""
    from bertdistill.training import checkpoint as ckpt
    from bertdistill.training.loop import Trainer, distill

    original = Trainer._checkpoint
    calls = {"n": 0}

    def crash_at_save(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == crash_at and before_save:
            raise KeyboardInterrupt
        original(self, *a, **k)
        if calls["n"] == crash_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", crash_at_save)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, quiet=True)
    monkeypatch.setattr(Trainer, "_checkpoint", original)
    last = ckpt.latest_checkpoint(out_dir / "checkpoints").name
    if on_kill is not None:
        on_kill()
    return last, distill(cfg, resume=True, quiet=True)


def assert_same_run(full, resumed) -> None:
    """The resumed run ends with the uninterrupted run's weights and logs its losses."""
    from safetensors.torch import load_file

    a = load_file(str(full.output_dir / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    la = [r["loss"] for r in full.history if "loss" in r]
    lb = [r["loss"] for r in resumed.history if "loss" in r]
    assert lb == pytest.approx(la[-len(lb) :], rel=1e-5)


def student_out(tr, batch, stage):
    """The student's training forward of ``batch`` in ``stage``, through the engine's protocol."""
    return tr.bundle(**tr.method.student_inputs(batch, stage))


def teacher_out(tr, batch, stage):
    """The run teacher's outputs for ``batch`` as ``stage`` needs them (None when the stage uses none)."""
    if tr.teacher is None or not stage.uses_teacher:
        return None
    return tr.teacher.features(batch, tr.method.teacher_needs(stage, tr.unwrapped()))


def method_terms(tr, batch, stage):
    """The method's loss terms for one batch, exactly as the loop computes them; with the outputs."""
    s_out, t_out = student_out(tr, batch, stage), teacher_out(tr, batch, stage)
    return tr.method.loss(stage, batch, s_out, t_out, tr.unwrapped()), s_out, t_out
