"""Model cards of finished runs and ``bertdistill push`` (the hub mocked at ``huggingface_hub.HfApi``)."""

import json
import shutil
from typing import ClassVar

import huggingface_hub
import pytest
import yaml

from bertdistill.cli import main
from bertdistill.model_card import build_card, count_params
from conftest import recipe


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _teacher_session, second_teacher_dir, sst2_dir, stsb_dir):
    """Tiny finished runs: kd (with its no-KD control, teacher with a recorded score), bilstm, fastbert,
    mtdnn_kd (multi-task)."""
    tmp = tmp_path_factory.mktemp("card")
    teacher = tmp / "teacher-sst2"
    shutil.copytree(_teacher_session, teacher)
    (teacher / "metrics.json").write_text(json.dumps({"task": "sst2", "method": "finetune", "accuracy": 0.8}))
    out = {}
    for name, method, extra, teacher_dir in (
        ("kd", "kd", ["--control"], teacher),
        ("bilstm", "bilstm", [], _teacher_session),
        ("fastbert", "fastbert", [], _teacher_session),
    ):
        r = recipe(method, teacher_dir, sst2_dir, tmp / name, tmp / "cache", train={"max_steps": 3})
        if method == "bilstm":
            r["method"].update({"hidden_size": 16, "mlp_size": 16})
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(r))
        assert main(["distill", str(tmp / f"{name}.yaml"), "--quiet", *extra]) == 0
        out[name] = tmp / name
    r = recipe("mtdnn_kd", _teacher_session, sst2_dir, tmp / "mtdnn", tmp / "cache", train={"max_steps": 4})
    r["method"]["tasks"] = [
        {"task": "sst2", "path": str(sst2_dir), "teachers": [str(_teacher_session), str(second_teacher_dir)]},
        {"task": "stsb", "path": str(stsb_dir)},
    ]
    r["teacher"] = {"cache_dir": str(tmp / "cache")}
    r["student"] = {"init": "random", "path": str(_teacher_session), "num_layers": 2}
    r["data"] = {"task": "multitask", "max_length": 32}
    (tmp / "mtdnn.yaml").write_text(yaml.safe_dump(r))
    assert main(["distill", str(tmp / "mtdnn.yaml"), "--quiet"]) == 0
    out["mtdnn"] = tmp / "mtdnn"
    return out


def split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def test_kd_card_has_scores_teacher_retention_and_control(runs):
    d = runs["kd"]
    metrics = json.loads((d / "metrics.json").read_text())
    front, body = split(build_card(d, "me/kd-sst2"))
    assert front["library_name"] == "bertdistill"
    assert {"bertdistill", "knowledge-distillation", "kd"} <= set(front["tags"])
    assert front["datasets"] == ["nyu-mll/glue"] and "base_model" not in front  # local teacher: no hub id
    (result,) = front["model-index"][0]["results"]
    assert result["dataset"]["config"] == "sst2" and result["dataset"]["split"] == "validation"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"accuracy": metrics["accuracy"]}
    assert f"| accuracy (main) | {metrics['accuracy']:.4f} |" in body
    assert "teacher accuracy: 0.8000" in body
    assert f"retention (student / teacher accuracy): {100 * metrics['accuracy'] / 0.8:.1f}%" in body
    assert f"student parameters: {count_params(d) / 1e6:.2f}M ({count_params(d):,})" in body
    control = metrics["control"]["metrics"]["accuracy"]
    assert "No-distillation control" in body
    assert f"| accuracy | {metrics['accuracy']:.4f} | {control:.4f} |" in body
    assert "docs/methods/kd.md" in body and "AutoModelForSequenceClassification" in body
    assert "max_steps=3" in body and "optimizer steps per stage: train 3" in body
    assert str(d.parent) not in body  # no local paths on a public card
    assert "latency / throughput speed-up over the teacher: not measured" in body


def test_bilstm_card_loads_with_bertdistill_and_has_no_control(runs):
    front, body = split(build_card(runs["bilstm"], "me/bl"))
    assert "bilstm" in front["tags"]
    assert "No-distillation control" not in body
    assert "load_student" in body and "AutoModel" not in body
    assert "teacher score and retention: not measured" in body


def test_fastbert_card_reports_the_recorded_speedup(runs):
    metrics = json.loads((runs["fastbert"] / "metrics.json").read_text())
    front, body = split(build_card(runs["fastbert"], "me/fb"))
    assert "fastbert" in front["tags"]
    assert f"FLOPs speed-up recorded by the run (early exit): {metrics['flops_speedup']:.2f}x" in body
    types = {m["type"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert "flops_speedup" not in types and "accuracy" in types


def test_multitask_card_has_per_task_scores_and_teachers(runs):
    metrics = json.loads((runs["mtdnn"] / "metrics.json").read_text())
    front, body = split(build_card(runs["mtdnn"], "me/mt"))
    got = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert got == {k: metrics[k] for k in ("sst2/accuracy", "stsb/pearson", "stsb/spearman", "average")}
    assert "| average (main) |" in body and "sst2: `teacher0 (a local model dir)`" in body
    assert "load_student" in body and str(runs["mtdnn"].parent) not in body


def test_only_sure_hub_ids_become_base_model(tmp_path, monkeypatch):
    from bertdistill.model_card import _hub_id

    assert _hub_id("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert _hub_id("runs/teacher") is None  # a local dir
    assert _hub_id("runs/gone") is None  # neither local nor in the HF cache: not guessed to be a hub id
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f: f"/cache/{repo}/{f}")
    assert _hub_id("bert-org/bert-tiny") == "bert-org/bert-tiny"


class FakeApi:
    calls: ClassVar[list] = []
    fail: ClassVar[Exception | None] = None
    keep: ClassVar = None

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, **kw):
        if FakeApi.fail is not None:
            raise FakeApi.fail
        FakeApi.calls.append(("create_repo", kw, self.token))
        return f"https://huggingface.co/{kw['repo_id']}"

    def upload_folder(self, **kw):
        staged = FakeApi.keep / kw["repo_id"].replace("/", "--")
        shutil.copytree(kw["folder_path"], staged)
        FakeApi.calls.append(("upload_folder", kw, sorted(p.name for p in staged.iterdir()), staged))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    FakeApi.calls, FakeApi.fail, FakeApi.keep = [], None, tmp_path
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


@pytest.mark.parametrize("name", ["kd", "bilstm", "mtdnn"])
def test_push_uploads_the_model_files_only_and_they_load(runs, hub, capsys, name):
    d = runs[name]
    assert (d / "checkpoints").is_dir()
    assert main(["push", str(d), "--repo-id", f"me/{name}", "--private", "--token", "t0k"]) == 0
    (_, create, token), (_, upload, files, staged) = hub.calls
    assert create == {"repo_id": f"me/{name}", "private": True, "exist_ok": True, "repo_type": "model"}
    assert token == "t0k" and upload["repo_id"] == f"me/{name}"
    own = {"kd": "config.json", "bilstm": "vocab.json", "mtdnn": "multitask.json"}[name]
    assert {"README.md", "model.safetensors", own, "bertdistill.yaml", "metrics.json"} <= set(files)
    assert not {"checkpoints", "best", "control", "log.jsonl"} & set(files)
    assert (d / "README.md").read_text() == (staged / "README.md").read_text()
    assert json.loads(capsys.readouterr().out)["files"] == files
    from bertdistill import load_student

    runner = load_student(staged)  # what was uploaded is enough to run the student
    assert runner is not None
    if name == "kd":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        AutoModelForSequenceClassification.from_pretrained(staged)
        AutoTokenizer.from_pretrained(staged)


def test_card_only_writes_the_card_and_uploads_nothing(runs, hub, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(runs["bilstm"], d)
    assert main(["push", str(d), "--repo-id", "me/bl", "--card-only"]) == 0
    assert hub.calls == [] and (d / "README.md").read_text() == build_card(d, "me/bl")
    from bertdistill import push_to_hub

    (d / "README.md").unlink()
    result = push_to_hub(d, "me/bl", card_only=True)  # the Python API does the same
    assert result["url"] is None and "README.md" in result["files"] and (d / "README.md").is_file()
    assert hub.calls == []


def test_not_a_finished_run_is_a_one_line_error(tmp_path, hub, capsys):
    (tmp_path / "bertdistill.yaml").write_text("method: {name: kd}\n")
    assert main(["push", str(tmp_path), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a finished bertdistill run" in err and len(err.splitlines()) == 1
    assert hub.calls == []


def test_no_network_is_a_one_line_error(runs, hub, capsys):
    hub.fail = ConnectionError("Failed to resolve 'huggingface.co'\nmore lines")
    assert main(["push", str(runs["bilstm"]), "--repo-id", "me/bl"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ConnectionError" in err and "Traceback" not in err


def test_bad_repo_id_is_refused(runs, hub, capsys):
    assert main(["push", str(runs["bilstm"]), "--repo-id", "no-slash"]) == 2
    assert "USER/NAME" in capsys.readouterr().err
