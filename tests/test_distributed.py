"""Two processes on CPU through torchrun + accelerate (gloo): the DDP code paths of the loop."""

import json
import os
import subprocess
import sys

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
