"""Distillation throughput: bertdistill vs TextBrewer's GeneralDistiller on the same work, in one run.

Work: teacher MiniLM-L6 (a fine-tuned SST-2 dir via --teacher, else the backbone with a fresh 2-way head),
student = its first 3 layers (embeddings, layers 0-2, pooler, head copied), batch 32, the same SST-2
training examples, soft targets at t = 4 plus hidden-state MSE on 3 mapped layers (student hidden_states
1, 2, 3 ↔ teacher 2, 4, 6), AdamW, no clipping, the same number of steps.

Batching: both tools get the *same* length-bucketed batches (bertdistill's default; TextBrewer trains on
whatever iterable of batches it is given, so it is handed those batches pre-padded). Timing: wall time
between optimizer steps after ``--warmup`` steps (TextBrewer: an optimizer step hook; bertdistill: the
per-step times of its JSONL log), excluding model loading, cache building and the final save. The rows run
interleaved in a shuffled order each round, ``--rounds`` times; medians are reported.

Optimizer: every headline row (``textbrewer``, ``bertdistill``, ``bertdistill_cached``, ``finetune``) uses torch's
fused AdamW (bertdistill's default, and TextBrewer's ``train()`` takes any optimizer), so the ratios compare the
tools, not the kernels; ``textbrewer_plain`` / ``bertdistill_plain`` have both on the plain per-tensor AdamW.

Precision: ``bertdistill_bf16`` (live teacher) and ``bertdistill_best`` (the cache) train under bf16 autocast
(``train.mixed_precision=bf16``; fast on CPUs with AVX-512 BF16 / AMX, which the result records as ``bf16_cpu``).
TextBrewer has no CPU autocast path, so ``ratio_best`` is bertdistill's best supported setting (bf16 + cache)
against TextBrewer's best (fused AdamW, fp32).

    python -m benchmarks.throughput --teacher ~/.cache/bertdistill/teachers/minilm-l6-sst2 --steps 60 --rounds 3

Needs the `bench` extra (textbrewer, tensorboard).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import harness as H

MAP = [(1, 2), (2, 4), (3, 6)]


def recipe(
    teacher: str,
    data: str,
    steps: int,
    out: Path,
    cache: Path,
    method: str,
    cached: bool,
    seed: int,
    fused: bool = True,
    bf16: bool = False,
    persistent: bool = True,
) -> dict:
    m = (
        {
            "name": "kd",
            "alpha": 1.0,
            "temperature": 4.0,
            "hidden_weight": 1.0,
            "hidden_map": [list(p) for p in MAP],
        }
        if method == "kd"
        else {"name": "finetune"}
    )
    return {
        "method": m,
        "teacher": {"path": teacher, "cache": cached, "cache_dir": str(cache)},
        "student": {"init": "teacher", "layers": [0, 1, 2]},
        "data": {
            "task": "sst2",
            "path": data,
            "max_length": 128,
            "max_train_examples": steps * 32,
            "eval_split": "",
            "bucket_by_length": True,
        },
        "train": {
            "max_steps": steps,
            "batch_size": 32,
            "lr": 5e-5,
            "warmup_ratio": 0.0,
            "max_grad_norm": None,
            "log_every": 1,
            "seed": seed,
            "scheduler": "constant",
            "weight_decay": 0.0,
            "fused_adam": fused,
            "mixed_precision": "bf16" if bf16 else "no",
            "persistent_embedding_grad": persistent,
        },
        "output_dir": str(out),
    }


def time_bertdistill(raw: dict, warmup: int) -> float:
    """Samples/s of one fresh bertdistill run (never reused: this is a timing)."""
    from bertdistill import distill

    res = distill(raw, quiet=True)
    return H.samples_per_s(res.history, 32, warmup)


class EpochBatches:
    """bertdistill's length-bucketed batches (its ``BatchSampler`` and ``Collator``), one epoch per pass, reseeded
    per epoch as its loop does: what TextBrewer is handed, so that both tools see the same batches."""

    def __init__(self, ds: Any, sampler: Any, collate: Any) -> None:
        self.ds, self.sampler, self.collate, self.epoch = ds, sampler, collate, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        for idx in self.sampler:
            b = self.collate([self.ds[i] for i in idx])
            yield dict(b["inputs"])  # TextBrewer checks type(batch) is dict; the losses need no labels


def sst2_batches(teacher_dir: str, data: str, n: int | None, seed: int) -> tuple[EpochBatches, Any]:
    """SST-2's training set (``n``: a seeded subsample of it, as ``data.max_train_examples`` draws) in
    bertdistill's batches of 32, and the tokenizer."""
    from transformers import AutoTokenizer

    from bertdistill.config import DataConfig
    from bertdistill.data.loading import (
        BatchSampler,
        Collator,
        load_examples,
        resolve_task,
        subsample,
        tokenize,
    )
    from bertdistill.hub import from_pretrained

    tok = from_pretrained(AutoTokenizer, teacher_dir)
    cfg = DataConfig(task="sst2", path=data, max_length=128)
    ex = load_examples(cfg, resolve_task(cfg), "train")
    if n:
        ex = subsample(ex, n, seed)
    ds = tokenize(ex, tok, 128)
    sampler = BatchSampler(ds.lengths, 32, shuffle=True, bucket=True, seed=seed)
    return EpochBatches(ds, sampler, Collator(tok.pad_token_id)), tok


def textbrewer_batches(teacher_dir: str, data: str, steps: int, seed: int) -> tuple[list[dict], object]:
    """Exactly the batches bertdistill's first epoch sees (same examples, same bucketed order)."""
    batches, tok = sst2_batches(teacher_dir, data, steps * 32, seed)
    return list(batches), tok


TEXTBREWER_OPTIMIZERS = {False: "AdamW (per-tensor loop)", True: "AdamW fused"}
# row -> (tool, method, teacher cache, fused AdamW, bf16 autocast, persistent embedding gradient). Every tool gets
# the same kernel (fused) in the headline rows; the *_plain pair has both on torch's per-tensor AdamW loop.
# TextBrewer has no CPU autocast path, so its best setting is fp32 + fused AdamW; bertdistill's best supported one
# is bf16 + the cache. The *_dense_grad rows turn bertdistill's persistent embedding gradient off
# (``train.persistent_embedding_grad: false``, autograd's per-step dense gradient): its own effect, same run.
ROWS: dict[str, tuple[str, str, bool, bool, bool, bool]] = {
    "textbrewer": ("textbrewer", "kd", False, True, False, False),
    "bertdistill": ("bertdistill", "kd", False, True, False, True),
    "bertdistill_cached": ("bertdistill", "kd", True, True, False, True),
    "finetune": ("bertdistill", "finetune", False, True, False, True),
    "bertdistill_bf16": ("bertdistill", "kd", False, True, True, True),
    "bertdistill_best": ("bertdistill", "kd", True, True, True, True),
    "textbrewer_plain": ("textbrewer", "kd", False, False, False, False),
    "bertdistill_plain": ("bertdistill", "kd", False, False, False, True),
    "bertdistill_cached_dense_grad": ("bertdistill", "kd", True, True, False, False),
    "bertdistill_best_dense_grad": ("bertdistill", "kd", True, True, True, False),
}


def time_textbrewer(
    teacher_dir: str, batches: list[dict], steps: int, warmup: int, out: Path, fused: bool = False
) -> float:
    import torch
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from transformers import AutoModelForSequenceClassification

    from bertdistill.hub import from_pretrained
    from bertdistill.students import copy_layers

    teacher = from_pretrained(AutoModelForSequenceClassification, teacher_dir, num_labels=2).eval()
    student = copy_layers(teacher, [0, 1, 2]).train()
    teacher.config.output_hidden_states = True
    student.config.output_hidden_states = True

    def adaptor(batch, out):  # read outputs by name; mask padding in the hidden MSE like bertdistill does
        return {"logits": out.logits, "hidden": out.hidden_states, "inputs_mask": batch["attention_mask"]}

    tcfg = TrainingConfig(device="cpu", log_dir=None, output_dir=str(out), ckpt_steps=steps)
    dcfg = DistillationConfig(
        temperature=4,
        kd_loss_type="ce",
        kd_loss_weight=1,
        hard_label_weight=0,
        intermediate_matches=[
            {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
            for s, t in MAP
        ],
    )
    distiller = GeneralDistiller(tcfg, dcfg, teacher, student, adaptor, adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.0, fused=fused or None)
    # the same kernel choice as bertdistill's train.fused_adam (bertdistill.training.optim)
    stamps: list[float] = []
    optimizer.register_step_post_hook(lambda *a, **k: stamps.append(time.perf_counter()))
    data = [dict(b) for b in batches]  # TextBrewer checks type(batch) is dict
    with distiller:
        distiller.train(optimizer, data, num_steps=steps, max_grad_norm=-1.0)
    assert len(stamps) == steps, len(stamps)
    return 32 * (steps - warmup) / (stamps[-1] - stamps[warmup - 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.speed_flags(p, name="throughput", seed=0, threads=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from bertdistill.hub import resolve_model_path
    from bertdistill.recipes import load_config

    H.quiet()
    logging.getLogger("Distillation").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    teacher = resolve_model_path(args.teacher)
    work = H.scratch_dir("bd-throughput-")
    cache = work / "cache"
    batches, _ = textbrewer_batches(teacher, args.data, args.steps, args.seed)
    # build the teacher cache once (not timed), as a real run would reuse it across epochs and runs
    from bertdistill import distill

    for bf16 in (False, True):  # fp32 and bf16 features are separate caches (the precision is in the key)
        distill(
            recipe(teacher, args.data, 1, work / f"warm{bf16}", cache, "kd", True, args.seed, bf16=bf16),
            quiet=True,
        )

    def row_recipe(key: str, out: Path) -> dict:
        _tool, method, cached, fused, bf16, persistent = ROWS[key]
        return recipe(
            teacher, args.data, args.steps, out, cache, method, cached, args.seed, fused, bf16, persistent
        )

    rng = random.Random(args.seed)
    results: dict[str, list[float]] = {k: [] for k in ROWS}
    for r in range(args.rounds):
        order = list(ROWS)
        rng.shuffle(order)  # no row always runs first (warm caches) or last (a tired machine)
        for key in order:
            tool, _method, _cached, fused, _bf16, _persistent = ROWS[key]
            if tool == "textbrewer":
                sps = time_textbrewer(teacher, batches, args.steps, args.warmup, work / f"{key}{r}", fused)
            else:
                sps = time_bertdistill(row_recipe(key, work / f"{key}{r}"), args.warmup)
            results[key].append(sps)
        print(
            f"round {r + 1} ({', '.join(order)}): "
            + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in results.items()),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in results.items()}
    cfg = {key: load_config(row_recipe(key, work)) for key, row in ROWS.items() if row[0] == "bertdistill"}
    rows = [
        {
            "row": key,
            "tool": tool,
            "samples_per_s": med[key],
            "samples_per_s_rounds": results[key],
            "precision": H.precision_of(cfg[key]) if key in cfg else "fp32",
            "optimizer": H.optimizer_of(cfg[key]) if key in cfg else TEXTBREWER_OPTIMIZERS[fused],
            "threads": torch.get_num_threads(),
            "teacher_cache": cached,
            "method": method,
            "persistent_embedding_grad": persistent,
        }
        for key, (tool, method, cached, fused, _bf16, persistent) in ROWS.items()
    ]
    out = {
        **H.provenance(
            "throughput",
            seeds=[args.seed],
            steps=args.steps,
            train_examples=args.steps * 32,
            precision=H.precision_of(cfg["bertdistill"]),
            optimizer=H.optimizer_of(cfg["bertdistill"]),
            train_threads=torch.get_num_threads(),
            timing_threads=None,
        ),
        "what": "distillation samples/s, bertdistill vs TextBrewer on the same batches and losses, medians of "
        "interleaved rounds",
        "rows": rows,
        "reference": "textbrewer",
        "ratio_vs_reference": {k: v / med["textbrewer"] for k, v in med.items()},
        "textbrewer_optimizer": TEXTBREWER_OPTIMIZERS[True],
        "bertdistill_optimizer": H.optimizer_of(cfg["bertdistill"]),
        "textbrewer_samples_per_s": med["textbrewer"],
        "bertdistill_samples_per_s": med["bertdistill"],
        "bertdistill_cached_samples_per_s": med["bertdistill_cached"],
        "finetune_samples_per_s": med["finetune"],
        # same optimizer kernel (fused AdamW), fp32, same threads and batches
        "ratio_uncached": med["bertdistill"] / med["textbrewer"],
        "ratio_cached": med["bertdistill_cached"] / med["textbrewer"],
        # both tools on torch's plain per-tensor AdamW
        "ratio_uncached_plain": med["bertdistill_plain"] / med["textbrewer_plain"],
        "cached_step_vs_finetune_step": med["finetune"] / med["bertdistill_cached"],
        # our best supported setting (bf16 autocast + the cache) vs TextBrewer's best (fused AdamW, fp32)
        "ratio_best": med["bertdistill_best"] / med["textbrewer"],
        "bf16_vs_fp32_live": med["bertdistill_bf16"] / med["bertdistill"],
        # train.persistent_embedding_grad on vs off, the same settings otherwise
        "persistent_grad_speedup_cached": med["bertdistill_cached"] / med["bertdistill_cached_dense_grad"],
        "persistent_grad_speedup_best": med["bertdistill_best"] / med["bertdistill_best_dense_grad"],
        "bf16_cpu": __import__("bertdistill.precision", fromlist=["cpu_bf16"]).cpu_bf16()[1],
        "timed_steps_per_run": args.steps - args.warmup,
        "rounds": args.rounds,
        "batch_size": 32,
        "teacher": args.teacher,
        "student": "first 3 layers of the teacher",
        "work": "soft targets t=4 (bertdistill: t²·KL; TextBrewer: CE, same cost) + hidden MSE on 3 mapped layers "
        "(padding masked in both)",
        "batching": "the same length-bucketed batches for both tools (bertdistill's BatchSampler, seed "
        f"{args.seed}); teacher cache for bertdistill_cached holds logits + the 3 teacher hidden layers",
        "textbrewer_version": __import__("textbrewer").__version__,
    }
    path = H.write_result(args.name, out, args.results_dir)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
