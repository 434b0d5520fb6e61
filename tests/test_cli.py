import io
import json

import pytest
import yaml

from bertdistill.cli import main
from conftest import recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _teacher_session, sst2_dir):
    """A teacher and a kd student made through the CLI, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    r = recipe("kd", _teacher_session, sst2_dir, tmp / "student", tmp / "cache")
    (tmp / "kd.yaml").write_text(yaml.safe_dump(r))
    assert main(["distill", str(tmp / "kd.yaml"), "--quiet", "--set", "train.max_steps=4"]) == 0
    return tmp


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "kd" in out and "finetune" in out and "Hinton" in out


def test_distill_output_and_overrides(trained):
    cfg = yaml.safe_load((trained / "student" / "bertdistill.yaml").read_text())
    assert cfg["train"]["max_steps"] == 4 and cfg["method"]["name"] == "kd"
    assert (trained / "student" / "model.safetensors").is_file()


def test_finetune_with_flags(tmp_path, teacher_dir, sst2_dir, capsys):
    rc = main(
        [
            "finetune",
            "--model",
            str(teacher_dir),
            "--task",
            "sst2",
            "--data",
            str(sst2_dir),
            "--max-steps",
            "2",
            "--output",
            str(tmp_path / "ft"),
            "--quiet",
            "--set",
            f"teacher.cache_dir={tmp_path / 'c'}",
            "--set",
            "data.max_length=32",  # the tiny model has 64 positions
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "finetune" and "accuracy" in res
    cfg = yaml.safe_load((tmp_path / "ft" / "bertdistill.yaml").read_text())
    assert cfg["student"]["init"] == "pretrained" and cfg["train"]["max_steps"] == 2


def test_evaluate_json(trained, sst2_dir, capsys):
    assert main(["evaluate", str(trained / "student"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "sst2" and 0 <= res["score"] <= 1 and res["examples"] == 32 and res["layers"] == 2


def test_compare_table_and_plot(trained, teacher_dir, sst2_dir, tmp_path, capsys):
    png, js = tmp_path / "p.png", tmp_path / "rows.json"
    rc = main(
        [
            "compare",
            str(teacher_dir),
            str(trained / "student"),
            "--task",
            "sst2",
            "--data",
            str(sst2_dir),
            "--latency-sentences",
            "10",
            "--plot",
            str(png),
            "--json",
            str(js),
            "--labels",
            "teacher",
            "student",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "retention" in out and "teacher" in out and "student" in out
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    rows = json.loads(js.read_text())
    assert rows[1]["retention"] == pytest.approx(rows[1]["score"] / rows[0]["score"])
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["latency_speedup"] > 0


def test_predict_from_stdin(trained, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("a good movie\n\nawful boring film\n"))
    assert main(["predict", str(trained / "student")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == ["a good movie", "awful boring film"]
    assert all(x["label"] in ("0", "1") and sum(x["probs"]) == pytest.approx(1, abs=1e-4) for x in lines)


def test_config_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: kd}\ntrain: {learnin_rate: 1}\n")
    assert main(["distill", str(bad)]) == 2
    assert "unknown key(s) ['learnin_rate'] in train" in capsys.readouterr().err
    assert (
        main(["finetune", "--model", str(tmp_path / "none"), "--task", "sst2", "--data", str(tmp_path)]) == 2
    )


def test_fastbert_speed_flags(tmp_path, teacher_dir, sst2_dir, capsys):
    r = recipe("fastbert", teacher_dir, sst2_dir, tmp_path / "fb", tmp_path / "cache", train={"max_steps": 3})
    (tmp_path / "fb.yaml").write_text(yaml.safe_dump(r))
    assert main(["distill", str(tmp_path / "fb.yaml"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "fb"), "--speed", "0.9", "--timing", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    m = row["metrics"]
    assert 1 <= m["mean_exit_layer"] <= 4 and m["flops_speedup"] > 0 and row["reference_latency_speedup"] > 0
    assert row["options"] == {"speed": 0.9} and row["name"].endswith("@speed=0.9")
    assert main(["evaluate", str(tmp_path / "fb"), "--speed", "0"]) == 0
    assert "mean_exit_layer" in capsys.readouterr().out
    # an option the student does not declare is an error naming the students that take it
    assert (
        main(["evaluate", str(teacher_dir), "--task", "sst2", "--data", str(sst2_dir), "--speed", "0.5"]) == 2
    )
    assert "speed" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "fb"), str(sst2_dir / "test.tsv"), "--speed", "0"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 9 and all(x["exit_layer"] == 4 for x in lines)


def test_collapse_fields_and_warning_golden():
    import numpy as np

    from bertdistill.data.tasks import collapse_fields, collapse_warning, get_task

    sst2, mrpc = get_task("sst2"), get_task("mrpc")
    y = np.array([1, 1, 1, 0])
    f = collapse_fields(sst2, np.array([1, 1, 1, 1]), y)
    assert f == {"majority_baseline": 0.75, "top_class_share": 1.0}
    w = collapse_warning("s", {"accuracy": 0.75, **f}, "accuracy")
    assert w and "100.0% of its predictions are one class" in w and "majority-class baseline 0.7500" in w
    # a model that is right and mixes its classes is not flagged
    ok = collapse_fields(sst2, y, y)
    assert (
        ok["top_class_share"] == 0.75 and collapse_warning("s", {"accuracy": 1.0, **ok}, "accuracy") is None
    )
    # MRPC's F1 of the majority (positive) class: the baseline a collapsed model reaches exactly
    m = collapse_fields(mrpc, np.array([1, 1, 1, 1]), y)
    assert m["majority_baseline"] == pytest.approx(2 * 0.75 / 1.75)
    assert collapse_fields(get_task("stsb"), np.array([0.5]), np.array([0.4])) == {}


def test_evaluate_and_compare_flag_a_model_that_predicts_one_class(
    trained, teacher_dir, sst2_dir, tmp_path, capsys
):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    with torch.no_grad():
        m.classifier.bias.copy_(torch.tensor([-100.0, 100.0]))  # always class 1
    m.save_pretrained(tmp_path / "one-class")
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(tmp_path / "one-class")
    args = ["--task", "sst2", "--data", str(sst2_dir)]
    assert (
        main(["compare", str(teacher_dir), str(tmp_path / "one-class"), *args, "--latency-sentences", "4"])
        == 0
    )
    out = capsys.readouterr().out
    assert "majority-class baseline accuracy" in out
    assert "one-class looks degenerate: 100.0% of its predictions are one class" in out
    assert main(["evaluate", str(tmp_path / "one-class"), *args, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["metrics"]["top_class_share"] == 1.0 and "degenerate" in row["warning"]


def test_distill_control_reports_the_gain_over_the_same_student_without_kd(
    _teacher_session, sst2_dir, tmp_path, capsys
):
    r = recipe("kd", _teacher_session, sst2_dir, tmp_path / "kd", tmp_path / "cache")
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(r))
    assert (
        main(["distill", str(tmp_path / "kd.yaml"), "--quiet", "--control", "--set", "train.max_steps=3"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    main_m = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    ctrl_m = json.loads((tmp_path / "kd" / "control" / "metrics.json").read_text())
    ctrl_cfg = yaml.safe_load((tmp_path / "kd" / "control" / "bertdistill.yaml").read_text())
    main_cfg = yaml.safe_load((tmp_path / "kd" / "bertdistill.yaml").read_text())
    assert ctrl_cfg["method"] == {"name": "finetune"} and ctrl_cfg["train"]["max_steps"] == 3
    assert (
        ctrl_cfg["student"] == main_cfg["student"] and ctrl_cfg["train"]["seed"] == main_cfg["train"]["seed"]
    )
    c = main_m["control"]
    assert c == out["control"] and c["metrics"]["accuracy"] == ctrl_m["accuracy"]
    assert c["gain"] == pytest.approx(main_m["accuracy"] - ctrl_m["accuracy"])
    assert ("distillation gained" in c["verdict"]) == (c["gain"] > 0)
    assert "did not help here" in c["verdict"] or c["gain"] > 0


def test_distill_control_on_a_method_without_one_fails_before_training(
    _teacher_session, sst2_dir, tmp_path, capsys
):
    r = recipe("finetune", _teacher_session, sst2_dir, tmp_path / "ft", tmp_path / "cache")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(r))
    assert main(["distill", str(tmp_path / "ft.yaml"), "--quiet", "--control"]) == 2
    assert "it is the control" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_precision_rows_int8_and_bf16(trained, teacher_dir, sst2_dir, capsys):
    import torch

    from bertdistill.inference import load_student
    from bertdistill.precision import with_precision

    student = trained / "student"
    r = load_student(student)
    q = with_precision(r, "int8")
    assert type(r.model.classifier) is torch.nn.Linear  # the given runner is left as it was
    assert "quantized" in type(q.model.classifier).__module__
    b = with_precision(r, "bf16")
    batch = r.collator()([r.encode(_examples(), 32)[i] for i in range(2)])
    assert b.predict(batch).logits.dtype == torch.bfloat16 and r.predict(batch).logits.dtype == torch.float32
    with pytest.raises(Exception, match="precision must be one of"):
        with_precision(r, "fp8")

    args = ["--task", "sst2", "--data", str(sst2_dir), "--json"]
    assert main(["evaluate", str(student), *args, "--precision", "fp32", "int8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [x["precision"] for x in rows] == ["fp32", "int8"] and rows[1]["name"].endswith("[int8]")
    assert rows[1]["retention"] == pytest.approx(rows[1]["score"] / rows[0]["score"])
    js = trained / "cmp.json"
    assert (
        main(
            [
                "compare",
                str(teacher_dir),
                str(student),
                *args[:4],
                "--json",
                str(js),
                "--latency-sentences",
                "3",
                "--precision",
                "fp32",
                "bf16",
            ]
        )
        == 0
    )
    rows = json.loads(js.read_text())
    assert [x["precision"] for x in rows] == ["fp32", "fp32", "bf16"]
    assert rows[2]["latency_speedup"] > 0 and rows[2]["name"].endswith("[bf16]")


def _examples():
    from bertdistill.data.loading import Examples

    return Examples([("a fine film",), ("dull and long",)], [1, 0], "test")


def test_native_bf16_on_x86_means_amx_or_avx512_bf16(monkeypatch):
    """``cpu_bf16`` (what ``train.mixed_precision=bf16`` logs and the demo's ``--precision auto`` reads): on x86,
    native bf16 is AMX or AVX-512 BF16. oneDNN's "bf16 supported" also holds on AVX-512 CPUs that have neither
    (bf16 emulated, several times slower than fp32), so it must not decide there."""
    from types import SimpleNamespace

    from bertdistill import precision

    def cpu(amx: bool, avx512_bf16: bool) -> SimpleNamespace:
        return SimpleNamespace(
            _is_amx_tile_supported=lambda: amx, _is_avx512_bf16_supported=lambda: avx512_bf16
        )

    assert precision._x86_bf16_sets(cpu(False, False)) == []
    assert precision._x86_bf16_sets(cpu(True, True)) == ["AMX", "AVX-512 BF16"]
    assert precision._x86_bf16_sets(cpu(False, True)) == ["AVX-512 BF16"]
    assert precision._x86_bf16_sets(SimpleNamespace()) is None  # a torch without the probes

    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for amx, native in ((False, False), (True, True)):
        monkeypatch.setattr(precision, "_x86_bf16_sets", lambda probe=None, amx=amx: ["AMX"] if amx else [])
        precision.cpu_bf16.cache_clear()
        got, why = precision.cpu_bf16()
        assert got is native
        assert ("natively (AMX" in why) if native else ("no native bf16" in why and "emulated" in why)
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")  # no x86 probes: oneDNN's check
    precision.cpu_bf16.cache_clear()
    assert precision.cpu_bf16()[0] is True
    precision.cpu_bf16.cache_clear()
