"""benchmarks/end_to_end.py: a bertdistill row runs end to end and records its cache build, TextBrewer is handed
bertdistill's batches reseeded per epoch, and the ``end_to_end`` result kind validates and renders. A tiny
random 6-layer teacher; nothing is timed against anything (timings belong in the benchmark itself)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pytest

from benchmarks import end_to_end as E
from benchmarks import report
from benchmarks.schema import SCHEMA_VERSION, validate
from benchmarks.throughput import EpochBatches
from conftest import classifier_teacher, save_teacher


@pytest.fixture(scope="module")
def six_layer_teacher(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    # the benchmark's hidden map reads teacher layers 2, 4, 6
    return save_teacher(
        classifier_teacher(num_hidden_layers=6, max_position_embeddings=128),
        tmp_path_factory.mktemp("t6"),
        tiny_tokenizer_dir,
    )


def _args(tmp_path: Path, teacher: Path, data: Path, row: str) -> argparse.Namespace:
    return argparse.Namespace(
        row=row,
        teacher=str(teacher),
        data=str(data),
        epochs=2,
        seed=3,
        threads=1,
        work=str(tmp_path),
        max_train=64,
    )


@pytest.mark.parametrize("row", ["bertdistill_cached", "bertdistill_live"])
def test_a_bertdistill_row_trains_saves_and_records_its_cache_build(
    tmp_path, six_layer_teacher, sst2_dir, row
):
    rec = E.one_row(_args(tmp_path, six_layer_teacher, sst2_dir, row))
    assert rec["row"] == row and rec["wall_s"] > 0
    assert (Path(rec["student"]) / "model.safetensors").exists()
    if row == "bertdistill_cached":  # the cache was built inside the timed run, its teacher time recorded
        assert rec["cache_build_s"] is not None and 0 < rec["cache_build_s"] < rec["wall_s"]
    else:
        assert rec["cache_build_s"] is None


def test_the_recipe_is_the_same_work_in_every_bertdistill_row(tmp_path):
    from bertdistill.recipes import load_config

    cfgs = {
        r: load_config(E.recipe("t", "d", 3, tmp_path, tmp_path / "c", 1, E.ROWS[r][1], E.ROWS[r][2], None))
        for r in ("bertdistill_cached", "bertdistill_best", "bertdistill_live")
    }
    m = {
        r: (c.method.alpha, c.method.temperature, c.method.hidden_weight, c.method.hidden_map)
        for r, c in cfgs.items()
    }
    assert len(set(map(str, m.values()))) == 1 and m["bertdistill_cached"][:3] == (1.0, 4.0, 1.0)
    assert cfgs["bertdistill_best"].train.mixed_precision == "bf16"
    assert cfgs["bertdistill_cached"].train.mixed_precision == "no"
    assert [c.teacher.cache for c in cfgs.values()] == [True, True, False]
    assert all(c.train.fused_adam and c.train.lr == E.LR and c.train.epochs == 3 for c in cfgs.values())


def test_textbrewer_gets_each_epoch_reshuffled_and_complete(six_layer_teacher, sst2_dir):
    from transformers import AutoTokenizer

    from bertdistill.config import DataConfig
    from bertdistill.data.loading import BatchSampler, Collator, load_examples, resolve_task, tokenize

    tok = AutoTokenizer.from_pretrained(six_layer_teacher)
    cfg = DataConfig(task="sst2", path=str(sst2_dir), max_length=32)
    ds = tokenize(load_examples(cfg, resolve_task(cfg), "train"), tok, 32)
    sampler = BatchSampler(ds.lengths, 8, shuffle=True, bucket=True, seed=5)
    coll = Collator(tok.pad_token_id)
    batches = EpochBatches(ds, sampler, coll)
    passes = [[b["input_ids"] for b in batches] for _ in range(2)]
    assert len(passes[0]) == len(batches) == len(sampler)
    ref = BatchSampler(ds.lengths, 8, shuffle=True, bucket=True, seed=5)
    for e in range(2):  # exactly the batches bertdistill's sampler gives in epoch e
        ref.set_epoch(e)
        expected = [coll([ds[i] for i in idx])["inputs"]["input_ids"] for idx in ref]
        assert len(expected) == len(passes[e]) and all(
            a.equal(b) for a, b in zip(expected, passes[e], strict=True)
        )
    assert any(not a.equal(b) for a, b in zip(passes[0], passes[1], strict=False))  # epoch 1 is reshuffled
    first = next(iter(batches))
    assert isinstance(first, dict) and "labels" not in first and "attention_mask" in first


def _result() -> dict:
    row = {
        "tool": "bertdistill",
        "precision": "fp32",
        "optimizer": "AdamW fused",
        "threads": 1,
        "teacher_cache": True,
        "cache_build_s": 60.0,
        "dev_accuracy": 0.85,
    }
    rows = [
        {
            **row,
            "row": "textbrewer",
            "tool": "textbrewer",
            "teacher_cache": False,
            "cache_build_s": None,
            "wall_s": 3000.0,
        },
        {**row, "row": "bertdistill_cached", "wall_s": 2000.0},
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "end_to_end",
        "command": "python -m benchmarks.end_to_end",
        "date": "2026-12-04",
        "machine": "m",
        "threads": {"train": 1, "timing": None},
        "precision": "fp32",
        "optimizer": "AdamW fused",
        "seeds": [42],
        "steps": None,
        "train_examples": 1000,
        "what": "e2e",
        "rows": rows,
        "epochs": 3,
        "concurrency": "one row at a time",
        "textbrewer_optimizer": "AdamW fused",
        "bertdistill_optimizer": "AdamW fused",
        "end_to_end_speedup": 1.5,
        "textbrewer_wall_s": 3000.0,
        "bertdistill_wall_s": 2000.0,
        "cache_build_s": 60.0,
        "textbrewer_dev_accuracy": 0.85,
        "bertdistill_dev_accuracy": 0.85,
    }


def test_end_to_end_results_validate_and_render(tmp_path):
    good = _result()
    assert validate(good) == []
    bad = copy.deepcopy(good)
    del bad["end_to_end_speedup"]
    assert any("end_to_end_speedup" in p for p in validate(bad))
    bad = copy.deepcopy(good)
    bad["rows"][1]["wall_s"] = "fast"
    assert validate(bad)
    lines = "\n".join(report.render([("end_to_end", good)]))
    assert "**1.50×**" in lines
    assert "| bertdistill_cached | 2000 | 1.50 | 60 | 85.0 | fp32 | AdamW fused | 1 |" in lines
    assert "| textbrewer | 3000 | 1.00 |  | 85.0 | fp32 | AdamW fused | 1 |" in lines


def test_the_loop_labels_every_part_of_a_step_for_the_profiler(tmp_path, six_layer_teacher, sst2_dir):
    from benchmarks import profile_step
    from benchmarks.throughput import recipe

    def raw(method: str, cached: bool) -> dict:
        r = recipe(
            str(six_layer_teacher),
            str(sst2_dir),
            6,
            tmp_path / f"{method}{cached}",
            tmp_path / "c",
            method,
            cached,
            0,
        )
        r["data"]["max_length"] = 32
        return r

    live = profile_step.profile_row(raw("kd", False), warmup=1, steps=6)
    ft = profile_step.profile_row(raw("finetune", False), warmup=1, steps=6)
    for label in profile_step.LABELS:
        assert live["ms_per_step"][label] > 0, label  # every part of a kd step is inside a labelled range
    assert ft["ms_per_step"]["teacher"] == 0.0  # plain fine-tuning runs no teacher
    assert live["step_ms_profiled"] > live["ms_per_step"]["backward"] > 0
