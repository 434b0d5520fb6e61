"""MT-DNN KD (Liu et al. 2019) on SST-2, MRPC and STS-B: per-task teacher ensembles, one multi-task student.

Rows per task (``benchmarks/results/<name>_<task>.json``, one file per task, the harness's ``distill`` schema):

* ``single_teacher`` / ``ensemble``: the first teacher and the ensemble (mean of probabilities; STS-B: mean
  prediction) on dev, in ``single_teacher_score`` / ``ensemble_score``;
* ``mt_kd`` (headline): ``mtdnn_kd/glue3``, soft + hard loss per task;
* ``mt_nokd`` (the no-KD control): the same recipe with ``method.soft_weight=0`` (labels only; same init,
  task order, steps and seeds);
* ``kd_single``: a single-task Hinton ``kd`` student per task (``kd/mrpc`` with the task swapped)
  taught by the first teacher, with the same student shape, optimizer, batch size, learning rate and
  epochs, i.e. the same number of batches of that task as the multi-task run gives it. ``--single-init shared``
  (the default) starts it from exactly the multi-task encoder's init — the first 3 layers of the SST-2 teacher,
  pooler included — with a new head, so that multi-task KD and single-task KD differ by the method alone;
  ``--single-init own`` starts it from its own task's teacher (its layers and head), which mixes init and method.
* ``kd_single_steps``: the same single-task student trained as many steps as the multi-task run in all (every
  batch its own task's: several times more passes over its data), the teacher's logits cached (the same numbers
  as the live teacher's; the cache only saves time). With ``kd_single`` this brackets the comparison: the same
  data seen as often, and the same compute.

    python -m benchmarks.mtdnn_bench --teachers ~/.cache/bertdistill/teachers/ens \\
        --seeds 1 2 3 --epochs 2 --sst2-examples 8000 --threads 1

``--teachers DIR`` holds ``<task>/seed-{1,2,3}`` ensembles (``bertdistill ensemble``); SST-2's is
``sst2-8k`` when ``--sst2-examples 8000`` (the teachers were fine-tuned on an 8k subsample of SST-2 train,
seeded; the students get a subsample of the same size, seeded by their own seed). The teacher and the
single-task student are timed interleaved in one run; the multi-task student's per-task model has the same
shape (``bertdistill export-task`` writes it), so its speed is that of ``kd_single``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import harness as H

TASKS = {"sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B"}


def teacher_dirs(root: Path, task: str, sst2_examples: int | None, n: int) -> list[str]:
    folder = f"sst2-{sst2_examples // 1000}k" if task == "sst2" and sst2_examples else task
    dirs = [root / folder / f"seed-{i}" for i in range(1, n + 1)]
    missing = [str(d) for d in dirs if not (d / "config.json").is_file()]
    if missing:
        raise SystemExit(
            f"teacher dirs missing: {missing}; make them with "
            f"`bertdistill ensemble finetune/{task} --seeds 1 2 3 --output {root / folder}`"
        )
    return [str(d) for d in dirs]


def shared_init_dir(source: str, num_layers: int, out: Path) -> Path:
    """The multi-task student's encoder init as a standalone model dir: the first ``num_layers`` blocks of
    ``source`` (embeddings and pooler included, classifier dropped), with its tokenizer. A single-task student
    loaded from it (``student.init: pretrained``) gets a new head, as each multi-task head is."""
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertdistill.students import copy_layers

    model = AutoModelForSequenceClassification.from_pretrained(source)
    small = copy_layers(model, list(range(num_layers)))
    # a private temp dir, renamed into place: runs of other seeds started at the same time may build it too
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    base = getattr(small, small.base_model_prefix)
    base.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process renamed its copy first (the same weights): keep that one
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
    return out


def multitask_steps(mt: dict[str, Any], epochs: float) -> int:
    """Optimizer steps of the multi-task run: per epoch every task's batches (the last one of a task may be
    short), ``train.batch_size`` examples each."""
    import math

    from bertdistill.config import DataConfig
    from bertdistill.data.loading import load_examples, resolve_task

    bs = int(mt["train"]["batch_size"])
    per_epoch = 0
    for entry in mt["method"]["tasks"]:
        dcfg = DataConfig(task=entry["task"], path=entry["path"])
        n = len(load_examples(dcfg, resolve_task(dcfg), "train"))
        n = min(n, entry.get("max_train_examples") or n)
        per_epoch += math.ceil(n / bs)
    return round(per_epoch * epochs)


def mt_recipe(teachers: dict[str, list[str]], sst2_examples: int | None) -> dict[str, Any]:
    from bertdistill.recipes import read_recipe

    raw = read_recipe("mtdnn_kd/glue3")
    for entry in raw["method"]["tasks"]:
        entry["path"] = str(H.SHARED / TASKS[entry["task"]])
        entry["teachers"] = teachers[entry["task"]]
        if entry["task"] == "sst2" and sst2_examples:
            entry["max_train_examples"] = sst2_examples
    raw["student"]["path"] = teachers["sst2"][0]
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", required=True, help="dir of <task>/seed-N teacher ensembles")
    p.add_argument("--n-teachers", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=3.0, help="every row, every task")
    p.add_argument("--sst2-examples", type=int, help="subsample SST-2 train (teachers in sst2-<N/1000>k)")
    p.add_argument("--threads", type=int, help="training and timing threads")
    p.add_argument("--latency-sentences", type=int, default=200)
    p.add_argument("--rows", nargs="+", default=["mt_kd", "mt_nokd", "kd_single", "kd_single_steps"])
    p.add_argument("--name", default="mtdnn_kd")
    p.add_argument(
        "--single-init",
        choices=["shared", "own"],
        default="shared",
        help="kd_single's init: the multi-task encoder's (shared, a fair comparison) or its own teacher's",
    )
    p.add_argument("--train-only", action="store_true")
    p.add_argument(
        "--only", nargs="+", default=None, metavar="ROW", help="train only these rows (with --train-only)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], help="overrides, every row")
    H.add_run_flags(p)
    args = p.parse_args(argv)
    H.quiet()

    root = Path(args.teachers).expanduser()
    teachers = {t: teacher_dirs(root, t, args.sst2_examples, args.n_teachers) for t in TASKS}
    common = [
        f"train.epochs={args.epochs}",
        *([f"train.cpu_threads={args.threads}"] if args.threads else []),
        *args.overrides,
    ]
    mt = mt_recipe(teachers, args.sst2_examples)
    rows: list[H.Row] = []
    if "mt_kd" in args.rows:
        rows.append(H.Row("mt_kd", mt, label="mtdnn_kd/glue3"))
    if "mt_nokd" in args.rows:
        rows.append(H.Row("mt_nokd", mt, ("method.soft_weight=0.0",), label="mtdnn_kd/glue3"))
    kd_rows: dict[str, list[H.Row]] = {}
    work = H.WORK / args.name
    init: tuple[str, ...] = ()
    if "kd_single" in args.rows or "kd_single_steps" in args.rows:
        n_layers = int(mt["student"]["num_layers"])
        if args.single_init == "shared":
            shared = shared_init_dir(teachers["sst2"][0], n_layers, work / "shared-init")
            init = ("student.init=pretrained", f"student.path={shared}")
    single_kinds = [k for k in ("kd_single", "kd_single_steps") if k in args.rows]
    mt_steps = multitask_steps(mt, args.epochs) if "kd_single_steps" in single_kinds else None
    for kind in single_kinds:
        for task, folder in TASKS.items():
            row = H.Row(
                f"{kind}_{task}",
                "kd/mrpc",
                (
                    f"data.task={task}",
                    f"data.path={H.SHARED / folder}",
                    f"teacher.path={teachers[task][0]}",
                    "train.weight_decay=0.01",  # as the multi-task recipe
                    "train.eval_every=null",
                    *init,
                    *(
                        [f"data.max_train_examples={args.sst2_examples}"]
                        if task == "sst2" and args.sst2_examples
                        else []
                    ),
                    *(
                        [f"train.max_steps={mt_steps}", "teacher.cache=true"]
                        if kind == "kd_single_steps"
                        else []
                    ),
                ),
            )
            kd_rows.setdefault(task, []).append(row)
            rows.append(row)
    if args.only and not args.train_only:
        p.error("--only trains a part of the table: use it with --train-only")
    runs = H.run_rows(
        rows, args.seeds, work, common, only=args.only, on_mismatch=args.on_mismatch, link_from=args.link_from
    )
    if mt_steps is not None and runs.get("mt_kd") and runs["mt_kd"][0].steps != mt_steps:
        raise SystemExit(
            f"kd_single_steps ran {mt_steps} steps but the multi-task run {runs['mt_kd'][0].steps}"
        )
    if args.train_only:
        return 0

    from bertdistill.evaluation import evaluate

    for task, folder in TASKS.items():
        data = str(H.SHARED / folder)
        single = evaluate(teachers[task][0], task=task, data_path=data)
        ens = evaluate("+".join(teachers[task]), task=task, data_path=data)
        metric = single["metric"]
        single_names = [r.name for r in kd_rows.get(task, [])]
        kd_name = single_names[0] if single_names else None  # timed: every single-task row has its shape
        timed = {kd_name: runs[kd_name][0].dir} if kd_name else {}
        teacher_row, students = H.time_models(
            teachers[task][0],
            timed,
            threads=args.threads,
            n_latency=args.latency_sentences,
            task=task,
            data_path=data,
        )
        shape = students.get(kd_name, {}) if kd_name else {}
        # every student row of this task: the multi-task runs scored by their `<task>/<metric>` entry
        task_scores = {
            name: [float(r.metrics[f"{task}/{metric}"]) for r in recs]
            for name, recs in runs.items()
            if name.startswith("mt_")
        }
        names = [n for n in ("mt_kd", "mt_nokd") if n in runs] + single_names
        table = H.Table(
            f"{args.name}_{task}",
            teachers[task][0],
            [next(r for r in rows if r.name == n) for n in names],
            args.seeds,
            common,
            primary=names[0],
            baseline="mt_nokd" if "mt_nokd" in runs else None,
            method="mtdnn_kd",
            student=f"{shape.get('layers', 3)} layers × {shape.get('hidden', 384)} shared encoder + a head per task",
        )
        students_by_row = {n: shape for n in names}
        result = H.table_result(table, {n: runs[n] for n in names}, teacher_row, students_by_row, task_scores)
        result.update(
            {
                "task": task,
                "single_teacher_score": single["score"],
                "ensemble_score": ens["score"],
                "ensemble_teachers": teachers[task],
                "ensemble_metrics": ens["metrics"],
                "teacher_metrics": single["metrics"],
                "goals": goals(
                    result, single["score"], ens["score"], single_names, args.single_init == "shared"
                ),
                "inits": {
                    "mt_kd, mt_nokd": f"first 3 layers of {teachers['sst2'][0]} (student.path), new heads",
                    "kd_single, kd_single_steps": (
                        f"the same first 3 layers of {teachers['sst2'][0]} (embeddings and pooler included), "
                        "a new head"
                        if args.single_init == "shared"
                        else f"first 3 layers of {teachers[task][0]} (its own task's teacher), its head"
                    ),
                },
                "score_source": "each run's metrics.json; multi-task runs: its `<task>/<metric>` entry",
            }
        )
        path = H.write_result(f"{args.name}_{task}", result, args.results_dir)
        print(H.summary(result))
        print(json.dumps(result["goals"], indent=1))
        print(f"written {path}")
    return 0


def goals(
    result: dict[str, Any], single: float, ens: float, single_names: list[str], same_init: bool
) -> dict[str, Any]:
    """The issue's goals for one task, each with the numbers it was judged on."""
    by = {r["row"]: r for r in result["rows"]}
    out: dict[str, Any] = {"ensemble_gt_single": ens > single, "ensemble_minus_single": ens - single}
    if "mt_kd" in by and "mt_nokd" in by:
        out["mt_kd_minus_nokd"] = by["mt_kd"]["student_score"] - by["mt_nokd"]["student_score"]
        out["mt_kd_gt_nokd"] = out["mt_kd_minus_nokd"] > 0
    present = [n for n in single_names if n in by]
    if "mt_kd" in by and present and same_init:
        # judged against every single-task row (the same task batches, and the same steps): the stronger one
        out["mt_kd_minus_kd_single"] = {
            n: by["mt_kd"]["student_score"] - by[n]["student_score"] for n in present
        }
        out["mt_kd_ge_kd_single"] = all(d >= 0 for d in out["mt_kd_minus_kd_single"].values())
    elif "mt_kd" in by and present:
        # not judged: the two students start from different layers (the multi-task encoder from the SST-2
        # teacher's first 3 layers, each single-task student from its own task's fine-tuned teacher), so the
        # difference mixes the init with the method; see "inits"
        out["mt_kd_ge_kd_single"] = None
        out["mt_kd_minus_kd_single_confounded_by_init"] = {
            n: by["mt_kd"]["student_score"] - by[n]["student_score"] for n in present
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
