"""Interrupted and damaged runs: a real ``kill -9`` of ``bertdistill distill`` at named points, then
``--resume``, must end with bit-identical weights; damaged checkpoints and teacher caches are detected and
worked around; a full disk and a NaN stop the run cleanly with a loadable, resumable checkpoint.

The kills go through the test-only hook ``BERTDISTILL_TEST_KILL_AT=<event>:<n>`` (bertdistill/killpoints.py),
which makes the subprocess ``SIGKILL`` itself at the n-th pass of a named point. Figures: docs/reliability.md.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import bertdistill
from bertdistill import cli, killpoints
from bertdistill.protocol import Needs
from bertdistill.teachers import CachedTeacher, Teacher
from bertdistill.training import checkpoint as ckpt
from bertdistill.training.loop import NonFiniteLossError, distill
from conftest import recipe

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

SRC = Path(bertdistill.__file__).resolve().parents[1]


def _kd(teacher_dir, sst2_dir, out: Path, **train):
    """kd on 96 examples: 6 steps an epoch, 2 epochs; a checkpoint every 2 steps, an evaluation every 3 (the
    first and the last improve: best/ is written, then replaced), a teacher cache built in batches of 16."""
    r = recipe("kd", teacher_dir, sst2_dir, out / "out", out / "cache")
    r["teacher"]["batch_size"] = 16
    r["train"].update(epochs=2, lr=3e-3, save_every=2, eval_every=3, keep_last=2, cpu_threads=1, **train)
    r["student"]["config_overrides"] = {"hidden_dropout_prob": 0.1}  # the RNG stream matters on resume
    return r


def _tinybert(teacher_dir, sst2_dir, out: Path):
    """TinyBERT's two task stages (intermediate: 4 steps, live teacher; prediction: 4 steps, cached)."""
    r = recipe("tinybert", teacher_dir, sst2_dir, out / "out", out / "cache")
    r["method"].update(intermediate_lr=1e-3, prediction_lr=1e-3, intermediate_steps=4, prediction_steps=4)
    r["train"].update(save_every=2, batch_size=8, cpu_threads=1)
    return r


def _bilstm(teacher_dir, sst2_dir, out: Path, glove: Path):
    r = recipe("bilstm", teacher_dir, sst2_dir, out / "out", out / "cache")
    r["method"].update(hidden_size=16, mlp_size=16, dropout=0.1, vectors=str(glove))
    r["train"].update(epochs=2, save_every=3, eval_every=4, cpu_threads=1)
    return r


@pytest.fixture(autouse=True)
def _threads():
    """The recipes' ``train.cpu_threads: 1`` (the same arithmetic in every process) is process-wide: undo it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _recipe_file(r: dict) -> Path:
    path = Path(r["output_dir"]).parent / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(r))
    return path


def _cli(r: dict, *flags: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """``python -m bertdistill.cli distill RECIPE --quiet FLAGS`` in a fresh process (this checkout's code)."""
    path = _recipe_file(r)
    env = {k: v for k, v in os.environ.items() if k != killpoints.ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    if kill_at:
        env[killpoints.ENV] = kill_at
    cmd = [sys.executable, "-m", "bertdistill.cli", "distill", str(path), "--quiet", *flags]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _killed_then_resumed(
    r: dict, kill_at: str, *flags: str, check: Callable[[Path], None] | None = None, cli_resume: bool = False
) -> Path:
    """Run ``r`` in a subprocess (with ``flags``, e.g. ``--resume`` for a run killed before) until the kill
    point, check that it died by SIGKILL there, then resume it to the end — in this process (what
    ``--resume`` calls; a subprocess costs ~5 s of imports), or through the CLI. Returns the output dir."""
    killed = _cli(r, *flags, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, f"not killed at {kill_at}: {killed.stderr[-2000:]}"
    assert not (Path(r["output_dir"]) / "model.safetensors").exists()
    if check is not None:
        check(Path(r["output_dir"]).parent)
    if cli_resume:
        resumed = _cli(r, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    else:
        distill(_recipe_file(r), resume=True, quiet=True)
    return Path(r["output_dir"])


def _assert_bit_identical(a: Path, b: Path) -> None:
    """The final model and the last checkpoint's bundle of two runs hold exactly the same tensors."""
    last_a, last_b = ckpt.latest_checkpoint(a / "checkpoints"), ckpt.latest_checkpoint(b / "checkpoints")
    assert last_a is not None and last_b is not None and last_a.name == last_b.name
    for fa, fb in ((a / "model.safetensors", b / "model.safetensors"), (last_a, last_b)):
        if fa.is_dir():
            fa, fb = fa / "bundle.safetensors", fb / "bundle.safetensors"
        ta, tb = load_file(str(fa)), load_file(str(fb))
        assert ta.keys() == tb.keys()
        differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not differ, f"{fa.name}: tensors differ after the resume: {differ[:5]}"
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def _uninterrupted(r: dict) -> Path:
    """The run never killed, in this process (the same weights as in a fresh one: the damaged-state tests
    compare runs resumed here with kills of subprocesses)."""
    n = torch.get_num_threads()
    try:
        return distill(_recipe_file(r), quiet=True).output_dir
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def kd_reference(tmp_path_factory, _teacher_session, sst2_dir) -> Path:
    return _uninterrupted(_kd(_teacher_session, sst2_dir, tmp_path_factory.mktemp("kd_ref")))


# ----------------------------------------------------------------------------------------------- kill -9

KD_POINTS = [
    # (kill point, the newest complete checkpoint it leaves, a leftover that shows where it died)
    ("cache_batch:3", None, "cache/teacher/*.partial"),  # half the cache computed, no shard on disk yet
    ("cache_shard:1", None, "cache/teacher/*.partial/part-00000.safetensors"),  # not marked complete
    ("step:5", "step-0000004", None),  # after an optimizer step between checkpoints
    ("checkpoint_write:3", "step-0000004", "out/checkpoints/.step-0000006.tmp-*"),  # no state, no rename
    ("eval:2", "step-0000004", "out/best"),  # after step 6's evaluation, before its checkpoint
]
KD_SLOW_POINTS = [
    ("checkpoint_saved:2", "step-0000004", "out/checkpoints/step-0000002"),  # renamed, older not pruned
    ("dir_swap:1", "step-0000010", "out/.best.old-*"),  # step 12's best/ replacing step 3's, half done
    ("step:12", "step-0000010", None),  # the last step, before the end-of-run evaluation and saves
    ("eval:4", "step-0000010", None),  # the end-of-run evaluation
    ("checkpoint_write:6", "step-0000010", "out/checkpoints/.step-0000012.tmp-*"),
]


def _last_is(name: str | None) -> Callable[[Path], None]:
    """A check of a killed run's dir: its newest complete checkpoint is ``name``."""

    def check(root: Path) -> None:
        found = ckpt.latest_checkpoint(root / "out" / "checkpoints")
        assert (found.name if found else None) == name

    return check


def _kd_killed(kill_at, last, leftover, reference, teacher_dir, sst2_dir, tmp_path, cli_resume=False):
    def check(root: Path) -> None:
        _last_is(last)(root)
        assert leftover is None or list(root.glob(leftover)), f"{kill_at}: no {leftover}"

    out = _killed_then_resumed(
        _kd(teacher_dir, sst2_dir, tmp_path), kill_at, check=check, cli_resume=cli_resume
    )
    _assert_bit_identical(reference, out)
    assert not [p.name for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize(("kill_at", "last", "leftover"), KD_POINTS)
def test_kd_killed_and_resumed_is_bit_identical(
    kill_at, last, leftover, kd_reference, teacher_dir, sst2_dir, tmp_path
):
    _kd_killed(
        kill_at, last, leftover, kd_reference, teacher_dir, sst2_dir, tmp_path, cli_resume=kill_at == "step:5"
    )


@pytest.mark.slow
@pytest.mark.parametrize(("kill_at", "last", "leftover"), KD_SLOW_POINTS)
def test_kd_killed_at_more_points(kill_at, last, leftover, kd_reference, teacher_dir, sst2_dir, tmp_path):
    _kd_killed(kill_at, last, leftover, kd_reference, teacher_dir, sst2_dir, tmp_path)


def test_tinybert_killed_at_the_stage_boundary_and_mid_checkpoint(teacher_dir, sst2_dir, tmp_path):
    """Two kills of one multi-stage run: at the end of ``task_intermediate`` (its output saved, the
    prediction stage not started), then while step 6's checkpoint (in ``task_prediction``) is written."""
    full = _uninterrupted(_tinybert(teacher_dir, sst2_dir, tmp_path / "full"))
    r = _tinybert(teacher_dir, sst2_dir, tmp_path / "killed")
    assert _cli(r, kill_at="stage_end:1").returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "out" / "stages" / "task_intermediate").is_dir()
    assert not (tmp_path / "killed" / "out" / "stages" / "task_prediction").exists()
    # the resumed process's first checkpoint: step 6, the 2nd step of task_prediction
    out = _killed_then_resumed(r, "checkpoint_write:1", "--resume", check=_last_is("step-0000004"))
    _assert_bit_identical(full, out)


def test_bilstm_killed_mid_checkpoint_is_bit_identical(teacher_dir, sst2_dir, glove_file, tmp_path):
    full = _uninterrupted(_bilstm(teacher_dir, sst2_dir, tmp_path / "full", glove_file))
    out = _killed_then_resumed(
        _bilstm(teacher_dir, sst2_dir, tmp_path / "killed", glove_file),
        "checkpoint_write:2",
        check=_last_is("step-0000003"),
    )
    _assert_bit_identical(full, out)


def test_unknown_kill_point_is_refused(monkeypatch):
    monkeypatch.setenv(killpoints.ENV, "chekpoint_write:1")
    with pytest.raises(ValueError, match="unknown event 'chekpoint_write'"):
        killpoints.kill_point("step")


# ----------------------------------------------------------------------------------------------- damaged state


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte of the data changed, the size kept: only a checksum sees it
        data[len(data) * 3 // 4] ^= 0xFF
        path.write_bytes(data)


@pytest.mark.parametrize(
    ("file", "how", "why"),
    [
        ("bundle.safetensors", "truncate", "truncated"),
        ("optimizer.pt", "corrupt", "corrupted"),
        ("trainer_state.json", "truncate", "unreadable"),
    ],
)
def test_damaged_checkpoint_falls_back_to_the_previous_one(
    file, how, why, kd_reference, teacher_dir, sst2_dir, tmp_path, caplog
):
    r = _kd(teacher_dir, sst2_dir, tmp_path)
    out = distill(_recipe_file(r), quiet=True).output_dir  # keeps step-0000010 and step-0000012
    newest = out / "checkpoints" / "step-0000012"
    _damage(newest / file, how)
    (out / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="bertdistill"):
        distill(_recipe_file(r), resume=True, quiet=True)
    assert f"checkpoint {newest} is damaged: {file}" in caplog.text and why in caplog.text
    assert (out / "checkpoints" / "step-0000012.damaged" / file).is_file()  # kept aside for inspection
    _assert_bit_identical(kd_reference, out)  # steps 11-12 replayed from step-0000010


FULL_DISK = {
    "enospc": (lambda f: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f)), "the disk is full"),
    # what torch's zip writer raised when this machine's disk filled (no errno: checked against the free space)
    "torch_zip_writer": (
        lambda f: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5184 vs 5072"),
        "the disk is probably full: 0 MiB free on {root}; the writer said: [enforce fail at "
        "inline_container.cc:672] . unexpected pos 5184 vs 5072",
    ),
}


@pytest.mark.parametrize("report", sorted(FULL_DISK))
def test_full_disk_while_checkpointing_keeps_the_previous_one(
    report, kd_reference, teacher_dir, sst2_dir, tmp_path, monkeypatch, capsys
):
    """The writer fails (the disk full, reported as ENOSPC or as torch reports it) after the weights and
    optimizer of step 6's checkpoint are written."""
    r = _kd(teacher_dir, sst2_dir, tmp_path)
    real_save, seen = torch.save, []
    error, why = FULL_DISK[report]

    def save(obj, f, *a, **k):
        if Path(f).name == "scheduler.pt":
            seen.append(f)
            if len(seen) == 3:
                raise error(f)
        return real_save(obj, f, *a, **k)

    real_usage = shutil.disk_usage
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=0))
    assert cli.main(["distill", str(_recipe_file(r)), "--quiet"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bertdistill:")]
    out = Path(r["output_dir"])
    root = out / "checkpoints"
    assert err == [
        f"bertdistill: could not write checkpoint {root / 'step-0000006'} ({why.format(root=root)}); "
        f"the previous checkpoint {root / 'step-0000004'} is intact: make room and run again "
        "with --resume"
    ]
    assert sorted(p.name for p in root.iterdir()) == ["step-0000002", "step-0000004"]
    assert ckpt.verify_checkpoint(root / "step-0000004") is None
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    distill(_recipe_file(r), resume=True, quiet=True)
    _assert_bit_identical(kd_reference, out)


def test_a_failed_model_write_names_the_intact_checkpoint_and_other_errors_surface_as_themselves(tmp_path):
    """The writer of ``best/`` and of a stage's model goes through the same guard; an error that is not a
    failed write (a bug) is not dressed up as a full disk."""
    target = tmp_path / "run" / "best"

    def full(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"x")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.guarded_write(target, full, what="the model", then=lambda: "the checkpoint X is intact")
    assert str(e.value).startswith(f"could not write the model {target} (the disk is probably full: ")
    assert str(e.value).endswith("file write failed); the checkpoint X is intact")
    assert not target.exists() and list((tmp_path / "run").iterdir()) == []  # the temporary dir is gone

    def bug(tmp: Path) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as e:
        ckpt.guarded_write(target, bug, what="the model", then=lambda: "")
    assert not isinstance(e.value, ckpt.CheckpointError)


def _cache_data(teacher_dir):
    from transformers import AutoTokenizer

    from bertdistill.data.loading import Examples, tokenize
    from conftest import make_sentence

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    rng = random.Random(0)
    ex = Examples([(make_sentence(rng, i % 2),) for i in range(20)], [i % 2 for i in range(20)])
    return tok, tokenize(ex, tok, 32)


def _build(teacher, data, tok, root):
    needs = Needs(logits=True, hidden_states=True, hidden_layers=(1,))
    return CachedTeacher.load_or_build(
        teacher, data, needs, tok.pad_token_id, root, batch_size=4, shard_examples=8
    )


@pytest.mark.parametrize(
    ("file", "how", "why"),
    [
        ("part-00001.safetensors", "truncate", "part-00001.safetensors: "),
        ("part-00002.safetensors", "corrupt", "part-00002.safetensors: its SHA-256 differs"),
        ("meta.json", "truncate", "meta.json is unreadable"),
    ],
)
def test_damaged_teacher_cache_is_rebuilt(file, how, why, tiny_model, teacher_dir, tmp_path, caplog):
    tok, data = _cache_data(teacher_dir)
    teacher = Teacher(tiny_model)
    first = _build(teacher, data, tok, tmp_path)  # 3 shards of 8, 8 and 4 examples
    _damage(first.root / file, how)
    calls: list[int] = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    with caplog.at_level(logging.WARNING, logger="bertdistill"):
        again = _build(teacher, data, tok, tmp_path)
    assert f"teacher cache {first.root} is damaged: {why}" in caplog.text
    assert "building the cache again" in caplog.text
    assert again.built_now and len(calls) == 5  # every batch computed again
    assert again.tensors.keys() == first.tensors.keys()
    assert all(torch.equal(again.tensors[k], first.tensors[k]) for k in first.tensors)
    assert _build(teacher, data, tok, tmp_path).built_now is False  # and whole again


def test_damaged_shard_of_an_interrupted_cache_build_is_computed_again(
    tiny_model, teacher_dir, tmp_path, caplog
):
    tok, data = _cache_data(teacher_dir)
    teacher = Teacher(tiny_model)
    first = _build(teacher, data, tok, tmp_path)
    # what a build killed after its second shard leaves, with the first shard then truncated
    partial = first.root.with_name(first.root.name + ".partial")
    partial.mkdir()
    for k in (0, 1):
        (partial / f"part-0000{k}.safetensors").write_bytes(
            (first.root / f"part-0000{k}.safetensors").read_bytes()
        )
    _damage(partial / "part-00000.safetensors", "truncate")
    shutil.rmtree(first.root)
    calls: list[int] = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    with caplog.at_level(logging.WARNING, logger="bertdistill"):
        again = _build(teacher, data, tok, tmp_path)
    assert "part-00000.safetensors is damaged" in caplog.text and "computing it again" in caplog.text
    assert len(calls) == 3  # shard 0 (2 batches) and shard 2 (1 batch); shard 1 was whole
    assert all(torch.equal(again.tensors[k], first.tensors[k]) for k in first.tensors)


def test_interrupted_cache_build_resumed_with_another_shard_size_serves_the_right_rows(
    tiny_model, teacher_dir, tmp_path, caplog
):
    """A build killed after shards of 8 examples and resumed with shards of 16 (another ``SHARD_EXAMPLES``):
    the old shard 0 holds rows 0-7, not 0-15, so it is computed again instead of merged as rows 0-15 (which
    gave a 12-example cache for 20 examples, rows 16-19 served as 8-11)."""
    tok, data = _cache_data(teacher_dir)
    teacher = Teacher(tiny_model)
    first = _build(teacher, data, tok, tmp_path)  # shards of 8
    partial = first.root.with_name(first.root.name + ".partial")
    partial.mkdir()
    shutil.copy(first.root / "part-00000.safetensors", partial / "part-00000.safetensors")
    shutil.rmtree(first.root)
    needs = Needs(logits=True, hidden_states=True, hidden_layers=(1,))
    with caplog.at_level(logging.WARNING, logger="bertdistill"):
        again = CachedTeacher.load_or_build(
            teacher, data, needs, tok.pad_token_id, tmp_path, batch_size=4, shard_examples=16
        )
    assert "part-00000.safetensors is damaged" in caplog.text and "other examples" in caplog.text
    assert again.meta["shards"] == 2 and len(again.lengths) == len(data)
    assert again.tensors.keys() == first.tensors.keys()
    for k, t in first.tensors.items():  # other batches than the first build's: equal up to rounding
        torch.testing.assert_close(again.tensors[k], t, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- NaN


def test_nan_names_the_term_and_step_and_the_kept_checkpoint_resumes(
    kd_reference, teacher_dir, sst2_dir, tmp_path, monkeypatch, capsys
):
    from bertdistill.methods.kd import KD

    r = _kd(teacher_dir, sst2_dir, tmp_path)
    original, calls = KD.loss, []

    def poisoned(self, *a, **k):
        terms = original(self, *a, **k)
        calls.append(1)
        if len(calls) == 5:  # the loss of step 5
            terms["kd"] = terms["kd"] * float("nan")
        return terms

    monkeypatch.setattr(KD, "loss", poisoned)
    assert cli.main(["distill", str(_recipe_file(r)), "--quiet"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bertdistill:")]
    out = Path(r["output_dir"])
    kept = out / "checkpoints" / "step-0000004"
    assert len(err) == 1
    assert err[0].startswith(
        "bertdistill: non-finite loss term(s) ['kd'] at step 5 (stage 0 'train', terms: {"
    )
    assert err[0].endswith(
        f"Last good checkpoint: {kept} (resume with --resume after lowering train.lr or "
        "enabling train.max_grad_norm)."
    )
    assert ckpt.latest_checkpoint(out / "checkpoints") == kept and ckpt.verify_checkpoint(kept) is None
    monkeypatch.setattr(KD, "loss", original)
    distill(_recipe_file(r), resume=True, quiet=True)
    _assert_bit_identical(kd_reference, out)


def test_diverged_weights_are_never_checkpointed(kd_reference, teacher_dir, sst2_dir, tmp_path, monkeypatch):
    """Finite loss terms, but an update that leaves NaN weights (step 4, just before a checkpoint)."""
    from accelerate.optimizer import AcceleratedOptimizer

    r = _kd(teacher_dir, sst2_dir, tmp_path)
    original, calls = AcceleratedOptimizer.step, []

    def diverging(self, *a, **k):
        original(self, *a, **k)
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                self.optimizer.param_groups[0]["params"][0].fill_(float("nan"))

    monkeypatch.setattr(AcceleratedOptimizer, "step", diverging)
    out = Path(r["output_dir"])
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite weights \['.+'\] after step 4 \(stage 0 'train'\).*Last good checkpoint: "
        r".*step-0000002 ",
    ):
        distill(_recipe_file(r), quiet=True)
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-0000002"
    monkeypatch.setattr(AcceleratedOptimizer, "step", original)
    distill(_recipe_file(r), resume=True, quiet=True)
    _assert_bit_identical(kd_reference, out)


# --------------------------------------------------------------------------------------- one trainer per run dir
def test_a_busy_run_dir_stops_a_second_process_and_is_left_as_it_was(teacher_dir, sst2_dir, tmp_path):
    """While one process trains into a dir (it holds ``<dir>.lock``), ``bertdistill distill`` into the same dir
    from another process exits 1 with one line naming the dir and the holder's pid, and writes nothing there."""
    r = _kd(teacher_dir, sst2_dir, tmp_path)
    out = Path(r["output_dir"])
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "marker").write_text("the first process's")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with ckpt.run_dir_lock(out):
        busy = _cli(r)
        assert busy.returncode == 1, busy.stderr[-2000:]
        line = busy.stderr.strip().splitlines()[-1]
        assert line.startswith("bertdistill: ") and "is in use" in line
        assert str(out.resolve()) in line and f"pid {os.getpid()}" in line
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
        # the library entry point stops the same way, before it clears the unfinished dir
        from bertdistill.training.runs import run_or_reuse

        lock_path = out.resolve().with_name(f".{out.name}.lock")
        # look like another process: this one no longer counts as the holder
        held = ckpt._HELD_RUN_LOCKS.pop(lock_path)
        try:
            with pytest.raises(ckpt.RunDirBusyError, match="is in use"):
                run_or_reuse(_recipe_file(r), out)
        finally:
            ckpt._HELD_RUN_LOCKS[lock_path] = held
        assert (out / "checkpoints" / "marker").read_text() == "the first process's"


def test_run_dir_lock_is_reentrant_released_and_beside_the_dir(tmp_path):
    import fcntl

    out = tmp_path / "run"
    lock_path = tmp_path / ".run.lock"
    with ckpt.run_dir_lock(out), ckpt.run_dir_lock(out):  # run_or_reuse holds it around the trainer
        assert lock_path.read_text().strip() == str(os.getpid())
        assert not out.exists()  # the lock does not create (or live in) the run dir
        with open(lock_path) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not lock_path.exists()  # let go: removed, nothing left beside the dir
    with open(
        lock_path, "w"
    ) as other:  # held elsewhere: this process cannot take it, and is told who holds it
        other.write("4242\n")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ckpt.RunDirBusyError, match=r"pid 4242"), ckpt.run_dir_lock(out):
            pass
    with ckpt.run_dir_lock(out):  # a stale file (its holder gone, e.g. killed) is taken over
        assert lock_path.read_text().strip() == str(os.getpid())
    # a holder that let go between our open and our flock removed the file we opened: the lock follows the path
    real_open, opened = open, []

    def open_then_released(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        opened.append(path)
        if len(opened) == 1:
            os.unlink(path)  # the holder before lets go (and removes the file) just after our open
        return fh

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt, "open", open_then_released, raising=False)
        with ckpt.run_dir_lock(out):
            assert len(opened) == 2 and lock_path.exists()  # re-opened and locked at the path
            with open(lock_path) as other, pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_run_dir_lock_degrades_to_a_warning_where_it_cannot_lock(tmp_path, monkeypatch, caplog):
    """A file system without flock, or a read-only parent of a writable run dir: the run goes on, unguarded,
    and the log says so (it must not fail where it trained before the lock existed)."""
    import fcntl

    def no_flock(*_a):
        raise OSError(errno.ENOLCK, "No locks available")

    ran = []
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING), ckpt.run_dir_lock(tmp_path / "run"):
        ran.append("no flock")
    assert "no run-dir lock" in caplog.text
    monkeypatch.undo()

    def read_only(*_a, **_k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckpt, "open", read_only, raising=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING), ckpt.run_dir_lock(tmp_path / "run2"):
        ran.append("read-only parent")
    assert "no run-dir lock" in caplog.text and "Read-only" in caplog.text
    assert ran == ["no flock", "read-only parent"]


def test_a_new_run_into_a_finished_run_is_refused_and_overwrite_leaves_nothing_of_the_old_one(
    teacher_dir, sst2_dir, tmp_path
):
    """A finished run's dir: a new run without --resume is refused before anything is touched; with --overwrite
    the new run starts clean — the old run's checkpoints (which would sort above the new ones, be kept over them
    and be what a later --resume loads), its best/ and its scores are gone, and what is there is the new run's."""
    from bertdistill.cli import main

    r = _kd(teacher_dir, sst2_dir, tmp_path)
    r["train"].update(epochs=2, save_every=2, keep_last=5, eval_every=None)
    path = str(_recipe_file(r))
    out = Path(r["output_dir"])
    assert main(["distill", path, "--quiet"]) == 0  # 12 steps: checkpoints up to step 12
    old = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert old[-1] == "step-0000012"
    weights = (out / "model.safetensors").read_bytes()
    assert main(["distill", path, "--quiet", "--set", "train.max_steps=2"]) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == old  # refused: nothing touched
    assert (out / "model.safetensors").read_bytes() == weights
    assert main(["distill", path, "--quiet", "--overwrite", "--set", "train.max_steps=2"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]
    assert json.loads((out / "metrics.json").read_text())["step"] == 2
    assert (out / "model.safetensors").read_bytes() != weights
