"""`make bench` (benchmarks/report.py): per-task tables gathered from every result file of a task, the
``kind: "deploy"`` schema, and the per-task score-vs-latency plots (byte-identical when re-run). Synthetic result
files in a tmp dir only; nothing is trained or timed."""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.schema import SCHEMA_VERSION, validate

TEACHER_A = "/cache/teachers/minilm-l6-sst2"
TEACHER_B = "/cache/demo/teacher"


def _scores(key: str, values: list[float] | None) -> dict[str, Any]:
    if not values:
        return {key: None, f"{key}_std": None, f"{key}s": None}
    return {
        key: statistics.fmean(values),
        f"{key}_std": statistics.stdev(values) if len(values) > 1 else None,
        f"{key}s": values,
    }


def _row(name: str, method: str, scores: list[float], baseline: list[float], speedup: float, teacher: float):
    return {
        "row": name,
        "method": method,
        "recipe": f"{method}/sst2",
        "overrides": [],
        "seeds": list(range(1, len(scores) + 1)),
        **_scores("student_score", scores),
        **_scores("no_kd_score", baseline),
        "no_kd_row": "nokd",
        "retention": statistics.fmean(scores) / teacher,
        "steps": 10,
        "stage_steps": {"train": 10},
        "train_examples": 100,
        "precision": "fp32",
        "optimizer": "AdamW fused",
        "train_threads": 1,
        "student_params": 7_000_000,
        "student_layers": 4,
        "student_hidden": 192,
        "latency_speedup": speedup,
        "throughput_speedup": speedup + 1,
        "runs": [f"/bench/{name}-seed{s}" for s in range(1, len(scores) + 1)],
    }


def _distill(method: str, teacher: str, teacher_score: float, rows: list[dict], task: str = "sst2") -> dict:
    head = rows[0]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "distill",
        "command": f"python -m benchmarks.run_variants --name {method}",
        "date": "2026-12-03",
        "machine": "test",
        "threads": {"train": 1, "timing": 1},
        "precision": "fp32",
        "optimizer": "AdamW fused",
        "seeds": head["seeds"],
        "steps": 10,
        "train_examples": 100,
        "method": method,
        "task": task,
        "teacher": teacher,
        "student": "4 layers × 192",
        "metric": "accuracy",
        "teacher_score": teacher_score,
        **{k: head[k] for k in ("student_score", "student_score_std", "student_scores")},
        **{k: head[k] for k in ("no_kd_score", "no_kd_score_std", "no_kd_scores")},
        "teacher_params": 22_000_000,
        "student_params": head["student_params"],
        "primary_row": head["row"],
        "baseline_row": "nokd",
        "retention": head["retention"],
        "latency_speedup": head["latency_speedup"],
        "throughput_speedup": head["throughput_speedup"],
        "student_layers": 4,
        "student_hidden": 192,
        "rows": rows,
    }


def _form(
    method: str, student: str, precision: str, score: float, fp32: tuple[float, float], ms: float, best: bool
) -> dict:
    """One deploy row; ``fp32`` = (score, latency ms) of the same model in fp32 eager; the teacher takes 20 ms."""
    return {
        "method": method,
        "student": student,
        "precision": precision,
        "metric": "accuracy",
        "score": score,
        "score_change": score - fp32[0],
        "latency_ms": ms,
        "speedup_vs_fp32": fp32[1] / ms,
        "speedup_vs_teacher": 20.0 / ms,
        "throughput": 1000 / ms,
        "best": best,
    }


def _deploy(student: str = "/bench/tinybert-seed1") -> dict:
    """Three deployed forms of one student: int8 is the fastest but loses 1 point, so bf16 is the best."""
    teacher_ms = 20.0

    def form(precision: str, score: float, ms: float, best: bool) -> dict:
        return _form("tinybert", student, precision, score, (0.80, 5.0), ms, best)

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "deploy",
        "command": "python -m benchmarks.deploy_bench",
        "date": "2026-12-03",
        "machine": "test",
        "version": "0.1.0",
        "commit": "abc1234",
        "threads": {"train": None, "timing": 1},
        "task": "sst2",
        "metric": "accuracy",
        "teacher": TEACHER_A,
        "teacher_score": 0.90,
        "teacher_latency_ms": teacher_ms,
        "rows": [
            form("fp32", 0.80, 5.0, False),
            form("bf16", 0.798, 4.0, True),
            form("int8", 0.79, 2.5, False),
        ],
    }


@pytest.fixture
def results_dir(tmp_path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    nokd = [0.70, 0.72]
    a = _distill(
        "tinybert",
        TEACHER_A,
        0.90,
        [
            _row("tinybert", "tinybert", [0.80, 0.80], nokd, 4.0, 0.90),
            _row("nokd", "finetune", nokd, nokd, 4.0, 0.90),
            _row("kd", "kd", [0.78, 0.76], nokd, 4.0, 0.90),
        ],
    )
    b = _distill("mobilebert", TEACHER_B, 0.85, [_row("progressive", "mobilebert", [0.68], None, 2.0, 0.85)])
    b["baseline_row"] = None
    other_task = _distill("pkd", TEACHER_A, 0.80, [_row("pkd", "pkd", [0.72], None, 2.0, 0.80)], task="mrpc")
    for name, r in {
        "a_tinybert": a,
        "b_mobilebert": b,
        "c_pkd_mrpc": other_task,
        "d_deploy": _deploy(),
    }.items():
        assert validate(r) == [], (name, validate(r))
        (d / f"{name}.json").write_text(json.dumps(r))
    return d


def _table(text: str, heading: str) -> list[list[str]]:
    """The cells of the markdown table under ``heading``."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## ") or line.startswith("### "):
            break
        if line.startswith("| ") and not line.startswith("| method / row"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _run(results: Path, out: Path, plots: Path | None = None) -> str:
    argv = ["--results", str(results), "--out", str(out)]
    if plots is not None:
        argv += ["--plots", str(plots)]
    assert report.main(argv) == 0
    return out.read_text()


def test_one_table_per_task_with_every_files_rows(results_dir, tmp_path):
    text = _run(results_dir, tmp_path / "RESULTS.md")
    sst2 = _table(text, "### sst2 (accuracy)")
    labels = [(r[0], r[1]) for r in sst2]
    # teachers first (two distinct ones, each with its file), then no-KD, kd, the other methods, in file order
    assert labels == [
        (
            "teacher `teachers/minilm-l6-sst2`",
            "a_tinybert, d_deploy",
        ),  # the deploy run's teacher scored the same
        ("teacher `demo/teacher`", "b_mobilebert"),
        ("no-KD / nokd", "a_tinybert"),
        ("kd / kd", "a_tinybert"),
        ("tinybert / tinybert", "a_tinybert"),
        ("mobilebert / progressive", "b_mobilebert"),
    ]
    mrpc = _table(text, "### mrpc (accuracy)")
    assert [r[0] for r in mrpc] == ["teacher `teachers/minilm-l6-sst2`", "pkd / pkd"]
    by_label = {r[0]: r for r in sst2}
    # score ± sample std (n seeds), student shape, params, fp32 latency speed-up
    assert by_label["kd / kd"][2:4] == ["4×192", "77.00 ± 1.41 (n=2)"]
    assert by_label["mobilebert / progressive"][3] == "68.00 (n=1)"
    assert by_label["kd / kd"][5:7] == ["7.00M", "4.00"]
    # the per-file sections are still there
    assert "## a_tinybert: rows" in text and "## b_mobilebert: rows" in text


def test_retention_is_against_each_files_own_teacher(results_dir, tmp_path):
    text = _run(results_dir, tmp_path / "RESULTS.md")
    by_label = {r[0]: r for r in _table(text, "### sst2 (accuracy)")}
    assert by_label["tinybert / tinybert"][4] == f"{100 * 0.80 / 0.90:.1f}%"  # 88.9%
    assert by_label["no-KD / nokd"][4] == f"{100 * 0.71 / 0.90:.1f}%"  # 78.9%
    assert by_label["mobilebert / progressive"][4] == f"{100 * 0.68 / 0.85:.1f}%"  # 80.0%, not 75.6%
    assert by_label["teacher `demo/teacher`"][4] == "-"
    tables = {t.key: t for t in report.task_tables(report.load_results(results_dir)[0])}
    rows = {r.label: r for r in tables["sst2"].rows}
    assert rows["mobilebert / progressive"].retention == pytest.approx(0.8)


def test_same_teacher_files_share_one_teacher_row_different_scores_do_not(results_dir, tmp_path):
    again = json.loads((results_dir / "a_tinybert.json").read_text())
    (results_dir / "a_again.json").write_text(json.dumps(again))
    other_subset = copy.deepcopy(again)
    other_subset["teacher_score"] = 0.89
    other_subset["retention"] = other_subset["student_score"] / 0.89
    (results_dir / "a_subset.json").write_text(json.dumps(other_subset))
    text = _run(results_dir, tmp_path / "RESULTS.md")
    teachers = [r for r in _table(text, "### sst2 (accuracy)") if r[0].startswith("teacher")]
    assert [(r[1], r[3]) for r in teachers] == [
        ("a_again, a_tinybert, d_deploy", "90.00 (n=1)"),
        ("a_subset", "89.00 (n=1)"),
        ("b_mobilebert", "85.00 (n=1)"),
    ]


def test_deploy_column_shows_the_best_deployed_form(results_dir, tmp_path):
    text = _run(results_dir, tmp_path / "RESULTS.md")
    by_label = {r[0]: r for r in _table(text, "### sst2 (accuracy)")}
    # the deploy file's student is the first-seed run dir of the tinybert row: bf16 (int8 loses 1 point)
    assert by_label["tinybert / tinybert"][7] == "5.00 (bf16, d_deploy)"
    assert by_label["kd / kd"][7] == "-" and by_label["mobilebert / progressive"][7] == "-"
    assert "## d_deploy: deployed forms, sst2" in text
    assert (
        "| tinybert | `/bench/tinybert-seed1` | int8 | 79.0 | -1.00 | 2.50 | 2.00 | 8.00 | 400.0 |  |" in text
    )
    # a deployed student that no result row names gets its own row, not silently dropped
    (results_dir / "d_deploy.json").write_text(json.dumps(_deploy("/elsewhere/student")))
    text = _run(results_dir, tmp_path / "RESULTS.md")
    by_label = {r[0]: r for r in _table(text, "### sst2 (accuracy)")}
    assert by_label["tinybert / tinybert"][7] == "-"
    assert by_label["tinybert / `student`"][1:] == [
        "d_deploy",
        "-",
        "79.80 (n=1)",
        f"{100 * 0.798 / 0.90:.1f}%",
        "-",
        "4.00",
        "5.00 (bf16, d_deploy)",
    ]


def test_invalid_deploy_files_fail_validation(results_dir, tmp_path):
    good = _deploy()
    assert validate(good) == []

    def broken(change) -> list[str]:
        r = copy.deepcopy(good)
        change(r)
        return validate(r)

    def two_best(r):
        r["rows"][0]["best"] = True

    def too_lossy_best(r):  # int8 is faster but loses 1 point
        r["rows"][1]["best"], r["rows"][2]["best"] = False, True

    def slower_best(r):  # fp32 is within the limit but bf16 is faster
        r["rows"][0]["best"], r["rows"][1]["best"] = True, False

    def bad_precision(r):
        r["rows"][2]["precision"] = "fp8"

    def wrong_speedup(r):
        r["rows"][2]["speedup_vs_teacher"] = 3.0

    def wrong_change(r):
        r["rows"][1]["score_change"] = 0.0

    def no_fp32(r):
        del r["rows"][0]
        r["rows"][0]["speedup_vs_fp32"] = 1.0

    def missing_field(r):
        del r["teacher_latency_ms"]

    def not_bool(r):
        r["rows"][1]["best"] = 1

    cases = {
        "exactly one per student": two_best,
        "loses": too_lossy_best,
        "is faster": slower_best,
        "precision": bad_precision,
        "speedup_vs_teacher": wrong_speedup,
        "score_change": wrong_change,
        "no fp32 row": no_fp32,
        "teacher_latency_ms": missing_field,
        "best: 1 is not bool": not_bool,
    }
    for expected, change in cases.items():
        problems = broken(change)
        assert any(expected in p for p in problems), (expected, problems)
    # and the report refuses to write anything
    r = copy.deepcopy(good)
    two_best(r)
    (results_dir / "d_deploy.json").write_text(json.dumps(r))
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(results_dir), "--out", str(out)]) == 1
    assert not out.exists() and not (results_dir / "plots").exists()


def test_plots_per_task_are_written_and_byte_identical(results_dir, tmp_path):
    text = _run(results_dir, tmp_path / "RESULTS.md")
    plots = results_dir / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["mrpc.png", "sst2.png"]
    assert "![score vs latency, sst2](results/plots/sst2.png)" in text
    first = {p.name: p.read_bytes() for p in plots.iterdir()}
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) > 5000 for b in first.values())
    assert b"Software" not in first["sst2.png"] and b"matplotlib" not in first["sst2.png"]
    other = tmp_path / "again"
    _run(results_dir, tmp_path / "RESULTS2.md", plots=other)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == first
    # the deployed point changes the picture: the plot is drawn from the table, not a fixed image
    (results_dir / "d_deploy.json").unlink()
    _run(results_dir, tmp_path / "RESULTS.md")
    assert (plots / "sst2.png").read_bytes() != first["sst2.png"]
    assert (plots / "mrpc.png").read_bytes() == first["mrpc.png"]


def test_task_key_names_the_data_set():
    assert report.task_key("sst2") == "sst2"
    assert report.task_key("translation (Multi30k-de-en)") == "multi30k-de-en"


def test_plots_are_byte_identical_across_processes(results_dir, tmp_path):
    """Two fresh interpreters with different hash seeds (set orders) draw the same bytes."""
    root = Path(__file__).resolve().parents[1]
    outs = []
    for i, seed in enumerate(("1", "2")):
        plots = tmp_path / f"plots{i}"
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)]),
        }
        cmd = [sys.executable, "-m", "benchmarks.report", "--results", str(results_dir)]
        cmd += ["--out", str(tmp_path / f"R{i}.md"), "--plots", str(plots)]
        subprocess.run(cmd, check=True, cwd=root, env=env, capture_output=True)
        outs.append({p.name: p.read_bytes() for p in sorted(plots.iterdir())})
    assert list(outs[0]) == ["mrpc.png", "sst2.png"] and outs[0] == outs[1]
    assert (tmp_path / "R0.md").read_text().replace("plots0", "plots1") == (tmp_path / "R1.md").read_text()


def test_a_deploy_row_may_carry_the_teacher_latency_of_its_own_run():
    from benchmarks.schema import validate

    d = _deploy()
    for r in d["rows"]:
        r["teacher_latency_ms"] = 2 * d["teacher_latency_ms"]
        r["speedup_vs_teacher"] = r["teacher_latency_ms"] / r["latency_ms"]
    assert validate(d) == []
    d["rows"][0]["speedup_vs_teacher"] *= 1.5
    assert any("speedup_vs_teacher" in p for p in validate(d))


def test_a_deploy_file_with_the_teachers_own_forms(results_dir, tmp_path):
    """deploy_bench --teacher-forms: the teacher's forms validate with one best, each row's equal-footing ratios
    are checked against them, and the report prints both columns."""
    d = _deploy()

    def tform(precision: str, score: float, ms: float, best: bool) -> dict:
        return _form("teacher", TEACHER_A, precision, score, (0.90, 20.0), ms, best)

    d["teacher_forms"] = [tform("fp32", 0.90, 20.0, False), tform("int8", 0.899, 8.0, True)]
    for r in d["rows"]:
        same = {"fp32": 1.0, "int8": 2.5}.get(r["precision"])
        r["speedup_vs_teacher_same_form"] = None if same is None else r["speedup_vs_teacher"] / same
        r["speedup_vs_teacher_best_form"] = r["speedup_vs_teacher"] / 2.5
    assert validate(d) == []
    (results_dir / "d_deploy.json").write_text(json.dumps(d))
    text = _run(results_dir, tmp_path / "RESULTS.md")
    assert "int8 8.00 ms (89.9, best)" in text
    # int8: 8x the teacher in fp32 eager, 3.2x the teacher in int8 (its best form too); bf16: no teacher bf16
    assert "| int8 | 79.0 | -1.00 | 2.50 | 2.00 | 8.00 | 3.20 | 3.20 | 400.0 |  |" in text
    assert "| bf16 | 79.8 | -0.20 | 4.00 | 1.25 | 5.00 | - | 2.00 | 250.0 | **yes** |" in text
    d["rows"][2]["speedup_vs_teacher_same_form"] = 8.0
    assert any("speedup_vs_teacher_same_form" in p for p in validate(d))
    d["rows"][2]["speedup_vs_teacher_same_form"] = 3.2
    d["teacher_forms"][0]["best"] = True
    assert any("teacher_forms: 2 forms marked best" in p for p in validate(d))


def test_a_deploy_file_without_a_teacher_is_reported_against_the_students_fp32(results_dir, tmp_path):
    """A C-MLM student has no teacher that translates: its deploy file's teacher fields are null. The task table
    gets no ``teacher None`` row, the deployed column says the speed-up is against the student's own fp32, and
    BLEU (in points) is not multiplied by 100."""
    d = _deploy("/deploy/cmlm/student")
    d.update(task="translation", metric="bleu", teacher=None, teacher_score=None, teacher_latency_ms=None)
    for x, (score, change) in zip(d["rows"], [(15.3, 0.0), (15.1, -0.2), (14.0, -1.3)], strict=True):
        x.update(metric="bleu", method="cmlm", score=score, score_change=change, speedup_vs_teacher=None)
    d["rows"][1]["best"], d["rows"][2]["best"] = True, False  # -0.2 BLEU is within half a point
    assert validate(d) == []
    (results_dir / "e_cmlm.json").write_text(json.dumps(d))
    text = _run(results_dir, tmp_path / "RESULTS.md")
    rows = _table(text, "### translation (bleu)")
    assert [r[0] for r in rows] == ["cmlm / `student`"]
    assert rows[0][3] == "15.10 (n=1)" and rows[0][7] == "1.25 (bf16, vs its fp32, e_cmlm)"
    assert "| cmlm | `/deploy/cmlm/student` | int8 | 14.0 | -1.30 | 2.50 | 2.00 | - | 400.0 |  |" in text
    assert "No teacher that does this task" in text


def test_headline_files_name_their_code_and_the_library_changes_since():
    """Each headline file names its commit and the src/ files changed between it and the newest headline commit;
    files without a commit, or with one this checkout lacks, say so instead of being compared."""
    teacher = 0.9
    base = _distill("kd", TEACHER_A, teacher, [_row("kd", "kd", [0.8], [0.7], 2.0, teacher)])
    results = [
        ("kd_sst2_3layer", {**base, "version": "0.1.0", "commit": "a" * 40}),
        ("pkd_sst2_3layer", {**base, "version": "0.1.0", "commit": "b" * 40 + "+dirty"}),
        ("pkd_mrpc_3layer", base),  # no commit recorded
        ("bilstm_sst2", {**base, "version": "0.1.0", "commit": "c" * 40}),  # not in this checkout
        ("not_a_headline", {**base, "version": "0.1.0", "commit": "d" * 40}),
        # a replay of kd_sst2_3layer's commit (the table's last column)
        ("replay_x", {"kind": "replay", "date": "2026-12-06", "against": "e" * 40, "steps_per_stage": 6, "rows": [
            {"file": "kd_sst2_3layer", "commit": "a" * 40, "outcome": "bit-identical", "tensors": 114}]}),
    ]  # fmt: skip
    times = {"a" * 40: 1, "b" * 40: 2, "d" * 40: 3}
    asked = []

    def changes(old: str, new: str) -> list[str]:
        asked.append((old, new))
        return [] if old == new else ["src/bertdistill/training/loop.py", "src/bertdistill/config.py"]

    lines = report.render_headlines(results, when=times.get, changes=changes)
    body = "\n".join(lines)
    assert lines[0] == "## Headline results and their code"
    assert "newest of them, bbbbbbb:" in body  # d is newest but not a headline file's commit
    assert (
        "| kd | kd_sst2_3layer | 0.1.0 @ aaaaaaa | `training/loop.py`, `config.py` | bit-identical to `eeeeeee` "
        "(114 tensors, 6 steps per stage; replay_x) |" in lines
    )
    assert (
        "| pkd | pkd_sst2_3layer | 0.1.0 @ bbbbbbb+dirty | none (and uncommitted changes at the time) | - |"
        in lines
    )
    assert "| pkd | pkd_mrpc_3layer | not recorded | commit not recorded | - |" in lines
    assert "| bilstm | bilstm_sst2 | 0.1.0 @ ccccccc | commit not in this checkout | - |" in lines
    assert not any("not_a_headline" in x for x in lines)
    assert sorted(asked) == [("a" * 40, "b" * 40), ("b" * 40, "b" * 40)]
    assert report.render_headlines([("not_a_headline", base)]) == []


def test_src_changes_reads_this_checkout():
    """The real git helpers on this repository: a commit is dated, and it differs from itself in nothing."""
    head = report.git("rev-parse", "HEAD")
    if head is None:
        pytest.skip("not a git checkout")
    head = head.strip()
    assert report.commit_time(head) is not None
    assert report.commit_time("0" * 40) is None
    assert report.src_changes(head, head) == []
