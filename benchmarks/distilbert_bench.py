"""DistilBERT on our scale: MiniLM-L6 (6 layers) → a 3-layer DistilBERT, pre-training distillation on the unlabeled
sentences of the shared TRAIN splits, then SST-2. Writes benchmarks/results/<name>.json.

    python -m benchmarks.distilbert_bench --mlm-steps 1000 --distil-steps 3000 --steps 2000 --seeds 1 2 --threads 2

1. corpus: benchmarks/make_corpus.py (train splits only), if missing;
2. MLM teacher: ``finetune --task mlm`` of minilm-l6 on the corpus (the sentence encoder has no MLM head);
3. pre-training distillation 6 → 3 layers (distilbert/pretrain), once (first seed);
4. held-out MLM perplexity of the teacher, the distilled student and the layer-copy-only student;
5. SST-2 dev accuracy after the same number of steps with the same seeds for: the distilled student fine-tuned
   (``student_score``), the same DistilBERT architecture initialised by layer copy only (``no_kd_score``: no
   pre-training distillation), and the distilled student with the ``task`` step (kd from the fine-tuned SST-2
   teacher, distilbert/sst2; ``task_kd_score``).
Every artefact is kept under $BERTDISTILL_BENCH_DIR (default ~/.cache/bertdistill/bench)/<name>/ and reused only
when its full config and inputs match (``benchmarks.harness.run_or_reuse``).
``--max-steps N`` is a smoke run: every stage capped at N steps, result written to the work dir, not results/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness as H
from benchmarks import make_corpus
from benchmarks.harness import SHARED, WORK
from bertdistill.recipes import read_recipe

SST2_TEACHER = Path("~/.cache/bertdistill/teachers/minilm-l6-sst2").expanduser()


def layer_copy_student(mlm_teacher: Path, layers: list[int], out: Path) -> Path:
    """The same DistilBERT architecture initialised from the teacher by layer copy only (no distillation)."""
    from transformers import AutoTokenizer

    from bertdistill.hub import save_hf_model
    from bertdistill.methods.distilbert import distilbert_from_teacher, drop_token_type_ids, load_mlm_teacher

    source = {"mlm_teacher": str(mlm_teacher), "fingerprint": H.fingerprint(mlm_teacher), "layers": layers}
    stamp = out / "source.json"
    if (out / "config.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == source:
        return out  # built from this very teacher: reuse (rebuilding would restamp it and retrain its rows)
    student = distilbert_from_teacher(load_mlm_teacher(str(mlm_teacher)), layers)
    tok = AutoTokenizer.from_pretrained(mlm_teacher)
    drop_token_type_ids(tok)
    save_hf_model(student, tok, out)
    stamp.write_text(json.dumps(source, indent=1) + "\n")
    return out


def heldout_perplexities(
    distilled: Path, models: dict[str, Path], eval_examples: int | None
) -> dict[str, Any]:
    """Masked-LM loss / perplexity of each model on the distillation run's held-out slice, with the same
    fixed masks for every model."""
    from torch.utils.data import DataLoader
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from bertdistill import load_config
    from bertdistill.data.corpus import MLMCollator, corpus_datasets
    from bertdistill.data.loading import BatchSampler
    from bertdistill.mlm_head import mlm_metrics

    rc = load_config(distilled / "bertdistill.yaml")
    if eval_examples:
        rc.data.max_eval_examples = eval_examples
    tok = AutoTokenizer.from_pretrained(distilled)
    data = corpus_datasets(rc.method, rc, tok)  # type: ignore[arg-type]
    held, probs = data["eval"], data["train"].mask_weights  # type: ignore[attr-defined]
    loader = DataLoader(
        held,
        batch_sampler=BatchSampler(held.lengths, 64, shuffle=False),  # type: ignore[attr-defined]
        collate_fn=MLMCollator(tok, probs, rc.method, rc.train.seed),  # type: ignore[arg-type]
    )
    out: dict[str, Any] = {"heldout_sequences": len(held)}  # type: ignore[arg-type]
    for name, path in models.items():
        m = mlm_metrics(AutoModelForMaskedLM.from_pretrained(path), loader)
        out[name] = {"mlm_loss": m["mlm_loss"], "perplexity": m["perplexity"]}
        print(f"held-out {name}: {out[name]}", flush=True)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="SST-2 fine-tuning steps (every row, every seed)")
    p.add_argument("--distil-steps", type=int, default=3000, help="pre-training distillation steps")
    p.add_argument("--mlm-steps", type=int, default=1000, help="MLM-head training steps of the teacher")
    p.add_argument("--mlm-lr", type=float, default=1e-3)
    p.add_argument(
        "--mlm-head-only",
        action="store_true",
        help="train only the teacher's MLM head (default: head, plus the encoder at 0.1× the lr)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--max-train-examples", type=int, default=None, help="subsample SST-2 train (seeded)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for training and timing")
    p.add_argument("--sst2-teacher", default=str(SST2_TEACHER), help="fine-tuned MiniLM-L6 SST-2 teacher dir")
    p.add_argument(
        "--sst2-data", default=str(SHARED / "SST-2"), help="SST-2 dir (default: the shared data's)"
    )
    p.add_argument("--mlm-base", default="minilm-l6", help="the encoder given an MLM head (the MLM teacher)")
    p.add_argument("--corpus", default=str(make_corpus.DEFAULT_OUT))
    p.add_argument(
        "--eval-examples", type=int, default=None, help="cap the held-out sequences / dev examples"
    )
    p.add_argument("--latency-sentences", type=int, default=300)
    p.add_argument("--max-steps", type=int, default=None, help="smoke run: cap every stage at N steps")
    p.add_argument("--name", default="distilbert_sst2")
    p.add_argument(
        "--work", help="work dir (default: $BERTDISTILL_BENCH_DIR/NAME, + _smoke with --max-steps)"
    )
    H.add_run_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    H.quiet()
    smoke = args.max_steps is not None
    cap = (lambda n: min(n, args.max_steps)) if smoke else (lambda n: n)
    work = Path(args.work) if args.work else WORK / (args.name + ("_smoke" if smoke else ""))
    threads = [f"train.cpu_threads={args.threads}"] if args.threads else []
    eval_cap = [f"data.max_eval_examples={args.eval_examples}"] if args.eval_examples else []
    sst2_data = [f"data.path={args.sst2_data}"]

    def run(recipe: Any, overrides: list[str], out: Path) -> H.RunRecord:
        from bertdistill import load_config

        rec = H.run_or_reuse(load_config(recipe, overrides), out, on_mismatch=args.on_mismatch)
        print(f"{out.name}: {rec.metrics}", flush=True)
        return rec

    # 1. corpus (train splits only)
    corpus = make_corpus.ensure(args.corpus, SHARED)

    # 2. the MLM teacher
    body = not args.mlm_head_only
    mlm_dir = work / f"mlm-teacher-{cap(args.mlm_steps)}{'-body' if body else ''}"
    mlm_recipe = {
        "method": {"name": "mlm", "corpus": [str(corpus)], "train_body": body, "body_lr_scale": 0.1},
        "student": {"init": "pretrained", "path": args.mlm_base},
        "data": {"task": "mlm", "max_length": 128},
        "train": {"lr": args.mlm_lr, "batch_size": 32, "warmup_ratio": 0.05, "weight_decay": 0.0, "seed": 42},
    }
    mlm = run(mlm_recipe, [f"train.max_steps={cap(args.mlm_steps)}", *threads, *eval_cap], mlm_dir)

    # 3. pre-training distillation, once (first seed)
    seed0 = args.seeds[0]
    distilled = work / f"distil-{cap(args.distil_steps)}-seed{seed0}"
    pre = "distilbert/pretrain"
    pre_over = [
        f"teacher.path={mlm_dir}",
        f"method.corpus=[{corpus}]",
        f"train.max_steps={cap(args.distil_steps)}",
        f"train.seed={seed0}",
        *threads,
        *eval_cap,
    ]
    dist = run(pre, pre_over, distilled)
    layers = json.loads((distilled / "config.json").read_text())["bertdistill_copied_layers"]
    copy_dir = layer_copy_student(mlm_dir, layers, work / "layer-copy")

    # 4. held-out perplexities (same held-out slice and masks for all)
    ppl = heldout_perplexities(
        distilled, {"teacher": mlm_dir, "distilled": distilled, "layer_copy": copy_dir}, args.eval_examples
    )

    # 5. SST-2: the teacher is an input — used as it is when finished, trained here only when missing
    sst2_teacher = Path(args.sst2_teacher).expanduser()
    if not H.is_finished(sst2_teacher):
        if sst2_teacher.exists() and any(sst2_teacher.iterdir()):
            raise SystemExit(
                f"{sst2_teacher} holds no finished model; finish or remove it, or pass --sst2-teacher"
            )
        run(
            "finetune/sst2",
            [*threads, *sst2_data, *([f"train.max_steps={args.max_steps}"] if smoke else ["train.epochs=1"])],
            sst2_teacher,
        )
    ft_base = read_recipe("finetune/sst2")
    common = [f"train.max_steps={cap(args.steps)}", "train.eval_every=null", *threads, *sst2_data]
    if args.max_train_examples:
        common.append(f"data.max_train_examples={args.max_train_examples}")
    if args.eval_examples:
        common.append(f"data.max_eval_examples={args.eval_examples}")
    ft_label = "finetune/sst2"
    table = H.Table(
        name=args.name,
        teacher=sst2_teacher,
        rows=[
            H.Row("distilled", ft_base, (f"student.path={distilled}",), label=ft_label),
            H.Row("layer_copy", ft_base, (f"student.path={copy_dir}",), label=ft_label),
            H.Row(
                "distilled_task_kd",
                "distilbert/sst2",
                (f"student.path={distilled}", f"teacher.path={sst2_teacher}"),
            ),
        ],
        seeds=args.seeds,
        common=common,
        primary="distilled",
        baseline="layer_copy",
        method="distilbert",
    )
    result = H.run_table(
        table,
        work=work,
        timing=H.TimingOptions(
            threads=args.threads, n_latency=cap(args.latency_sentences), max_examples=args.eval_examples
        ),
        on_mismatch=args.on_mismatch,
        link_from=args.link_from,
    )
    assert result is not None
    cfg = json.loads((Path(result["rows"][0]["runs"][0]) / "config.json").read_text())
    task_kd = next(r for r in result["rows"] if r["row"] == "distilled_task_kd")
    result.update(
        student=f"{cfg['n_layers']}-layer DistilBERT (dim {cfg['dim']}) from MLM-teacher layers {layers}, "
        f"pre-training-distilled {dist.steps} steps, then fine-tuned",
        no_kd="the same DistilBERT initialised by layer copy from the MLM teacher only (no pre-training "
        "distillation), fine-tuned with the same steps and seeds",
        **H.score_fields("task_kd_score", task_kd["student_scores"]),
        task_kd_retention=task_kd["retention"],
        heldout_mlm=ppl,
        mlm_teacher=str(mlm_dir),
        mlm_teacher_steps=mlm.steps,
        mlm_teacher_train_body=body,
        distil_steps=dist.steps,
        distil_seed=seed0,
        corpus=str(corpus),
        corpus_lines=len(corpus.read_text(encoding="utf-8").splitlines()),
        model_selection="score of the final model (eval_every=null: evaluated once, at the end)",
    )
    path = H.write_result(args.name, result, work if smoke else args.results_dir)
    keys = ("teacher_score", "student_score", "no_kd_score", "task_kd_score", "retention", "latency_speedup")
    print(json.dumps({k: result[k] for k in keys} | {"heldout_mlm": ppl}, indent=1))
    print(H.summary(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
