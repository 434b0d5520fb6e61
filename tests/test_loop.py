import json
import math

import pytest
import torch
from safetensors.torch import load_file

from bertdistill import load_config
from bertdistill.config import ConfigError
from bertdistill.training import checkpoint as ckpt
from bertdistill.training.loop import NonFiniteLossError, Trainer, distill
from conftest import assert_same_run, kill_then_resume, recipe


def _cfg(method_name, teacher_dir, data_dir, tmp_path, out="out", task="sst2", **sections):
    return load_config(
        recipe(method_name, teacher_dir, data_dir, tmp_path / out, tmp_path / "cache", task=task, **sections)
    )


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def test_outputs_logs_and_checkpoints(teacher_dir, sst2_dir, tmp_path):
    cfg = _cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"epochs": 2, "keep_last": 1})
    res = distill(cfg, quiet=True)
    out = res.output_dir
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    assert train_recs and all({"kd", "ce", "lr", "step"} <= set(r) for r in train_recs)
    assert all(r["loss"] == pytest.approx(r["kd"] + r["ce"], rel=1e-5) for r in train_recs)
    evals = [r for r in records if "eval" in r]
    assert len(evals) == 2  # end of each epoch
    # keep_last=1: a single complete checkpoint, no temporary leftovers
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000012"]
    assert not list(out.glob(".*tmp*"))
    best_step = max(evals, key=lambda r: r["eval"]["accuracy"])["step"]
    assert json.loads((out / "metrics.json").read_text())["step"] == best_step
    assert res.metrics["accuracy"] == max(r["eval"]["accuracy"] for r in evals)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_is_exact(teacher_dir, sst2_dir, tmp_path, monkeypatch, dropout):
    # with dropout the RNG stream matters too: nothing may draw from it differently after a resume
    sections = {
        "train": {"epochs": 2, "save_every": 2, "lr": 5e-4},
        "student": {"config_overrides": {"hidden_dropout_prob": dropout}},
    }
    full = distill(_cfg("kd", teacher_dir, sst2_dir, tmp_path, out="full", **sections), quiet=True)

    cfg = _cfg("kd", teacher_dir, sst2_dir, tmp_path, out="killed", **sections)
    # step 4 saved (3 batches per epoch): die mid-epoch 1
    last, resumed = kill_then_resume(cfg, monkeypatch, 2, tmp_path / "killed")
    assert last == "step-0000004"
    assert_same_run(full, resumed)


def test_nan_stops_and_keeps_last_good_checkpoint(teacher_dir, sst2_dir, tmp_path, monkeypatch):
    cfg = _cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"epochs": 2, "save_every": 2})
    from bertdistill.methods.kd import KD

    original = KD.loss
    count = {"n": 0}

    def poisoned(self, *a, **k):
        count["n"] += 1
        terms = original(self, *a, **k)
        if count["n"] == 5:
            terms["kd"] = terms["kd"] * float("nan")
        return terms

    monkeypatch.setattr(KD, "loss", poisoned)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss term\(s\) \['kd'\] at step 5 .*Last good checkpoint: .*step-0000004",
    ):
        distill(cfg, quiet=True)
    last = ckpt.latest_checkpoint(tmp_path / "out" / "checkpoints")
    state = load_file(str(last / "bundle.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_early_stopping(teacher_dir, sst2_dir, tmp_path):
    cfg = _cfg(
        "kd",
        teacher_dir,
        sst2_dir,
        tmp_path,
        train={"epochs": 20, "eval_every": 1, "early_stopping_patience": 2, "lr": 1e-9},
    )
    res = distill(cfg, quiet=True)
    evals = [r for r in res.history if "eval" in r]
    assert len(evals) == 3  # the first is best, two more without improvement, then stop


def test_grad_accumulation_counts_optimizer_steps(teacher_dir, sst2_dir, tmp_path):
    cfg = _cfg(
        "kd",
        teacher_dir,
        sst2_dir,
        tmp_path,
        train={"batch_size": 8, "grad_accum": 3, "epochs": 1, "log_every": 1},
    )
    res = distill(cfg, quiet=True)
    steps = [r["step"] for r in res.history if "loss" in r]
    assert steps == list(range(1, 5))  # 96 examples / 8 = 12 batches = 4 updates


def test_regression_task_kd_uses_mse(teacher_dir, stsb_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    reg_teacher = tmp_path / "reg_teacher"
    m = AutoModelForSequenceClassification.from_pretrained(
        teacher_dir, num_labels=1, problem_type="regression", ignore_mismatched_sizes=True
    )
    m.save_pretrained(reg_teacher)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(reg_teacher)
    res = distill(
        _cfg("kd", reg_teacher, stsb_dir, tmp_path, task="stsb", train={"max_steps": 3}), quiet=True
    )
    terms = {k for r in res.history if "loss" in r for k in r}
    assert {"kd", "mse"} <= terms and "ce" not in terms
    assert {"pearson", "spearman"} <= set(res.metrics)


def test_cached_and_live_teacher_train_identically(teacher_dir, sst2_dir, tmp_path):
    a = distill(_cfg("kd", teacher_dir, sst2_dir, tmp_path, out="cached", train={"max_steps": 5}), quiet=True)
    b = distill(
        _cfg(
            "kd",
            teacher_dir,
            sst2_dir,
            tmp_path,
            out="live",
            teacher={"cache": False},
            train={"max_steps": 5},
        ),
        quiet=True,
    )
    wa, wb = _weights(a.output_dir), _weights(b.output_dir)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    assert any((tmp_path / "cache" / "teacher").iterdir())


def test_kd_hidden_mse_option(teacher_dir, sst2_dir, tmp_path):
    res = distill(
        _cfg("kd", teacher_dir, sst2_dir, tmp_path, method={"hidden_weight": 1.0}, train={"max_steps": 3}),
        quiet=True,
    )
    assert all("hidden" in r for r in res.history if "loss" in r)
    tr = Trainer(_cfg("kd", teacher_dir, sst2_dir, tmp_path, method={"hidden_weight": 1.0}), quiet=True)
    assert tr.unwrapped().config.bertdistill_hidden_map == [
        [1, 2],
        [2, 4],
    ]  # 4-layer teacher, 2-layer student, hidden_states indexing


def test_missing_teacher_is_a_clear_error(sst2_dir, tmp_path, teacher_dir):
    raw = recipe("kd", teacher_dir, sst2_dir, tmp_path / "o", tmp_path / "c")
    raw["teacher"] = {}
    raw["student"] = {"init": "pretrained", "path": str(teacher_dir)}
    with pytest.raises(ConfigError, match="needs a teacher: set teacher.path"):
        distill(raw, quiet=True)
    raw["teacher"] = {"path": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match="cannot load"):
        distill(raw, quiet=True)


def test_bf16_mixed_precision_runs(teacher_dir, sst2_dir, tmp_path):
    res = distill(
        _cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"max_steps": 3, "mixed_precision": "bf16"}),
        quiet=True,
    )
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)
    # teacher.cache_dtype auto: features computed under bf16 autocast are stored as bfloat16
    metas = [json.loads(m.read_text()) for m in (tmp_path / "cache").glob("teacher/*/meta.json")]
    assert [(m["compute"], m["dtype"]) for m in metas] == [("bf16", "bfloat16")]


def test_precision_switches_between_runs_in_one_process(teacher_dir, sst2_dir, tmp_path):
    """fp32, then bf16, then fp32 again in one process (as run_variants and the benchmarks do): the bf16 run
    really trains under autocast (its weights differ from fp32's), and the process-wide accelerate state does
    not leak it into the next fp32 run (bit-identical to the first)."""
    runs = []
    for i, precision in enumerate(["no", "bf16", "no"]):
        train = {"max_steps": 4, "mixed_precision": precision, "eval_every": None}
        cfg = _cfg(
            "kd", teacher_dir, sst2_dir, tmp_path, out=f"run{i}", train=train, teacher={"cache": False}
        )
        runs.append(_weights(distill(cfg, quiet=True).output_dir))
    fp32, bf16, again = runs
    assert fp32.keys() == bf16.keys() == again.keys()
    assert all(torch.equal(fp32[k], again[k]) for k in fp32)
    assert max((fp32[k] - bf16[k]).abs().max().item() for k in fp32) > 1e-6


def test_progress_bars_with_teacher_cache(teacher_dir, sst2_dir, tmp_path, capsys):
    """Not quiet: rich progress for the cache build and the training stage, loss terms shown live."""
    res = distill(
        _cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"max_steps": 3}), quiet=False, progress=True
    )
    err = capsys.readouterr().err
    assert "stage 1/1" in err and "teacher: cached" in err and res.metrics["step"] == 3


def test_stage_teacher_and_stage_outputs(teacher_dir, sst2_dir, tmp_path):
    """A stage may name its own teacher (loaded through the method); every stage of a multi-stage run
    leaves a loadable HF dir with the method's extras under stages/<name>/."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    from bertdistill.methods.kd import KD
    from bertdistill.protocol import Stage
    from bertdistill.registry import METHODS

    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_dir, other)
    loaded: list[tuple[str, str | None]] = []

    class TwoTeachers(KD):
        name = "two_teachers_test"

        def stages(self):
            return [
                Stage("first", max_steps=2, evaluate=False),
                Stage("second", max_steps=2, teacher=str(other)),
            ]

        def load_teacher_model(self, path, stage=None):
            loaded.append((str(path), stage.name if stage else None))
            return super().load_teacher_model(path, stage)

        def export_extras(self, bundle):
            return {"marker": torch.ones(3)}

    METHODS["two_teachers_test"] = TwoTeachers
    try:
        cfg = _cfg("kd", teacher_dir, sst2_dir, tmp_path)
        cfg.method.name = "two_teachers_test"
        res = distill(cfg, quiet=True)
    finally:
        del METHODS["two_teachers_test"]
    assert loaded == [(str(teacher_dir), None), (str(other), "second")]
    for name in ("first", "second"):
        d = res.output_dir / "stages" / name
        AutoModelForSequenceClassification.from_pretrained(d)
        assert torch.equal(load_file(str(d / "extras.safetensors"))["marker"], torch.ones(3))
    # the final model is the last stage's
    final = load_file(str(res.output_dir / "model.safetensors"))
    second = load_file(str(res.output_dir / "stages" / "second" / "model.safetensors"))
    assert all(torch.equal(final[k], second[k]) for k in final)


@pytest.mark.parametrize(
    ("own", "cap", "expected"), [(5, None, 5), (None, 3, 3), (5, 3, 3), (2, 3, 2), (None, None, None)]
)
def test_train_max_steps_caps_a_stage_with_its_own_step_count(own, cap, expected):
    """``train.max_steps`` (``--max-steps``) shortens every stage, also one whose method sets its length (as
    mobilebert's ``layer_steps``): a quick run of any recipe is quick; None = the stage runs by epochs."""
    from bertdistill.config import TrainConfig
    from bertdistill.protocol import Stage
    from bertdistill.training.loop import stage_step_count

    assert stage_step_count(Stage("s", max_steps=own), TrainConfig(max_steps=cap)) == expected


def test_max_steps_reaches_every_stage_of_a_run(teacher_dir, sst2_dir, tmp_path):
    """Through the loop: two stages of 5 and 4 own steps run 3 and 3 under ``train.max_steps=3``."""
    from bertdistill.methods.kd import KD
    from bertdistill.protocol import Stage
    from bertdistill.registry import METHODS

    class TwoStages(KD):
        name = "two_stages_test"

        def stages(self):
            return [Stage("first", max_steps=5, evaluate=False), Stage("second", max_steps=4)]

    METHODS["two_stages_test"] = TwoStages
    try:
        steps = {}
        for cap in (None, 3):
            cfg = _cfg(
                "kd", teacher_dir, sst2_dir, tmp_path / str(cap), train={"max_steps": cap, "log_every": 1}
            )
            cfg.method.name = "two_stages_test"
            history = distill(cfg, quiet=True).history
            steps[cap] = {
                s: sum(1 for r in history if r.get("stage") == s and "loss" in r) for s in ("first", "second")
            }
    finally:
        del METHODS["two_stages_test"]
    assert steps == {None: {"first": 5, "second": 4}, 3: {"first": 3, "second": 3}}


def test_resume_with_changed_config_warns(teacher_dir, sst2_dir, tmp_path, caplog):
    cfg = _cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"max_steps": 2, "save_every": 1})
    distill(cfg, quiet=True)
    more = _cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"max_steps": 3, "save_every": 1})
    with caplog.at_level("WARNING", logger="bertdistill.training.loop"):
        res = distill(more, quiet=True, resume=True)
    assert "train.max_steps: 2 -> 3" in caplog.text
    assert max(r["step"] for r in res.history if "loss" in r) == 3


def test_fused_adam_matches_reference_loop(teacher_dir, sst2_dir, tmp_path):
    """The fused AdamW kernel (default) gives the reference per-tensor update up to float rounding."""
    runs = {}
    for fused in (True, False):
        cfg = _cfg(
            "kd",
            teacher_dir,
            sst2_dir,
            tmp_path,
            out=f"f{fused}",
            train={"max_steps": 4, "fused_adam": fused},
        )
        runs[fused] = _weights(distill(cfg, quiet=True).output_dir)
    assert runs[True].keys() == runs[False].keys()
    moved = 0
    for k, w in runs[True].items():
        torch.testing.assert_close(w, runs[False][k], rtol=1e-4, atol=1e-5)
        moved += 1
    assert moved > 10


def test_build_optimizer_uses_fused_kernel_on_cpu():
    from bertdistill.config import TrainConfig
    from bertdistill.training.optim import build_optimizer

    lin = torch.nn.Linear(3, 2)
    groups = [{"params": list(lin.named_parameters())}]
    assert build_optimizer(groups, TrainConfig(), 1e-3).defaults["fused"] is True
    assert not build_optimizer(groups, TrainConfig(fused_adam=False), 1e-3).defaults.get("fused")


def test_compiled_student_trains_like_eager_and_saves_plain_weights(teacher_dir, sst2_dir, tmp_path):
    """``train.compile: true`` wraps the student in torch.compile for training only: the run gives the eager
    run's weights up to kernel rounding, the saved state dict has the eager names (no ``_orig_mod.``), and an
    unknown mode is a config error."""
    from accelerate.utils import is_compiled_module

    runs = {}
    for compiled in (False, True):
        cfg = _cfg(
            "kd",
            teacher_dir,
            sst2_dir,
            tmp_path,
            out=f"c{compiled}",
            train={"max_steps": 3, "compile": compiled, "eval_every": 3},
        )
        tr = Trainer(cfg, quiet=True)
        assert is_compiled_module(tr.bundle) is compiled
        assert not is_compiled_module(tr.unwrapped())
        res = tr.train()
        runs[compiled] = _weights(res.output_dir)
        assert all(math.isfinite(r["loss"]) for r in res.history if "loss" in r)
    assert runs[True].keys() == runs[False].keys()
    assert not any("_orig_mod" in k for k in runs[True])
    for k, w in runs[True].items():
        torch.testing.assert_close(w, runs[False][k], rtol=1e-3, atol=1e-4)
    assert load_config({**_raw_kd(teacher_dir, sst2_dir, tmp_path), "train": {"compile": "max-autotune"}})
    with pytest.raises(ConfigError, match="train.compile must be true, false or a torch.compile mode"):
        load_config({**_raw_kd(teacher_dir, sst2_dir, tmp_path), "train": {"compile": "fastest"}})


def _raw_kd(teacher_dir, data_dir, tmp_path):
    return recipe("kd", teacher_dir, data_dir, tmp_path / "o", tmp_path / "c")


def test_a_run_without_evaluation_data_says_so(teacher_dir, sst2_dir, tmp_path, caplog):
    """data.eval_split empty: the run trains and saves, and says that its model is unscored and how to score it."""
    cfg = _cfg("kd", teacher_dir, sst2_dir, tmp_path, data={"eval_split": ""}, train={"max_steps": 2})
    with caplog.at_level("WARNING", logger="bertdistill.training.loop"):
        res = distill(cfg, quiet=True)
    assert "accuracy" not in res.metrics and (res.output_dir / "model.safetensors").is_file()
    assert "no labelled evaluation data (data.eval_split '')" in caplog.text
    assert f"bertdistill evaluate {res.output_dir} --data FILE" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bertdistill.training.loop"):
        distill(_cfg("kd", teacher_dir, sst2_dir, tmp_path, out="o2", train={"max_steps": 2}), quiet=True)
    assert "no labelled evaluation data" not in caplog.text


def test_a_custom_task_is_selected_and_reported_on_its_own_metric(tiny_tokenizer_dir, tmp_path):
    """``data.metrics: [macro_f1, accuracy]``: the run evaluates both, keeps the best model by macro F1, and its
    majority-class baseline is a macro F1 too."""
    from conftest import classifier_teacher, save_teacher, write_jsonl_task

    teacher = save_teacher(classifier_teacher(num_labels=3), tmp_path / "teacher", tiny_tokenizer_dir)
    data = write_jsonl_task(tmp_path / "topics", ["a", "b", "c"])
    custom = {"task": "custom", "path": str(data), "text_fields": ["text"], "labels": ["a", "b", "c"],
              "metrics": ["macro_f1", "accuracy"]}  # fmt: skip
    cfg = _cfg("kd", teacher, data, tmp_path, data=custom, train={"max_steps": 4, "eval_every": 2})
    res = distill(cfg, quiet=True)
    evals = [h["eval"] for h in res.history if "eval" in h]
    assert evals and all({"macro_f1", "accuracy"} <= e.keys() for e in evals)
    assert res.metrics["macro_f1"] == max(e["macro_f1"] for e in evals)
    # always predicting the majority class: F1 of 2·p/(1+p) for that class, 0 for the others, over 3 classes
    p = 4 / 12
    assert res.metrics["majority_baseline"] == pytest.approx((2 * p / (1 + p)) / 3)


def test_heavy_truncation_is_warned_about(teacher_dir, sst2_dir, tmp_path, caplog):
    """A max_length that cuts more than a tenth of the training examples is said, with the share; the tiny
    recipe's 32 tokens cut none of the toy sentences."""
    from bertdistill.data.loading import Examples, load_examples, tokenize

    cfg = _cfg("kd", teacher_dir, sst2_dir, tmp_path, data={"max_length": 8}, train={"max_steps": 1})
    with caplog.at_level("WARNING", logger="bertdistill.training.loop"):
        tr = Trainer(cfg, quiet=True)
    train = tr.datasets["train"]
    texts = load_examples(cfg.data, tr.task, "train").texts
    full = tokenize(Examples(texts, None), tr.tokenizer, 512)
    cut = sum(len(ids) > 8 for ids in full.input_ids)
    assert train.truncated == cut and cut / len(train) > 0.1
    assert (
        f"% of the {len(train)} training examples ({cut}) are longer than data.max_length 8 tokens"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="bertdistill.training.loop"):
        tr = Trainer(
            _cfg("kd", teacher_dir, sst2_dir, tmp_path, out="o2", train={"max_steps": 1}), quiet=True
        )
    assert tr.datasets["train"].truncated == 0 and "are longer than data.max_length" not in caplog.text
