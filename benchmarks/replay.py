"""Replay: does today's code train what the code of a headline result trained?

Each method's headline result files (:data:`benchmarks.report.HEADLINES`) record the commit that measured them,
and the library moves on after they are measured. Re-running every headline benchmark after each change costs
hours of CPU per method; this answers the question that decides whether a re-run is needed: **with the same
recipe, teacher, data, seed and threads, does the code of that commit and the reference code (default: HEAD)
train bit-identical weights?**

For every headline file whose commit's ``src/`` differs from the reference's, the method's headline recipe runs
for ``--steps`` optimizer steps per stage on the first ``--train-examples`` training examples, once from each
commit's tree (``git archive`` of the commit, imported first through ``PYTHONPATH``; the recipe file is each
tree's own), with the same teacher and inputs. Every model each run saves (``**/model.safetensors``, checkpoints
and caches aside) is compared tensor by tensor with ``torch.equal``; the dev metrics each run wrote are kept
beside. A file whose commit has the reference's ``src/`` is reported as such, without a run; one without a
recorded commit cannot be replayed.

What it does not show: that a full-length run on another CPU gives the same figures (fp32 results move with the
CPU), or code paths the short runs do not reach (a checkpoint taken mid-run, resumption, evaluation during
training: ``train.eval_every`` is off). The benchmark scripts themselves are not replayed: the library is run
through its CLI with the recipe the headline benchmark starts from.

    python -m benchmarks.replay --threads 1                      # → benchmarks/results/replay_headlines.json
    python -m benchmarks.replay --files kd_sst2_3layer --steps 4 --name replay_kd
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import harness as H
from benchmarks.gitinfo import git
from benchmarks.report import HEADLINES, load_results, src_changes

TEACHERS = Path("~/.cache/bertdistill/teachers").expanduser()


@dataclass(frozen=True)
class Step:
    """One ``bertdistill distill`` run of a case: a shipped recipe and the fields set on it. A value may name
    ``{out:LABEL}`` (the output dir of an earlier step of the same case, in the same tree) or ``{fixtures}``."""

    label: str
    recipe: str
    fields: Mapping[str, Any] = field(default_factory=dict)


def cases(sst2_teacher: Path, mrpc_teacher: Path) -> dict[tuple[str, str], list[Step]]:
    """The headline recipe of each (method, task), with the teacher and the fields that made the headline row
    (the benchmark script's choices that change what is trained, e.g. PKD-Skip from the teacher's layers)."""
    sst2 = {"teacher.path": str(sst2_teacher)}
    mrpc = {"teacher.path": str(mrpc_teacher)}
    pkd = {"method.strategy": "skip", "method.init_from": "teacher"}
    return {
        ("kd", "sst2"): [Step("kd", "kd/sst2", sst2)],
        ("pkd", "sst2"): [Step("pkd", "pkd/sst2", {**sst2, **pkd})],
        ("pkd", "mrpc"): [Step("pkd", "pkd/mrpc", {**mrpc, **pkd})],
        ("fastbert", "sst2"): [Step("fastbert", "fastbert/sst2", sst2)],
        ("fastbert", "mrpc"): [Step("fastbert", "fastbert/mrpc", mrpc)],
        ("bilstm", "sst2"): [Step("bilstm", "bilstm/sst2", sst2)],
        ("bilstm", "mrpc"): [Step("bilstm", "bilstm/mrpc", mrpc)],
        ("tinybert", "sst2"): [Step("tinybert", "tinybert/sst2", sst2)],
        ("tinybert", "mrpc"): [Step("tinybert", "tinybert/mrpc", mrpc)],
        ("mobilebert", "sst2"): [Step("mobilebert", "mobilebert/sst2", {**sst2, **_mobilebert_steps()})],
        # a file of its own shape: the preset with one FFN and attention on the bottleneck
        ("mobilebert", "mobilebert_sst2_tiny"): [
            Step(
                "mobilebert",
                "mobilebert/sst2",
                {**sst2, **_mobilebert_steps(), "method.preset": "minilm-l6-tiny"},
            )
        ],
        ("mobilebert", "mrpc"): [Step("mobilebert", "mobilebert/mrpc", {**mrpc, **_mobilebert_steps()})],
        ("distilbert", "sst2"): [
            Step(
                "pretrain",
                "distilbert/pretrain",
                {"teacher.path": "{fixtures}/mlm-teacher", "method.corpus": ["{fixtures}/corpus.txt"]},
            ),
            Step("sst2", "distilbert/sst2", {**sst2, "student.path": "{out:pretrain}"}),
        ],
        # the three tasks' rows come from one multi-task run: any of its files replays it
        ("mtdnn_kd", "*"): [
            Step(
                "mtdnn_kd",
                "mtdnn_kd/glue3",
                {
                    "method.tasks": [
                        {"task": "sst2", "teachers": [str(sst2_teacher)]},
                        {"task": "mrpc", "teachers": [str(mrpc_teacher)]},
                        {"task": "stsb", "teachers": ["{fixtures}/stsb-teacher"]},
                    ],
                    "student.path": str(sst2_teacher),
                },
            )
        ],
        # the headline files trained in bf16 (train.mixed_precision=bf16) at t = 1
        ("cmlm", "*"): [
            Step("cmlm", "cmlm/multi30k-de-en", {"train.mixed_precision": "bf16", "method.temperature": 1.0})
        ],
    }


def _mobilebert_steps() -> dict[str, Any]:
    return {"method.layer_steps": "{steps}", "method.task_steps": "{steps}"}


def case_key(
    method: str, task: str, table: Mapping[tuple[str, str], Any], file: str = ""
) -> tuple[str, str] | None:
    """The case that replays a file: its own (``(method, file)``), else its method's on its task, else its
    method's for every task (``(method, "*")``)."""
    for key in ((method, file), (method, task), (method, "*")):
        if key in table:
            return key
    return None


# ----------------------------------------------------------------------------------------------- trees


def extract_tree(commit: str, dest: Path) -> Path:
    """``src/`` of ``commit`` under ``dest`` (``git archive``), once."""
    done = dest / ".complete"
    if done.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["git", "-C", str(H.ROOT), "archive", "--format=tar", commit, "src"], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        tar.extractall(dest, filter="data")
    done.write_text(commit + "\n")
    return dest


def set_field(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def substitute(value: Any, names: Mapping[str, Any]) -> Any:
    """``{name}`` placeholders filled in: a string that is one placeholder becomes its value as it is (``{steps}``
    → an int); one that holds several, or other text, gets them as text."""
    if isinstance(value, str):
        whole = value.removeprefix("{").removesuffix("}")
        if value == "{" + whole + "}" and whole in names:
            return names[whole]
        for k, v in names.items():
            value = value.replace("{" + k + "}", str(v))
        return value
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    return value


def common_fields(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return {
        "train.max_steps": args.steps,
        "train.cpu_threads": args.threads,
        "train.eval_every": None,
        "data.max_train_examples": args.train_examples,
        "data.max_eval_examples": args.eval_examples,
        "teacher.cache_dir": str(out / "teacher-cache"),
    }


DRIVER = """
import sys
from pathlib import Path
import bertdistill
src = Path(sys.argv.pop(1)).resolve()
if not Path(bertdistill.__file__).resolve().is_relative_to(src):  # else both sides would run the same code
    sys.exit(f"replay: bertdistill was imported from {bertdistill.__file__}, not from {src}")
from bertdistill.cli import main
sys.exit(main())
"""
"""The subprocess's program: the CLI, after checking that ``bertdistill`` comes from the tree being replayed
(``PYTHONPATH``) and not from an installed copy — an import from elsewhere would compare a commit with itself."""


def run_case(tree: Path, steps: Sequence[Step], out: Path, args: argparse.Namespace, fixtures: Path) -> float:
    """Every step of a case from ``tree``'s code, into ``out/<label>``; the seconds it took."""
    env = dict(
        os.environ, PYTHONPATH=str(tree / "src"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads)
    )
    env.setdefault("BERTDISTILL_DATA_DIR", str(H._shared_data()))
    names: dict[str, Any] = {"fixtures": str(fixtures), "steps": args.steps}
    names |= {f"out:{s.label}": str(out / s.label) for s in steps}
    start = time.perf_counter()
    for step in steps:
        dest = out / step.label
        raw = yaml.safe_load((tree / "src/bertdistill/recipe_files" / f"{step.recipe}.yaml").read_text())
        for k, v in {**common_fields(args, out), **step.fields}.items():
            set_field(raw, k, substitute(v, names))
        out.mkdir(parents=True, exist_ok=True)
        recipe = out / f"{step.label}.yaml"
        recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
        cmd = [sys.executable, "-c", DRIVER, str(tree / "src")]
        cmd += ["distill", str(recipe), "-o", str(dest), "--quiet"]
        log = out / f"{step.label}.log"
        with log.open("w") as f:
            rc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = log.read_text().strip().splitlines()[-5:]
            raise RuntimeError(f"{step.recipe} in {tree.name} exited {rc}: " + " | ".join(tail))
    return time.perf_counter() - start


def models(out: Path) -> dict[str, Path]:
    """The models a case saved, by path under ``out`` (checkpoints and teacher caches aside)."""
    found = {}
    for p in sorted(out.rglob("model.safetensors")):
        rel = p.relative_to(out).as_posix()
        if "checkpoints/" not in rel and "teacher-cache/" not in rel:
            found[rel] = p
    return found


def compare_models(a: Path, b: Path) -> dict[str, Any]:
    """Tensor-by-tensor equality of every model the two runs saved."""
    import torch
    from safetensors.torch import load_file

    ma, mb = models(a), models(b)
    differing: list[str] = []
    tensors = 0
    for rel in sorted(set(ma) & set(mb)):
        ta, tb = load_file(ma[rel]), load_file(mb[rel])
        for k in sorted(set(ta) | set(tb)):
            tensors += 1
            if k not in ta or k not in tb or ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k]):
                differing.append(f"{rel}:{k}")
    only = sorted(set(ma) ^ set(mb))
    return {
        "models": sorted(set(ma) | set(mb)),
        "tensors": tensors,
        "differing": differing[:20],
        "differing_count": len(differing),
        "models_in_one_only": only,
        "identical": bool(ma) and not differing and not only,
    }


def final_metrics(out: Path, steps: Sequence[Step]) -> dict[str, Any]:
    path = out / steps[-1].label / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------------------------- fixtures


def make_fixtures(dest: Path, base: str, corpus: Path | None, lines: int) -> Path:
    """Inputs both trees read, written once: an MLM teacher (the base encoder with a seeded new MLM head, for
    DistilBERT's pre-training stage), a one-output regression teacher (STS-B in MT-DNN's run) and a small corpus."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, BertForSequenceClassification

    from bertdistill.hub import resolve_model_path

    dest.mkdir(parents=True, exist_ok=True)
    path = resolve_model_path(base)
    tok = AutoTokenizer.from_pretrained(path)
    for name, build in (
        ("mlm-teacher", lambda: BertForMaskedLM.from_pretrained(path)),
        ("stsb-teacher", lambda: BertForSequenceClassification.from_pretrained(path, num_labels=1)),
    ):
        d = dest / name
        if not (d / "model.safetensors").is_file():
            torch.manual_seed(0)
            build().save_pretrained(d)
            tok.save_pretrained(d)
    text = dest / "corpus.txt"
    if not text.is_file():
        from benchmarks import make_corpus

        src = make_corpus.ensure(corpus or make_corpus.DEFAULT_OUT, H._shared_data())
        with src.open() as f:
            text.write_text("".join(itertools.islice(f, lines)))
    return dest


# ----------------------------------------------------------------------------------------------- main


def rev_parse(rev: str, what: str) -> str:
    """``git rev-parse rev`` in this checkout; a clear stop when it is not there (``what`` says what was sought)."""
    out = git("rev-parse", "--verify", rev)
    if out is None:
        raise SystemExit(f"replay: no {what} {rev!r} in this checkout")
    return out.strip()


def src_tree(commit: str) -> str:
    """The git tree of ``commit``'s ``src/``: what a run depends on (commits with the same ``src/`` share runs)."""
    return rev_parse(f"{commit}:src", "src/ tree")


def train(commit: str, label: str, steps: Sequence[Step], args: argparse.Namespace, fixtures: Path) -> Path:
    """A case trained by ``commit``'s code under ``<work>/runs/<settings>/<src tree>/<label>``, or the finished
    one there (keyed by the ``src/`` tree, not the commit: a later commit that leaves ``src/`` alone reuses it)."""
    settings = f"s{args.steps}-n{args.train_examples}-e{args.eval_examples}-t{args.threads}"
    tree_id = src_tree(commit)[:12]
    out = args.work / "runs" / settings / tree_id / label
    if not (out / ".complete").is_file():
        tree = extract_tree(commit, args.work / "trees" / tree_id)
        if out.exists():  # an interrupted earlier try: start over
            shutil.rmtree(out)
        seconds = run_case(tree, steps, out, args, fixtures)
        (out / ".complete").write_text(f"{seconds:.1f}\n")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", default="HEAD", help="the reference commit (default: HEAD)")
    p.add_argument("--files", nargs="+", help="headline result names (default: every headline file)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per stage")
    p.add_argument("--train-examples", type=int, default=128)
    p.add_argument("--eval-examples", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sst2-teacher", default=str(TEACHERS / "minilm-l6-sst2"))
    p.add_argument("--mrpc-teacher", default=str(TEACHERS / "ens/mrpc/seed-1"))
    p.add_argument("--base", default="minilm-l6", help="the encoder the fixture teachers start from")
    p.add_argument("--corpus", type=Path, help="DistilBERT's corpus (default: the train-split GLUE corpus)")
    p.add_argument("--corpus-lines", type=int, default=2000)
    p.add_argument("--work", type=Path, default=H.WORK / "replay")
    p.add_argument("--name", default="replay_headlines")
    p.add_argument(
        "--keep-old",
        action="store_true",
        help="keep the runs of src/ trees that neither the reference nor a headline file has (default: remove them "
        "after a full replay, one without --files; each reference tree's runs take several GB)",
    )
    p.add_argument("--results-dir", default=str(H.RESULTS))
    return p.parse_args(argv)


def headline_commits(results: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The commits every headline file records (those present in this checkout)."""
    out = set()
    for names in HEADLINES.values():
        for n in names:
            recorded = str(results.get(n, {}).get("commit") or "").removesuffix("+dirty")
            if recorded and git("rev-parse", "--verify", f"{recorded}^{{commit}}") is not None:
                out.add(recorded)
    return out


def prune(args: argparse.Namespace, used: set[str]) -> None:
    """Remove the runs (at these settings) and extracted trees of every ``src/`` tree not in ``used`` (the
    reference's and every headline file's) — those of earlier reference commits, which only a replay against that
    commit again would read."""
    settings = f"s{args.steps}-n{args.train_examples}-e{args.eval_examples}-t{args.threads}"
    for parent in (args.work / "runs" / settings, args.work / "trees"):
        if not parent.is_dir():
            continue
        for d in sorted(parent.iterdir()):
            if d.is_dir() and d.name not in used:
                size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                shutil.rmtree(d)
                print(
                    f"removed {d} ({size / 2**30:.1f} GB): no headline file or the reference has that src/ tree"
                )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    against = rev_parse(f"{args.against}^{{commit}}", "commit")
    results, _ = load_results(H.RESULTS)
    by_name = dict(results)
    wanted = args.files or [n for names in HEADLINES.values() for n in names]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SystemExit(f"replay: no result file named {', '.join(unknown)} in {H.RESULTS}")
    table = cases(Path(args.sst2_teacher).expanduser(), Path(args.mrpc_teacher).expanduser())
    fixtures = make_fixtures(args.work / "fixtures", args.base, args.corpus, args.corpus_lines)

    rows: list[dict[str, Any]] = []
    done: dict[tuple[str, tuple[str, str]], dict[str, Any]] = {}
    for name in wanted:
        r = by_name[name]
        recorded = str(r.get("commit") or "").removesuffix("+dirty")
        row: dict[str, Any] = {
            "file": name,
            "method": r.get("method"),
            "task": r.get("task"),
            "commit": recorded,
        }
        rows.append(row)
        if not recorded:
            row["outcome"] = "not replayed: the file records no commit"
            continue
        commit = rev_parse(f"{recorded}^{{commit}}", "commit")
        row["commit"] = commit
        changed = src_changes(commit, against)
        row["src_changed"] = changed
        if changed == []:
            row["outcome"] = "same library code"
            continue
        key = case_key(str(r.get("method")), str(r.get("task")), table, name)
        if key is None:
            row["outcome"] = f"not replayed: no case for {r.get('method')}/{r.get('task')}"
            continue
        if (commit, key) in done:  # one run serves every file of this commit and case
            row.update({k: v for k, v in done[commit, key].items() if k not in ("file", "task")})
            continue
        steps = table[key]
        row["recipes"] = [s.recipe for s in steps]
        label = f"{key[0]}-{key[1].replace('*', 'all')}"
        try:
            a = train(commit, label, steps, args, fixtures)
            b = train(against, label, steps, args, fixtures)
        except RuntimeError as e:
            row["outcome"] = f"failed: {e}"
            print(f"{name}: {row['outcome']}", flush=True)
            continue
        cmp = compare_models(a, b)
        row.update(cmp)
        row["metrics"] = {"commit": final_metrics(a, steps), "against": final_metrics(b, steps)}
        row["outcome"] = "bit-identical" if cmp["identical"] else "different"
        done[commit, key] = dict(row)
        print(
            f"{name}: {row['outcome']} ({cmp['tensors']} tensors in {len(cmp['models'])} models)", flush=True
        )

    # the control: two runs of the reference code that differ on purpose must compare as different
    kd = table["kd", "sst2"]
    reseeded = [Step(s.label, s.recipe, {**s.fields, "train.seed": 43}) for s in kd]
    cmp = compare_models(
        train(against, "kd-sst2", kd, args, fixtures),
        train(against, "kd-sst2-seed43", reseeded, args, fixtures),
    )
    sanity = {
        "what": "kd/sst2 by the reference code, train.seed 42 against 43: must be different",
        "outcome": "bit-identical" if cmp["identical"] else "different",
        "tensors": cmp["tensors"],
        "differing_count": cmp["differing_count"],
    }
    print(f"sanity (seed 42 vs 43): {sanity['outcome']}", flush=True)
    if not args.keep_old and not args.files:  # a partial replay (--files) keeps every cached tree
        prune(args, {src_tree(c)[:12] for c in {against, *headline_commits(by_name)}})

    result = {
        **H.provenance(
            "replay",
            seeds=[42],
            steps=args.steps,
            train_examples=args.train_examples,
            precision="fp32 (cmlm: bf16, as its headline)",
            optimizer="the recipes' own",
            train_threads=args.threads,
            timing_threads=None,
        ),
        "against": against,
        "steps_per_stage": args.steps,
        "eval_examples": args.eval_examples,
        "teachers": {"sst2": args.sst2_teacher, "mrpc": args.mrpc_teacher, "fixtures": str(fixtures)},
        "what": "each headline file's recipe trained for a few steps per stage by the file's commit and by "
        "`against`, every saved model compared tensor by tensor (torch.equal)",
        "rows": rows,
        "sanity": sanity,
    }
    path = H.write_result(args.name, result, args.results_dir)
    print(f"wrote {path}")
    ok = all(x["outcome"] in ("bit-identical", "same library code") for x in rows)
    return 0 if ok and sanity["outcome"] == "different" else 1


if __name__ == "__main__":
    raise SystemExit(main())
