"""What the engine offers the methods still to come, exercised now with toy methods defined here:

* a student with its **own tokenizer** (word-level, not the teacher's WordPiece), saved with its own
  vocabulary and run at inference through its own runner; its soft targets come per example from the
  teacher cache, keyed by the *teacher's* tokens (``teacher_inputs``);
* **several tasks and several teachers** in one run: a grouped dataset whose batches never mix tasks, one
  task taught by an ensemble (the mean of two teachers' probabilities), one task without a teacher, a
  shared encoder with one head per task, and an inference option (``--head``) declared by the method.

The toy methods are registered for the duration of each test only, so that the registry-parametrised tests
never see them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, BertForSequenceClassification, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput

from bertdistill.data.loading import (
    Collator,
    Examples,
    GroupBatchSampler,
    GroupedDataset,
    TokenizedDataset,
    load_examples,
    resolve_task,
    tokenize,
)
from bertdistill.data.tasks import get_task, metrics_from_logits
from bertdistill.inference import eval_loop, load_student
from bertdistill.losses import hard_ce, regression_mse, soft_cross_entropy
from bertdistill.protocol import (
    BuiltStudent,
    InferenceOption,
    Method,
    Needs,
    Prediction,
    Runner,
    Stage,
)
from bertdistill.recipes import load_config
from bertdistill.registry import METHODS, register
from bertdistill.teachers import CachedTeacher, Teacher, ensemble_logits
from bertdistill.training.loop import Trainer, distill
from conftest import recipe, tiny_bert_config

# ----------------------------------------------------------------------------------------------- a word-level student


class WordVocab:
    """Whitespace words → ids (0 = pad, 1 = unknown); saved as ``vocab.json``."""

    def __init__(self, words: list[str]) -> None:
        self.words = ["<pad>", "<unk>", *words]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 1) for w in text.lower().split()] or [1]

    def save_pretrained(self, d: Any) -> None:
        (Path(d) / "vocab.json").write_text(json.dumps(self.words[2:]))

    @classmethod
    def from_pretrained(cls, d: Any) -> WordVocab:
        return cls(json.loads((Path(d) / "vocab.json").read_text()))


class BagOfWords(nn.Module):
    def __init__(self, vocab_size: int, num_labels: int) -> None:
        super().__init__()
        self.sizes = (vocab_size, num_labels)
        self.emb = nn.EmbeddingBag(vocab_size, 16, mode="mean", padding_idx=0)
        self.out = nn.Linear(16, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any
    ) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.out(self.emb(input_ids)))

    def save_pretrained(self, d: Any, **_: Any) -> None:
        (Path(d) / "bow.json").write_text(json.dumps(self.sizes))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(d) / "bow.safetensors"))

    @classmethod
    def from_pretrained(cls, d: Any) -> BagOfWords:
        model = cls(*json.loads((Path(d) / "bow.json").read_text()))
        model.load_state_dict(load_file(str(Path(d) / "bow.safetensors")))
        return model


def word_dataset(examples: Examples, vocab: WordVocab, teacher_tok: Any, max_length: int) -> TokenizedDataset:
    ids = [vocab.encode(" ".join(t)) for t in examples.texts]
    return TokenizedDataset(
        ids, None, examples.labels, examples.texts, teacher=tokenize(examples, teacher_tok, max_length)
    )


class BowRunner(Runner):
    @classmethod
    def load(cls, path: Any, recipe: Mapping[str, Any], task: Any) -> Runner:
        return cls(BagOfWords.from_pretrained(path), WordVocab.from_pretrained(path), task, str(path), recipe)

    def encode(self, examples: Examples, max_length: int) -> TokenizedDataset:
        return TokenizedDataset(
            [self.tokenizer.encode(" ".join(t)) for t in examples.texts], None, examples.labels
        )


class ToyWords(Method):
    """A bag-of-words student with its own vocabulary, distilled from a WordPiece teacher's logits."""

    runner_cls = BowRunner

    def datasets(self, tokenizer: Any) -> dict[str, Any]:
        d = self.run.data
        train = load_examples(d, self.task, "train")
        vocab = WordVocab(sorted({w for t in train.texts for w in " ".join(t).lower().split()}))
        out = {
            "train": word_dataset(train, vocab, tokenizer, d.max_length),
            "eval": word_dataset(load_examples(d, self.task, "dev"), vocab, tokenizer, d.max_length),
        }
        out["train"].vocab = vocab  # type: ignore[attr-defined]
        return out

    def student_tokenizer(self, tokenizer: Any, datasets: Mapping[str, Any]) -> Any:
        return datasets["train"].vocab

    def collator(self, tokenizer: Any, datasets: Mapping[str, Any]) -> Any:
        return Collator(0, teacher_pad_id=tokenizer.pad_token_id)

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Any]) -> BuiltStudent:
        n = len(datasets["train"].vocab.words)
        return BuiltStudent(BagOfWords(n, self.task.num_labels), {"vocab": n})

    def teacher_needs(self, stage: Stage, bundle: nn.Module) -> Needs:
        return Needs(logits=True)

    def loss(self, stage, batch, student_out, teacher_out, bundle) -> dict[str, torch.Tensor]:
        return {"mse": torch.nn.functional.mse_loss(student_out.logits, teacher_out.logits)}


@pytest.fixture
def toy_words():
    register("toy_words")(ToyWords)
    yield ToyWords
    METHODS.pop("toy_words")


def test_student_with_its_own_tokenizer_gets_per_example_soft_targets_from_the_teacher_cache(
    toy_words, teacher_dir, sst2_dir, tmp_path
):
    r = recipe(
        "toy_words", teacher_dir, sst2_dir, tmp_path / "out", tmp_path / "cache", train={"max_steps": 6}
    )
    cfg = load_config(r)
    tr = Trainer(cfg, quiet=True)
    train = tr.datasets["train"]
    batch = tr.collate([train[i] for i in range(5)])
    assert batch["inputs"]["input_ids"].max() < len(train.vocab.words)  # the student's ids ...
    assert "teacher_inputs" in batch  # ... and the teacher's, for the same rows
    assert not torch.equal(
        batch["inputs"]["input_ids"][:, :3], batch["teacher_inputs"]["input_ids"][:, :3]
    )  # really two tokenisations (the teacher's start with [CLS])

    result = distill(cfg, quiet=True)
    # the cache is keyed by the teacher's tokens: its fingerprint is that of the teacher's view
    teacher = Teacher(BertForSequenceClassification.from_pretrained(teacher_dir))
    fp = CachedTeacher.fingerprint(teacher, train.teacher, Needs(logits=True), "float32")
    root = tmp_path / "cache" / "teacher" / fp
    assert (root / "meta.json").is_file()
    # and it serves, per example, the teacher's logits on its own tokenisation
    cache = CachedTeacher.load_or_build(teacher, train, Needs(logits=True), 0, tmp_path / "cache")
    assert cache.root == root
    with torch.no_grad():
        live = teacher.model(**batch["teacher_inputs"]).logits
    torch.testing.assert_close(cache.features(batch).logits, live, rtol=1e-5, atol=1e-5)
    # a different student tokenisation of the same text reuses the same cache
    other = TokenizedDataset(
        [[1] * len(x) for x in train.input_ids], None, train.labels, teacher=train.teacher
    )
    assert CachedTeacher.load_or_build(teacher, other, Needs(logits=True), 0, tmp_path / "cache").root == root

    # saved with its own vocabulary; evaluate / predict go through the method's runner
    assert (result.output_dir / "vocab.json").is_file() and (result.output_dir / "bow.safetensors").is_file()
    runner = load_student(result.output_dir)
    assert isinstance(runner, BowRunner)
    from bertdistill.evaluation import evaluate
    from bertdistill.inference import Predictor

    row = evaluate(result.output_dir)
    assert 0 <= row["score"] <= 1 and row["params"] == sum(p.numel() for p in runner.model.parameters())
    preds = list(Predictor(result.output_dir).predict([("a good film",), ("dull and boring",)]))
    assert len(preds) == 2 and {"label", "probs"} <= set(preds[0])


# ----------------------------------------------------------------------------------------------- several tasks and teachers


class MultiHead(nn.Module):
    """A shared BERT encoder with one head per task."""

    def __init__(self, encoder: BertModel, heads: dict[str, int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({t: nn.Linear(encoder.config.hidden_size, n) for t, n in heads.items()})

    def forward(self, task: str, **inputs: Any) -> SequenceClassifierOutput:
        h = self.encoder(**inputs).last_hidden_state[:, 0]
        return SequenceClassifierOutput(logits=self.heads[task](h))


class MultiHeadRunner(Runner):
    options: ClassVar[tuple[InferenceOption, ...]] = (InferenceOption("head", str, "the task head to run"),)

    def predict(self, batch: Mapping[str, Any], **options: Any) -> Prediction:
        head = options.get("head") or batch["group"]
        return Prediction(self.model(head, **batch["inputs"]).logits)

    def metrics(self, logits: Any, targets: Any, extras: Any) -> dict[str, float]:
        return {"loss_like": float(((logits.reshape(-1) - targets.float()) ** 2).mean())}


class ToyMultiTask(Method):
    """SST-2 taught by an ensemble of two teachers, STS-B by no teacher: one shared encoder, two heads."""

    runner_cls = MultiHeadRunner
    ensemble: ClassVar[list[str]] = []

    def datasets(self, tokenizer: Any) -> dict[str, Any]:
        parts = {}
        for name, path in self.paths.items():
            spec = get_task(name)
            ex = load_examples(resolve_task_cfg(name, path), spec, "train")
            ds = tokenize(ex, tokenizer, 32)
            ds.regression = spec.regression  # type: ignore[attr-defined]
            parts[name] = ds
        return {"train": GroupedDataset(parts)}

    def batch_sampler(self, data: Any, batch_size: int, *, shuffle: bool, seed: int, stage: Any) -> Any:
        return GroupBatchSampler(data, batch_size, shuffle=shuffle, seed=seed)

    def build_student(self, teacher: nn.Module | None, datasets: Mapping[str, Any]) -> BuiltStudent:
        torch.manual_seed(0)
        return BuiltStudent(MultiHead(BertModel(tiny_bert_config()), {"sst2": 2, "stsb": 1}))

    def stages(self) -> list[Stage]:
        return [Stage("train", evaluate=False, group_teachers={"sst2": list(self.ensemble), "stsb": []})]

    def student_inputs(self, batch: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
        return {**batch["inputs"], "task": batch["group"]}

    def export_model(self, bundle: nn.Module, stage: Stage | None = None) -> Any:
        return _Saveable(bundle)

    def loss(self, stage, batch, student_out, teacher_out, bundle) -> dict[str, torch.Tensor]:
        self.seen.append((batch["group"], teacher_out))
        z = student_out.logits
        if batch["group"] == "stsb":
            assert teacher_out is None
            return {"mse": regression_mse(z, batch["labels"])}
        return {
            "soft": 0.5 * soft_cross_entropy(z, teacher_out.logits),
            "ce": 0.5 * hard_ce(z, batch["labels"]),
        }


class _Saveable:
    def __init__(self, bundle: nn.Module) -> None:
        self.bundle = bundle

    def save_pretrained(self, d: Any, **_: Any) -> None:
        save_file(
            {k: v.contiguous() for k, v in self.bundle.state_dict().items()},
            str(Path(d) / "multi.safetensors"),
        )


def resolve_task_cfg(name: str, path: Path) -> Any:
    from bertdistill.config import DataConfig

    cfg = DataConfig(task=name, path=str(path))
    resolve_task(cfg)
    return cfg


@pytest.fixture
def toy_multitask(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir):
    ToyMultiTask.ensemble = [str(teacher_dir), str(second_teacher_dir)]
    ToyMultiTask.paths = {"sst2": sst2_dir, "stsb": stsb_dir}  # type: ignore[attr-defined]
    ToyMultiTask.seen = []  # type: ignore[attr-defined]
    register("toy_multitask")(ToyMultiTask)
    yield ToyMultiTask
    METHODS.pop("toy_multitask")


def test_several_tasks_and_an_ensemble_of_teachers_in_one_run(
    toy_multitask, teacher_dir, second_teacher_dir, sst2_dir, tmp_path
):
    r = recipe("toy_multitask", teacher_dir, sst2_dir, tmp_path / "out", tmp_path / "cache")
    r["teacher"] = {"cache_dir": str(tmp_path / "cache")}  # no run teacher: the stage names its own per task
    r["student"] = {"init": "random", "path": str(teacher_dir)}
    r["train"].update(max_steps=12, batch_size=8)
    distill(load_config(r), quiet=True)
    seen = ToyMultiTask.seen
    assert len(seen) == 12 and {g for g, _ in seen} == {"sst2", "stsb"}  # both tasks, never mixed in a batch
    assert all((t is None) == (g == "stsb") for g, t in seen)

    # the ensemble's soft targets are the mean of the two teachers' probabilities (not of their logits)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    ex = load_examples(resolve_task_cfg("sst2", sst2_dir), get_task("sst2"), "train")
    data = tokenize(ex, tok, 32)
    batch = Collator(tok.pad_token_id)([data[i] for i in range(6)])
    a, b = (
        BertForSequenceClassification.from_pretrained(p).eval() for p in (teacher_dir, second_teacher_dir)
    )
    with torch.no_grad():
        za, zb = a(**batch["inputs"]).logits, b(**batch["inputs"]).logits
    mean_p = (za.softmax(-1) + zb.softmax(-1)) / 2
    torch.testing.assert_close(ensemble_logits([za, zb]).softmax(-1), mean_p)
    x, y = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # confident, disagreeing teachers
    torch.testing.assert_close(ensemble_logits([x, y]).softmax(-1), (x.softmax(-1) + y.softmax(-1)) / 2)
    assert not torch.allclose(((x + y) / 2).softmax(-1), (x.softmax(-1) + y.softmax(-1)) / 2, atol=1e-2)
    torch.testing.assert_close(ensemble_logits([za, zb], regression=True), (za + zb) / 2)
    # cached once per (teacher set, task data)
    assert len(list((tmp_path / "cache" / "teacher").glob("*/meta.json"))) == 1


def test_group_sampler_never_mixes_groups_and_restores_order_per_epoch(teacher_dir, sst2_dir, stsb_dir):
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    parts = {
        n: tokenize(load_examples(resolve_task_cfg(n, p), get_task(n), "train"), tok, 32)
        for n, p in (("sst2", sst2_dir), ("stsb", stsb_dir))
    }
    data = GroupedDataset(parts)
    s = GroupBatchSampler(data, 8, seed=3)
    s.set_epoch(1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(data)))
    for b in batches:
        assert len({data.locate(i)[0] for i in b}) == 1
    order = [data.locate(b[0])[0] for b in batches]
    assert len(set(order)) == 2 and order != sorted(order)  # tasks interleaved
    again = GroupBatchSampler(data, 8, seed=3)
    again.set_epoch(1)
    assert list(again) == batches  # a resumed run sees the same task order
    again.set_epoch(2)
    assert list(again) != batches
    with pytest.raises(ValueError, match="mixes"):
        Collator(0)([data[0], data[len(data) - 1]])


def test_a_method_declares_its_inference_options(teacher_dir):
    runner = MultiHeadRunner(nn.Linear(1, 1), None)
    assert runner.check_options({"head": "stsb"}) == {"head": "stsb"}
    from bertdistill.config import ConfigError

    with pytest.raises(ConfigError, match="speed"):
        runner.check_options({"speed": 0.5})
    metrics = metrics_from_logits(
        get_task("sst2"), torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([1, 1])
    )
    assert metrics["accuracy"] == 0.5
    assert eval_loop  # the shared loop is the one evaluate() and training use
