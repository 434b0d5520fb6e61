"""Shared helpers of the benchmark scripts: machine description, result files, the no-KD recipe."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"
WORK = Path(os.environ.get("BERTDISTILL_BENCH_DIR", "~/.cache/bertdistill/bench")).expanduser()

REQUIRED = [
    "method",
    "task",
    "teacher",
    "student",
    "metric",
    "teacher_score",
    "student_score",
    "no_kd_score",
    "retention",
    "teacher_params",
    "student_params",
    "latency_speedup",
    "throughput_speedup",
    "train_examples",
    "steps",
    "seeds",
    "command",
    "date",
    "machine",
    "student_layers",
    "student_hidden",
]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; {platform.system()}"


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def today() -> str:
    return _dt.date.today().isoformat()


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def no_kd_recipe(recipe_path: Path) -> dict[str, Any]:
    """The same recipe with the method swapped for plain fine-tuning: same student, data, steps and seed."""
    raw = yaml.safe_load(recipe_path.read_text())
    raw["method"] = {"name": "finetune"}
    return raw


def train_examples(run_dir: Path) -> int:
    """Training examples a finished run saw: its task's train split after the recipe's seeded subsampling."""
    from bertdistill import load_config
    from bertdistill.data.loading import load_examples, resolve_task, subsample

    rc = load_config(run_dir / "bertdistill.yaml")
    examples = load_examples(rc.data, resolve_task(rc.data), rc.data.train_split)
    return len(subsample(examples, rc.data.max_train_examples, rc.train.seed))


def speed_fields(t: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """The size and speed fields of a result, from ``evaluation.compare`` rows of the teacher and a student
    timed in the same run."""
    return {
        "teacher_params": t["params"],
        "student_params": s["params"],
        "latency_speedup": s["latency_speedup"],
        "throughput_speedup": s["throughput_speedup"],
        "teacher_latency_ms": t["latency_ms_median"],
        "student_latency_ms": s["latency_ms_median"],
        "teacher_throughput": t["throughput_per_s"],
        "student_throughput": s["throughput_per_s"],
        "latency_sentences": s["latency_sentences"],
        "timing_threads": s["threads"],
    }
