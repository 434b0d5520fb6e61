"""Share a finished student: a Hugging Face model card (``README.md``) built from what the run wrote, and
:func:`push_to_hub` (``bertdistill push``), which uploads the files a user needs — not checkpoints.

Everything on the card comes from the run dir (``metrics.json``, ``bertdistill.yaml``, ``log.jsonl``, the
saved weights) or, for the teacher's score, from the teacher dir's own ``metrics.json`` when the teacher is a
local bertdistill run of the same task. What a run did not measure is written as "not measured", never guessed.
See docs/sharing.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .training.runs import CONFIG_FILE, INPUTS_FILE, LOG_FILE, METRICS_FILE, is_finished, stage_steps

CARD_FILE = "README.md"
NOT_UPLOADED = (
    LOG_FILE,
    INPUTS_FILE,
    ".*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.tmp",
    "optimizer*",
    "scheduler*",
    "rng_state*",
    "trainer_state*",
)
"""Top-level files of a run dir that are not uploaded (logs, input stamps, pickled or optimizer state); the
rest of the top level — weights as safetensors, config, tokenizer/vocab, ``bertdistill.yaml``,
``metrics.json``, a method's own files such as ``multitask.json``, the card — is. Sub-dirs (``checkpoints/``,
``best/``, ``stages/``, ``control/``) never are."""

NOT_SCORES = {"step", "majority_baseline", "top_class_share", "mean_exit_layer", "flops_speedup"}
"""Numeric ``metrics.json`` fields that are not scores of the student (shown elsewhere on the card)."""

HF_LOADABLE = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSeq2SeqLM": "AutoModelForSeq2SeqLM",
    "ForConditionalGeneration": "AutoModelForSeq2SeqLM",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "Model": "AutoModel",
}
"""``config.json`` architecture suffix → the transformers Auto class that loads it."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PushError(RuntimeError):
    """The upload to the hub failed (no network, no rights, bad token): one line, no traceback."""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _hub_id(path: str | None) -> str | None:
    """``path`` as a hub model id when it surely names one, else ``None``: a bertdistill alias (``minilm-l6``),
    or an ``owner/name`` that is not a local path and that the HF cache holds (the run downloaded it). A
    relative local path looks like ``owner/name`` too (``runs/teacher``), so nothing else is taken for one."""
    if not path:
        return None
    from .hub import MODEL_ALIASES

    if path in MODEL_ALIASES:
        return MODEL_ALIASES[path][1]
    expanded = os.path.expandvars(os.path.expanduser(path))
    if os.path.exists(expanded) or not _HUB_ID.match(path):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # a malformed id for the hub's own rules
        return None
    return path if isinstance(cached, str) else None


def count_params(model_dir: str | Path) -> int | None:
    """Parameters in a dir's safetensors weights (read from the file headers, nothing loaded); ``None`` when
    the dir has none."""
    d = Path(model_dir)
    files = sorted(d.glob("model*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():  # noqa: SIM118 (safe_open is not iterable)
                n = 1
                for s in h.get_slice(k).get_shape():
                    n *= int(s)
                total += n
    return total


def _scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k.split("/")[-1] not in NOT_SCORES
    }


def _main_metric(task: str | None, scores: Mapping[str, float], cfg: Mapping[str, Any]) -> str | None:
    wanted = (cfg.get("train") or {}).get("metric_for_best")
    if wanted in scores:
        return str(wanted)
    if task:
        from .data.tasks import get_task

        try:
            main = get_task(task).main_metric
        except KeyError:
            main = None
        if main in scores:
            return main
    return next(iter(scores), None)


def _glue_dataset(task: str | None) -> tuple[str, str] | None:
    if not task:
        return None
    from .data.tasks import GLUE_TASKS

    spec = GLUE_TASKS.get(task.lower().replace("-", "").replace("_", ""))
    return spec.hf_path if spec is not None and spec.hf_path else None  # type: ignore[return-value]


def _teacher_info(cfg: Mapping[str, Any], task: str | None, main: str | None) -> dict[str, Any]:
    """The teacher's path, hub id, params, and score on ``main`` when its dir is a bertdistill run of the same
    task (its ``metrics.json``); only what is known."""
    path = (cfg.get("teacher") or {}).get("path")
    out: dict[str, Any] = {"path": path, "hub_id": _hub_id(path)}
    per_task = [
        (str(t.get("task")), [str(p) for p in t.get("teachers") or []])
        for t in (cfg.get("method") or {}).get("tasks") or []
        if isinstance(t, dict) and t.get("teachers")
    ]
    if per_task:  # multi-task: teachers per task
        out["per_task"] = per_task
    if not path:
        return out
    local = Path(os.path.expandvars(os.path.expanduser(path)))
    if local.is_dir():
        out["params"] = count_params(local)
        m = _read_json(local / METRICS_FILE)
        if isinstance(m, dict) and main and main in m and (m.get("task") in (None, task)):
            out["score"] = float(m[main])
    return out


def _how_to_load(run_dir: Path, repo_id: str, method: str, task: str | None) -> str:
    hf = _read_json(run_dir / "config.json") or {}
    archs = hf.get("architectures") or []
    model_type = str(hf.get("model_type", ""))
    auto = None
    if archs and not model_type.startswith("bertdistill"):
        auto = next((cls for suffix, cls in HF_LOADABLE.items() if str(archs[0]).endswith(suffix)), None)
    bd = (
        "```python\n"
        "from huggingface_hub import snapshot_download\n"
        "from bertdistill import load_student\n\n"
        f'student = load_student(snapshot_download("{repo_id}"))  # bertdistill\'s runner for the {method} student\n'
        "```\n"
        f"or from the command line: `bertdistill {'generate' if task == 'translation' else 'predict'} "
        f"$(hf download {repo_id}) texts.txt`."
    )
    if auto is None:
        return (
            f"This student (`{model_type or method}`) is not a transformers architecture; load it with "
            f"bertdistill (`pip install bertdistill`):\n\n{bd}\n"
        )
    return (
        "With transformers:\n\n```python\n"
        f"from transformers import AutoTokenizer, {auto}\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
        f'model = {auto}.from_pretrained("{repo_id}")\n```\n\n'
        f"Or with bertdistill, which applies the student's inference options:\n\n{bd}\n"
    )


def _public(v: Any) -> Any:
    """A config value fit for a public card: a local path becomes its last component (``name (local)``)."""
    if isinstance(v, str) and ("/" in v or v.startswith("~")) and _hub_id(v) is None:
        return f"{Path(v).name} (local)"
    if isinstance(v, dict):
        return {k: _public(x) for k, x in v.items()}
    return v


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def _config_summary(cfg: Mapping[str, Any], log: list[dict[str, Any]]) -> list[str]:
    method = cfg.get("method") or {}
    student = cfg.get("student") or {}
    data = cfg.get("data") or {}
    train = cfg.get("train") or {}
    lines = []
    opts = {
        k: _public(v)
        for k, v in method.items()
        if k != "name" and v is not None and not isinstance(v, dict | list)
    }
    if opts:
        lines.append("method options: " + ", ".join(f"`{k}={v}`" for k, v in opts.items()))
    st = {k: _public(v) for k, v in student.items() if v not in (None, {}, [])}
    if st:
        lines.append("student: " + ", ".join(f"`{k}={v}`" for k, v in st.items()))
    d = {
        k: data[k]
        for k in ("task", "max_length", "max_train_examples", "eval_split")
        if data.get(k) is not None
    }
    if d:
        lines.append("data: " + ", ".join(f"`{k}={v}`" for k, v in d.items()))
    t = {
        k: train[k]
        for k in (
            "epochs",
            "max_steps",
            "batch_size",
            "lr",
            "optimizer",
            "scheduler",
            "seed",
            "mixed_precision",
        )
        if train.get(k) is not None
    }
    if t:
        lines.append("training: " + ", ".join(f"`{k}={v}`" for k, v in t.items()))
    steps = stage_steps(log)
    if steps:
        lines.append("optimizer steps per stage: " + ", ".join(f"{k} {v}" for k, v in steps.items()))
    return lines


def build_card(run_dir: str | Path, repo_id: str | None = None) -> str:
    """The model card (``README.md`` text: YAML front matter + markdown) of the finished run in ``run_dir``."""
    out = Path(run_dir)
    if not is_finished(out):
        raise ConfigError(
            f"{out} is not a finished bertdistill run (needs {METRICS_FILE}, {CONFIG_FILE} and the model "
            "weights, written when `bertdistill distill` completes)"
        )
    metrics: dict[str, Any] = json.loads((out / METRICS_FILE).read_text())
    cfg: dict[str, Any] = yaml.safe_load((out / CONFIG_FILE).read_text()) or {}
    log = (
        [json.loads(x) for x in (out / LOG_FILE).read_text().splitlines() if x.strip()]
        if (out / LOG_FILE).is_file()
        else []
    )
    repo_id = repo_id or f"<user>/{out.resolve().name}"
    method = str(metrics.get("method") or (cfg.get("method") or {}).get("name") or "unknown")
    task = metrics.get("task") or (cfg.get("data") or {}).get("task")
    scores = _scores(metrics)
    main = _main_metric(task, scores, cfg)
    teacher = _teacher_info(cfg, task, main)
    params = count_params(out)
    control = metrics.get("control") if isinstance(metrics.get("control"), dict) else None
    glue = _glue_dataset(task)
    eval_split = (cfg.get("data") or {}).get("eval_split") or "dev"

    front: dict[str, Any] = {
        "library_name": "bertdistill",
        "tags": ["bertdistill", "knowledge-distillation", method],
    }
    if teacher.get("hub_id"):
        front["base_model"] = teacher["hub_id"]
    if glue:
        front["datasets"] = [glue[0]]
    if scores:
        front["metrics"] = sorted({k.split("/")[-1] for k in scores})
        dataset: dict[str, Any] = {"name": str(task), "type": glue[0] if glue else str(task)}
        if glue:
            dataset["config"] = glue[1]
            dataset["split"] = "validation" if eval_split == "dev" else eval_split
        else:
            dataset["split"] = eval_split
        front["model-index"] = [
            {
                "name": repo_id.split("/")[-1],
                "results": [
                    {
                        "task": {"type": "translation" if task == "translation" else "text-classification"},
                        "dataset": dataset,
                        "metrics": [{"type": k, "value": v, "name": k} for k, v in scores.items()],
                    }
                ],
            }
        ]

    L: list[str] = [f"# {repo_id.split('/')[-1]}", ""]

    # a local teacher is named by its dir name only: the card is public, the user's file system is not
    def name(p: str) -> str:
        return _hub_id(p) or f"{Path(p).name} (a local model dir)"

    if teacher.get("path"):
        source = f" from the teacher `{name(str(teacher['path']))}`"
    elif teacher.get("per_task"):
        source = " from the teachers " + "; ".join(
            f"{t}: " + ", ".join(f"`{name(p)}`" for p in ps) for t, ps in teacher["per_task"]
        )
    else:
        source = ""
    L.append(
        f"A student distilled with [bertdistill](https://pypi.org/project/bertdistill/) using the **{method}** "
        f"method (described in bertdistill's `docs/methods/{method}.md`){source}"
        + (f", on the task **{task}**." if task else ".")
    )
    L += ["", "## Results", ""]
    if scores:
        L.append(f"Scores of the student on the `{eval_split}` split, as recorded in `metrics.json`:")
        L += ["", "| metric | student |", "|---|---|"]
        L += [f"| {k}{' (main)' if k == main else ''} | {_fmt(v)} |" for k, v in scores.items()]
    else:
        L.append("No evaluation was recorded (the run had no eval split): scores not measured.")
    L.append("")
    facts: list[str] = []
    if main and "score" in teacher:
        facts.append(f"- teacher {main}: {_fmt(teacher['score'])} (the teacher dir's `metrics.json`)")
        if teacher["score"]:
            facts.append(
                f"- retention (student / teacher {main}): {100 * scores[main] / teacher['score']:.1f}%"
            )
    else:
        facts.append("- teacher score and retention: not measured")
    if params is not None:
        facts.append(f"- student parameters: {params / 1e6:.2f}M ({params:,})")
    else:
        facts.append("- student parameters: not measured")
    if teacher.get("params") and params:
        facts.append(
            f"- teacher parameters: {teacher['params'] / 1e6:.2f}M ({teacher['params'] / params:.1f}x the student)"
        )
    if "flops_speedup" in metrics:
        facts.append(
            f"- FLOPs speed-up recorded by the run (early exit): {float(metrics['flops_speedup']):.2f}x"
        )
    if "mean_exit_layer" in metrics:
        facts.append(f"- mean exit layer: {float(metrics['mean_exit_layer']):.2f}")
    facts.append(
        "- latency / throughput speed-up over the teacher: not measured (`bertdistill compare TEACHER STUDENT` "
        "measures it)"
    )
    if "majority_baseline" in metrics and main:
        facts.append(f"- majority-class baseline {main}: {_fmt(float(metrics['majority_baseline']))}")
    L += facts
    if control is not None:
        cm = _scores(control.get("metrics") or {})
        L += ["", "### No-distillation control", ""]
        L.append(
            "The same student (init, shape, data, seed and steps) trained without the teacher "
            f"(`{control.get('method', 'finetune')}`):"
        )
        L += ["", "| metric | distilled | control (no KD) |", "|---|---|---|"]
        L += [f"| {k} | {_fmt(scores[k])} | {_fmt(v)} |" for k, v in cm.items() if k in scores]
        if control.get("verdict"):
            L += ["", str(control["verdict"])]
    for w in metrics.get("warnings") or []:
        L += ["", f"> **Warning** (recorded by the run): {w}"]
    L += ["", "## Training", ""]
    L += [f"- {x}" for x in _config_summary(cfg, log)]
    L.append(
        f"- the full resolved recipe is `{CONFIG_FILE}` in this repo (rerun: `bertdistill distill {CONFIG_FILE}`)"
    )
    L += ["", "## How to load", "", _how_to_load(out, repo_id, method, task)]
    body = "\n".join(L).rstrip() + "\n"
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body


def write_card(run_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write ``README.md`` (:func:`build_card`) into ``run_dir``; return its path."""
    path = Path(run_dir) / CARD_FILE
    path.write_text(build_card(run_dir, repo_id))
    return path


def upload_files(run_dir: str | Path) -> list[str]:
    """The names of the top-level files of ``run_dir`` that :func:`push_to_hub` uploads."""
    from fnmatch import fnmatch

    d = Path(run_dir)
    return sorted(
        f.name for f in d.iterdir() if f.is_file() and not any(fnmatch(f.name, p) for p in NOT_UPLOADED)
    )


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    card_only: bool = False,
) -> dict[str, Any]:
    """Write the model card into ``run_dir`` and (unless ``card_only``) upload the run's model files to the hub
    repo ``repo_id`` (created if missing). Returns ``{"card", "repo_id", "files", "url"}``.
    Raises :class:`~bertdistill.config.ConfigError` for a dir that is not a finished run or a malformed repo
    id, :class:`PushError` when the hub cannot be reached or refuses."""
    if not _HUB_ID.match(repo_id):
        raise ConfigError(f"--repo-id must look like USER/NAME, got {repo_id!r}")
    card = write_card(run_dir, repo_id)
    files = upload_files(run_dir)
    result: dict[str, Any] = {"card": str(card), "repo_id": repo_id, "files": files, "url": None}
    if card_only:
        return result
    if not any(f.endswith(".safetensors") for f in files):
        raise ConfigError(f"{run_dir}: no safetensors weights to upload")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="bertdistill-push-") as tmp:
        for name in files:  # a staging dir holding only what is uploaded
            src, dst = Path(run_dir) / name, Path(tmp) / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        try:
            url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                repo_type="model",
                commit_message="Upload a bertdistill student",
            )
        except Exception as e:  # network, auth, rights: one line for the user
            first = (str(e).strip().splitlines() or [""])[0]
            raise PushError(
                f"push to {repo_id} failed ({type(e).__name__}: {first}); check the network and your token "
                f"(--token or `hf auth login`). The card is written: {card}"
            ) from e
    result["url"] = str(url)
    return result


__all__ = ["PushError", "build_card", "count_params", "push_to_hub", "upload_files", "write_card"]
