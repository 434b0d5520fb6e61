"""The benchmark harness (benchmarks/harness.py) and the result schema (benchmarks/schema.py): a finished run is
reused only when its full config and inputs match, scores are averaged with the right std, result files are
validated, and report.py renders them. Tiny random models, a few optimizer steps; nothing is timed for real."""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gitinfo, report
from benchmarks import harness as H
from benchmarks.schema import SCHEMA_VERSION, check, validate
from bertdistill import load_config
from conftest import recipe

STEPS = ["train.max_steps=2", "train.log_every=1"]


@pytest.fixture
def kd_config(tmp_path, teacher_dir, sst2_dir):
    return load_config(recipe("kd", teacher_dir, sst2_dir, tmp_path / "unused", tmp_path / "cache"), STEPS)


@pytest.fixture
def count_trainings(monkeypatch):
    """Counts the runs that actually train (the harness calls the CLI's ``distill``)."""
    import bertdistill.training.loop as loop

    calls = {"n": 0}
    original = loop.distill

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    monkeypatch.setattr(loop, "distill", counting)
    return calls


# ----------------------------------------------------------------------------------------------- run or reuse


def test_reuse_only_on_full_config_match(tmp_path, kd_config, count_trainings):
    out = tmp_path / "run"
    first = H.run_or_reuse(kd_config, out)
    assert not first.reused and count_trainings["n"] == 1 and H.is_finished(out)

    # the same config (another output_dir in the recipe does not matter) → reused, nothing trains
    same = load_config(kd_config, ["output_dir=/somewhere/else"])
    again = H.run_or_reuse(same, out)
    assert again.reused and count_trainings["n"] == 1 and again.metrics == first.metrics

    # one hyperparameter changed → retrained, and the run on disk now has the new value
    changed = load_config(kd_config, ["train.lr=2e-3"])
    with pytest.raises(H.ConfigMismatchError, match=r"train\.lr"):
        H.run_or_reuse(changed, out, on_mismatch="error")
    assert count_trainings["n"] == 1
    retrained = H.run_or_reuse(changed, out)
    assert not retrained.reused and count_trainings["n"] == 2
    assert load_config(out / "bertdistill.yaml").train.lr == 2e-3

    # a method hyperparameter counts too
    alpha = load_config(changed, ["method.alpha=0.9"])
    assert not H.run_or_reuse(alpha, out).reused and count_trainings["n"] == 3
    assert H.run_or_reuse(alpha, out).reused and count_trainings["n"] == 3


def test_a_finished_runs_checkpoints_are_dropped_unless_kept(tmp_path, kd_config, count_trainings):
    """A benchmark's finished runs keep their model and logs, not their resumable checkpoints (optimizer state);
    a run asked to keep them keeps them; both are reused afterwards."""
    dropped, kept = tmp_path / "dropped", tmp_path / "kept"
    H.run_or_reuse(kd_config, kept, keep_checkpoints=True)
    assert [p.name for p in (kept / "checkpoints").iterdir() if p.name.startswith("step-")]
    H.run_or_reuse(kd_config, dropped)
    assert not (dropped / "checkpoints").exists()
    assert H.is_finished(dropped) and (dropped / "model.safetensors").is_file()
    assert H.run_or_reuse(kd_config, dropped).reused and count_trainings["n"] == 2


def test_changed_input_retrains(tmp_path, teacher_dir, sst2_dir, count_trainings):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    cfg = load_config(recipe("kd", teacher, sst2_dir, tmp_path / "x", tmp_path / "cache"), STEPS)
    out = tmp_path / "run"
    H.run_or_reuse(cfg, out)
    assert H.run_or_reuse(cfg, out).reused
    # the teacher rewritten in place (same path, same config): not the same run any more
    weights = teacher / "model.safetensors"
    st = weights.stat()
    # the same bytes copied afresh (a new machine, a re-materialised data dir): still the same run
    shutil.copyfile(weights, tmp_path / "w")
    os.replace(tmp_path / "w", weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert H.inputs_diff(out, cfg) == [] and H.run_or_reuse(cfg, out).reused
    # other bytes of the same size, at the same path
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert H.inputs_diff(out, cfg) and H.inputs_diff(out, cfg)[0][0] == "input teacher.path"
    assert not H.run_or_reuse(cfg, out).reused and count_trainings["n"] == 2
    # a run stamped by the old size+mtime format is not comparable: retrained, never silently reused
    stamps = json.loads((out / H.INPUTS_FILE).read_text())
    stamps.pop("_format")
    (out / H.INPUTS_FILE).write_text(json.dumps(stamps))
    assert H.inputs_diff(out, cfg)[0][0] == "input stamps"
    assert not H.run_or_reuse(cfg, out).reused and count_trainings["n"] == 3


def test_unfinished_run_is_not_reused(tmp_path, kd_config, count_trainings):
    out = tmp_path / "run"
    H.run_or_reuse(kd_config, out)
    (out / "metrics.json").unlink()  # as if killed before the end
    assert not H.is_finished(out)
    assert not H.run_or_reuse(kd_config, out).reused and count_trainings["n"] == 2
    # a later run that started in the dir (newer log) and died: the old metrics.json does not make it finished
    log = out / "log.jsonl"
    st = (out / "metrics.json").stat()
    os.utime(log, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert not H.is_finished(out)


def test_refuses_to_clear_a_dir_that_is_not_a_run(tmp_path, kd_config):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(H.ConfigMismatchError, match="not a bertdistill run"):
        H.run_or_reuse(kd_config, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_rows_trained_elsewhere_are_linked_only_on_a_config_match(
    tmp_path, teacher_dir, sst2_dir, count_trainings
):
    """``--link-from``: rows trained in parallel under another bench name are used in place (no retraining)
    when their full config matches; a run of another config there is not used, the row trains in its own dir."""
    common = [
        f"teacher.path={teacher_dir}",
        f"data.path={sst2_dir}",
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "data.max_train_examples=16",
        "data.max_eval_examples=16",
        "data.max_length=32",
        *STEPS,
    ]
    rows = [H.Row("kd", "kd/sst2")]
    elsewhere = H.run_rows(rows, [1], tmp_path / "core0", common, quiet=True, log=lambda _: None)
    assert count_trainings["n"] == 1
    linked = H.run_rows(
        rows, [1], tmp_path / "table", common, link_from=[tmp_path / "core0"], log=lambda _: None
    )
    assert count_trainings["n"] == 1 and linked["kd"][0].dir == elsewhere["kd"][0].dir
    assert not (tmp_path / "table" / "kd-seed1").exists()
    other = [H.Row("kd", "kd/sst2", ("method.alpha=0.3",))]
    trained = H.run_rows(
        other, [1], tmp_path / "table", common, link_from=[tmp_path / "core0"], log=lambda _: None
    )
    assert count_trainings["n"] == 2 and trained["kd"][0].dir == tmp_path / "table" / "kd-seed1"


def test_rows_and_parse(tmp_path, teacher_dir, sst2_dir):
    row = H.parse_row("no_kd=finetune:kd/sst2:train.lr=3e-4,data.max_length=32")
    assert row.finetune and row.overrides == ("train.lr=3e-4", "data.max_length=32")
    cfg = row.config(7, [f"teacher.path={teacher_dir}"], tmp_path / "o")
    assert cfg.method.name == "finetune" and cfg.train.seed == 7 and cfg.train.lr == 3e-4
    kd = H.Row("kd", "kd/sst2")
    base = kd.no_kd()
    a, b = kd.config(1).to_dict(), base.config(1).to_dict()
    assert b["method"] == {"name": "finetune"} and base.recipe_label() == "finetune:kd/sst2"
    assert {k: v for k, v in a.items() if k != "method"} == {k: v for k, v in b.items() if k != "method"}
    seeded = H.Row("aug", "kd/sst2", ("method.temperature={seed}",))
    assert seeded.config(3).method.temperature == 3


def test_rows_read_the_shared_data_never_the_hub(monkeypatch):
    """Shipped recipes leave data to the hub or $BERTDISTILL_DATA_DIR; a benchmark row names its files."""
    monkeypatch.delenv("BERTDISTILL_DATA_DIR", raising=False)
    assert H.Row("kd", "kd/sst2").config(1).data.path == str(H.SHARED / "SST-2")
    tasks = H.Row("mt", "mtdnn_kd/glue3").config(1).method.tasks
    assert [t.path for t in tasks] == [str(H.SHARED / f) for f in ("SST-2", "MRPC", "STS-B")]
    vectors = H.Row("bilstm", "bilstm/mrpc").config(1).method.vectors
    assert vectors == str(H.SHARED / "glove-6B-50d-subset" / "glove.6B.50d.subset.txt.gz")
    mine = {"data": {"task": "sst2", "path": "mine"}, "method": {"name": "kd"}}
    assert H.with_shared_data(mine) == mine


# ----------------------------------------------------------------------------------------------- statistics


def test_stats_mean_and_sample_std():
    s = H.stats([0.8, 0.9, 1.0])
    assert s.mean == pytest.approx(0.9)
    assert s.std == pytest.approx(0.1)  # sample std: sqrt((0.01 + 0 + 0.01) / (3 - 1))
    assert H.stats([0.7]).std is None
    assert H.score_fields("student_score", [0.5, 0.7]) == {
        "student_score": pytest.approx(0.6),
        "student_score_std": pytest.approx(statistics.stdev([0.5, 0.7])),
        "student_scores": [0.5, 0.7],
    }
    assert H.score_fields("no_kd_score", None) == {
        "no_kd_score": None,
        "no_kd_score_std": None,
        "no_kd_scores": None,
    }


def test_stage_steps_from_log():
    log = [
        {"stage": "a", "step": 2, "loss": 1},
        {"stage": "a", "step": 4, "loss": 1},
        {"stage": "a", "step": 4, "eval": {}},
        {"stage": "b", "step": 7, "loss": 1},
    ]
    assert H.stage_steps(log) == {"a": 4, "b": 3}


# ----------------------------------------------------------------------------------------------- a whole table


@pytest.fixture(scope="module")
def table_result(tmp_path_factory, _teacher_session, sst2_dir):
    """kd vs no-KD over two seeds through the harness (tiny models, 2 steps), timed on a few sentences."""
    tmp = tmp_path_factory.mktemp("table")
    base = recipe("kd", _teacher_session, sst2_dir, tmp / "x", tmp / "cache")
    kd = H.Row("kd", base, label="tiny kd")
    table = H.Table(
        name="tiny",
        teacher=_teacher_session,
        rows=[kd, kd.no_kd()],
        seeds=[1, 2],
        common=STEPS,
        primary="kd",
        baseline="no_kd",
    )
    result = H.run_table(
        table,
        work=tmp / "work",
        timing=H.TimingOptions(threads=1, n_latency=4, max_length=32),
        log=lambda _: None,
    )
    assert result is not None
    return result, tmp, table


def test_table_result_is_valid_and_averaged(table_result):
    result, tmp, _ = table_result
    assert validate(result) == []
    assert result["schema_version"] == SCHEMA_VERSION and result["kind"] == "distill"
    for key in (
        "command",
        "date",
        "machine",
        "threads",
        "precision",
        "optimizer",
        "seeds",
        "steps",
        "train_examples",
    ):
        assert key in result
    assert result["precision"] == "fp32" and result["optimizer"] == "AdamW fused"
    assert "metrics.json" in result["score_source"]
    assert result["seeds"] == [1, 2] and result["steps"] == 2 and result["train_examples"] == 96
    rows = {r["row"]: r for r in result["rows"]}
    for name in ("kd", "no_kd"):
        per_seed = [
            json.loads((tmp / "work" / f"{name}-seed{s}" / "metrics.json").read_text())["accuracy"]
            for s in (1, 2)
        ]
        assert rows[name]["student_scores"] == per_seed
        assert rows[name]["student_score"] == pytest.approx(statistics.fmean(per_seed))
        assert rows[name]["student_score_std"] == pytest.approx(statistics.stdev(per_seed))
    assert result["student_scores"] == rows["kd"]["student_scores"]
    assert result["no_kd_scores"] == rows["no_kd"]["student_scores"]
    assert rows["no_kd"]["method"] == "finetune" and rows["kd"]["method"] == "kd"
    assert result["retention"] == pytest.approx(result["student_score"] / result["teacher_score"])
    assert result["latency_speedup"] > 0 and result["threads"] == {"train": None, "timing": 1}


def test_schema_rejects_missing_or_inconsistent_fields(table_result):
    result, _, _ = table_result
    for field in ("precision", "student_score_std", "train_examples", "command"):
        broken = copy.deepcopy(result)
        del broken[field]
        problems = validate(broken)
        assert any(field in p for p in problems), (field, problems)
        with pytest.raises(ValueError, match=field):
            check(broken)
    broken = copy.deepcopy(result)
    del broken["rows"][1]["no_kd_score_std"]
    assert any("rows[1].no_kd_score_std" in p for p in validate(broken))
    wrong = copy.deepcopy(result)
    wrong["student_scores"] = [wrong["student_score"] + 0.1, wrong["student_score"] + 0.3]
    assert any("not the mean" in p for p in validate(wrong))
    wrong = copy.deepcopy(result)
    wrong["student_scores"] = [wrong["student_score"] - 0.1, wrong["student_score"] + 0.1]
    wrong["student_score_std"] = 0.1  # the population std, not the sample std
    assert any("sample std" in p for p in validate(wrong))
    wrong = copy.deepcopy(result)
    wrong["threads"] = 2
    assert any("threads" in p for p in validate(wrong))


def test_write_result_refuses_invalid(table_result, tmp_path):
    result, _, _ = table_result
    broken = {k: v for k, v in result.items() if k != "optimizer"}
    with pytest.raises(ValueError, match="optimizer"):
        H.write_result("broken", broken, tmp_path)
    assert not (tmp_path / "broken.json").exists()
    assert H.write_result("ok", result, tmp_path).is_file()


def test_report_renders_and_fails_on_missing_field(table_result, tmp_path):
    result, _, _ = table_result
    good = tmp_path / "good"
    H.write_result("tiny_kd", result, good)
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(good), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| tiny_kd | kd | sst2 | accuracy |" in text
    assert "## tiny_kd: rows" in text and "AdamW fused" in text and "±" in text
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps({k: v for k, v in result.items() if k != "seeds"}))
    out.unlink()
    assert report.main(["--results", str(bad), "--out", str(out)]) == 1
    assert not out.exists()


def _generation_result() -> dict:
    """A minimal C-MLM result (kind ``generation``), as benchmarks/cmlm_bench.py writes it."""
    row = {
        "row": "kd",
        "method": "cmlm",
        "recipe": "cmlm/multi30k-de-en",
        "overrides": ["method.teacher_path=/t"],
        "seeds": [1, 2],
        **H.score_fields("student_score", [20.0, 22.0]),
        "steps": 4,
        "stage_steps": {"student": 4},
        "train_examples": 64,
        "precision": "fp32",
        "optimizer": "AdamW fused",
        "train_threads": 1,
        "student_params": 1000,
        "runs": ["/a", "/b"],
        "dev_scores": [21.0, 22.5],
    }
    prov = H.provenance(
        "generation",
        seeds=[1, 2],
        steps=4,
        train_examples=64,
        precision="fp32",
        optimizer="AdamW fused",
        train_threads=1,
        timing_threads=None,
    )
    return {
        **prov,
        "method": "cmlm",
        "task": "translation",
        "teacher": "/t",
        "student": "M2M100",
        "metric": "bleu",
        "teacher_metric": "masked-token accuracy",
        "teacher_score": 0.6,
        "teacher_params": 22_000_000,
        **H.score_fields("student_score", [20.0, 22.0]),
        **H.score_fields("no_kd_score", [19.0, 20.0]),
        "student_params": 1000,
        "decoding": {"beam": 5},
        "primary_row": "kd",
        "rows": [row, {**row, "row": "no_kd", **H.score_fields("student_score", [19.0, 20.0])}],
    }


def test_generation_result_validates_and_renders(tmp_path):
    result = _generation_result()
    assert validate(result) == []
    for field in ("teacher_metric", "decoding", "no_kd_score_std"):
        assert any(field in p for p in validate({k: v for k, v in result.items() if k != field})), field
    H.write_result("tiny_cmlm", result, tmp_path)
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## tiny_cmlm: cmlm, translation" in text and "| no_kd | cmlm |" in text
    assert "| 21.00 (20.00, 22.00) | 21.00, 22.50 |" in text  # test BLEU, then the dev BLEU selection used
    assert "| tiny_cmlm | cmlm |" not in text  # not a row of the distillation table (no retention, no timing)


def test_task_table_labels_kd_overrides_and_lists_a_linked_control_once(tmp_path):
    """Two C-MLM files told apart only by a ``--kd-set`` override, sharing one no-KD control (``--link-from``):
    each kd row is labelled by its override, and the control appears once, naming both files."""
    base = _generation_result()
    hot = _generation_result()
    hot["rows"][0] = {**hot["rows"][0], "overrides": ["method.teacher_path=/t", "method.temperature=1"]}
    hot["rows"][0]["runs"] = ["/c", "/d"]
    H.write_result("cmlm_t10", base, tmp_path)
    H.write_result("cmlm_t1", hot, tmp_path)
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert [line for line in lines if line.startswith("| no-KD / no_kd |")] == [
        "| no-KD / no_kd | cmlm_t1, cmlm_t10 | M2M100 | 19.50 ± 0.71 (n=2) | - | 0.00M | - | - |"
    ]
    labelled = [line for line in lines if line.startswith("| cmlm / kd")]
    assert [line.split(" | ")[0:2] for line in labelled] == [
        ["| cmlm / kd (method.temperature=1)", "cmlm_t1"],
        ["| cmlm / kd", "cmlm_t10"],
    ]


def test_results_name_the_code_that_measured(tmp_path, monkeypatch):
    """Every result records bertdistill's version and the checkout's commit (``+dirty`` with uncommitted
    changes to tracked code), the schema type-checks them where present, and RESULTS.md shows them."""
    import re

    from bertdistill import __version__

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for name in ("src/f.py", "benchmarks/results/r.json", "README.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("a\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(gitinfo, "ROOT", repo)  # the one git runner of the benchmarks
    clean = H.git_commit()
    assert clean is not None and re.fullmatch(r"[0-9a-f]{40}", clean)
    (repo / "src" / "untracked.py").write_text("x")  # untracked files do not make it dirty,
    (repo / "benchmarks" / "results" / "r.json").write_text("b\n")  # nor changed results or docs
    (repo / "README.md").write_text("b\n")
    assert H.git_commit() == clean
    (repo / "src" / "f.py").write_text("b\n")  # changed code does
    assert H.git_commit() == clean + "+dirty"
    monkeypatch.setattr(gitinfo, "ROOT", tmp_path / "not-a-checkout")
    assert H.git_commit() is None
    # a result records the code at the benchmark's start, read once: not what the checkout holds by its end
    started = H.commit_at_start()  # None: the tests are not run from a checkout
    assert started is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", started)
    assert (
        H.provenance(
            "x",
            seeds=[1],
            steps=1,
            train_examples=1,
            precision="fp32",
            optimizer="o",
            train_threads=1,
            timing_threads=1,
        )["commit"]
        == started
    )

    result = _generation_result()
    assert result["version"] == __version__ and "commit" in result
    result["commit"] = "0123456789abcdef0123456789abcdef01234567+dirty"
    assert validate(result) == []
    assert any("commit" in p for p in validate({**result, "commit": 7}))
    H.write_result("tiny_cmlm", result, tmp_path)
    out = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    assert f"| tiny_cmlm | {result['date']} | {__version__} @ 0123456+dirty |" in out.read_text()


def test_committed_results_pass_validation():
    """Every file in benchmarks/results (legacy ones included) passes the schema, so `make bench` renders."""
    results, problems = report.load_results(H.RESULTS)
    assert results and problems == []
    assert report.render(results)


def test_recorded_commands_still_parse(monkeypatch):
    """Every committed result can be re-run from its recorded command: ``python benchmarks/X.py ARGS`` (schema 1)
    or ``python -m benchmarks.X ARGS`` — the script X still takes ARGS."""
    import argparse
    import importlib
    import shlex

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def stop_after_parsing(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parsing)
    for f in sorted(H.RESULTS.glob("*.json")):
        parts = shlex.split(json.loads(f.read_text())["command"])
        script = (
            parts[2] if parts[1] == "-m" else "benchmarks." + parts[1].rsplit("/", 1)[-1].removesuffix(".py")
        )
        args = parts[3:] if parts[1] == "-m" else parts[2:]
        with pytest.raises(Parsed):
            importlib.import_module(script).main(args)


def test_subsampled_dev_rescores_every_run_on_the_teachers_examples(table_result, count_trainings):
    """With a dev subsample, each seed's student is scored on the teacher's examples (the loop's eval subsample
    is drawn with the run's seed); the finished runs of the table are reused, nothing trains."""
    from bertdistill.evaluation import evaluate

    _, tmp, table = table_result
    opts = H.TimingOptions(threads=1, n_latency=4, max_length=32, max_examples=12)
    result = H.run_table(table, work=tmp / "work", timing=opts, log=lambda _: None)
    assert result is not None and count_trainings["n"] == 0
    assert "re-scored" in result["score_source"] and result["eval_examples"] == 12
    data = load_config(tmp / "work" / "kd-seed2" / "bertdistill.yaml").data
    want = evaluate(
        tmp / "work" / "kd-seed2", task=data.task, data_path=data.path, max_examples=12, max_length=32
    )
    assert result["student_scores"][1] == want["score"]
    assert validate(result) == []


def test_run_pinned_runs_every_command_and_names_the_failures(tmp_path):
    import sys

    ok = [
        sys.executable,
        "-c",
        "import os, pathlib; pathlib.Path('a').write_text(str(len(os.sched_getaffinity(0))))",
    ]
    bad = [sys.executable, "-c", "raise SystemExit(3)"]
    assert H.run_pinned({"ok": ok, "bad": bad}, 2, cwd=tmp_path, log=lambda m: None) == ["bad"]
    assert (tmp_path / "a").read_text() == "1"  # pinned to one core


@pytest.mark.parametrize("how", ["exit", "raise", "sigterm"])
def test_scratch_dir_is_removed_when_the_benchmark_ends(tmp_path, how):
    """Timing benchmarks write GBs into their scratch dir: it must not outlive the process."""
    end = {
        "exit": "pass",
        "raise": "raise RuntimeError('boom')",
        "sigterm": "import os, signal, time; os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)",
    }[how]
    code = (
        "import sys; from benchmarks import harness as H\n"
        "d = H.scratch_dir('bd-test-'); (d / 'big').write_bytes(b'x' * 1000)\n"
        "print(d, flush=True)\n" + end
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    made = Path(done.stdout.strip())
    assert made.parent == tmp_path and made.name.startswith("bd-test-")
    assert not made.exists(), f"{how}: scratch dir left behind ({done.stderr[-300:]})"
    assert (done.returncode == 0) == (how == "exit")
