"""TinyBERT on SST-2 (or MRPC, ``--task mrpc``) with a fine-tuned MiniLM-L6 teacher: narrow random-init
students (4×192, 2×192) trained

* ``nokd``              — plain fine-tuning (no teacher), ``--steps`` steps;
* ``kd``                — Hinton KD (kd/sst2: α 0.5, t 4), ``--steps`` steps;
* ``tinybert``          — task_intermediate ``--steps``/2 + task_prediction ``--steps``/2 on the train subsample;
* ``tinybert_aug``      — the same on the train subsample plus augmented variants of ``--aug-examples`` of its
                          sentences (train text only; labelled by the teacher through the teacher cache);
* ``tinybert_general``  — a general stage (``--general-steps`` on ``--corpus``, pre-trained MiniLM-L6
                          teacher) first, then the same task stages (the general steps are extra, and reported).

Equal total task steps for every row; the same student shape, data subsample, batch size, learning rate and
seeds. Per row: dev accuracy (mean over seeds), parameters, and batch-1 latency / batch-32 throughput
speed-ups against the teacher, all students timed in one interleaved run (evaluation.compare). Writes
benchmarks/results/<name>.json: the headline row's REQUIRED fields at the top level, every row in ``rows``.

    python -m benchmarks.tinybert_bench --seeds 1 --steps 2000 --max-train-examples 20000 --threads 2 \
        --corpus ../shared/data/Multi30k-de-en/train.en --general-steps 2000 --aug-examples 2000

Tiny smoke (a few minutes on 1 core): --steps 8 --general-steps 4 --max-train-examples 256 --aug-examples 16
--eval-examples 64 --latency-sentences 20 --name tinybert_smoke.

Two cores: one ``--train-only --rows ... --name tinybert_sst2_c0`` job per core (each its own rows), then the full
command with ``--link-from ~/.cache/bertdistill/bench/tinybert_sst2_c0 --link-from ..._c1`` scores them without
retraining (``--on-mismatch error`` to be sure). The augmented files are shared by every name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness as H
from benchmarks.harness import SHARED, WORK
from bertdistill.recipes import read_recipe

SHAPES = {"4x192": "minilm-4x192", "2x192": "minilm-2x192"}
KINDS = ["nokd", "kd", "tinybert", "tinybert_aug", "tinybert_general"]
ALL_ROWS = [f"{k}-{s}" for s in SHAPES for k in KINDS]
HEADLINE = "tinybert_aug-4x192"
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sst2": {"data": "SST-2", "aug_n": 20, "max_length": 64},
    "mrpc": {"data": "MRPC", "aug_n": 30, "max_length": 128},
}


def _recipe(kind: str, preset: str, args: argparse.Namespace) -> dict:
    """A row's recipe as a dict, from the repo's recipes with the benchmark's shared settings (the harness adds
    ``train.seed`` and ``output_dir``; the ``tinybert_aug`` rows get their seed's file in ``overrides``)."""
    base = "kd" if kind in ("kd", "nokd") else "tinybert"
    raw: dict[str, Any] = read_recipe(f"{base}/{args.task}")
    raw["teacher"] = {"path": str(args.teacher), "cache": True}
    if args.cache_dir:
        raw["teacher"]["cache_dir"] = args.cache_dir
    raw["student"] = {"init": "random", "preset": preset}
    raw["data"].update(
        path=str(args.data),
        max_length=args.max_length,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.eval_examples,
    )
    raw["train"].update(
        batch_size=args.batch_size,
        lr=args.lr,
        max_steps=None,
        eval_every=10**9,  # evaluate once, at the end of the stage: every row reports its final model
        save_every=10**9,
        cpu_threads=args.threads,
        log_every=max(1, args.steps // 20),
    )
    if kind == "nokd":
        raw["method"] = {"name": "finetune"}
    if kind in ("kd", "nokd"):
        raw["train"]["max_steps"] = args.steps
        return raw
    half = max(1, args.steps // 2)
    m = raw["method"]
    m.update(
        intermediate_steps=half,
        prediction_steps=max(1, args.steps - half),
        intermediate_lr=args.lr,
        prediction_lr=args.lr,
    )
    if kind == "tinybert_aug":
        m["train_data"] = str(_aug_path(args, "{seed}"))
        raw["data"]["max_train_examples"] = None  # the file is the same subsample plus its augmented variants
    if kind == "tinybert_general":
        if not args.corpus:
            raise SystemExit("row tinybert_general needs --corpus (raw text, one sentence per line)")
        m.update(
            stages=["general", "task_intermediate", "task_prediction"],
            general_teacher=args.general_teacher,
            corpus=[str(c) for c in args.corpus],
            corpus_max_lines=args.corpus_max_lines,
            general_steps=args.general_steps,
        )
    return raw


def _aug_path(args: argparse.Namespace, seed: int | str) -> Path:
    """Where a seed's augmented training file lives: named by what it holds, not by ``--name``, so that
    ``--train-only`` jobs under other names (one per core) and the scoring run share one file and one config."""
    part = f"{args.task}-{args.max_train_examples}-{args.aug_examples}-n{args.aug_n}-seed{seed}"
    return WORK / "tinybert_aug" / part / "train.tsv"


def _augment(args: argparse.Namespace, seed: int) -> Path:
    """The training file of the ``tinybert_aug`` rows: the run's own train subsample (``--max-train-examples``,
    drawn with the run's seed exactly as the other rows draw it) plus the augmented variants of a seeded
    ``--aug-examples`` part of it. Train text only; no labels (the teacher labels it). Reused when present."""
    out = _aug_path(args, seed)
    prov_file = Path(str(out) + ".provenance.json")
    if out.is_file() and prov_file.is_file():
        prev = json.loads(prov_file.read_text())
        if (prev.get("mlm"), prev.get("glove"), prev.get("source", {}).get("data")) == (
            args.mlm,
            args.glove,
            str(args.data),
        ):
            return out
        print(f"{out} was augmented from other sources ({prev.get('mlm')}, {prev.get('glove')}); rebuilding")
    from bertdistill import __version__
    from bertdistill.config import DataConfig
    from bertdistill.data.augment import (
        AugmentConfig,
        AugmentResult,
        augment_examples,
        augmentation_mode,
        load_augmenter,
        provenance_record,
        write_augmented,
    )
    from bertdistill.data.loading import Examples, load_examples, resolve_task, subsample

    dcfg = DataConfig(task=args.task, path=str(args.data))
    task = resolve_task(dcfg)
    base = subsample(load_examples(dcfg, task, "train"), args.max_train_examples, seed)
    part = subsample(base, args.aug_examples, seed)
    cfg = AugmentConfig(n=args.aug_n, seed=seed)
    aug = load_augmenter(args.mlm, args.glove, cfg, None if args.mlm else str(args.teacher))
    res = augment_examples(part, aug)
    where = {t: i for i, t in enumerate(base.texts)}
    texts, src = list(base.texts), list(range(len(base)))
    for t, j in zip(res.examples.texts, res.source_index, strict=True):
        if t not in where:  # a new variant (the originals are already in)
            texts.append(t)
            src.append(where[part.texts[j]])
    combined = AugmentResult(Examples(texts, None, res.examples.source), src, res.seconds)
    prov = provenance_record(
        cfg,
        res,
        len(part),
        source={
            "task": args.task,
            "data": str(args.data),
            "split": "train",
            "subsample": args.max_train_examples,
            "augmented_part": args.aug_examples,
            "seed": seed,
        },
        mlm=args.mlm,
        glove=args.glove,
        mode=augmentation_mode(args.mlm, args.glove),
        word_stats=aug.stats,
        file=f"{len(base)} original training examples + {len(texts) - len(base)} augmented variants",
        file_examples=len(texts),
        bertdistill_version=__version__,
    )
    write_augmented(combined, task, out, prov)
    print(
        f"augmented {len(part)} sentences in {res.seconds:.1f}s ({res.sentences_per_s:.1f}/s): {prov['file']}"
    )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASK_DEFAULTS), default="sst2")
    p.add_argument(
        "--teacher", help="fine-tuned teacher dir (default: ~/.cache/bertdistill/teachers/minilm-l6-TASK)"
    )
    p.add_argument("--general-teacher", default="minilm-l6", help="pre-trained teacher of the general stage")
    p.add_argument("--data", help="GLUE TSV dir (default: ../shared/data/SST-2 or MRPC)")
    p.add_argument(
        "--rows", nargs="+", default=ALL_ROWS, choices=ALL_ROWS, metavar="ROW", help=f"of {ALL_ROWS}"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument(
        "--steps", type=int, default=2000, help="task steps of every row (tinybert: half per stage)"
    )
    p.add_argument("--general-steps", type=int, default=2000)
    p.add_argument("--corpus", nargs="+", help="general-stage corpus file(s), one sentence per line")
    p.add_argument("--corpus-max-lines", type=int)
    p.add_argument("--max-train-examples", type=int, default=20000)
    p.add_argument(
        "--aug-examples", type=int, default=2000, help="train sentences augmented (seeded subsample)"
    )
    p.add_argument("--aug-n", type=int, help="tries per example (default: official SST-2 20, MRPC 30)")
    p.add_argument("--mlm", help="masked LM for augmentation (default: none → GloVe-only fallback)")
    p.add_argument("--glove", default=str(SHARED / "glove-6B-50d-subset" / "glove.6B.50d.subset.txt.gz"))
    p.add_argument("--eval-examples", type=int, help="dev subsample (default: all 872)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="every row's lr (tinybert: both task stages)")
    p.add_argument("--max-length", type=int, help="default: SST-2 64, MRPC 128 (official)")
    p.add_argument("--threads", type=int)
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--cache-dir", help="teacher cache dir (default: bertdistill's)")
    p.add_argument("--name", help="result name (default: tinybert_TASK)")
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train (or reuse) the rows and write no result: one core's share of a table scored later with "
        "--link-from",
    )
    H.add_run_flags(p)
    args = p.parse_args(argv)
    defaults = TASK_DEFAULTS[args.task]
    args.teacher = args.teacher or str(
        Path(f"~/.cache/bertdistill/teachers/minilm-l6-{args.task}").expanduser()
    )
    args.data = args.data or str(SHARED / defaults["data"])
    args.aug_n = args.aug_n or defaults["aug_n"]
    args.max_length = args.max_length or defaults["max_length"]
    args.name = args.name or f"tinybert_{args.task}"
    return args


def build_table(args: argparse.Namespace) -> H.Table:
    """The rows ``kind-shape`` of ``--rows``, each against the no-KD row of its shape (when that row runs)."""
    rows = []
    for name in args.rows:
        kind, shape = name.split("-")
        recipe = _recipe(kind, SHAPES[shape], args)
        if kind == "tinybert_aug":  # the seed's own augmented file (its own train subsample)
            overrides: tuple[str, ...] = (f"method.train_data={recipe['method'].pop('train_data')}",)
        else:
            overrides = ()
        nokd = f"nokd-{shape}"
        label = f"{'kd' if kind in ('kd', 'nokd') else 'tinybert'}/{args.task} + benchmark settings"
        rows.append(
            H.Row(
                name,
                recipe,
                overrides,
                baseline=nokd if nokd in args.rows else None,
                label=label + (" (method: finetune)" if kind == "nokd" else ""),
            )
        )
    # headline: TinyBERT + augmentation 4×192 if run, else the first row of the most complete TinyBERT kind
    prefs = [HEADLINE, "tinybert_aug-", "tinybert_general-", "tinybert-"]
    head = next((x for p in prefs for x in args.rows if x.startswith(p)), args.rows[0])
    return H.Table(name=args.name, teacher=args.teacher, rows=rows, seeds=args.seeds, primary=head)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    H.quiet()
    aug_info: dict[int, dict[str, Any]] = {}
    if any(r.startswith("tinybert_aug-") for r in args.rows):
        for seed in args.seeds:
            aug = _augment(args, seed)
            aug_info[seed] = json.loads(Path(str(aug) + ".provenance.json").read_text())
    table = build_table(args)
    head = table.primary_name()
    result = H.run_table(
        table,
        timing=H.TimingOptions(
            threads=args.threads,
            n_latency=args.latency_sentences,
            max_examples=args.eval_examples,
            max_length=args.max_length,
        ),
        train_only=args.train_only,
        on_mismatch=args.on_mismatch,
        link_from=args.link_from,
    )
    if result is None:
        print(f"trained {args.rows} in {WORK / args.name}; no result written (--train-only)")
        return 0
    for x in result["rows"]:
        x["task_steps"] = sum(v for k, v in x["stage_steps"].items() if k != "general")
        x["general_steps"] = x["stage_steps"].get("general", 0)
    h = next(x for x in result["rows"] if x["row"] == head)
    result.update(
        student=f"{head}: random-init {h['student_layers']}×{h['student_hidden']} (12 heads, FFN 768)",
        # equal task steps for every row; general steps are extra (rows[].general_steps)
        steps=h["task_steps"],
        no_kd_definition="the same student shape fine-tuned without a teacher, same steps, data, lr and seeds",
        augmentation=aug_info.get(args.seeds[0]),
        settings={k: v for k, v in vars(args).items() if k not in ("rows",)} | {"rows": args.rows},
        model_selection="the final model of every row (dev evaluated once, at the end; no selection on dev)",
    )
    path = H.write_result(args.name, result, args.results_dir)
    print(H.summary(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
