"""benchmarks.deploy_bench: the rows of one student's deployed forms, and which one is ``best``."""

import json

import pytest

from benchmarks import deploy_bench
from benchmarks.deploy_bench import deploy_rows


def _row(precision, score, latency, throughput, **kw):
    return {
        "path": "s",
        "precision": precision,
        "metric": "accuracy",
        "score": score,
        "latency_ms_median": latency,
        "throughput_per_s": throughput,
        **kw,
    }


def test_scores_and_speedups_are_against_fp32_eager_and_the_teacher():
    teacher = _row("fp32", 0.90, 10.0, 100.0)
    forms = [
        _row("fp32", 0.85, 4.0, 300.0),
        _row("int8", 0.848, 2.0, 450.0),
        _row("onnx-int8", 0.80, 1.0, 900.0, runtime="onnxruntime-onnx-int8"),
    ]
    rows = deploy_rows("kd", "kd", [teacher, *forms])
    by = {r["precision"]: r for r in rows}
    assert by["fp32"]["score_change"] == 0.0 and by["fp32"]["speedup_vs_fp32"] == 1.0
    assert by["int8"]["score_change"] == pytest.approx(-0.002)
    assert by["int8"]["speedup_vs_fp32"] == pytest.approx(2.0)
    assert by["int8"]["speedup_vs_teacher"] == pytest.approx(5.0)
    assert by["int8"]["throughput_vs_fp32"] == pytest.approx(1.5)
    assert by["onnx-int8"]["runtime"] == "onnxruntime-onnx-int8" and by["int8"]["runtime"] == "torch"
    # the fastest form loses 5 points: not best; int8 (-0.2 point) is the fastest within 0.5 point
    assert [r["precision"] for r in rows if r["best"]] == ["int8"]


def test_fp32_is_best_when_every_faster_form_loses_more_than_half_a_point():
    rows = deploy_rows(
        "b",
        "bilstm",
        [_row("fp32", 0.9, 9.0, 1.0), _row("fp32", 0.8, 3.0, 1.0), _row("bf16", 0.79, 2.0, 1.0)],
    )
    assert [r["precision"] for r in rows if r["best"]] == ["fp32"]


def test_early_exit_rows_are_also_measured_against_fp32_eager_at_full_depth():
    """--speed: every form exits early; the bar is the student as trained (fp32 eager, full depth)."""
    from benchmarks.deploy_bench import early_exit_rows

    teacher = _row("fp32", 0.90, 10.0, 100.0)
    exits = {"mean_exit_layer": 3.0, "flops_speedup": 1.8}
    forms = [
        _row("fp32", 0.85, 5.0, 300.0, metrics=exits, reference_latency_ms_median=8.0),
        _row("onnx-fp32", 0.85, 4.0, 300.0, metrics=exits, reference_latency_ms_median=6.0),
        _row("onnx-int8", 0.842, 2.0, 600.0, metrics=exits, reference_latency_ms_median=3.0),
    ]
    rows = deploy_rows("fastbert", "fastbert", [teacher, *forms])
    early_exit_rows(rows, forms, 0.3, full_score=0.848)
    by = {r["precision"]: r for r in rows}
    assert by["onnx-int8"]["speedup_vs_full_depth"] == pytest.approx(4.0)  # 8 ms fp32 full depth / 2 ms
    assert by["onnx-int8"]["score_change_vs_full_depth"] == pytest.approx(-0.006)
    assert by["onnx-int8"]["full_depth_latency_ms"] == 3.0 and by["fp32"]["mean_exit_layer"] == 3.0
    # -0.8 point against fp32 at the same speed (best: not), -0.6 against full depth: neither bar met
    assert [r["precision"] for r in rows if r["best"]] == ["onnx-fp32"]
    assert [r["precision"] for r in rows if r["best_vs_full_depth"]] == ["onnx-fp32"]
    assert all(r["speed"] == 0.3 for r in rows)


def test_the_method_of_a_run_dir_and_of_an_exported_head(tmp_path):
    """A run dir names its method in ``bertdistill.yaml``; a head written by ``export-task`` has none and names
    it in ``config.json``; a plain HF dir is ``unknown`` (never a crash after the timing is done)."""
    run, head, plain = (tmp_path / n for n in ("run", "head", "plain"))
    for d in (run, head, plain):
        d.mkdir()
    (run / "bertdistill.yaml").write_text("method:\n  name: pkd\n")
    (head / "config.json").write_text(
        json.dumps({"bertdistill_exported_from": {"method": "mtdnn_kd", "head": "mrpc"}})
    )
    (plain / "config.json").write_text("{}")
    assert [deploy_bench.method_of(d) for d in (run, head, plain)] == ["pkd", "mtdnn_kd", "unknown"]


def test_equal_footing_puts_each_form_beside_the_teacher_deployed_the_same_way():
    """--teacher-forms: the student's int8 form 5x the teacher in fp32 eager but only 2.5x the teacher in int8
    (itself 2x its eager self); against the teacher's best form (int8, the fastest within 0.5 point) as well."""
    from benchmarks.deploy_bench import equal_footing

    teacher = _row("fp32", 0.90, 10.0, 100.0)
    student = deploy_rows(
        "kd", "kd", [teacher, _row("fp32", 0.85, 4.0, 300.0), _row("int8", 0.848, 2.0, 450.0)]
    )
    teacher_forms = deploy_rows(
        "teacher",
        "teacher",
        [_row("fp32", 0.90, 10.0, 100.0), _row("fp32", 0.90, 10.0, 100.0), _row("int8", 0.899, 5.0, 200.0)],
    )
    equal_footing(student, teacher_forms)
    by = {r["precision"]: r for r in student}
    assert by["int8"]["speedup_vs_teacher"] == pytest.approx(5.0)
    assert by["int8"]["speedup_vs_teacher_same_form"] == pytest.approx(2.5)
    assert by["fp32"]["speedup_vs_teacher_same_form"] == pytest.approx(2.5)
    assert by["fp32"]["speedup_vs_teacher_best_form"] == pytest.approx(1.25)  # 10/4 over 10/5
    only_fp32 = deploy_rows(
        "kd", "kd", [teacher, _row("fp32", 0.85, 4.0, 300.0), _row("bf16", 0.85, 3.0, 1.0)]
    )
    equal_footing(only_fp32, teacher_forms)
    assert only_fp32[1]["speedup_vs_teacher_same_form"] is None  # the teacher was not timed in bf16


def test_bleu_forms_may_lose_half_a_bleu_point_and_a_teacherless_student_is_its_own_reference():
    """BLEU is in points: the bar is 0.5 BLEU (not 0.005). Without a teacher the rows carry no teacher speed-up."""
    forms = [
        {**_row("fp32", 25.0, 40.0, 10.0), "metric": "bleu"},
        {**_row("int8", 24.6, 20.0, 20.0), "metric": "bleu"},  # -0.4 BLEU: within the bar
        {**_row("onnx-int8", 24.0, 10.0, 40.0), "metric": "bleu"},  # -1.0 BLEU: not
    ]
    rows = deploy_rows("cmlm", "cmlm", forms, has_teacher=False)
    assert [r["precision"] for r in rows if r["best"]] == ["int8"]
    assert all(r["speedup_vs_teacher"] is None and r["teacher_latency_ms"] is None for r in rows)
    assert rows[2]["speedup_vs_fp32"] == pytest.approx(4.0)
