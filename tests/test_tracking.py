"""``train.log_with``: accelerate's trackers get the loss terms, lr and eval metrics (read back from
TensorBoard's event files), the config as hyperparameters, both stages of a multi-stage method, a resumed run
continues the same curves; a missing package and an unknown tracker are one-line errors."""

import json
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from bertdistill import load_config
from bertdistill.config import ConfigError
from bertdistill.training.loop import distill
from conftest import kill_then_resume, recipe


def _cfg(method, teacher_dir, data_dir, tmp_path, **sections):
    r = recipe(method, teacher_dir, data_dir, tmp_path / "out", tmp_path / "cache", **sections)
    r["train"]["log_with"] = "tensorboard"
    return r


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] of the run's scalar events (the top-level event files, not the hparams run)."""
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def _resume_after_kill(cfg, monkeypatch, kill_at: int, before_save: bool = False):
    """:func:`conftest.kill_then_resume`, returning the killed run's ``log.jsonl`` records. TensorBoard orders a
    run's event files by name (start second, then a counter): the resume waits for the next second, as it would
    be in life."""
    out = cfg.resolved_output_dir()
    killed: list[dict] = []

    def read_log_and_wait():
        killed.extend(_log(out))
        time.sleep(1.05 - time.time() % 1)

    _, resumed = kill_then_resume(cfg, monkeypatch, kill_at, out, before_save, read_log_and_wait)
    return killed, resumed


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_kd_logs_terms_lr_and_eval_to_tensorboard(teacher_dir, sst2_dir, tmp_path):
    res = distill(load_config(_cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"epochs": 2})), quiet=True)
    run_dir = tmp_path / "out" / "tracking" / "out"
    scalars = _scalars(run_dir)
    records = _log(res.output_dir)
    train_recs = [r for r in records if "loss" in r]
    eval_recs = [r for r in records if "eval" in r]
    assert train_recs and eval_recs
    for name in ("kd", "ce", "loss", "lr"):
        assert [s for s, _ in scalars[f"train/{name}"]] == [r["step"] for r in train_recs], name
        assert [v for _, v in scalars[f"train/{name}"]] == pytest.approx(
            [r[name] for r in train_recs], rel=1e-5
        )
    assert [s for s, _ in scalars["eval/accuracy"]] == [r["step"] for r in eval_recs]
    assert [v for _, v in scalars["eval/accuracy"]] == pytest.approx(
        [r["eval"]["accuracy"] for r in eval_recs]
    )
    # the resolved config, flattened, as the run's hyperparameters (accelerate writes them next to the run)
    (hparams,) = run_dir.glob("*/hparams.yml")
    hp = yaml.safe_load(hparams.read_text())
    assert hp["method.name"] == "kd" and hp["train.lr"] == pytest.approx(1e-3) and hp["data.task"] == "sst2"
    assert hp["train.log_with"] == '["tensorboard"]'
    # and in TensorBoard's hparams plugin (torch writes them as a sub-run of the run)
    tb_hparams = {}
    for sub in filter(Path.is_dir, run_dir.iterdir()):
        ea = EventAccumulator(str(sub))
        ea.Reload()
        if "_hparams_/session_start_info" in ea.summary_metadata:
            content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
            tb_hparams = dict(
                plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
            )
    assert tb_hparams["method.name"].string_value == "kd"
    assert tb_hparams["train.batch_size"].number_value == 16


def test_no_tracker_writes_nothing(teacher_dir, sst2_dir, tmp_path):
    r = recipe("kd", teacher_dir, sst2_dir, tmp_path / "out", tmp_path / "cache", train={"max_steps": 2})
    distill(load_config(r), quiet=True)
    assert not (tmp_path / "out" / "tracking").exists()


def test_tinybert_logs_both_stages_on_one_step_axis(teacher_dir, sst2_dir, tmp_path):
    r = _cfg(
        "tinybert",
        teacher_dir,
        sst2_dir,
        tmp_path,
        train={"batch_size": 8, "tracking_dir": str(tmp_path / "tb")},
    )
    r["method"].update(intermediate_lr=1e-3, prediction_lr=1e-3, intermediate_steps=4, prediction_steps=4)
    distill(load_config(r), quiet=True)
    scalars = _scalars(tmp_path / "tb" / "out")
    stage_tags = {t.split("/")[1] for t in scalars if t.startswith("train/")}
    assert stage_tags == {"task_intermediate", "task_prediction"}
    first = [s for t, v in scalars.items() if t.startswith("train/task_intermediate/") for s, _ in v]
    second = [s for t, v in scalars.items() if t.startswith("train/task_prediction/") for s, _ in v]
    assert max(first) == 4 and min(second) > 4 and max(second) == 8  # global steps: no collision
    assert "train/task_prediction/lr" in scalars
    assert any(t.startswith("eval/task_prediction/") for t in scalars)


def test_mobilebert_resumed_mid_stage_logs_every_stage_once(teacher_dir, sst2_dir, tmp_path, monkeypatch):
    shape = {"intra_bottleneck_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "embedding_size": 8,
             "num_feedforward_networks": 2}  # fmt: skip
    r = _cfg(
        "mobilebert",
        teacher_dir,
        sst2_dir,
        tmp_path,
        train={"save_every": 2, "batch_size": 8, "log_every": 1},
    )
    r["student"] = {"num_layers": None, "config_overrides": shape}
    r["method"].update(preset=None, transfer_lr=1e-3, task_lr=1e-3, layer_steps=3, task_steps=2)
    cfg = load_config(r)
    killed, _ = _resume_after_kill(cfg, monkeypatch, 3)  # killed in transfer_1 after its step-5 checkpoint
    assert [r["step"] for r in killed if "loss" in r] == [1, 2, 3, 4, 5]
    scalars = _scalars(tmp_path / "out" / "tracking" / "out")
    steps = {t.split("/")[1]: [s for s, _ in v] for t, v in scalars.items() if t.endswith("/loss")}
    # each stage on its own tags, on one global step axis, every step once across the kill
    assert set(steps) == {"transfer_0", "transfer_1", "transfer_2", "transfer_3", "task"}, steps
    assert steps["transfer_0"] == [1, 2, 3] and steps["transfer_1"] == [4, 5, 6]
    assert steps["task"] == [13, 14]
    assert sorted(s for v in steps.values() for s in v) == list(range(1, max(steps["task"]) + 1))
    assert scalars["train/task/lr"] and any(t.startswith("eval/task/") for t in scalars)


def test_resume_continues_the_curves(teacher_dir, sst2_dir, tmp_path, monkeypatch):
    cfg = load_config(_cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"epochs": 2, "save_every": 2}))
    killed, resumed = _resume_after_kill(cfg, monkeypatch, 3, before_save=True)  # steps 2, 4 saved; 6 logged
    assert [r["step"] for r in killed if "loss" in r] == [2, 4, 6]
    scalars = _scalars(tmp_path / "out" / "tracking" / "out")
    # log.jsonl keeps both runs' records (step 6 twice); the tracker hides the killed run's events after the
    # checkpoint it resumes (step 4): each step once, the resumed run's value for step 6
    records = [r for r in _log(tmp_path / "out") if "loss" in r]
    assert [r["step"] for r in records] == [2, 4, 6, 6, 8, 10, 12]
    train = {r["step"]: r["loss"] for r in records}  # the later record of a step wins
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([train[s] for s in sorted(train)], rel=1e-5)
    assert resumed.metrics["step"] in {s for s, _ in scalars["eval/accuracy"]}


def test_missing_package_is_a_one_line_error(teacher_dir, sst2_dir, tmp_path, monkeypatch):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_tensorboard_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        distill(load_config(_cfg("kd", teacher_dir, sst2_dir, tmp_path)), quiet=True)
    assert str(e.value) == "train.log_with: tensorboard needs `pip install tensorboard`"
    assert not (tmp_path / "out").exists()  # stopped before training


@pytest.mark.parametrize("value", ["tensorbord", ["tensorboard", "neptune"]])
def test_unknown_tracker_names_the_valid_ones(teacher_dir, sst2_dir, tmp_path, value):
    r = recipe("kd", teacher_dir, sst2_dir, tmp_path / "out", tmp_path / "cache", train={"log_with": value})
    with pytest.raises(ConfigError) as e:
        load_config(r)
    msg = str(e.value)
    assert "\n" not in msg and "unknown tracker" in msg and "tensorboard, wandb" in msg and "mlflow" in msg


@pytest.mark.parametrize(
    "value, expected",
    [
        ("tensorboard", ["tensorboard"]),
        ("tensorboard,mlflow", ["tensorboard", "mlflow"]),
        (["wandb"], ["wandb"]),
        (None, []),
        ("none", []),
    ],
)
def test_log_with_forms(teacher_dir, sst2_dir, tmp_path, value, expected):
    r = recipe("kd", teacher_dir, sst2_dir, tmp_path / "out", tmp_path / "cache", train={"log_with": value})
    assert load_config(r).train.log_with == expected
    assert load_config(r, [f"train.log_with={value or 'null'}"]).train.log_with == expected


def test_control_run_is_its_own_project(teacher_dir, sst2_dir, tmp_path):
    # the control trains in the same process after the distilled run finished its trackers
    r = _cfg("kd", teacher_dir, sst2_dir, tmp_path, train={"max_steps": 4, "control": True})
    distill(load_config(r), quiet=True)
    distilled = _scalars(tmp_path / "out" / "tracking" / "out")
    control = _scalars(tmp_path / "out" / "control" / "tracking" / "control")
    assert "train/kd" in distilled and "train/kd" not in control
    assert [s for s, _ in distilled["train/loss"]] == [s for s, _ in control["train/loss"]] == [2, 4]
