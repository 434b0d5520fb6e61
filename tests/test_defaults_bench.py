"""benchmarks/defaults_bench.py's tables (the runs themselves train real models): every candidate row is the
shipped recipe with only its named settings changed, and each control starts from the student its method does."""

from pathlib import Path

import pytest

from benchmarks import defaults_bench
from benchmarks.harness import parse_row


def _rows(method: str, task: str) -> dict:
    argv = defaults_bench.variants_argv(method, task, "weak", Path("/t"), [])
    specs = [argv[i + 1] for i, a in enumerate(argv) if a == "--row"]
    return {r.name: r for r in map(parse_row, specs)}


@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_kd_rows_differ_only_in_the_soft_term_and_the_control_copies_the_teacher(task):
    rows = _rows("kd", task)
    assert set(rows) == {"kd_t4", "kd_t1", "kd_a02_t1", "no_kd"}
    shipped = rows["kd_t4"].source()
    for name in ("kd_t4", "kd_t1", "kd_a02_t1"):
        cfg = rows[name].config(1)
        assert cfg.method.name == "kd" and cfg.method.alpha == (0.2 if "a02" in name else 0.5)
        assert cfg.method.temperature == float(name[-1])
        assert rows[name].source()["student"] == shipped["student"]
    control = rows["no_kd"].source()
    assert control["method"] == {"name": "finetune"} and control["student"] == shipped["student"]


def test_pkd_control_starts_from_the_pretrained_layers_pkd_starts_from():
    rows = _rows("pkd", "sst2")
    assert set(rows) == {"pkd_t10", "pkd_a02_t1", "no_kd"}
    pkd = rows["pkd_t10"].config(1)
    assert (pkd.method.alpha, pkd.method.temperature, pkd.method.beta) == (0.7, 10.0, 500.0)
    assert pkd.method.init_from == "pretrained"
    control = rows["no_kd"].config(1)
    assert control.method.name == "finetune"
    assert control.student.init == "pretrained" and control.student.path == pkd.method.pretrained_path
    assert control.student.num_layers == pkd.student.num_layers == 3


def test_tinybert_rows_have_explicit_stage_steps_and_the_control_their_sum():
    rows = _rows("tinybert", "mrpc")
    inter, pred = defaults_bench.tinybert_steps("mrpc")
    assert (inter, pred) == (10 * 38, 3 * 38)  # 1,200 examples, batch 32
    for name in ("tb_official_lr", "tb_lr1e4"):
        cfg = rows[name].config(1)
        assert (cfg.method.intermediate_steps, cfg.method.prediction_steps) == (inter, pred)
        assert cfg.student.init == "random"
    assert rows["tb_lr1e4"].config(1).method.prediction_lr == 1e-4
    control = rows["no_kd"].config(1)
    assert control.method.name == "finetune" and control.train.max_steps == inter + pred
    assert control.student == rows["tb_lr1e4"].config(1).student


def test_a_subset_of_rows_keeps_the_control_and_names_unknown_rows():
    argv = defaults_bench.variants_argv("kd", "mrpc", "weak", Path("/t"), [], only=["kd_a02_t1", "kd_t4"])
    rows = [parse_row(argv[i + 1]).name for i, a in enumerate(argv) if a == "--row"]
    assert rows == ["kd_t4", "kd_a02_t1", "no_kd"] and argv[argv.index("--primary") + 1] == "kd_t4"
    with pytest.raises(SystemExit, match="kd_t3"):
        defaults_bench.variants_argv("kd", "mrpc", "weak", Path("/t"), [], only=["kd_t3"])


def test_the_weak_teacher_is_the_task_recipe_on_a_slice_of_train(monkeypatch, tmp_path):
    seen = {}

    def fake_run_or_reuse(config, out_dir, **kw):
        seen.update(config=config, out=out_dir)
        return type("Rec", (), {"dir": out_dir})()

    monkeypatch.setattr(defaults_bench, "TEACHERS", tmp_path)
    monkeypatch.setattr(defaults_bench.H, "run_or_reuse", fake_run_or_reuse)
    assert defaults_bench.weak_teacher("mrpc") == tmp_path / "minilm-l6-mrpc-weak"
    cfg = seen["config"]
    assert cfg.method.name == "finetune" and cfg.data.task == "mrpc" and cfg.data.path
    assert (cfg.data.max_train_examples, cfg.train.epochs, cfg.train.cpu_threads) == (1200, 3, 1)


def test_flags_are_checked_before_the_teacher_is_looked_for_or_built(monkeypatch, tmp_path):
    """A mistyped run_variants flag is reported before a missing strong teacher, and before a weak teacher is
    trained; with good flags, a missing strong teacher names the command that makes it and nothing runs."""
    built, ran = [], []
    monkeypatch.setattr(defaults_bench, "TEACHERS", tmp_path)
    monkeypatch.setattr(defaults_bench, "weak_teacher", lambda task: built.append(task))
    monkeypatch.setattr(defaults_bench.run_variants, "run", lambda table, args: ran.append(table))
    for strength in ("strong", "weak"):
        with pytest.raises(SystemExit) as e:
            defaults_bench.main(["kd", "mrpc", strength, "--no-such-flag"])
        assert e.value.code == 2
    assert built == [] and ran == []
    with pytest.raises(
        SystemExit, match=r"no teacher at .*minilm-l6-mrpc: run `bertdistill finetune finetune/mrpc"
    ):
        defaults_bench.main(["kd", "mrpc", "strong", "--seeds", "1"])
    assert ran == []
