"""Two processes on CPU through torchrun + accelerate (gloo): the DDP code paths of the loop."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import recipe


def test_two_process_ddp_run(teacher_dir, sst2_dir, tmp_path):
    r = recipe("kd", teacher_dir, sst2_dir, tmp_path / "out", tmp_path / "cache", train={"epochs": 2})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "bertdistill.cli",
        "distill",
        str(tmp_path / "r.yaml"),
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 96 examples, batch 16 per process, 2 processes: 3 optimizer steps per epoch, logged once (main process)
    records = [json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in records if "loss" in x]
    assert steps == [2, 4, 6]
    assert [x["step"] for x in records if "eval" in x] == [3, 6]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "step-0000003",
        "step-0000006",
    ]
    assert proc.stdout.count('"output_dir"') == 1  # only the main process reports


def _torchrun(r: dict, tmp_path, name: str) -> subprocess.CompletedProcess:
    """``r`` run by 2 CPU processes (torchrun + accelerate, gloo)."""
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(r))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bertdistill.cli"]
    cmd += ["-v", "distill", str(tmp_path / f"{name}.yaml"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _same_weights(a_dir, b_dir) -> dict:
    """Assert the saved models in ``a_dir`` and ``b_dir`` have the same weights within 1e-5 (max |Δw|: fp32
    summation order); return ``a_dir``'s."""
    from safetensors.torch import load_file

    a = load_file(str(a_dir / "model.safetensors"))
    b = load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    return a


def _same_run(ddp_dir, one) -> tuple[dict, list[float]]:
    """Assert the DDP run in ``ddp_dir`` ended with the weights of the 1-process run ``one`` (max |Δw| ≤ 1e-5:
    fp32 summation order) and logged the same learning rates; return its weights and lr log."""
    a = _same_weights(ddp_dir, one.output_dir)
    ddp_lr = [x["lr"] for x in map(json.loads, (ddp_dir / "log.jsonl").read_text().splitlines()) if "lr" in x]
    assert ddp_lr == pytest.approx([x["lr"] for x in one.history if "lr" in x])
    return a, ddp_lr


def test_two_processes_match_one_process_with_the_same_global_batch(teacher_dir, sst2_dir, tmp_path):
    """2 processes × batch 16 against 1 process × batch 16 × grad_accum 2: the same global batches. accelerate
    shards a batch sampler round-robin (process p gets batches p, p+2, …), so step k of the DDP run averages
    the gradients of batches 2k and 2k+1 — exactly the micro-batches that the accumulating run sums (loss / 2).
    (A 1-process batch-32 run is NOT the same: the length-bucketed sampler shuffles batches of another size,
    and per-batch padding / token means differ.) Dropout is 0 in the tiny models, so the only difference is
    fp32 summation order (all-reduce vs accumulation): max |Δw| ≤ 1e-5 after 3 Adam steps. The learning-rate
    schedule must be the same too (accelerate's default steps it once per process per update)."""
    from safetensors.torch import load_file

    from bertdistill.training.loop import distill

    train = {"epochs": 1, "log_every": 1, "warmup_ratio": 0.0}
    r2 = recipe("kd", teacher_dir, sst2_dir, tmp_path / "ddp", tmp_path / "c2", train=train)
    proc = _torchrun(r2, tmp_path, "ddp")
    r1 = recipe(
        "kd", teacher_dir, sst2_dir, tmp_path / "one", tmp_path / "c1", train={**train, "grad_accum": 2}
    )
    one = distill(r1, quiet=True)
    a, ddp_lr = _same_run(tmp_path / "ddp", one)
    assert len(ddp_lr) == 3
    trained = load_file(str(teacher_dir / "model.safetensors"))
    assert any(
        k in trained and a[k].shape == trained[k].shape and not torch.equal(a[k], trained[k]) for k in a
    )
    # each process wraps the student for DDP, never the teacher
    for rank in (0, 1):
        line = f"process {rank}/2: student DistributedDataParallel, teacher BertForSequenceClassification"
        assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    # the teacher cache is built once (rank 0, first), and rank 1 reads it
    assert proc.stderr.count("building teacher cache") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("teacher cache hit") == 1


@pytest.mark.parametrize("kind", ["tinybert", "bilstm"])
def test_multistage_and_non_hf_students_match_one_process_under_ddp(kind, teacher_dir, sst2_dir, tmp_path):
    """The same check as above for a multi-stage method (TinyBERT: intermediate then prediction stage, each with
    its own optimizer and schedule) and a non-HF student (BiLSTM, its own word vocabulary and AdaDelta):
    2 processes × batch 16 equal 1 process × batch 16 × grad_accum 2 within fp32 summation order (1e-5)."""

    from bertdistill.training.loop import distill

    train = {"epochs": 1, "log_every": 1, "warmup_ratio": 0.0}

    def make(out: str, **extra):
        r = recipe(
            kind, teacher_dir, sst2_dir, tmp_path / out, tmp_path / f"c-{out}", train={**train, **extra}
        )
        if kind == "tinybert":
            r["method"].update({"intermediate_lr": 1e-3, "prediction_lr": 1e-3})
        else:
            r["method"].update({"hidden_size": 16, "mlp_size": 16, "dropout": 0.0, "batch_size": 16})
            r["train"].update(adam_eps=1e-6, weight_decay=0.0, max_grad_norm=None)
        return r

    _torchrun(make("ddp"), tmp_path, "ddp")
    one = distill(make("one", grad_accum=2), quiet=True)
    _, ddp_lr = _same_run(tmp_path / "ddp", one)
    assert ddp_lr


def test_multitask_student_under_ddp(teacher_dir, second_teacher_dir, sst2_dir, stsb_dir, tmp_path):
    """MT-DNN KD on 2 processes: each step's processes may run different task heads (DDP needs
    ``find_unused_parameters``, which ``Method.sparse_parameters`` turns on), and the grouped evaluation gives
    processes batches of different sizes at a task's end (gathered row by row). The 2-process run ends with
    the weights of 1 process × grad_accum 2 (the same global batches; 1e-5, fp32 summation order), and the
    metrics its evaluation gathered across processes equal those of its saved student evaluated in one process."""

    from bertdistill.evaluation import evaluate
    from bertdistill.training.loop import distill

    def make(out: str, **extra):
        r = recipe("mtdnn_kd", teacher_dir, sst2_dir, tmp_path / out, tmp_path / f"c-{out}")
        r["method"].update(
            tasks=[
                {
                    "task": "sst2",
                    "path": str(sst2_dir),
                    "teachers": [str(teacher_dir), str(second_teacher_dir)],
                },
                {"task": "stsb", "path": str(stsb_dir)},
            ]
        )
        r["teacher"] = {"cache_dir": str(tmp_path / f"c-{out}")}
        r["student"] = {"init": "random", "path": str(teacher_dir), "num_layers": 2}
        r["data"] = {"task": "multitask", "max_length": 32}
        r["train"].update(max_steps=6, batch_size=16, eval_every=6, warmup_ratio=0.0, log_every=1, **extra)
        return r

    _torchrun(make("ddp"), tmp_path, "ddp")
    one = distill(make("one", grad_accum=2), quiet=True)
    _same_run(tmp_path / "ddp", one)
    records = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    gathered = [x["eval"] for x in records if "eval" in x][-1]
    checked = 0
    for head in ("sst2", "stsb"):
        alone = evaluate(str(tmp_path / "ddp"), head=head)["metrics"]
        for k, v in alone.items():
            if f"{head}/{k}" in gathered:
                assert gathered[f"{head}/{k}"] == pytest.approx(v, abs=1e-5), (head, k, gathered)
                checked += 1
    assert checked >= 2, (gathered, alone)


def test_seq2seq_cmlm_matches_one_process_under_ddp(mlm_teacher_dir, parallel_dir, tmp_path):
    """C-MLM on 2 processes: stage teacher fine-tunes the BERT MLM (the bundle's ``cmlm`` part), stage
    soft_labels extracts the fine-tuned teacher's top-k soft labels into the teacher cache once (rank 0, after
    the teacher it reads is saved) for rank 1 to read, and stage student trains the seq2seq student on them.
    The run ends with the weights (student and C-MLM teacher) of 1 process × grad_accum 2 (the same global
    batches; 1e-5, fp32 summation order) and logs the same learning rates."""
    from bertdistill.methods.cmlm import CMLM
    from bertdistill.training.loop import distill

    def make(out: str, **extra):
        r = recipe(
            "cmlm", mlm_teacher_dir, parallel_dir, tmp_path / out, tmp_path / f"c-{out}", task="translation"
        )
        r["student"] = dict(CMLM.test_config.sections["student"])
        r["data"].update(max_length=16, max_eval_examples=8)
        r["method"].update(teacher_lr=1e-3, student_lr=1e-3)
        r["train"].update(batch_size=8, warmup_ratio=0.0, log_every=1, **extra)
        return r

    proc = _torchrun(make("ddp"), tmp_path, "ddp")
    one = distill(make("one", grad_accum=2), quiet=True)
    _, ddp_lr = _same_run(tmp_path / "ddp", one)
    assert len(ddp_lr) == 8  # 64 pairs, global batch 16: 4 updates in each training stage
    _same_weights(tmp_path / "ddp" / "stages" / "teacher", one.output_dir / "stages" / "teacher")
    # the soft-label cache is built once (rank 0, first, in stage soft_labels); every other open of it reads it:
    # rank 1's in stage soft_labels, and both ranks' in stage student
    assert proc.stderr.count("building teacher cache") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("teacher cache hit") == 3, proc.stderr[-3000:]


def test_a_busy_run_dir_stops_every_rank(teacher_dir, sst2_dir, tmp_path):
    """Rank 0 finds the run dir locked by another process: every rank stops with the same one-line error (the
    other ranks do not wait at a barrier for the process group's timeout), and the dir is left as it was."""
    from bertdistill.training import checkpoint as ckpt

    r = recipe("kd", teacher_dir, sst2_dir, tmp_path / "out", tmp_path / "cache")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bertdistill.cli"]
    cmd += ["distill", str(tmp_path / "r.yaml"), "--quiet"]
    with ckpt.run_dir_lock(tmp_path / "out"):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert proc.stderr.count("is in use: another bertdistill process") == 2, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()
