"""C-MLM soft-label alignment check (issue 16): do the soft labels reach the student lined up with its targets?

Runs the shipped recipe ``cmlm/multi30k-de-en`` at a small scale — a briefly fine-tuned C-MLM teacher (or
``--teacher-path``, a ``stages/teacher`` dir), the soft-label stage through the real teacher cache, then a few
steps of the real student stage — and, inside the method's loss (the batches exactly as the training loop builds
them: shuffled, length-bucketed, cache rows served by example id), counts over the real target positions how
often the soft label's top-1 id equals the MLE label at that position, and at the positions one earlier / one
later (for contrast). Aligned soft labels give a top-1 agreement equal to the teacher's own masked-token accuracy
on the same training pairs (computed independently, without the cache or the student batches) and near-zero
agreement with the shifted labels. Also prints how flat the soft labels are at the recipe's temperature.

    python -m benchmarks.cmlm_alignment --out /tmp/cmlm-align --pairs 400 --teacher-steps 150   # ~9 min, 1 thread

Prints one JSON object; writes nothing but the run dir and its teacher cache under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bertdistill.data.loading import Collator
from bertdistill.methods.cmlm import CMLMSoftLabeler, load_masked_lm
from bertdistill.protocol import Needs
from bertdistill.recipes import load_config
from bertdistill.teachers import CachedTeacher
from bertdistill.training.loop import Trainer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="run dir (its teacher cache goes to <out>-cache)")
    ap.add_argument("--pairs", type=int, default=400, help="training pairs (the first N after subsampling)")
    ap.add_argument("--teacher-steps", type=int, default=150)
    ap.add_argument("--teacher-path", default=None, help="a fine-tuned C-MLM teacher: skip stage teacher")
    ap.add_argument("--student-steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [
        f"output_dir={args.out}",
        f"teacher.cache_dir={args.out}-cache",
        f"data.max_train_examples={args.pairs}",
        "data.max_eval_examples=32",
        f"method.teacher_steps={args.teacher_steps}",
        "method.teacher_batch_size=32",
        f"method.student_steps={args.student_steps}",
        "method.student_batch_size=64",
        "train.eval_every=100000",
        f"train.cpu_threads={args.threads}",
    ]
    if args.teacher_path:
        overrides.append(f"method.teacher_path={args.teacher_path}")
    tr = Trainer(load_config("cmlm/multi30k-de-en", overrides), quiet=True)
    counts = dict.fromkeys(("tokens", "same", "in_topk", "prev", "n_prev", "next", "n_next", "batches"), 0)
    examples: set[int] = set()
    loss = tr.method.loss

    def counted_loss(stage: Any, batch: Any, student_out: Any, teacher_out: Any, bundle: Any) -> Any:
        terms = loss(stage, batch, student_out, teacher_out, bundle)
        if stage.name == "student" and teacher_out is not None and teacher_out.topk is not None:
            labels = batch["labels"]
            real = labels != -100
            ids = teacher_out.topk.indices
            prev, nxt = torch.full_like(labels, -100), torch.full_like(labels, -100)
            prev[:, 1:], nxt[:, :-1] = labels[:, :-1], labels[:, 1:]
            y, p, n = labels[real], prev[real], nxt[real]
            counts["tokens"] += int(real.sum())
            counts["same"] += int((ids[:, 0] == y).sum())
            counts["in_topk"] += int((ids == y[:, None]).any(1).sum())
            counts["prev"] += int(((ids[:, 0] == p) & (p != -100)).sum())
            counts["n_prev"] += int((p != -100).sum())
            counts["next"] += int(((ids[:, 0] == n) & (n != -100)).sum())
            counts["n_next"] += int((n != -100).sum())
            counts["batches"] += 1
            examples.update(batch["idx"].tolist())
        return terms

    tr.method.loss = counted_loss  # type: ignore[method-assign]
    t0 = time.perf_counter()
    result = tr.train()
    seconds = time.perf_counter() - t0

    # the teacher's own masked-token accuracy on the same training pairs: no cache, no student batches
    method: Any = tr.method
    teacher = CMLMSoftLabeler(
        load_masked_lm(method.teacher_dir(), trained_head=True),
        int(tr.tokenizer.mask_token_id),
        method.cfg.copies,
    ).eval()
    data = tr.datasets["train"].teacher  # type: ignore[attr-defined]
    collate = Collator(tr.tokenizer.pad_token_id)
    correct = total = 0
    with torch.no_grad():
        for s in range(0, len(data), 32):
            b = collate([data[i] for i in range(s, min(s + 32, len(data)))])["inputs"]
            out = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            correct += int((out.logits.argmax(-1) == out.labels).sum())
            total += int(out.labels.numel())
    prepared = next(r for r in result.history if r.get("stage") == "soft_labels")
    cache = CachedTeacher.open(Path(prepared["cache"]), Needs(logits=False, token_topk=method.cfg.topk))
    top = cache.tensors["topk.values"].float()
    t = method.cfg.temperature
    p_t = torch.softmax(top / t, -1)
    n = max(1, counts["tokens"])
    summary = {
        "pairs": args.pairs,
        "teacher_steps": 0 if args.teacher_path else args.teacher_steps,
        "seconds": round(seconds, 1),
        "teacher_masked_token_accuracy_train": correct / max(1, total),
        "student_batches": counts["batches"],
        "student_examples_seen": len(examples),
        "student_target_tokens": counts["tokens"],
        "top1_equals_label": counts["same"] / n,
        "label_in_topk": counts["in_topk"] / n,
        "top1_equals_label_one_earlier": counts["prev"] / max(1, counts["n_prev"]),
        "top1_equals_label_one_later": counts["next"] / max(1, counts["n_next"]),
        "chance": 1 / len(tr.tokenizer),
        "soft_labels": {
            "temperature": t,
            "top1_minus_topk_logit_mean": float((top[:, 0] - top[:, -1]).mean()),
            "mean_p_top1": float(p_t[:, 0].mean()),
            "mean_entropy_nats": float(-(p_t * p_t.log()).sum(-1).mean()),
            "uniform_entropy_nats": math.log(top.shape[1]),
        },
        "cache": prepared["cache"],
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
