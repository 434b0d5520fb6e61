"""Every registered method, parametrized from the registry — no exclusion list: each method supplies its own
tiny test config next to it (``Method.test_config``), so a new method is picked up automatically."""

import copy
import math

import pytest
import torch
from torch import nn

from bertdistill import get_method, list_methods
from bertdistill.config import ConfigError
from bertdistill.inference import load_student
from bertdistill.protocol import Features
from bertdistill.recipes import load_config
from bertdistill.teachers import Teacher
from bertdistill.training.loop import StageRun, Trainer, distill
from conftest import method_terms, recipe

METHODS = sorted(list_methods())


@pytest.fixture
def fixtures(
    teacher_dir,
    mlm_teacher_dir,
    encoder_dir,
    corpus_file,
    sst2_dir,
    stsb_dir,
    tiny_tokenizer_dir,
    glove_file,
    parallel_dir,
):
    """The names a method's test config may use in braces."""
    return {
        "parallel": parallel_dir,
        "teacher": teacher_dir,
        "mlm_teacher": mlm_teacher_dir,
        "encoder": encoder_dir,
        "corpus": corpus_file,
        "sst2": sst2_dir,
        "stsb": stsb_dir,
        "tokenizer": tiny_tokenizer_dir,
        "glove": glove_file,
    }


@pytest.fixture
def dropout_fixtures(fixtures, dropout_teacher_dir, dropout_mlm_teacher_dir):
    """The same names, with teachers that have dropout 0.3."""
    return {**fixtures, "teacher": dropout_teacher_dir, "mlm_teacher": dropout_mlm_teacher_dir}


def _resolve(value, fixtures):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return str(fixtures[value[1:-1]])
    if isinstance(value, list):
        return [_resolve(v, fixtures) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, fixtures) for k, v in value.items()}
    return value


def _cfg(name, fixtures, tmp_path, overfit=False, **sections):
    tc = get_method(name).test_config
    r = recipe(name, fixtures["teacher"], fixtures["sst2"], tmp_path / "out", tmp_path / "cache")
    for part in (tc.sections, sections, tc.overfit if overfit else {}):
        for k, v in _resolve(copy.deepcopy(dict(part)), fixtures).items():
            r.setdefault(k, {}).update(v)
    return load_config(r)


@pytest.mark.parametrize("name", METHODS)
def test_one_step_finite_terms_and_frozen_teacher(name, fixtures, tmp_path):
    tr = Trainer(_cfg(name, fixtures, tmp_path), quiet=True)
    stage = tr.stages[0]
    data = tr.datasets[stage.data]
    batch = tr.collate([data[i] for i in range(8)])
    before = {k: v.clone() for k, v in tr.teacher.model.state_dict().items()} if tr.teacher else {}
    terms, _, _ = method_terms(tr, batch, stage)
    assert terms and all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    sum(terms.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.bundle.parameters())
    if tr.teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in tr.teacher.model.parameters())
        after = tr.teacher.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert not tr.teacher.model.training
        assert not {id(p) for p in tr.teacher.model.parameters()} & {id(p) for p in tr.bundle.parameters()}


@pytest.mark.parametrize("name", METHODS)
def test_overfits_one_batch(name, fixtures, tmp_path):
    cfg = _cfg(
        name,
        fixtures,
        tmp_path,
        overfit=True,
        data={"max_train_examples": 16},
        train={
            "batch_size": 16,
            "max_steps": 40,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "log_every": 1,
            "save_every": 1000,
        },
    )
    result = distill(cfg, quiet=True)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 40 * len({r["stage"] for r in result.history if "loss" in r})
    assert all(math.isfinite(v) for v in losses)
    ratio = get_method(name).test_config.overfit_ratio
    assert sum(losses[-5:]) / 5 < ratio * sum(losses[:3]) / 3, [round(x, 3) for x in losses[-8:]]


@pytest.mark.parametrize("name", METHODS)
def test_every_stage_runs_saves_and_reloads_through_its_runner(name, fixtures, tmp_path):
    cfg = _cfg(name, fixtures, tmp_path, train={"max_steps": 4, "eval_every": 2})
    result = distill(cfg, quiet=True)
    out = result.output_dir
    stages = {r["stage"] for r in result.history if "loss" in r}
    fresh = Trainer(cfg, quiet=True)
    assert stages == {s.name for s in fresh.stages if s.trains}  # preparation stages log no loss terms
    assert load_config(out / "bertdistill.yaml") == cfg
    assert (out / "metrics.json").is_file()
    # the saved student, loaded by the one inference entry point, predicts what the trained model does
    runner = load_student(out)
    built = fresh.method.export_model(fresh.unwrapped())
    assert type(runner.model) is type(built)
    eval_set = fresh.datasets.get("eval", fresh.datasets["train"])
    batch = fresh.collate([eval_set[i] for i in range(min(6, len(eval_set)))])
    trained = fresh.method.runner(fresh.unwrapped(), fresh.student_tokenizer, None)
    trained.model.load_state_dict(runner.model.state_dict())
    trained.model.eval()
    with torch.no_grad():
        a, b = runner.predict(batch), trained.predict(batch)
    for x, y in [(a.logits, b.logits), *((a.extras[k], b.extras[k]) for k in a.extras)]:
        if x is not None:
            torch.testing.assert_close(x, y)


# ----------------------------------------------------------------------------------------------- the frozen teacher

SHORT = {"max_steps": 3, "log_every": 1, "save_every": 1000, "warmup_ratio": 0.0, "scheduler": "constant"}


def _hand_teachers_over_in_train_mode(
    monkeypatch, name: str
) -> list[tuple[nn.Module, dict[str, torch.Tensor]]]:
    """Make the method's ``load_teacher_model`` return its model in *train* mode (what a method that builds
    its teacher by hand could do); record every teacher model it loads with a copy of its weights as loaded."""
    cls = get_method(name)
    original = cls.load_teacher_model
    loaded: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []

    def load(self, path, stage=None):
        model = original(self, path, stage).train()
        loaded.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(cls, "load_teacher_model", load)
    return loaded


def _same_features(a: Features, b: Features) -> bool:
    pairs = [(a.logits, b.logits)] if a.logits is not None else []
    pairs += [(a.hidden_states[k], b.hidden_states[k]) for k in a.hidden_states]
    pairs += [(a.attentions[k], b.attentions[k]) for k in a.attentions]
    if a.topk is not None and b.topk is not None:  # token-level top-k (cmlm soft labels)
        pairs += [(a.topk.values, b.topk.values), (a.topk.indices, b.topk.indices)]
    return bool(pairs) and all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("name", METHODS)
def test_live_teacher_runs_in_eval_mode_during_training(name, dropout_fixtures, tmp_path, monkeypatch):
    """Teachers with dropout 0.3, handed over in train mode: every teacher forward of real training steps gives
    the same outputs when repeated on the same batch — the engine runs the teacher in eval mode."""
    _hand_teachers_over_in_train_mode(monkeypatch, name)
    features = Teacher.features
    repeats: list[bool] = []

    def twice(self, batch, needs):
        out = features(self, batch, needs)
        repeats.append(_same_features(out, features(self, batch, needs)))
        return out

    monkeypatch.setattr(Teacher, "features", twice)
    cfg = _cfg(name, dropout_fixtures, tmp_path, teacher={"cache": False}, train=SHORT)
    tr = Trainer(cfg, quiet=True)
    if not any(s.uses_teacher for s in tr.stages):
        pytest.skip(f"{name} runs no teacher in any stage")
    tr.train()
    assert repeats and all(repeats), repeats


@pytest.mark.parametrize("name", METHODS)
def test_teacher_unchanged_after_optimizer_steps(name, fixtures, tmp_path, monkeypatch):
    """After real optimizer steps of every stage, each teacher the method loaded is bit-identical to what was
    loaded, and none of its parameters was in any stage's optimizer."""
    loaded = _hand_teachers_over_in_train_mode(monkeypatch, name)
    runs: list[StageRun] = []
    setup_stage = Trainer.setup_stage

    def keep(self, *args, **kwargs):
        runs.append(setup_stage(self, *args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(Trainer, "setup_stage", keep)
    tr = Trainer(_cfg(name, fixtures, tmp_path, train=SHORT), quiet=True)
    if not any(s.uses_teacher for s in tr.stages):
        pytest.skip(f"{name} runs no teacher in any stage")
    student_before = {k: v.clone() for k, v in tr.unwrapped().state_dict().items()}
    result = tr.train()
    trained = [s for s in tr.stages if s.trains]  # a preparation stage (cmlm soft_labels) trains nothing
    assert len([r for r in result.history if "loss" in r]) == 3 * len(trained)
    after = tr.unwrapped().state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in student_before.items())  # the steps did update
    teacher_params = {id(p) for model, _ in loaded for p in model.parameters()}
    for sr in runs:
        in_optimizer = {id(p) for g in sr.optimizer.param_groups for p in g["params"]}
        assert not in_optimizer & teacher_params, sr.stage.name
    for model, as_loaded in loaded:
        assert not any(p.requires_grad for p in model.parameters())
        now = model.state_dict()
        assert all(torch.equal(v, now[k]) for k, v in as_loaded.items())


@pytest.mark.parametrize("name", METHODS)
def test_control_recipe_is_the_same_student_without_distillation(name, fixtures, tmp_path):
    """`distill --control`: every method either gives a control that loads (same student, data and seed, no
    teacher term) or says why it has none."""
    from bertdistill.config import ConfigError
    from bertdistill.training.control import control_config

    cfg = _cfg(name, fixtures, tmp_path)
    method = get_method(name)
    if method.control_recipe(copy.deepcopy(cfg.to_dict()), 7) is None:
        assert len(method.control_unavailable()) > 20
        with pytest.raises(ConfigError, match="--control"):
            control_config(cfg, 7)
        return
    ctrl = control_config(cfg, 7)
    assert ctrl.resolved_output_dir() == cfg.resolved_output_dir() / "control"
    assert ctrl.train.seed == cfg.train.seed and ctrl.data == cfg.data and ctrl.student == cfg.student
    assert not ctrl.train.control
    tr = Trainer(ctrl, quiet=True)
    assert tr.method.name in (name, "finetune")
    if tr.method.name == name:  # the same method with its distillation terms off
        assert ctrl.method != cfg.method
    assert not tr.method.runs_teacher() or tr.method.name == name


# ------------------------------------------------------------------- tasks the recipes were not written for

LABELLED = [m for m in METHODS if "task" not in dict(get_method(m).test_config.sections).get("data", {})]
"""The methods that train on a labelled task's data (not raw text, translation pairs or several tasks)."""
TOPICS = ["sports", "films", "music"]


@pytest.fixture(scope="module")
def task_shapes(tmp_path_factory, tiny_tokenizer_dir, stsb_dir):
    """A regression task on sentence pairs (STS-B) and a three-class single-sentence task from a JSONL file,
    each with a tiny teacher that has the task's number of outputs."""
    from conftest import classifier_teacher, save_teacher, write_jsonl_task

    tmp = tmp_path_factory.mktemp("task_shapes")
    topics = write_jsonl_task(tmp / "topics", TOPICS)
    return {
        "regression pairs": (
            save_teacher(classifier_teacher(num_labels=1), tmp / "teacher-reg", tiny_tokenizer_dir),
            {"task": "stsb", "path": str(stsb_dir)},
        ),
        "three classes": (
            save_teacher(classifier_teacher(num_labels=3), tmp / "teacher-3", tiny_tokenizer_dir),
            {"task": "custom", "path": str(topics), "text_fields": ["text"], "labels": TOPICS},
        ),
    }


@pytest.mark.parametrize("shape", ["regression pairs", "three classes"])
@pytest.mark.parametrize("name", LABELLED)
def test_runs_on_task_shapes_its_recipes_were_not_written_for(name, shape, task_shapes, fixtures, tmp_path):
    """Every method of labelled data on a regression task of sentence pairs and on a three-class task of single
    sentences (its recipes are SST-2 / MRPC: two classes): it trains, is scored by the task's metric, and the
    saved student predicts one score or three class probabilities per example — or the method refuses the task
    with one clear line (FastBERT's early exit reads a class entropy)."""
    from bertdistill.config import ConfigError
    from bertdistill.inference import Predictor

    teacher, data = task_shapes[shape]
    cfg = _cfg(
        name, {**fixtures, "teacher": teacher}, tmp_path, data=data, train={"max_steps": 2, "eval_every": 2}
    )
    cfg.teacher.path = str(teacher)
    if name == "fastbert" and shape == "regression pairs":
        with pytest.raises(ConfigError, match="does not apply to a regression task"):
            distill(cfg, quiet=True)
        return
    result = distill(cfg, quiet=True)
    metric = "pearson" if shape == "regression pairs" else "accuracy"
    assert math.isfinite(result.metrics[metric])
    texts = [("a good film", "a bad plot")] * 2 if shape == "regression pairs" else [("a good film",)] * 2
    rows = list(Predictor(result.output_dir, max_length=32).predict(texts))
    assert len(rows) == 2
    for row in rows:
        if shape == "regression pairs":
            assert math.isfinite(row["score"])
        else:
            assert row["label"] in TOPICS and len(row["probs"]) == 3


# ------------------------------------------------------------------- teachers that are not BERT

ARCHS = ["roberta", "distilbert", "electra", "deberta-v2", "albert"]


@pytest.fixture(scope="module")
def other_teachers(tmp_path_factory, tiny_tokenizer_dir):
    """Tiny random classifiers and masked LMs of four other encoder families, on the tiny tokenizer (pad id 0),
    width 32."""
    from conftest import other_encoder, save_teacher

    tmp = tmp_path_factory.mktemp("other_teachers")
    out = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = other_encoder(arch)
        with torch.no_grad():  # confident logits, as a trained teacher's: scale the head's output layer
            [out_layer] = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 2]
            out_layer.weight.mul_(30.0)
        out[arch] = save_teacher(model, tmp / arch, tiny_tokenizer_dir)
        torch.manual_seed(0)
        out[f"{arch}-mlm"] = save_teacher(
            other_encoder(arch, "ForMaskedLM"), tmp / f"{arch}-mlm", tiny_tokenizer_dir
        )
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", LABELLED)
def test_a_teacher_of_another_encoder_family(name, arch, other_teachers, fixtures, tmp_path):
    """README: "a teacher: any HF encoder". Every method of labelled data trains from a RoBERTa, DistilBERT,
    ELECTRA or DeBERTa-v2 teacher (finetune: that model as the student; FastBERT: that model with branches) and
    its saved student predicts."""
    from bertdistill.inference import Predictor

    teacher = other_teachers[arch]
    student = {"init": "pretrained", "path": str(teacher)} if name == "finetune" else {}
    cfg = _cfg(name, {**fixtures, "teacher": teacher}, tmp_path, student=student, train={"max_steps": 2})
    cfg.teacher.path = str(teacher)
    result = distill(cfg, quiet=True)
    assert math.isfinite(result.metrics["accuracy"])
    rows = list(Predictor(result.output_dir, max_length=32).predict([("a good film",), ("a dull plot",)]))
    assert [len(r["probs"]) for r in rows] == [2, 2]


@pytest.mark.parametrize("name", ["pkd", "tinybert", "mobilebert"])
def test_layer_maps_refuse_a_teacher_with_more_states_than_layers(
    name, fixtures, tiny_tokenizer_dir, tmp_path
):
    """An ALBERT with inner_group_num 2 records 2 hidden states per depth (9 for 4 layers): read by a layer map,
    its states would be taken at the wrong layers. Even with a random student (no layer copy to refuse it), a
    method that reads the teacher's layers refuses it with one line instead of training on them."""
    from conftest import other_encoder, save_teacher

    torch.manual_seed(0)
    teacher = save_teacher(
        other_encoder("albert", inner_group_num=2), tmp_path / "albert2", tiny_tokenizer_dir
    )
    cfg = _cfg(
        name, {**fixtures, "teacher": teacher}, tmp_path, student={"init": "random"}, train={"max_steps": 2}
    )
    cfg.teacher.path = str(teacher)
    with pytest.raises(
        ConfigError,
        match=r"returned 9 hidden states for its 4 layers, where 5 were expected.*inner_group_num",
    ):
        distill(cfg, quiet=True)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["cmlm", "distilbert", "mtdnn_kd"])
def test_raw_text_translation_and_multitask_methods_with_another_encoder_family(
    name, arch, other_teachers, fixtures, tmp_path
):
    """C-MLM with a RoBERTa / DistilBERT / ELECTRA (its generator's head) / DeBERTa-v2 masked LM as teacher,
    MT-DNN KD with a shared encoder and task teachers of those families, and DistilBERT from those masked LMs
    (its student: the teacher's own family at half depth, as DistilRoBERTa) train."""
    from transformers import AutoModelForMaskedLM

    names = {**fixtures, "teacher": other_teachers[arch], "mlm_teacher": other_teachers[f"{arch}-mlm"]}
    result = distill(_cfg(name, names, tmp_path, train={"max_steps": 2}), quiet=True)
    metric = {"cmlm": "bleu", "distilbert": "perplexity"}.get(name, "average")
    assert math.isfinite(result.metrics[metric])
    if name == "distilbert":
        student = AutoModelForMaskedLM.from_pretrained(result.output_dir)
        teacher = AutoModelForMaskedLM.from_pretrained(other_teachers[f"{arch}-mlm"])
        assert type(student) is type(teacher)
        assert student.config.num_hidden_layers == teacher.config.num_hidden_layers // 2
