"""``bertdistill`` command line: thin subcommands over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = (
    "Docs: README.md and docs/methods/<method>.md. Recipes: `bertdistill recipes` lists the shipped ones, run "
    "by name (kd/sst2) or as a YAML file."
)


def _set_flag(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def _int_at_least(low: int) -> Any:
    """An argparse type: an integer >= ``low`` (a count, a size, a thread number)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _common_train_flags(p: argparse.ArgumentParser) -> None:
    _set_flag(p, "override a recipe field, typed by the field (repeatable), e.g. --set train.lr=3e-5")
    p.add_argument("--output", "-o", help="output dir (overrides output_dir)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the output dir"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train over a run the output dir already holds (default: refuse; --resume continues it)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or console logs")


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .registry import list_methods

    table = Table("method", "what it does")
    for name, doc in list_methods().items():
        table.add_row(name, doc)
    Console().print(table)
    return 0


def _run(cfg_source: Any, overrides: list[str], args: argparse.Namespace) -> int:
    from .recipes import load_config
    from .training.loop import distill

    if args.output:
        overrides = [*overrides, f"output_dir={args.output}"]
    cfg = load_config(cfg_source, overrides)
    # a new run does not write over a finished one unless asked (--overwrite); the API's default is to train. Checked
    # here, before the teacher and the data load, in a single process, and again by the trainer under the run-dir
    # lock, where a multi-process run's ranks stop together and a dir another process trains into says "in use"
    overwrite = bool(getattr(args, "overwrite", False))
    if not args.resume and not overwrite and os.environ.get("WORLD_SIZE", "1") == "1":
        from .checks import refuse_occupied_output
        from .training import checkpoint as ckpt
        from .training.loop import OCCUPIED_HOW

        out = cfg.resolved_output_dir()
        try:
            with ckpt.run_dir_lock(out):
                refuse_occupied_output(out, "this run", OCCUPIED_HOW)
        except ckpt.RunDirBusyError:
            pass  # the trainer says so, with the holder's pid
    result = distill(cfg, resume=args.resume, overwrite=overwrite, quiet=args.quiet)
    if result.main_process:
        print(json.dumps({"output_dir": str(result.output_dir), **result.metrics}, indent=1))
        skipped = result.metrics.get("data", {}).get("skipped_rows")
        if skipped:  # printed even with --quiet: the run saw less data than its files hold
            print(
                f"bertdistill: skipped {skipped} malformed data row(s) (data.bad_rows: skip); see "
                f"{result.output_dir / 'metrics.json'} (data.skipped_rows_by_file)",
                file=sys.stderr,
            )
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """List the shipped recipes, or print one (to copy and edit)."""
    from .recipes import find_recipe, recipe_description, shipped_recipes

    if args.name:
        print(find_recipe(args.name).read_text(), end="")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "recipe", "what it runs", title="bertdistill distill NAME  (bertdistill recipes NAME prints one)"
    )
    for name, path in shipped_recipes().items():
        table.add_row(name, recipe_description(path))
    Console().print(table)
    return 0


QUICK_FLAGS = {
    "teacher": "teacher.path",
    "task": "data.task",
    "student_layers": "student.num_layers",
    "data": "data.path",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "max_train_examples": "data.max_train_examples",
}
"""``distill`` flags → the recipe keys they set (before any ``--set``, which wins)."""


def cmd_distill(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .recipes import quick_recipe

    if args.recipe and args.method:
        raise ConfigError("distill: give a RECIPE or --method, not both (--set changes a recipe's method)")
    if args.recipe:
        source: Any = args.recipe
    elif args.method and args.task:
        source = quick_recipe(args.method, args.task)
    else:
        raise ConfigError(
            "distill: give a RECIPE (a YAML file or a shipped name, see `bertdistill recipes`), or --method and "
            "--task (see --help)"
        )
    flags = [
        f"{key}={getattr(args, flag)}" for flag, key in QUICK_FLAGS.items() if getattr(args, flag) is not None
    ]
    control = ["train.control=true"] if args.control else []
    return _run(source, [*flags, *args.overrides, *control], args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep, table

    result = sweep(
        args.recipe,
        args.grid,
        args.output,
        overrides=args.overrides,
        seeds=args.seeds,
        selection_fraction=args.selection_fraction,
        final_dev=args.final_dev,
        quiet=args.quiet,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(table(result))
    print(
        f"\nwrote {args.output}/sweep.json, sweep.png and best.yaml (run it: bertdistill distill {args.output}/best.yaml)"
    )
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune any HF encoder on a task: a recipe, or flags that build one."""
    from .config import ConfigError

    mlm = (args.task or "").lower() == "mlm"
    if args.recipe:
        raw: Any = args.recipe
        overrides = list(args.overrides)
    elif mlm:
        # masked-LM training on raw text (e.g. to give a sentence encoder the MLM head DistilBERT needs)
        if not (args.model and args.corpus):
            raise ConfigError("finetune --task mlm: give --model and --corpus FILE [FILE ...] (see --help)")
        raw = {
            "method": {"name": "mlm", "corpus": list(args.corpus), "train_body": bool(args.train_body)},
            "student": {"init": "pretrained", "path": args.model},
            "data": {"task": "mlm"},
        }
        overrides = list(args.overrides)
    else:
        if not (args.model and args.task):
            raise ConfigError("finetune: give a RECIPE, or --model and --task (see --help)")
        raw = {
            "method": {"name": "finetune"},
            "student": {"init": "pretrained", "path": args.model},
            "data": {"task": args.task},
        }
        overrides = list(args.overrides)
    if args.recipe:
        from .recipes import read_recipe

        method = str(((read_recipe(args.recipe).get("method") or {}) or {}).get("name", ""))
        if method not in ("finetune", "mlm"):
            raise ConfigError(
                f"finetune: {args.recipe} is a {method or 'method-less'} recipe; `bertdistill finetune` runs "
                "finetune (or mlm) recipes: run this one with `bertdistill distill`"
            )
    if args.recipe and (args.corpus or args.train_body):
        raise ConfigError(
            "finetune: --corpus / --train-body go with --task mlm and no recipe (use --set in a recipe)"
        )
    flag_map = {
        "model": "student.path",
        "task": "data.task",
        "data": "data.path",
        "epochs": "train.epochs",
        "lr": "train.lr",
        "batch_size": "train.batch_size",
        "max_train_examples": "data.max_train_examples",
        "seed": "train.seed",
        "max_steps": "train.max_steps",
    }
    for flag, key in flag_map.items():
        v = getattr(args, flag)
        if v is not None:
            overrides.insert(0, f"{key}={v}")
    return _run(raw, overrides, args)


def _inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the method-declared inference flags that were given (``--speed``, ...)."""
    from .inference import all_options

    return {name: getattr(args, name) for name in all_options() if getattr(args, name, None) is not None}


def _add_inference_options(s: argparse.ArgumentParser) -> None:
    """One flag per inference option a registered method declares (its help names the methods)."""
    from .inference import all_options

    for name, (opt, methods) in all_options().items():
        s.add_argument(
            opt.flag, dest=name, type=opt.type, default=None, help=f"[{', '.join(methods)}] {opt.help}"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import compare, evaluate, print_table

    model = "+".join(args.model)  # several dirs: one ensemble row (the mean of their probabilities)
    common = dict(
        task=args.task,
        data_path=args.data,
        split=args.split,
        max_length=args.max_length,
        batch_size=args.batch_size,
        timing=args.timing,
        threads=args.threads,
        max_examples=args.max_examples,
    )
    if len(args.precision) > 1:  # one row per precision, the first the reference of the others
        rows = compare(model, [], options=_inference_options(args), precisions=args.precision, **common)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print_table(rows, teacher=rows[0])
        return 0
    res = evaluate(model, precision=args.precision[0], **common, **_inference_options(args))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print_table([res], teacher=None)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation import compare, print_table

    rows = compare(
        args.teacher,
        args.students,
        task=args.task,
        data_path=args.data,
        split=args.split,
        max_length=args.max_length,
        threads=args.threads,
        n_latency=args.latency_sentences,
        labels=args.labels,
        options=_inference_options(args),
        precisions=args.precision,
    )
    print_table(rows, teacher=rows[0])
    if args.plot:
        from .evaluation import plot_score_vs_latency

        plot_score_vs_latency(rows, args.plot)
        print(f"plot written to {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import Predictor

    pred = Predictor(args.model, max_length=args.max_length, options=_inference_options(args))
    if args.input and args.input != "-":
        with open(args.input, encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    else:
        lines = [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]
    texts = [tuple(ln.split("\t")) if pred.is_pair else (ln,) for ln in lines]
    for text, out in zip(lines, pred.predict(texts, batch_size=args.batch_size), strict=True):
        print(json.dumps({"text": text, **out}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Text in, text out: one output line per input line (a seq2seq student translates)."""
    from .config import ConfigError
    from .inference import load_student

    if args.input and args.input != "-" and Path(args.input).is_dir():
        raise ConfigError(
            f"generate: {args.input} is a dir; give a text file (one source per line) or - for stdin"
        )
    if args.output and Path(args.output).is_dir():
        raise ConfigError(f"generate: --output {args.output} is a dir; give a file")
    if (
        args.output
        and args.input
        and args.input != "-"
        and Path(args.output).resolve() == Path(args.input).resolve()
    ):
        raise ConfigError("generate: --output is the input file, which it would replace; give another file")
    runner = load_student(args.model, device=args.device or "cpu")
    options = runner.check_options(_inference_options(args))
    if args.input and args.input != "-":
        with open(args.input, encoding="utf-8") as f:
            lines = [ln.rstrip("\r\n") for ln in f]
    else:
        lines = [ln.rstrip("\r\n") for ln in sys.stdin]
    outputs = runner.generate(lines, batch_size=args.batch_size, max_length=args.max_length, **options)
    text = "".join(o + "\n" for o in outputs)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Fine-tune one teacher per seed (an ensemble for MT-DNN KD): ``<output>/seed-<N>/`` each."""
    out = Path(args.output)
    dirs = []
    for seed in args.seeds:
        sub_args = argparse.Namespace(**vars(args))
        sub_args.seed = seed
        sub_args.output = str(out / f"seed-{seed}")
        sub_args.corpus, sub_args.train_body = None, False
        cmd_finetune(sub_args)
        dirs.append(sub_args.output)
    print(json.dumps({"ensemble": dirs, "evaluate": "bertdistill evaluate " + " ".join(dirs)}, indent=1))
    return 0


def cmd_export_task(args: argparse.Namespace) -> int:
    from .checks import refuse_occupied_output
    from .hub import read_json_dict
    from .inference import load_student

    refuse_occupied_output(
        Path(args.output),
        "export-task",
        "give a new --output",
        ours=lambda d: "bertdistill_exported_from" in read_json_dict(d / "config.json"),
    )
    runner = load_student(args.model)
    runner.export_head(args.task, args.output)
    print(json.dumps({"output": args.output, "head": args.task}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A saved student as ONNX graphs (+ int8), checked against eager; see docs/export.md."""
    from .export import CheckData, export

    check = None
    if args.check is not None:
        check = CheckData(args.task, args.check or None, args.split, args.max_examples, args.batch_size)
    elif args.task:
        raise SystemExit("export: --task goes with --check (the data the export is checked on)")
    record = export(
        args.model,
        args.output,
        args.format,
        args.quantize,
        args.tolerance,
        args.opset,
        _inference_options(args),
        check,
        args.max_length,
    )
    print(
        json.dumps({"output": args.output, "passed": record["passed"], "parity": record["parity"]}, indent=1)
    )
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """A finished run's model card, and its model files uploaded to the HF hub; see docs/sharing.md."""
    from .model_card import push_to_hub

    result = push_to_hub(
        args.run_dir, args.repo_id, private=args.private, token=args.token, card_only=args.card_only
    )
    print(json.dumps(result, indent=1))
    return 0


def _augment_source(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The task, the (seeded, subsampled) training examples to augment — never dev or test — and where they
    come from (for the provenance file)."""
    import dataclasses

    from .config import ConfigError, DataConfig
    from .data.loading import load_examples, resolve_task, subsample

    if args.recipe:  # the data section of the run the file is for: a custom task's fields, labels, format
        from .recipes import load_config

        dcfg = load_config(args.recipe, args.overrides).data
        given = {k: v for k, v in (("task", args.task), ("path", args.data)) if v is not None}
        dcfg = dataclasses.replace(dcfg, **given)
    elif args.task:
        dcfg = DataConfig(task=args.task, path=args.data)
    else:
        raise ConfigError(
            "augment: give --task (a GLUE task) or --recipe (the recipe of the run the file is for; its data "
            "section names a custom task's files and fields)"
        )
    split = args.split or dcfg.train_split
    data_file = Path(str(dcfg.path)).name if dcfg.path and Path(str(dcfg.path)).is_file() else ""
    if "/" in split or "\\" in split or data_file.startswith(("dev", "test", "validation")):
        raise ConfigError(
            f"augment reads a task's training split by name (got --split {split!r}"
            + (f", --data {dcfg.path}" if data_file else "")
            + "); point --data at the task's dir, and never augment evaluation data"
        )
    if split.startswith(("dev", "test", "validation")) or split == dcfg.eval_split:
        raise ConfigError(
            f"augment reads training text only (got --split {split}); never augment evaluation data"
        )
    task = resolve_task(dcfg)
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"augment: --output {out} is a dir; give a .tsv or .jsonl file")
    if dcfg.path:
        root = Path(str(dcfg.path)).expanduser()
        names = [task.tsv_files.get(split, f"{split}.tsv"), f"{split}.jsonl", f"{split}.csv"]
        sources = [root] if root.is_file() else [root / n for n in names]
        if any(out.resolve() == s.resolve() for s in sources):
            raise ConfigError(f"augment: --output {out} is the data it reads; give another file")
    if out.exists() and not args.overwrite:
        raise ConfigError(
            f"augment: --output {out} exists; give a new file, or --overwrite to replace it (never the data it reads)"
        )
    origin = {"task": task.name, "recipe": args.recipe, "data": dcfg.path, "split": split}
    examples = subsample(load_examples(dcfg, task, split), args.max_examples, args.seed)
    return task, examples, {**origin, "max_examples": args.max_examples}


def _augment_summary(result: Any, n_source: int, out: Path, prov_path: Path) -> int:
    summary = {
        "output": str(out),
        "provenance": str(prov_path),
        "source_examples": n_source,
        "augmented_examples": len(result.examples),
        "seconds": round(result.seconds, 2),
        "source_sentences_per_s": round(result.sentences_per_s, 2),
    }
    print(json.dumps(summary, indent=1))
    if n_source and len(result.examples) <= n_source:  # printed even with --quiet: the file holds no new text
        print(
            f"bertdistill: augment made no new sentence from {n_source} source example(s): {out} holds the "
            "originals only; check that the augmenter knows the text's words (--mlm / --glove, the tagger) and "
            "its probabilities (--p, --p-mask, --p-pos, --p-ng)",
            file=sys.stderr,
        )
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    """Data augmentation of a task's training split (TinyBERT or Tang et al. style): an unlabelled TSV/JSONL
    + provenance."""
    if args.style == "tang":
        return _augment_tang(args)
    from . import __version__
    from .data.augment import (
        DEFAULT_TRIES,
        AugmentConfig,
        augment_examples,
        augmentation_mode,
        load_augmenter,
        provenance_record,
        write_augmented,
    )

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task, source, origin = _augment_source(args)
    cfg = AugmentConfig(
        p=args.p,
        k=args.k,
        n=args.n if args.n is not None else DEFAULT_TRIES.get(task.name, 20),
        seed=args.seed,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    if not args.glove:
        logging.getLogger(__name__).warning("no --glove: multi-piece words keep their original form")
    aug = load_augmenter(args.mlm, args.glove, cfg, args.tokenizer, args.trust_remote_code)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=args.quiet,
    ) as progress:
        result = augment_examples(source, aug, chunk=args.chunk, progress=progress)
    prov = provenance_record(
        cfg,
        result,
        len(source),
        source=origin,
        mlm=args.mlm,
        tokenizer=args.tokenizer or args.mlm,
        mode=augmentation_mode(args.mlm, args.glove),
        glove=args.glove,
        word_stats=aug.stats,
        bertdistill_version=__version__,
    )
    out, prov_path = write_augmented(result, task, Path(args.output), prov)
    return _augment_summary(result, len(source), out, prov_path)


def _augment_tang(args: argparse.Namespace) -> int:
    """Tang et al. 2019: masking, POS-guided replacement and n-gram sampling, n_iter tries per example."""
    from . import __version__
    from .data.augment import write_augmented
    from .data.augment_tang import TangAugmentConfig, augment_tang, load_tagger, provenance_record

    task, source, origin = _augment_source(args)
    cfg = TangAugmentConfig(
        n_iter=args.n if args.n is not None else 20,
        p_mask=args.p_mask,
        p_pos=args.p_pos,
        p_ng=args.p_ng,
        ngram_max=args.ngram_max,
        seed=args.seed,
    )
    tagger = load_tagger(args.tagger, args.nltk_data, args.spacy_model)
    result = augment_tang(source, tagger, cfg, progress=not args.quiet)
    prov = provenance_record(
        cfg,
        result,
        len(source),
        tagger.name,
        source=origin,
        bertdistill_version=__version__,
    )
    out, prov_path = write_augmented(result, task, Path(args.output), prov)
    return _augment_summary(result, len(source), out, prov_path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertdistill", description="Distil BERT-family models.", epilog=EPILOG)
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("methods", help="list the registered methods")
    s.set_defaults(fn=cmd_methods)

    s = sub.add_parser("recipes", help="list the shipped recipes (or print one)", epilog=EPILOG)
    s.add_argument("name", nargs="?", help="print this recipe's YAML (e.g. kd/sst2), to copy and edit")
    s.set_defaults(fn=cmd_recipes)

    s = sub.add_parser(
        "distill",
        help="run a distillation recipe",
        epilog=EPILOG,
        description="Run a recipe (a shipped name such as kd/sst2, or a YAML file), or the one --method and "
        "--task build: build teacher and student, train every stage, save the student.",
    )
    s.add_argument(
        "recipe", nargs="?", help="a shipped recipe name (kd/sst2; see `bertdistill recipes`) or a YAML file"
    )
    quick = s.add_argument_group(
        "without a recipe",
        "e.g. --method kd --teacher DIR --task sst2 --student-layers 3: the shipped "
        "METHOD/TASK recipe (or the method's defaults) with these flags applied; they also override a RECIPE",
    )
    quick.add_argument("--method", help="a method name (`bertdistill methods`)")
    quick.add_argument("--teacher", help="the teacher: a fine-tuned model dir or hub name (teacher.path)")
    quick.add_argument("--task", help="GLUE task name, e.g. sst2 (data.task)")
    quick.add_argument(
        "--student-layers", type=_int_at_least(1), help="layers of the student (student.num_layers)"
    )
    quick.add_argument(
        "--data", help="local data dir / file (data.path; default: $BERTDISTILL_DATA_DIR, then the HF hub)"
    )
    quick.add_argument("--epochs", type=float)
    quick.add_argument("--max-steps", type=_int_at_least(1))
    quick.add_argument(
        "--max-train-examples", type=_int_at_least(1), help="subsample the training set (quick runs)"
    )
    _common_train_flags(s)
    s.add_argument(
        "--control",
        action="store_true",
        help="also train the same student without distillation (same init, data, seed, steps) into "
        "OUTPUT/control and say whether distillation paid (train.control)",
    )
    s.set_defaults(fn=cmd_distill)

    s = sub.add_parser(
        "sweep",
        help="run a grid of overrides on a recipe, scored on a held-out slice of train (never dev)",
        epilog="Docs: docs/sweep.md.",
        description="Train every point of the grid (the product of the --grid axes) at every seed, each run "
        "holding out a seeded slice of the training examples (data.selection_fraction) and scored on it; rank "
        "by the mean; write OUTPUT/sweep.json, sweep.png and best.yaml. Re-run the same command to resume.",
    )
    s.add_argument("recipe", help="a shipped recipe name (kd/sst2) or a YAML file")
    s.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2",
        help="one axis of the grid (repeatable), e.g. --grid method.temperature=1,2,4",
    )
    _set_flag(s, "override a recipe field for every run (repeatable)")
    s.add_argument(
        "--seeds", type=_int_at_least(0), nargs="+", help="train each point at each seed; rank by the mean"
    )
    s.add_argument(
        "--selection-fraction",
        type=float,
        help="fraction of train held out to score the points (default: the recipe's, else 0.1)",
    )
    s.add_argument(
        "--final-dev",
        action="store_true",
        help="after choosing, score the chosen point's models on dev once (reported, never used to choose)",
    )
    s.add_argument("--output", "-o", required=True, help="the sweep's dir (runs, sweep.json, best.yaml)")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bars or console logs of the runs")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser(
        "finetune",
        help="fine-tune a teacher (or any encoder) on a task",
        epilog=EPILOG,
        description="Fine-tune an HF encoder on a task and save an HF model dir. Give a recipe "
        "(finetune/sst2) or --model and --task.",
    )
    s.add_argument("recipe", nargs="?", help="optional recipe; flags below override it")
    s.add_argument("--model", help="hub name, local dir, or alias minilm-l6")
    s.add_argument(
        "--task", help="GLUE task name (sst2, mrpc, stsb, ...), custom, or mlm (raw text, with --corpus)"
    )
    s.add_argument("--data", help="data dir / file (default: $BERTDISTILL_DATA_DIR, else the HF hub)")
    s.add_argument("--epochs", type=float)
    s.add_argument("--max-steps", type=_int_at_least(1))
    s.add_argument("--lr", type=float)
    s.add_argument("--batch-size", type=_int_at_least(1))
    s.add_argument(
        "--max-train-examples", type=_int_at_least(1), help="subsample the training set (quick runs)"
    )
    s.add_argument("--seed", type=int)
    s.add_argument(
        "--corpus",
        nargs="+",
        help="with --task mlm: text file(s), one document or sentence per line (masked-LM training)",
    )
    s.add_argument(
        "--train-body",
        action="store_true",
        help="with --task mlm: train the encoder too (default: only the MLM head, tied to the word embeddings)",
    )
    _common_train_flags(s)
    s.set_defaults(fn=cmd_finetune)

    def eval_flags(s: argparse.ArgumentParser) -> None:
        s.add_argument("--task", help="task (default: read from the model dir's bertdistill.yaml)")
        s.add_argument("--data", help="data dir (default: from bertdistill.yaml, else the HF hub)")
        s.add_argument("--split", default="dev")
        s.add_argument("--max-length", type=_int_at_least(1), default=128)
        s.add_argument(
            "--threads", type=_int_at_least(1), default=None, help="CPU threads for timing (default: all)"
        )

    s = sub.add_parser("evaluate", help="score a model on a task (+ size, latency, throughput)")
    s.add_argument(
        "model",
        nargs="+",
        help="a model dir; several dirs are scored as one ensemble (mean of probabilities)",
    )
    eval_flags(s)
    s.add_argument("--batch-size", type=_int_at_least(1), default=64)
    s.add_argument("--max-examples", type=_int_at_least(1))
    s.add_argument(
        "--timing", action="store_true", help="also measure CPU latency (batch 1) and throughput (32)"
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16", "int8", "onnx-fp32", "onnx-int8"],
        default=["fp32"],
        help="inference precision(s): fp32, bf16 autocast (fast only on CPUs with native bf16), dynamic int8, "
        "ONNX Runtime fp32 / dynamic int8 (exported on the fly; an export dir runs in ONNX already); several "
        "give one row each",
    )
    _add_inference_options(s)
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("compare", help="teacher vs students: score, params, latency, retention, speed-up")
    s.add_argument("teacher")
    s.add_argument("students", nargs="+")
    eval_flags(s)
    s.add_argument("--labels", nargs="*", help="row names (teacher first)")
    s.add_argument("--latency-sentences", type=_int_at_least(1), default=200)
    s.add_argument("--plot", help="write a PNG of score vs latency here")
    s.add_argument("--json", help="also write the rows to this JSON file")
    s.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16", "int8", "onnx-fp32", "onnx-int8"],
        default=["fp32"],
        help="inference precision(s): fp32, bf16 autocast (fast only on CPUs with native bf16), dynamic int8, "
        "ONNX Runtime fp32 / dynamic int8 (exported on the fly; an export dir runs in ONNX already); several "
        "give one row per student each; the teacher stays fp32 eager",
    )
    _add_inference_options(s)
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("predict", help="labels and probabilities for lines of a file or stdin")
    s.add_argument("model")
    s.add_argument(
        "input", nargs="?", default="-", help="text file, one example per line (pairs: tab-separated)"
    )
    s.add_argument("--max-length", type=_int_at_least(1), default=128)
    s.add_argument("--batch-size", type=_int_at_least(1), default=32)
    _add_inference_options(s)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser(
        "generate",
        help="generate text for lines of a file or stdin (a seq2seq student translates)",
        description="One output line per input line, in order (an empty line gives an empty line). Decoding "
        "options are the student's (--beam for beam search; greedy by default).",
    )
    s.add_argument("model", help="a saved student dir that generates text (a seq2seq student)")
    s.add_argument(
        "input", nargs="?", default="-", help="text file, one source sentence per line (default stdin)"
    )
    s.add_argument("--output", "-o", help="write here instead of stdout")
    s.add_argument("--max-length", type=_int_at_least(1), default=128, help="source tokens kept per line")
    s.add_argument("--batch-size", type=_int_at_least(1), default=32)
    s.add_argument("--device", help="cpu (default), cuda, cuda:1 ...")
    _add_inference_options(s)
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser(
        "ensemble",
        help="fine-tune N teachers (one per seed) for an ensemble",
        epilog=EPILOG,
        description="Fine-tune an encoder once per --seeds value (same recipe or flags as `finetune`); writes "
        "OUTPUT/seed-N/ for each. Evaluate them as one model with `bertdistill evaluate DIR1 DIR2 ...`; list "
        "them as a task's `teachers` in an mtdnn_kd recipe.",
    )
    s.add_argument("recipe", nargs="?", help="optional finetune recipe; flags below override it")
    s.add_argument("--seeds", type=_int_at_least(0), nargs="+", required=True)
    s.add_argument("--model", help="hub name, local dir, or alias minilm-l6")
    s.add_argument("--task", help="GLUE task name (sst2, mrpc, stsb, ...) or custom")
    s.add_argument("--data", help="data dir / file (default: $BERTDISTILL_DATA_DIR, else the HF hub)")
    s.add_argument("--epochs", type=float)
    s.add_argument("--max-steps", type=_int_at_least(1))
    s.add_argument("--lr", type=float)
    s.add_argument("--batch-size", type=_int_at_least(1))
    s.add_argument("--max-train-examples", type=_int_at_least(1))
    _set_flag(s, "override a recipe field (repeatable)")
    s.add_argument("--output", "-o", required=True, help="parent dir of the teachers")
    s.add_argument("--resume", action="store_true")
    s.add_argument(
        "--overwrite", action="store_true", help="train over teachers the output dir already holds"
    )
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(fn=cmd_ensemble)

    s = sub.add_parser(
        "export-task",
        help="write one head of a multi-task student as a standard single-task HF dir",
        description="Loads with AutoModelForSequenceClassification, like any fine-tuned model.",
    )
    s.add_argument("model", help="a multi-task student dir (mtdnn_kd)")
    s.add_argument("task", help="the head (task name) to export")
    s.add_argument("--output", "-o", required=True)
    s.set_defaults(fn=cmd_export_task)

    s = sub.add_parser(
        "export",
        help="export a saved student to ONNX (optionally int8), checked against eager",
        epilog="Docs: docs/export.md. Needs the export extra: pip install 'bertdistill[export]'.",
        description="Writes OUTPUT: the student's files, its ONNX graph(s) and export.json (tolerance, "
        "differences, agreement, opset, tool versions). Fails when the fp32 logits differ from eager by more "
        "than --tolerance. OUTPUT is a model argument of evaluate / compare / predict (run by ONNX Runtime).",
    )
    s.add_argument("model", help="a saved student dir")
    s.add_argument("--format", default="onnx", choices=["onnx"])
    s.add_argument("--quantize", choices=["int8"], help="also write ONNX Runtime dynamic int8 graphs")
    s.add_argument("--output", "-o", required=True, help="the export dir (new)")
    s.add_argument(
        "--check",
        nargs="?",
        const="",
        metavar="DATA",
        help="also check on a labelled split: agreement and scores, eager vs ONNX (DATA: data dir; "
        "default: the student's own data)",
    )
    s.add_argument("--task", help="with --check: the task (default: the student's)")
    s.add_argument("--split", default="dev")
    s.add_argument("--max-examples", type=_int_at_least(1), help="with --check: at most this many examples")
    s.add_argument("--batch-size", type=_int_at_least(1), default=32)
    s.add_argument("--max-length", type=_int_at_least(1), default=128)
    s.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest |logit difference| allowed, fp32 (1e-4)"
    )
    s.add_argument("--opset", type=int, default=18, help="ONNX opset (18)")
    _add_inference_options(s)
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser(
        "push",
        help="write a finished run's model card (README.md) and upload the student to the HF hub",
        epilog="Docs: docs/sharing.md.",
        description="Writes RUN_DIR/README.md (a model card built from metrics.json, bertdistill.yaml and the "
        "log) and uploads the weights (safetensors), config, tokenizer/vocab, bertdistill.yaml, metrics.json "
        "and the card to --repo-id (created if missing); never checkpoints/ or other sub-dirs.",
    )
    s.add_argument("run_dir", help="a finished run dir (what `bertdistill distill` wrote)")
    s.add_argument("--repo-id", required=True, help="USER/NAME on the hub")
    s.add_argument("--private", action="store_true", help="create the repo private")
    s.add_argument("--token", help="HF token (default: $HF_TOKEN or `hf auth login`)")
    s.add_argument("--card-only", action="store_true", help="write README.md into RUN_DIR, upload nothing")
    s.set_defaults(fn=cmd_push)

    s = sub.add_parser(
        "augment",
        help="data augmentation of a training split, TinyBERT or Tang et al. style (unlabelled; the teacher "
        "labels it)",
        epilog=EPILOG,
        description="--style tinybert (default): replace words with masked-LM (single-piece) or GloVe "
        "(multi-piece) candidates, N tries per example. --style tang: per word [MASK] (p-mask) or a word of the "
        "same POS tag (p-pos), then keep a random n-gram (p-ng), N tries per example. Writes an unlabelled "
        "TSV/JSONL (method.train_data / method.augmented_data), plus <output>.provenance.json.",
    )
    s.add_argument(
        "--style",
        choices=["tinybert", "tang"],
        default="tinybert",
        help="tinybert (Jiao et al. 2020) or tang (Tang et al. 2019; needs nltk: pip install 'bertdistill[bilstm]')",
    )
    s.add_argument("--task", help="GLUE task name (sst2, mrpc, ...); for your own data use --recipe")
    s.add_argument(
        "--recipe",
        help="the recipe of the run the file is for (YAML or shipped name): its data section gives the task, "
        "files, text fields and train split (--task / --data / --split given here win)",
    )
    _set_flag(s, "override a key of --recipe (repeatable)")
    s.add_argument("--data", help="task data dir / file (default: $BERTDISTILL_DATA_DIR, else the HF hub)")
    s.add_argument(
        "--split", help="the training split to augment (default: the recipe's train_split, or train)"
    )
    s.add_argument("--output", "-o", required=True, help="output .tsv (GLUE header, no labels) or .jsonl")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    s.add_argument("--mlm", help="a masked LM (HF dir / hub name) whose tokenizer splits words (recommended)")
    s.add_argument(
        "--tokenizer",
        help="tokenizer for the word split when there is no --mlm (GloVe-only fallback, e.g. minilm-l6)",
    )
    s.add_argument(
        "--glove",
        help="GloVe text file (.txt or .txt.gz), e.g. ../shared/data/glove-6B-50d-subset/glove.6B.50d.subset.txt.gz",
    )
    s.add_argument(
        "--p", type=float, default=0.4, help="[tinybert] replacement probability per word (default 0.4)"
    )
    s.add_argument(
        "--k", type=_int_at_least(1), default=15, help="[tinybert] candidates per word (default 15)"
    )
    s.add_argument(
        "--n",
        type=int,
        help="tries per example (tinybert default: official per task, SST-2 20, MRPC 30; tang: n_iter 20)",
    )
    s.add_argument("--p-mask", type=float, default=0.1, help="[tang] [MASK] probability per word (0.1)")
    s.add_argument("--p-pos", type=float, default=0.1, help="[tang] same-POS replacement per word (0.1)")
    s.add_argument("--p-ng", type=float, default=0.25, help="[tang] n-gram sampling per sample (0.25)")
    s.add_argument(
        "--ngram-max", type=_int_at_least(1), default=5, help="[tang] n of the n-gram is in [1, this] (5)"
    )
    s.add_argument("--tagger", choices=["nltk", "spacy"], default="nltk", help="[tang] POS tagger (nltk)")
    s.add_argument(
        "--nltk-data",
        help="[tang] NLTK data dir with taggers/averaged_perceptron_tagger_eng(.zip), e.g. "
        "../shared/data/nltk_data (default: $BERTDISTILL_NLTK_DATA, then NLTK's search path)",
    )
    s.add_argument("--spacy-model", default="en_core_web_sm", help="[tang] spaCy model with --tagger spacy")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--max-examples", type=_int_at_least(1), help="augment a seeded subsample of the split")
    s.add_argument("--batch-size", type=_int_at_least(1), default=64, help="masked sequences per MLM forward")
    s.add_argument(
        "--chunk", type=_int_at_least(1), default=256, help="examples per candidate-building chunk"
    )
    s.add_argument("--max-length", type=_int_at_least(1), default=512, help="MLM input limit (both segments)")
    s.add_argument("--threads", type=_int_at_least(1), help="CPU threads")
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_augment)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from .config import ConfigError
    from .export import ExportError
    from .logs import quiet_hf
    from .model_card import PushError

    quiet_hf()

    try:
        return int(args.fn(args) or 0)
    except ConfigError as e:
        print(f"bertdistill: configuration error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"bertdistill: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"bertdistill: export failed: {e}", file=sys.stderr)
        return 1
    except PushError as e:
        print(f"bertdistill: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        # a run that stopped on purpose (non-finite loss, a checkpoint it could not write) says why in one
        # line; anything else is a bug and keeps its traceback
        from .training.checkpoint import CheckpointError
        from .training.loop import NonFiniteLossError

        if not isinstance(e, NonFiniteLossError | CheckpointError):
            raise
        print(f"bertdistill: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
