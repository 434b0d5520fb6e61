"""ONNX export of a saved student, checked against eager, and the exported student run by ONNX Runtime.

``bertdistill export MODEL --format onnx [--quantize int8] --output DIR``:

* **What is exported** is the student's runner's business (:meth:`~bertdistill.protocol.Runner.onnx_graphs`):
  one graph ``model`` for a classifier (HF students, MobileBERT, the BiLSTM, one head of a multi-task student),
  ``encoder`` + ``decoder`` for a seq2seq student, one graph per piece of FastBERT (embeddings, each layer, each
  branch, the teacher classifier). :meth:`~bertdistill.protocol.Runner.onnx_predict` runs them (FastBERT's early
  exit between its graphs, greedy decoding).
* **How**: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript) with dynamic batch and
  sequence axes. The TorchScript exporter (``dynamo=False``) was tried first and rejected: on HF BERT under
  transformers 5 its trace bakes in the example's attention mask, off by ~1e-2 on other shapes.
* **Parity**, built in: each graph's outputs against its eager module on built-in sentences of several lengths
  and batch sizes (and, with ``check``, on a labelled split): the largest absolute difference of the logits
  (outputs named ``*logits``; other outputs, e.g. encoder states, are reported) must stay within ``tolerance``
  (default :data:`TOLERANCE`) or the export fails (:class:`ExportError`) and its graphs are removed. Predictions (labels, exit layers, generated tokens) must agree; with ``check`` both are scored.
  ``--quantize int8`` adds ``<graph>.int8.onnx`` (ONNX Runtime's dynamic quantisation: int8 weights,
  activations quantised on the fly), reported by agreement and score change, with a warning below
  :data:`INT8_AGREEMENT`.
* **The export dir** is the student's dir (its top-level files: config, tokenizer, recipe, weights) plus the
  graphs and ``export.json`` (tolerance, differences, agreement, scores, opset, tool versions), so that
  ``evaluate`` / ``compare`` / ``predict`` take it as a model argument (:func:`load_exported`); deploying
  needs only the ``.onnx`` files and the tokenizer files.

ONNX Runtime sessions are made per thread count (``torch.get_num_threads()`` at call time), so ``--threads``
applies to them as to eager models when they are timed.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checks import refuse_occupied_output
from .config import ConfigError
from .data.loading import Examples
from .protocol import Batch, OnnxGraph, Prediction, Runner

EXPORT_FILE = "export.json"
TOLERANCE = 1e-4
"""Largest absolute difference allowed between fp32 ONNX logits and eager ones."""
INT8_AGREEMENT = 0.99
"""Below this share of predictions equal to eager's, an int8 export warns."""
OPSET = 18
QUANTIZE = ("int8",)
EXTRA = "pip install 'bertdistill[export]'"

log = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "a",
    "the movie was good",
    "a very long and quite boring story about the plot of a film that was bad",
    "great acting",
    "the film is dull and the story is poor but the acting was very nice",
)
"""Built-in inputs for tracing and the parity check: several lengths, so that batches have padding."""


class ExportError(RuntimeError):
    """An export that does not reproduce its eager model (ONNX outputs beyond the tolerance)."""


def require_onnx() -> Any:
    """The ``onnxruntime`` module, or a one-line error naming the extra to install."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ONNX export and inference need {', '.join(missing)}: {EXTRA}")
    import onnxruntime

    return onnxruntime


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import transformers

    from . import __version__

    return {
        "bertdistill": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


# ----------------------------------------------------------------------------------------------- sessions


class Sessions:
    """ONNX Runtime sessions of an export's graphs (serialized models), one set per thread count."""

    def __init__(self, graphs: Mapping[str, bytes]) -> None:
        self.graphs = dict(graphs)
        self._by_threads: dict[int, dict[str, Any]] = {}

    def _session(self, name: str) -> Any:
        ort = require_onnx()
        threads = torch.get_num_threads()
        sessions = self._by_threads.setdefault(threads, {})
        if name not in sessions:
            if name not in self.graphs:
                raise ConfigError(
                    f"the export has no graph {name!r}; it has {sorted(self.graphs)}. An export made by another "
                    "bertdistill version splits the model differently: export the student again (bertdistill "
                    "export MODEL_DIR --output DIR)"
                )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            sessions[name] = ort.InferenceSession(self.graphs[name], opts, providers=["CPUExecutionProvider"])
        return sessions[name]

    def run(self, name: str, inputs: Mapping[str, Tensor]) -> list[Tensor]:
        session = self._session(name)
        feed = {}
        for arg in session.get_inputs():
            if arg.name not in inputs:
                raise ConfigError(f"graph {name!r} needs input {arg.name!r}; the batch has {sorted(inputs)}")
            feed[arg.name] = inputs[arg.name].detach().cpu().contiguous().numpy()
        return [torch.from_numpy(o) for o in session.run(None, feed)]


@dataclass
class OnnxInfo:
    """What an ONNX-run runner was made from: its export dir (``None``: made on the fly) and precision."""

    path: str | None
    precision: str
    record: dict[str, Any] = field(default_factory=dict)


def onnx_runner(
    eager: Runner,
    graphs: Mapping[str, bytes],
    info: OnnxInfo,
    fixed: Mapping[str, Any] | None = None,
) -> Runner:
    """``eager`` run by ONNX Runtime on ``graphs``: a shallow copy whose ``predict`` (and so ``timed``) goes
    through :meth:`Runner.onnx_predict`; tokenisation, scoring and table rows stay the eager runner's.
    ``fixed``: the inference options the graphs were exported with (e.g. a multi-task ``head``), which a
    caller may repeat but not change."""
    sessions = Sessions(graphs)
    fixed = dict(fixed or {})
    out = copy.copy(eager)

    def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
        given = {k: v for k, v in options.items() if v is not None}
        for k, v in fixed.items():
            if k in given and given[k] != v:
                raise ConfigError(
                    f"this ONNX export was made with {k}={v}; export the student again for {k}={given[k]}"
                )
        return eager.check_options({**fixed, **given})

    def predict(batch: Batch, **options: Any) -> Prediction:
        return eager.onnx_predict(sessions.run, batch, **options)

    size = sum(len(g) for g in graphs.values()) / 2**20

    def describe() -> dict[str, Any]:
        return {**eager.describe(), "runtime": f"onnxruntime-{info.precision}", "size_mb": size}

    out.check_options = check_options  # type: ignore[method-assign]
    out.predict = predict  # type: ignore[method-assign]

    def reference(**options: Any) -> Callable[[Batch], Any] | None:
        # where options change the computation (FastBERT's early exit), the same graphs at the default options;
        # an option the export was made with stays only when it is not one of those (a multi-task `head`): an
        # export made with `--speed` is still timed against full depth, not against itself
        if eager.reference(**options) is None:
            return None
        kept = {k: v for k, v in fixed.items() if eager.reference(**{k: v}) is None}
        defaults = eager.check_options(kept)
        return lambda batch: predict(batch, **defaults)

    out.reference = reference  # type: ignore[method-assign]
    out.describe = describe  # type: ignore[method-assign]
    out.onnx = info  # type: ignore[attr-defined]
    return out


def onnx_info(runner: Runner) -> OnnxInfo | None:
    """How ``runner`` runs in ONNX Runtime (``None``: it runs eagerly)."""
    return getattr(runner, "onnx", None)


# ----------------------------------------------------------------------------------------------- export


def sample_batches(runner: Runner, max_length: int = 128) -> list[dict[str, Any]]:
    """Batches of :data:`SAMPLE_TEXTS` (pairs for a pair model): 3 rows of different lengths (the tracing
    batch), then batches of 1 and 2 rows and all 5 at once."""
    texts = list(SAMPLE_TEXTS)
    rows = [(a, b) for a, b in zip(texts, texts[1:] + texts[:1], strict=True)] if runner.is_pair() else texts
    examples = Examples([r if isinstance(r, tuple) else (r,) for r in rows], None)
    data: Any = runner.encode(examples, max_length)
    collate = runner.collator()
    return [collate([data[i] for i in idx]) for idx in ([1, 2, 0], [3], [4, 1], [0, 1, 2, 3, 4])]


def _dynamic_shapes(graph: Any) -> tuple[Any, ...]:
    """``torch.export``'s ``dynamic_shapes``, one entry per forward parameter (``*tensors`` is one)."""
    dyn = torch.export.Dim.DYNAMIC
    shapes = tuple(
        dict.fromkeys(graph.dynamic.get(name, (0, 1)[: t.dim()]), dyn) for name, t in graph.inputs.items()
    )
    params = inspect.signature(graph.module.forward).parameters.values()
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return (shapes,) if varargs else shapes


def write_graphs(graphs: Sequence[Any], out_dir: Path, opset: int) -> dict[str, Path]:
    """Each graph traced with ``torch.onnx.export(dynamo=True)`` to ``out_dir/<name>.onnx``."""
    paths = {}
    quiet = ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx")
    levels = {n: logging.getLogger(n).level for n in quiet}
    try:
        for n in quiet:
            logging.getLogger(n).setLevel(logging.ERROR)  # torchvision-op notices, decomposition chatter
        for g in graphs:
            g.module.eval()
            path = out_dir / f"{g.name}.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    program = torch.onnx.export(
                        g.module,
                        tuple(g.inputs.values()),
                        input_names=list(g.inputs),
                        output_names=list(g.outputs),
                        dynamic_shapes=_dynamic_shapes(g),
                        opset_version=opset,
                        dynamo=True,
                        verbose=False,
                    )
                except Exception as e:
                    cause = e.__cause__ or e
                    why = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                    raise ExportError(
                        f"torch.onnx.export could not trace graph {g.name!r} ({type(g.module).__name__}): {why}"
                    ) from e
            assert program is not None
            program.save(str(path))
            paths[g.name] = path
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    return paths


def quantize_graphs(paths: Mapping[str, Path]) -> dict[str, Path]:
    """``<name>.int8.onnx`` next to each graph: ONNX Runtime's dynamic int8 quantisation (int8 weights of
    MatMul, Gather, LSTM ...; activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = {}
    for name, path in paths.items():
        target = path.with_name(f"{name}.int8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(path), str(target), weight_type=QuantType.QInt8)
        out[name] = target
    return out


def _max_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        raise ExportError(f"ONNX output shape {tuple(b.shape)} differs from eager {tuple(a.shape)}")
    if a.numel() == 0:
        return 0.0
    if not a.is_floating_point():
        return float((a != b).any())
    return float((a.float() - b.float()).abs().max())


def _same_rows(a: Prediction, b: Prediction) -> Tensor | None:
    """Per row: the same label (classification) and the same integer extras (exit layer, tokens)."""
    same = None

    def both(x: Tensor) -> Tensor:
        return x if same is None else same & x

    if a.logits is not None and b.logits is not None and a.logits.shape[-1] > 1:
        same = both(a.logits.argmax(-1) == b.logits.argmax(-1))
    for k, v in a.extras.items():
        w = b.extras.get(k)
        if w is None or v.is_floating_point():
            continue
        eq = v == w
        same = both(eq.reshape(eq.shape[0], -1).all(-1))
    return same


@dataclass
class _Tally:
    """Parity of one ONNX precision against eager over the checked batches."""

    diffs: dict[str, float] = field(default_factory=dict)
    agree: int = 0
    rows: int = 0
    preds: list[Prediction] = field(default_factory=list)

    def add_graphs(
        self, graphs: Sequence[OnnxGraph], eager: Mapping[str, Sequence[Tensor]], onnx: Any
    ) -> None:
        for g in graphs:
            for out, a, b in zip(g.outputs, eager[g.name], onnx[g.name], strict=True):
                key = f"{g.name}/{out}"
                self.diffs[key] = max(self.diffs.get(key, 0.0), _max_diff(a, b))

    def add_rows(self, same: Tensor | None) -> None:
        if same is not None:
            self.agree += int(same.sum())
            self.rows += int(same.numel())

    def record(self) -> dict[str, Any]:
        logits = [v for k, v in self.diffs.items() if "logits" in k.split("/")[-1]]
        return {
            "max_abs_diff": max(logits, default=0.0),
            "max_abs_diff_per_output": self.diffs,
            "agreement": self.agree / self.rows if self.rows else None,
            "rows_compared": self.rows,
        }


def _as_list(out: Any) -> list[Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


@torch.no_grad()
def _compare(
    eager: Runner,
    onnx: Mapping[str, Runner],
    sessions: Mapping[str, Sessions],
    batches: Iterator[dict[str, Any]],
    options: Mapping[str, Any],
    score: bool,
) -> tuple[dict[str, _Tally], dict[str, dict[str, float]]]:
    """Graph outputs and predictions of every ONNX precision against eager on ``batches``; with ``score``,
    each one's metrics over them."""
    tallies = {q: _Tally() for q in onnx}
    eager_preds: list[Prediction] = []
    targets: list[Tensor] = []
    for batch in batches:
        graphs = eager.onnx_graphs(batch, **options)
        reference = {g.name: _as_list(g.module(*g.inputs.values())) for g in graphs}
        pred = eager.predict(batch, **options)
        eager_preds.append(pred)
        y = eager.targets(batch) if score else None
        if y is not None:
            targets.append(y)
        for q, runner in onnx.items():
            got = {g.name: sessions[q].run(g.name, g.inputs) for g in graphs}
            tallies[q].add_graphs(graphs, reference, got)
            p = runner.predict(batch, **options)
            tallies[q].add_rows(_same_rows(pred, p))
            tallies[q].preds.append(p)
    scores: dict[str, dict[str, float]] = {}
    if score:
        y_all = torch.cat(targets) if targets else None
        scores["eager"] = _metrics(eager, eager_preds, y_all)
        for q, runner in onnx.items():
            scores[q] = _metrics(runner, tallies[q].preds, y_all)
    return tallies, scores


def _metrics(runner: Runner, preds: list[Prediction], targets: Tensor | None) -> dict[str, float]:
    logits = [p.logits.float() for p in preds if p.logits is not None]
    extras: dict[str, list[Tensor]] = {}
    for p in preds:
        for k, v in p.extras.items():
            extras.setdefault(k, []).append(v)
    return runner.metrics(
        torch.cat(logits) if logits else None, targets, {k: torch.cat(v) for k, v in extras.items()}
    )


@dataclass
class CheckData:
    """A labelled split to check the export on (``export --check``)."""

    task: str | None = None
    data_path: str | None = None
    split: str = "dev"
    max_examples: int | None = None
    batch_size: int = 32


def export_runner(
    runner: Runner,
    out_dir: str | os.PathLike[str],
    quantize: str | None = None,
    tolerance: float = TOLERANCE,
    opset: int = OPSET,
    options: Mapping[str, Any] | None = None,
    check: CheckData | None = None,
    max_length: int = 128,
) -> dict[str, Any]:
    """Write ``runner``'s graphs (and int8 copies) to ``out_dir`` and check them against eager; returns the
    parity record. Fails (:class:`ExportError`, graphs removed) when fp32 differs by more than ``tolerance``."""
    require_onnx()
    if not tolerance >= 0:
        raise ConfigError(f"--tolerance must be >= 0, got {tolerance}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize must be one of {list(QUANTIZE)}, got {quantize!r}")
    if runner.device().type != "cpu":
        raise ConfigError(f"ONNX export runs on CPU; this model is on {runner.device()}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = runner.check_options(dict(options or {}))
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    samples = sample_batches(runner, max_length)
    graphs = runner.onnx_graphs(samples[0], **opts)
    paths = {"onnx-fp32": write_graphs(graphs, out, opset)}
    if quantize:
        paths["onnx-int8"] = quantize_graphs(paths["onnx-fp32"])
    blobs = {q: {n: p.read_bytes() for n, p in ps.items()} for q, ps in paths.items()}
    sessions = {q: Sessions(b) for q, b in blobs.items()}
    runners = {q: onnx_runner(runner, b, OnnxInfo(None, q), given) for q, b in blobs.items()}
    tallies, _ = _compare(runner, runners, sessions, iter(samples), opts, score=False)
    record: dict[str, Any] = {
        "format": "onnx",
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": opset,
        "tolerance": tolerance,
        "options": given,
        "graphs": {
            g.name: {
                "file": paths["onnx-fp32"][g.name].name,
                "inputs": list(g.inputs),
                "outputs": list(g.outputs),
            }
            for g in graphs
        },
        "quantized": {n: p.name for n, p in paths.get("onnx-int8", {}).items()},
        "parity": {"samples": {q: t.record() for q, t in tallies.items()}},
        "versions": tool_versions(),
    }
    if check is not None:
        record["parity"]["check"] = _check_split(runner, runners, sessions, opts, check, max_length)
    fp32 = [record["parity"][k]["onnx-fp32"] for k in record["parity"]]
    worst = max(r["max_abs_diff"] for r in fp32)
    record["passed"] = worst <= tolerance
    if not record["passed"]:
        for ps in paths.values():
            for p in ps.values():
                p.unlink(missing_ok=True)
        (out / EXPORT_FILE).write_text(json.dumps(record, indent=1))
        raise ExportError(
            f"ONNX outputs differ from eager by {worst:.3g} > tolerance {tolerance:g} "
            f"(per output: {fp32[-1]['max_abs_diff_per_output']}); the graphs were removed, see {out / EXPORT_FILE}"
        )
    for where in record["parity"].values():
        _warn_int8(where.get("onnx-int8"))
    return record


def _warn_int8(parity: Mapping[str, Any] | None) -> None:
    """Warn when an int8 parity record agrees with eager on fewer than :data:`INT8_AGREEMENT` of predictions."""
    if parity and parity["agreement"] is not None and parity["agreement"] < INT8_AGREEMENT:
        log.warning(
            "int8 export: %.1f%% of predictions agree with eager (below %.0f%%); prefer the fp32 graph",
            100 * parity["agreement"],
            100 * INT8_AGREEMENT,
        )


def _check_split(
    runner: Runner,
    runners: Mapping[str, Runner],
    sessions: Mapping[str, Sessions],
    opts: Mapping[str, Any],
    check: CheckData,
    max_length: int,
) -> dict[str, Any]:
    from .evaluation import eval_examples
    from .inference import batches_of

    spec, ex = eval_examples(
        {"data": dict(runner.eval_data(opts))},
        check.task,
        check.data_path,
        check.split,
        max_length,
        check.max_examples,
    )
    runner.task = spec
    for r in runners.values():
        r.task = spec
    data = runner.encode(ex, max_length)
    for r in runners.values():
        r.encode(ex, max_length)  # runners that score against references keep their own
    tallies, scores = _compare(
        runner, runners, sessions, batches_of(runner, data, check.batch_size), opts, True
    )
    metric = runner.main_metric()
    out: dict[str, Any] = {
        "task": spec.name,
        "split": check.split,
        "examples": len(ex.texts),
        "metric": metric,
        "eager": scores["eager"],
    }
    for q, t in tallies.items():
        out[q] = {
            **t.record(),
            "metrics": scores[q],
            "score_change": scores[q][metric] - scores["eager"][metric],
        }
    return out


def export(
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str = "onnx",
    quantize: str | None = None,
    tolerance: float = TOLERANCE,
    opset: int = OPSET,
    options: Mapping[str, Any] | None = None,
    check: CheckData | None = None,
    max_length: int = 128,
) -> dict[str, Any]:
    """``bertdistill export``: the saved student ``model`` as an export dir ``out_dir`` (its top-level files,
    the graphs, ``export.json``); returns the ``export.json`` record."""
    from .inference import load_student

    if fmt != "onnx":
        raise ConfigError(f"--format must be onnx, got {fmt!r}")
    require_onnx()
    src, out = Path(model).expanduser(), Path(out_dir).expanduser()
    if not src.is_dir():
        raise ConfigError(f"{model}: not a saved student dir")
    if (src / EXPORT_FILE).is_file():
        raise ConfigError(
            f"{model} is already an ONNX export ({EXPORT_FILE}); export the student dir it came from"
        )
    if out.resolve() == src.resolve():
        raise ConfigError("--output must be a new dir, not the student's own (the export copies its files)")
    refuse_occupied_output(
        out, "the export", "give a new --output", ours=lambda d: (d / EXPORT_FILE).is_file()
    )
    runner = load_student(src, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    # marks the dir as this command's before anything is copied: an export killed halfway can be run again into it
    (out / EXPORT_FILE).write_text(json.dumps({"source": str(src), "passed": False, "status": "incomplete"}))
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".onnx" and f.name != EXPORT_FILE:
            shutil.copy2(f, out / f.name)
    record = export_runner(runner, out, quantize, tolerance, opset, options, check, max_length)
    record = {"source": str(src), **record}
    (out / EXPORT_FILE).write_text(json.dumps(record, indent=1))
    return record


# ----------------------------------------------------------------------------------------------- loading


def load_exported(runner: Runner, path: str | os.PathLike[str], precision: str | None = None) -> Runner:
    """The eager ``runner`` loaded from export dir ``path``, run by ONNX Runtime on its fp32 graphs (or
    ``precision`` ``onnx-int8``: the quantised ones)."""
    require_onnx()
    root = Path(path)
    record = json.loads((root / EXPORT_FILE).read_text())
    if record.get("status") == "incomplete":
        raise ConfigError(f"{root}: this export did not finish; export the student again")
    if not record.get("passed", False):
        raise ConfigError(f"{root}: this export failed its parity check (see {EXPORT_FILE}); export again")
    precision = precision or "onnx-fp32"
    if precision == "onnx-int8":
        files = dict(record.get("quantized") or {})
        if not files:
            raise ConfigError(f"{root} has no int8 graphs; export with --quantize int8")
    else:
        files = {n: g["file"] for n, g in record["graphs"].items()}
    missing = [f for f in files.values() if not (root / f).is_file()]
    if missing:
        raise ConfigError(f"{root}: graph file(s) {missing} are missing; export again")
    blobs = {n: (root / f).read_bytes() for n, f in files.items()}
    return onnx_runner(runner, blobs, OnnxInfo(str(root), precision, record), record.get("options"))


def split_onnx_path(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """An export dir, or one of its ``.onnx`` files: (the dir, ``onnx-int8`` for an ``.int8.onnx`` file)."""
    p = Path(path).expanduser()
    if p.suffix == ".onnx" and p.is_file():
        return p.parent, "onnx-int8" if p.name.endswith(".int8.onnx") else "onnx-fp32"
    return p, None


def is_export(path: str | os.PathLike[str]) -> bool:
    root, _ = split_onnx_path(path)
    return (root / EXPORT_FILE).is_file()


def as_onnx(runner: Runner, precision: str, options: Mapping[str, Any] | None = None) -> Runner:
    """``runner`` run by ONNX Runtime at ``precision`` (``onnx-fp32`` / ``onnx-int8``): an export dir's other
    graphs, or an eager student exported on the fly (parity-checked on the built-in samples; nothing kept on
    disk) — with the ``options`` that shape its graphs (``InferenceOption.shapes_graph``: a multi-task ``head``),
    which the ONNX runner then keeps fixed, as an export dir made with them does."""
    info = onnx_info(runner)
    if info is not None:
        if info.path is None:
            raise ConfigError(f"this model already runs in ONNX Runtime ({info.precision})")
        return load_exported(_eager_of(runner), info.path, precision)
    # One torch.export per runner: a second one of the same student in one process is avoided (for the BiLSTM it
    # failed: the sequence axis came out static on the second trace; measured with torch 2.13). The fp32 graphs
    # are kept on the runner; the int8 ones are quantised from them on the first onnx-int8 request, so that
    # `compare --precision onnx-fp32` pays for no quantisation and `--precision onnx-fp32 onnx-int8` traces once.
    shaping = {o.name for o in runner.options if o.shapes_graph}
    given = {k: v for k, v in (options or {}).items() if k in shaping and v is not None}
    exports: dict[tuple[tuple[str, Any], ...], _OnnxCache] = runner.__dict__.setdefault(_ONNX_CACHE, {})
    key = tuple(sorted(given.items()))
    cached = exports.get(key)
    if cached is None:
        with tempfile.TemporaryDirectory(prefix="bertdistill-onnx-") as tmp:
            record = export_runner(runner, tmp, options=given)
            files = {n: g["file"] for n, g in record["graphs"].items()}
            cached = _OnnxCache(record, {n: (Path(tmp) / f).read_bytes() for n, f in files.items()})
        exports[key] = cached
    if precision == "onnx-int8":
        if cached.int8 is None:
            cached.int8 = _quantize_cached(runner, cached)
        blobs = cached.int8
    else:
        blobs = cached.fp32
    return onnx_runner(runner, blobs, OnnxInfo(None, precision, cached.record), given or None)


@dataclass
class _OnnxCache:
    """An eager runner's on-the-fly export: its record and fp32 graphs, and its int8 graphs once asked for."""

    record: dict[str, Any]
    fp32: dict[str, bytes]
    int8: dict[str, bytes] | None = None


def _quantize_cached(runner: Runner, cached: _OnnxCache, max_length: int = 128) -> dict[str, bytes]:
    """int8 graphs quantised from ``cached``'s fp32 ones (no new trace), with their parity on the built-in
    samples added to its record as :func:`export_runner` would have."""
    with tempfile.TemporaryDirectory(prefix="bertdistill-onnx-") as tmp:
        paths = {}
        for name, blob in cached.fp32.items():
            paths[name] = Path(tmp) / f"{name}.onnx"
            paths[name].write_bytes(blob)
        int8 = {n: p.read_bytes() for n, p in quantize_graphs(paths).items()}
    given = cached.record.get("options") or {}
    opts = runner.check_options(dict(given))
    q = "onnx-int8"
    tallies, _ = _compare(
        runner,
        {q: onnx_runner(runner, int8, OnnxInfo(None, q), given)},
        {q: Sessions(int8)},
        iter(sample_batches(runner, max_length)),
        opts,
        score=False,
    )
    parity = tallies[q].record()
    cached.record["quantized"] = {n: f"{n}.int8.onnx" for n in int8}
    cached.record["parity"]["samples"][q] = parity
    _warn_int8(parity)
    return int8


_ONNX_CACHE = "_bertdistill_onnx_export"
"""The runner attribute holding its on-the-fly exports (:class:`_OnnxCache`), one per set of graph-shaping
options (most students: one, for none)."""


def _eager_of(runner: Runner) -> Runner:
    """The eager runner an ONNX one was copied from (its own class, the instance attributes removed)."""
    eager = copy.copy(runner)
    for name in ("check_options", "predict", "reference", "describe", "onnx"):
        eager.__dict__.pop(name, None)
    return eager


__all__ = [
    "EXPORT_FILE",
    "INT8_AGREEMENT",
    "TOLERANCE",
    "CheckData",
    "ExportError",
    "as_onnx",
    "export",
    "export_runner",
    "is_export",
    "load_exported",
    "onnx_info",
    "require_onnx",
]
