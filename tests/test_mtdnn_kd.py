"""MT-DNN KD: ensemble soft targets, task batches, every head trained and saved, export of one head,
regression, a task without teachers, resume mid-epoch."""

import importlib.util
import json
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertTokenizerFast

from bertdistill.cli import main as run_cli
from bertdistill.config import ConfigError
from bertdistill.data.multitask import TaskEntry, TaskSampler, task_datasets
from bertdistill.inference import load_student
from bertdistill.methods.mtdnn_kd import MultiTaskModel, ensemble_soft_ce
from bertdistill.protocol import Features
from bertdistill.recipes import load_config
from bertdistill.teachers import ensemble_logits
from bertdistill.training.loop import Trainer, distill
from conftest import assert_same_run, kill_then_resume, recipe


def _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path, out="out", **sections):
    r = recipe("mtdnn_kd", teacher_dir, sst2_dir, tmp_path / out, tmp_path / "cache")
    r["method"].update(
        tasks=[
            {"task": "sst2", "path": str(sst2_dir), "teachers": [str(teacher_dir), str(second_teacher_dir)]},
            {"task": "stsb", "path": str(stsb_dir)},
        ]
    )
    r["teacher"] = {"cache_dir": str(tmp_path / "cache")}
    r["student"] = {"init": "random", "path": str(teacher_dir), "num_layers": 2}
    r["data"] = {"task": "multitask", "max_length": 32}
    r["train"].update(max_steps=12, batch_size=16, eval_every=6)
    for k, v in sections.items():
        r.setdefault(k, {}).update(v)
    return load_config(r)


def test_ensemble_targets_are_the_mean_of_probabilities_golden():
    za = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    zb = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    pa, pb = za.softmax(-1), zb.softmax(-1)
    # by hand: row 0 → (σ(2) + σ(−2)) / 2 = 0.5 each; row 1 → ((0.5 + σ(2)) / 2, (0.5 + σ(−2)) / 2)
    s2 = 1 / (1 + torch.exp(torch.tensor(-2.0)))
    expected = torch.tensor([[0.5, 0.5], [(0.5 + s2) / 2, (0.5 + 1 - s2) / 2]])
    torch.testing.assert_close(ensemble_logits([za, zb]).softmax(-1), expected)
    torch.testing.assert_close((pa + pb) / 2, expected)
    # the logit average gives other targets (row 1: softmax of (0.5, -0.5))
    assert not torch.allclose(((za + zb) / 2).softmax(-1), expected, atol=1e-2)
    # soft CE against the ensemble, by hand at t = 1
    zs = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    hand = -(expected * zs.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(ensemble_soft_ce(zs, ensemble_logits([za, zb])), hand)


def test_losses_per_task_and_batches_never_mix(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path):
    tr = Trainer(_cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path), quiet=True)
    train = tr.datasets["train"]
    assert train.names == ["sst2", "stsb"] and train.parts["stsb"].regression
    seen = set()
    for batch in torch.utils.data.DataLoader(
        train,
        batch_sampler=tr.method.batch_sampler(train, 16, shuffle=True, seed=0, stage=tr.stages[0]),
        collate_fn=tr.collate,
    ):
        seen.add(batch["group"])
        assert batch["labels"].dtype == (torch.float if batch["group"] == "stsb" else torch.long)
    assert seen == {"sst2", "stsb"}
    sst = tr.collate([train[i] for i in range(4)])
    sts = tr.collate([train[i] for i in train.group_indices("stsb")[:4]])
    bundle = tr.unwrapped()
    z_t = torch.randn(4, 2)
    out = tr.bundle(**tr.method.student_inputs(sst, tr.stages[0]))
    terms = tr.method.loss(tr.stages[0], sst, out, Features(logits=z_t), bundle)
    assert set(terms) == {"soft", "ce"}  # the average of soft and hard cross-entropy
    hand_soft = 0.5 * -(z_t.softmax(-1) * out.logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(terms["soft"], hand_soft)
    # a task without teachers: its usual loss (regression: MSE to the label)
    out = tr.bundle(**tr.method.student_inputs(sts, tr.stages[0]))
    terms = tr.method.loss(tr.stages[0], sts, out, None, bundle)
    assert set(terms) == {"mse"} and out.logits.shape == (4, 1)
    # regression with a teacher: label MSE + MSE to the ensemble mean (later releases), or label only
    y_t = torch.randn(4, 1)
    terms = tr.method.loss(tr.stages[0], sts, out, Features(logits=y_t), bundle)
    torch.testing.assert_close(terms["kd_mse"], 0.5 * torch.mean((out.logits.view(-1) - y_t.view(-1)) ** 2))
    tr2 = Trainer(
        _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path, method={"regression_kd": "none"}),
        quiet=True,
    )
    assert set(tr2.method.loss(tr.stages[0], sts, out, Features(logits=y_t), bundle)) == {"mse"}


def test_every_head_trains_is_saved_and_exports(
    teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path
):
    cfg = _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path)
    before = Trainer(cfg, quiet=True).unwrapped()
    result = distill(cfg, quiet=True)
    assert {"sst2/accuracy", "stsb/pearson", "average"} <= set(result.metrics)
    model = MultiTaskModel.from_pretrained(result.output_dir)
    for name in ("sst2", "stsb"):
        a, b = before.heads[name].classifier.weight, model.heads[name].classifier.weight
        assert not torch.equal(a, b), f"head {name} did not train"
    assert model.heads["sst2"].bert is model.heads["stsb"].bert  # one shared encoder after loading
    # one teacher cache: the sst2 ensemble's (stsb has no teacher)
    assert len(list((tmp_path / "cache" / "teacher").glob("*/meta.json"))) == 1

    # export-task: a standard single-task dir with the multi-task model's predictions
    out = tmp_path / "sst2-only"
    assert run_cli(["export-task", str(result.output_dir), "sst2", "-o", str(out)]) == 0
    single = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert single.config.bertdistill_exported_from == {"method": "mtdnn_kd", "head": "sst2"}
    runner = load_student(result.output_dir)
    tok = BertTokenizerFast.from_pretrained(out)
    enc = tok(["a good film", "the plot was dull and boring"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            single(**enc).logits,
            runner.predict({"inputs": dict(enc)}, head="sst2").logits,
            rtol=1e-5,
            atol=1e-5,
        )
    assert run_cli(["export-task", str(result.output_dir), "cola", "-o", str(tmp_path / "x")]) == 2

    # evaluate / predict per head; a head is required
    assert run_cli(["evaluate", str(result.output_dir), "--head", "stsb", "--json"]) == 0
    assert run_cli(["evaluate", str(result.output_dir)]) == 2
    with pytest.raises(ConfigError, match="--head"):
        runner.eval_data({})
    # an ONNX form made on the fly for one head (evaluate --precision onnx-*): exported with that head, which it
    # keeps; the scores equal eager's
    if importlib.util.find_spec("onnxruntime") is not None:
        from bertdistill.evaluation import evaluate

        eager = evaluate(str(result.output_dir), head="sst2")
        onnx = evaluate(str(result.output_dir), precision="onnx-fp32", head="sst2")
        assert onnx["precision"] == "onnx-fp32" and onnx["score"] == pytest.approx(eager["score"], abs=1e-6)
    # predict reads each head as its task: STS-B pairs give a score, SST-2 sentences a class of the task
    from bertdistill.inference import Predictor

    [row] = list(
        Predictor(result.output_dir, options={"head": "stsb"}).predict([("a good film", "a fine film")])
    )
    assert set(row) == {"score"} and isinstance(row["score"], float)
    [row] = list(Predictor(result.output_dir, options={"head": "sst2"}).predict([("a good film",)]))
    assert row["label"] in ("0", "1") and len(row["probs"]) == 2


def test_resume_mid_epoch_restores_the_task_order(
    teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path, monkeypatch
):
    # checkpoints every 4 steps (a multiple of the logging window, so that logged mean losses line up)
    train = {"save_every": 4, "eval_every": None}
    full = distill(
        _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path, train=train), quiet=True
    )
    cfg2 = _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path, out="out2", train=train)
    last, resumed = kill_then_resume(cfg2, monkeypatch, crash_at=1, out_dir=tmp_path / "out2")
    assert last == "step-0000004"  # killed after 4 of the epoch's 10 task batches
    assert_same_run(full, resumed)


def test_task_sampler_temperature(teacher_dir, sst2_dir, stsb_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    tasks = [TaskEntry(task="sst2", path=str(sst2_dir)), TaskEntry(task="stsb", path=str(stsb_dir))]
    data = task_datasets(tasks, tok, "train", 32, 0)
    s = TaskSampler(data, 8, temperature=1.0, seed=0)
    counts = {"sst2": 0, "stsb": 0}
    for epoch in range(20):
        s.set_epoch(epoch)
        for b in s:
            names = {data.locate(i)[0] for i in b}
            assert len(names) == 1
            counts[names.pop()] += 1
    share = counts["sst2"] / sum(counts.values())
    assert abs(share - 96 / 160) < 0.06  # proportional to size (96 vs 64 examples)
    hot = TaskSampler(data, 8, temperature=100.0, seed=0).probs
    assert abs(hot[0] - 0.5) < 0.01  # high temperature → uniform over tasks
    with pytest.raises(ConfigError):
        TaskEntry(task="")


def test_recipe_loads():
    cfg = load_config("mtdnn_kd/glue3")
    assert [t.name for t in cfg.method.tasks] == ["sst2", "mrpc", "stsb"]
    assert json.dumps(cfg.to_dict())


def test_student_init_teacher_copies_layers_from_student_path(
    teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path
):
    """The shipped recipe's init: a multi-task run has no single teacher, so `init: teacher` copies the first
    layers of `student.path` (a fine-tuned model) into the shared encoder."""
    cfg = _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path)
    cfg.student.init, cfg.student.path, cfg.student.num_layers = "teacher", str(teacher_dir), 1
    tr = Trainer(cfg, quiet=True)
    src = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    enc = tr.unwrapped().encoder
    assert len(enc.encoder.layer) == 1
    torch.testing.assert_close(
        enc.encoder.layer[0].attention.self.query.weight,
        src.bert.encoder.layer[0].attention.self.query.weight,
    )
    torch.testing.assert_close(
        enc.embeddings.word_embeddings.weight, src.bert.embeddings.word_embeddings.weight
    )


def test_benchmark_single_task_row_starts_from_the_multitask_encoder(
    teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path
):
    """benchmarks/mtdnn_bench.py's fair `kd_single` row: its init dir holds exactly the multi-task student's
    encoder (every tensor, pooler included), and a single-task student of another task (STS-B, one output)
    built from it gets that encoder and a new head."""
    from benchmarks.mtdnn_bench import goals, shared_init_dir
    from bertdistill.config import StudentConfig
    from bertdistill.data.tasks import get_task
    from bertdistill.students import build_student

    cfg = _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path)
    cfg.student.init, cfg.student.path, cfg.student.num_layers = "teacher", str(teacher_dir), 1
    mt_encoder = Trainer(cfg, quiet=True).unwrapped().encoder.state_dict()
    init = shared_init_dir(str(teacher_dir), 1, tmp_path / "shared-init")
    assert shared_init_dir(str(teacher_dir), 1, tmp_path / "shared-init") == init  # made once
    student_cfg = StudentConfig(init="pretrained", path=str(init), num_layers=1)
    student, info = build_student(student_cfg, None, get_task("stsb"))
    assert info["init"] == "pretrained" and student.config.num_labels == 1
    single = student.base_model.state_dict()
    assert single.keys() == mt_encoder.keys()
    for k, v in mt_encoder.items():
        torch.testing.assert_close(single[k], v, msg=k)
    # the goal is judged only when the inits are the same
    result = {
        "rows": [{"row": "mt_kd", "student_score": 0.8}, {"row": "kd_single_stsb", "student_score": 0.79}]
    }
    assert goals(result, 0.8, 0.81, ["kd_single_stsb"], True)["mt_kd_ge_kd_single"] is True
    assert goals(result, 0.8, 0.81, ["kd_single_stsb"], False)["mt_kd_ge_kd_single"] is None
    result["rows"].append({"row": "kd_single_steps_stsb", "student_score": 0.81})  # judged against both
    assert (
        goals(result, 0.8, 0.81, ["kd_single_stsb", "kd_single_steps_stsb"], True)["mt_kd_ge_kd_single"]
        is False
    )


def test_shared_init_dir_survives_a_concurrent_builder(teacher_dir, tmp_path, monkeypatch):
    """Seeds started together each build the shared init: the one whose rename loses keeps the winner's copy
    and leaves no temp dir (it used to crash on a shared `.tmp` name)."""
    from pathlib import Path

    from benchmarks.mtdnn_bench import shared_init_dir

    out = tmp_path / "shared-init"
    real_rename = Path.rename

    def rival_first(self, target):  # another process lands its copy between our save and our rename
        shutil.copytree(self, target)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rival_first)
    assert shared_init_dir(str(teacher_dir), 1, out) == out
    assert (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["shared-init"]  # our temp copy removed


def test_a_task_teacher_with_another_label_count_is_refused(
    teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path
):
    """A classifier given as the teacher of a regression task (or of a task with another number of classes)
    stops the run with one line naming the teacher and the task, before a step is taken."""
    cfg = _cfg(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path)
    cfg.method.tasks[1].teachers = [str(teacher_dir)]
    with pytest.raises(
        ConfigError, match=r"has 2 output\(s\) but task 'stsb' needs 1 \(a regression score\)"
    ):
        distill(cfg, quiet=True)
    assert not list((tmp_path / "out").glob("checkpoints/*"))


def test_a_custom_task_entry_keeps_its_metrics(tmp_path):
    """A custom task in ``method.tasks`` is scored by its own ``metrics``; the first is its share of the average."""
    entry = TaskEntry(task="custom", name="tickets", text_fields=["text"], labels=["bug", "question", "feature"],
                      metrics=["macro_f1", "accuracy"])  # fmt: skip
    spec = entry.spec()
    assert (spec.name, spec.main_metric, spec.metrics) == ("tickets", "macro_f1", ("macro_f1", "accuracy"))
    with pytest.raises(ConfigError, match="f1 is the binary F1 of the second label"):
        TaskEntry(task="custom", text_fields=["text"], labels=["a", "b", "c"], metrics=["f1"]).spec()
