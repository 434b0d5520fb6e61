"""benchmarks/demo.py's plumbing (the demo itself runs real models: `make demo`): seeds side by side, one
process per seed, each with the parent's settings; training precision on both rows alike."""

from pathlib import Path

from benchmarks import demo


def test_child_command_line_keeps_every_setting_but_the_seeds():
    argv = ["--out", "/tmp/d", "--seeds", "1", "2", "--steps", "10", "--record", "--precision", "fp32"]
    assert demo.child_argv(argv, 2) == [
        "--out", "/tmp/d", "--steps", "10", "--precision", "fp32", "--seeds", "2", "--child",
    ]  # fmt: skip
    assert demo.child_argv(["--seeds=3", "--jobs", "2"], 3) == ["--jobs", "2", "--seeds", "3", "--child"]


def test_parallel_seeds_train_one_thread_each_and_both_rows_share_the_precision(tmp_path):
    args = demo.parse_args(["--seeds", "1", "2", "--jobs", "2", "--precision", "bf16", "--threads", "2"])
    assert demo.student_threads(args) == 1
    rows = {k: demo.student_recipe(k, args, Path("/t"), tmp_path) for k in ("control", "distilled")}
    for raw in rows.values():
        assert raw["train"]["cpu_threads"] == 1 and raw["train"]["mixed_precision"] == "bf16"
    assert rows["control"]["method"] == {"name": "finetune"}
    teacher = demo.teacher_config(args, tmp_path)
    assert teacher.train.mixed_precision == "bf16" and teacher.train.cpu_threads == 2
    one = demo.parse_args(["--seeds", "1", "--precision", "fp32", "--threads", "2"])
    assert one.jobs == 1 and demo.student_threads(one) == 2 and demo.mixed_precision(one) == "no"


def test_a_seeds_child_trains_exactly_the_runs_the_parent_then_reuses(tmp_path, monkeypatch):
    """The parent scores the children's runs only if their configs match its own; a child that sees one seed must
    not fall back to other threads (it did once: the parent then retrained every run)."""
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0, 1})  # 2 cores: --jobs defaults to 2
    argv = ["--seeds", "1", "2", "--precision", "bf16", "--out", str(tmp_path)]
    parent = demo.parse_args(argv)
    assert parent.jobs == 2
    for seed in parent.seeds:
        child = demo.parse_args(demo.child_argv(argv, seed))
        assert child.child
        for kind in ("control", "distilled"):
            assert demo.student_recipe(kind, child, Path("/t"), tmp_path) == demo.student_recipe(
                kind, parent, Path("/t"), tmp_path
            )
        assert demo.teacher_config(child, tmp_path) == demo.teacher_config(parent, tmp_path)


def test_precision_auto_follows_native_bf16_and_says_why(monkeypatch):
    """``--precision auto`` trains in bf16 only where the CPU computes it natively, and keeps the sentence that
    says what was found (printed when the demo starts); an explicit precision is taken as given."""
    from bertdistill import precision

    for native, want in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(precision, "cpu_bf16", lambda native=native: (native, f"native={native}"))
        args = demo.parse_args(["--seeds", "1"])
        assert (args.precision, args.precision_why) == (want, f"native={native}")
    assert demo.parse_args(["--seeds", "1", "--precision", "bf16"]).precision_why is None
