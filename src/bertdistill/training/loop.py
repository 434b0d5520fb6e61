"""The one training loop: stages → steps → loss terms → backward. It never branches on a method's name.

``distill(config)`` builds the method, the teacher and the student bundle, then for each stage of the method:
selects the trainable parameters, builds AdamW + schedule, iterates the stage's data (with the teacher's
outputs from the cache or live), sums the method's loss terms, steps, logs every term, evaluates, keeps the
best model, writes atomic resumable checkpoints, and stops on a non-finite loss keeping the last good one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import ConfigError, RunConfig
from ..data.loading import BatchSampler, TokenizedDataset, resolve_task
from ..features import Features
from ..hub import from_pretrained
from ..methods.base import Method, Stage, save_hf_model
from ..registry import get_method
from ..teachers import CachedTeacher, Teacher
from . import checkpoint as ckpt
from .optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

CONFIG_FILE = "bertdistill.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
EXTRAS_FILE = "extras.safetensors"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stopped and the last good checkpoint was kept."""


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    main_process: bool = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class JsonlLogger:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class TermsColumn(ProgressColumn):
        """Live loss terms of a training bar (other bars, e.g. the teacher cache, have none)."""

        def render(self, task: Any) -> Text:
            return Text(str(task.fields.get("terms", "")))

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TermsColumn(),
    ) as p:
        yield p


def _load_tokenizer(run: RunConfig) -> Any:
    from transformers import AutoTokenizer

    src = run.teacher.path or run.student.path
    if not src:
        raise ConfigError(
            "set teacher.path (or student.path) so that bertdistill knows which tokenizer to use"
        )
    return from_pretrained(AutoTokenizer, src, trust_remote_code=run.teacher.trust_remote_code)


class Trainer:
    """Runs one method's stages over one bundle. Created by :func:`distill`."""

    def __init__(self, run: RunConfig, *, quiet: bool = False, progress: bool = True) -> None:
        self.run = run
        self.quiet = quiet
        self.show_progress = progress and not quiet
        self.task = resolve_task(run.data)
        self.method: Method = get_method(run.method.name)(run, self.task)
        self.out = run.resolved_output_dir()
        if run.train.cpu_threads:
            torch.set_num_threads(run.train.cpu_threads)
        seed_everything(run.train.seed)

        stages = self.method.stages()
        # the run's teacher serves every teacher-using stage that does not name its own (Stage.teacher)
        needs_teacher = self.method.requires_teacher and any(
            s.uses_teacher and s.teacher is None for s in stages
        )
        self.teacher_model: nn.Module | None = None
        if run.teacher.path:
            self.teacher_model = self.method.load_teacher_model(run.teacher.path)
        elif needs_teacher:
            raise ConfigError(
                f"method {self.method.name!r} needs a teacher: set teacher.path to a fine-tuned model dir or hub name "
                "(make one with `bertdistill finetune`)"
            )
        self.stages = stages
        self.tokenizer = _load_tokenizer(run)
        self.datasets = self.method.datasets(self.tokenizer)
        self.collate = self.method.collator(self.tokenizer)
        seed_everything(run.train.seed)
        self.bundle = self.method.build_student(self.teacher_model)
        self.teacher = (
            Teacher(self.teacher_model) if (self.teacher_model is not None and needs_teacher) else None
        )
        if not needs_teacher:
            self.teacher_model = None  # only used to build the student

        ddp = DistributedDataParallelKwargs(find_unused_parameters=len(stages) > 1 or _has_frozen(stages))
        _allow_new_precision(run.train.mixed_precision)
        self.acc = Accelerator(
            mixed_precision=run.train.mixed_precision,
            gradient_accumulation_steps=run.train.grad_accum,
            kwargs_handlers=[ddp],
        )
        if self.teacher is not None:
            self.teacher.to(self.acc.device)
        self._stage_teachers: dict[str, Teacher] = {}
        self.bundle = self.acc.prepare(self.bundle)
        self.logger = JsonlLogger(self.out / LOG_FILE, enabled=self.acc.is_main_process)
        self.metric_name = run.train.metric_for_best or self.task.main_metric
        self.eval_loader = None
        if "eval" in self.datasets:
            ev = self.datasets["eval"]
            self.eval_loader = self.acc.prepare(
                DataLoader(
                    ev,
                    batch_sampler=BatchSampler(_lengths(ev), run.train.eval_batch_size, shuffle=False),
                    collate_fn=self.collate,
                    generator=torch.Generator().manual_seed(run.train.seed),
                )
            )

    # ------------------------------------------------------------------ helpers
    def unwrapped(self) -> nn.Module:
        return self.acc.unwrap_model(self.bundle)

    def print(self, msg: str) -> None:
        if not self.quiet and self.acc.is_main_process:
            from rich.console import Console

            Console(stderr=True).print(msg, highlight=False)

    def _stage_teacher(self, stage: Stage) -> Teacher | None:
        """The stage's own teacher (``Stage.teacher``, loaded once and kept while a later stage needs it),
        else the run's."""
        if not stage.uses_teacher or not self.method.requires_teacher:
            return None
        if stage.teacher is None:
            return self.teacher
        for name in list(self._stage_teachers):  # free teachers that no stage from this one on uses
            if name != stage.teacher and not any(
                s.teacher == name for s in self.stages[self.stages.index(stage) :]
            ):
                del self._stage_teachers[name]
        if stage.teacher not in self._stage_teachers:
            model = self.method.load_teacher_model(stage.teacher, stage)
            self._stage_teachers[stage.teacher] = Teacher(model).to(self.acc.device)
        return self._stage_teachers[stage.teacher]

    def _teacher_source(self, stage: Stage, data: Any, progress: Any) -> Teacher | CachedTeacher | None:
        teacher = self._stage_teacher(stage)
        if teacher is None:
            return None
        needs = self.method.teacher_needs(stage)
        if self.run.teacher.cache and stage.cacheable and isinstance(data, TokenizedDataset):
            with self.acc.main_process_first():
                cache_dir = (
                    Path(self.run.teacher.cache_dir).expanduser() if self.run.teacher.cache_dir else None
                )
                return CachedTeacher.load_or_build(
                    teacher,
                    data,
                    needs,
                    self.collate,
                    cache_dir,  # type: ignore[arg-type]
                    self.run.teacher.cache_dtype,
                    self.run.teacher.batch_size,
                    progress,
                )
        return teacher

    def _evaluate(self) -> dict[str, float]:
        assert self.eval_loader is not None
        return self.method.evaluate(self.unwrapped(), self.eval_loader, self.acc.gather_for_metrics)

    def _save_best(self, metrics: dict[str, float], step: int) -> None:
        if not self.acc.is_main_process:
            return
        model = self.method.export_model(self.unwrapped())

        def write(tmp: Path) -> None:
            save_hf_model(model, self.tokenizer, tmp)
            (tmp / METRICS_FILE).write_text(json.dumps({"step": step, **metrics}, indent=1))

        ckpt.atomic_dir(self.out / "best", write)

    # ------------------------------------------------------------------ main
    def train(self, resume: bool = False) -> RunResult:
        run, acc = self.run, self.acc
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt_root = self.out / "checkpoints"
        state: dict[str, Any] = {
            "stage_index": 0,
            "stage_step": 0,
            "global_step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "best_metric": None,
            "best_step": None,
            "bad_evals": 0,
            "stage_done": False,
        }
        resume_from = ckpt.latest_checkpoint(ckpt_root) if resume else None
        if resume and resume_from is None:
            self.print(f"[yellow]--resume: no checkpoint under {ckpt_root}; starting from scratch")
        if resume_from is not None:
            self._warn_changed_config()
            state.update(ckpt.load_trainer_state(resume_from))
            ckpt.load_bundle(resume_from, self.unwrapped())
            self.print(
                f"resuming from {resume_from} (step {state['global_step']}, stage {state['stage_index']})"
            )
        elif acc.is_main_process:
            (self.out / LOG_FILE).unlink(missing_ok=True)
        if acc.is_main_process:
            run.dump(self.out / CONFIG_FILE)
        info = getattr(self.method, "student_info", None)
        if info:
            self.print(f"student: {info}")

        final_metrics: dict[str, Any] = {}
        with _progress(self.show_progress and acc.is_main_process) as progress:
            for si, stage in enumerate(self.stages):
                if si < state["stage_index"]:
                    continue
                if si > state["stage_index"]:
                    # a new stage starts its own model selection: the final model comes from the last stage
                    state.update(
                        stage_index=si,
                        stage_step=0,
                        epoch=0,
                        batch_in_epoch=0,
                        bad_evals=0,
                        stage_done=False,
                        best_metric=None,
                        best_step=None,
                    )
                    if acc.is_main_process:
                        shutil.rmtree(self.out / "best", ignore_errors=True)
                if state.get("stage_done"):
                    continue
                self._run_stage(stage, si, state, ckpt_root, progress, resume_from)
                resume_from = None
                if len(self.stages) > 1:
                    self._save_stage_output(stage)
                state["stage_done"] = True

        # final model: the best evaluated one, else the last
        acc.wait_for_everyone()
        if acc.is_main_process:
            best_dir = self.out / "best"
            if state["best_metric"] is not None and best_dir.is_dir():
                ckpt.publish_files(best_dir, self.out)
                final_metrics = json.loads((best_dir / METRICS_FILE).read_text())
            else:
                model = self.method.export_model(self.unwrapped())
                final_metrics = {"step": state["global_step"]}
                if self.eval_loader is not None and any(s.evaluate for s in self.stages):
                    final_metrics.update(self._evaluate())

                def write(tmp: Path) -> None:
                    save_hf_model(model, self.tokenizer, tmp)

                tmp_final = self.out / ".final"
                ckpt.atomic_dir(tmp_final, write)
                ckpt.publish_files(tmp_final, self.out)
                shutil.rmtree(tmp_final, ignore_errors=True)
            final_metrics = {"task": self.task.name, "method": self.method.name, **final_metrics}
            (self.out / METRICS_FILE).write_text(json.dumps(final_metrics, indent=1))
            run.dump(self.out / CONFIG_FILE)
        return RunResult(self.out, final_metrics, self.logger.records, acc.is_main_process)

    def _run_stage(
        self,
        stage: Stage,
        si: int,
        state: dict[str, Any],
        ckpt_root: Path,
        progress: Any,
        resume_from: Path | None,
    ) -> None:
        run, acc, tr = self.run, self.acc, self.run.train
        data = self.datasets.get(stage.data)
        if data is None:
            raise ConfigError(
                f"stage {stage.name!r} reads dataset {stage.data!r}, which the method did not build"
            )
        bundle = self.unwrapped()
        # trainable parameters of this stage
        if stage.param_groups is None:
            groups = [{"params": list(bundle.named_parameters())}]
        else:
            groups = stage.param_groups(bundle)
        trainable = {id(p) for g in groups for _, p in g["params"]}
        for p in bundle.parameters():
            p.requires_grad_(id(p) in trainable)

        sampler = BatchSampler(
            _lengths(data),
            tr.batch_size,
            shuffle=True,
            bucket=run.data.bucket_by_length,
            seed=tr.seed + 1000 * si,
        )
        # the loader's own generator: creating its iterator (which draws a base seed) must not consume the
        # global RNG that dropout reads, or a resumed run's dropout masks drift from an uninterrupted run's
        loader = acc.prepare(
            DataLoader(
                data,
                batch_sampler=sampler,
                collate_fn=self.collate,
                generator=torch.Generator().manual_seed(tr.seed + 1000 * si),
            )
        )
        updates_per_epoch = max(1, math.ceil(len(loader) / tr.grad_accum))
        max_steps = stage.max_steps or tr.max_steps
        epochs = stage.epochs if stage.epochs is not None else tr.epochs
        total = max_steps or max(1, math.ceil(epochs * updates_per_epoch))
        lr = stage.lr or tr.lr
        warmup = int((stage.warmup_ratio if stage.warmup_ratio is not None else tr.warmup_ratio) * total)
        optimizer = build_optimizer(groups, tr, lr)
        scheduler = build_scheduler(optimizer, stage.scheduler or tr.scheduler, warmup, total)
        optimizer, scheduler = acc.prepare(optimizer, scheduler)
        if resume_from is not None:
            ckpt.load_optim(resume_from, optimizer, scheduler)

        source = self._teacher_source(stage, data, progress)
        needs = self.method.teacher_needs(stage)
        evaluate = stage.evaluate and self.eval_loader is not None
        n_params = sum(p.numel() for _, p in (pp for g in groups for pp in g["params"]))
        self.print(
            f"stage {si + 1}/{len(self.stages)} [bold]{stage.name}[/]: {total} steps "
            f"({updates_per_epoch}/epoch, batch {tr.batch_size}×{tr.grad_accum}×{acc.num_processes}), lr {lr:g}, "
            f"{n_params:,} trainable params, teacher: "
            f"{'cached' if isinstance(source, CachedTeacher) else 'live' if source else 'none'}"
        )
        bar = (
            progress.add_task(stage.name, total=total, completed=state["stage_step"], terms="")
            if progress
            else None
        )

        sums: dict[str, float] = {}
        n_sum = 0
        t_last = time.perf_counter()
        stop = False
        bundle_wrapped = self.bundle
        bundle_wrapped.train()
        while not stop and state["stage_step"] < total:
            it = loader
            if state["batch_in_epoch"]:
                it = acc.skip_first_batches(loader, state["batch_in_epoch"])
            # the epoch seeds the shuffle; accelerate's loaders re-set it from their own counter at each
            # iteration, so set it through them (a resumed run's counter starts at 0)
            for obj in (sampler, it):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(state["epoch"])
            for batch in it:
                with acc.accumulate(bundle_wrapped):
                    t_out: Features | None = None
                    if source is not None:
                        with acc.autocast():
                            t_out = source.features(batch, needs)
                    s_out = self.method.student_forward(bundle_wrapped, batch, stage)
                    terms = self.method.loss(stage, batch, s_out, t_out)
                    loss = torch.stack([v.float() for v in terms.values()]).sum()
                    if not torch.isfinite(loss):
                        self._non_finite(terms, state, ckpt_root)
                    acc.backward(loss)
                    if acc.sync_gradients and tr.max_grad_norm:
                        acc.clip_grad_norm_(bundle_wrapped.parameters(), tr.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state["batch_in_epoch"] += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                n_sum += 1
                if not acc.sync_gradients:
                    continue
                state["stage_step"] += 1
                state["global_step"] += 1
                step = state["global_step"]
                if bar is not None:
                    progress.update(
                        bar, advance=1, terms=" ".join(f"{k}={v / n_sum:.4f}" for k, v in sums.items())
                    )
                if state["stage_step"] % tr.log_every == 0 or state["stage_step"] == total:
                    now = time.perf_counter()
                    rec = {
                        "step": step,
                        "stage": stage.name,
                        "epoch": state["epoch"],
                        "lr": scheduler.get_last_lr()[0],
                        **{k: v / n_sum for k, v in sums.items()},
                        "loss": sum(sums.values()) / n_sum,
                        "sec_per_step": (now - t_last) / max(1, n_sum),
                    }
                    self.logger.write(rec)
                    if progress is None and not self.quiet and acc.is_main_process:
                        self.print(
                            " ".join(
                                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
                            )
                        )
                    sums, n_sum, t_last = {}, 0, now
                end_of_stage = state["stage_step"] >= total
                end_of_epoch = state["batch_in_epoch"] >= len(loader)
                do_eval = evaluate and (
                    (tr.eval_every and state["stage_step"] % tr.eval_every == 0)
                    or (not tr.eval_every and end_of_epoch)
                    or end_of_stage
                )
                if do_eval:
                    stop = self._eval_step(state, stage) or stop
                do_save = (
                    (tr.save_every and state["stage_step"] % tr.save_every == 0)
                    or (not tr.save_every and (do_eval or end_of_epoch))
                    or end_of_stage
                )
                if end_of_epoch:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                if do_save:
                    self._checkpoint(optimizer, scheduler, state, ckpt_root)
                if stop or end_of_stage:
                    stop = True
                    break
            else:
                # the loader ran out on a non-sync micro-batch tail: flush the epoch
                if state["batch_in_epoch"]:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
        if bar is not None:
            progress.remove_task(bar)

    def _eval_step(self, state: dict[str, Any], stage: Stage) -> bool:
        """Evaluate, keep the best, count patience; True when early stopping says stop."""
        metrics = self._evaluate()
        step = state["global_step"]
        if self.metric_name not in metrics:
            raise ConfigError(f"train.metric_for_best {self.metric_name!r} is not one of {sorted(metrics)}")
        value = metrics[self.metric_name]
        improved = state["best_metric"] is None or value > state["best_metric"]
        self.logger.write({"step": step, "stage": stage.name, "eval": metrics, "improved": improved})
        self.print(
            f"step {step} eval: "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + (" [green](best)[/]" if improved else "")
        )
        if improved:
            state.update(best_metric=value, best_step=step, bad_evals=0)
            self._save_best(metrics, step)
            return False
        state["bad_evals"] += 1
        patience = self.run.train.early_stopping_patience
        if patience is not None and state["bad_evals"] >= patience:
            self.print(f"early stopping: no improvement of {self.metric_name} in {patience} evaluations")
            return True
        return False

    def _warn_changed_config(self) -> None:
        """A resumed run goes on with the config it is given; say which settings differ from the run it
        resumes (e.g. more epochs on purpose, or a wrong recipe by accident)."""
        prev_path = self.out / CONFIG_FILE
        if not prev_path.is_file():
            return
        from ..config import load_config

        try:
            prev = load_config(prev_path).to_dict()
        except Exception:  # an older or hand-edited file: nothing to compare against
            return
        diffs = _dict_diff(prev, self.run.to_dict())
        if diffs:
            msg = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
            log.warning("resuming with a changed config: %s", msg)
            self.print(f"[yellow]resuming with a changed config: {msg}")

    def _save_stage_output(self, stage: Stage) -> None:
        """``<output_dir>/stages/<stage>/``: the exported model as the stage left it (what the next stage
        starts from), loadable with ``from_pretrained``, plus the method's extras (e.g. projections)."""
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        bundle = self.unwrapped()
        model = self.method.export_model(bundle)
        extras = {k: v.detach().cpu().contiguous() for k, v in self.method.export_extras(bundle).items()}

        def write(tmp: Path) -> None:
            save_hf_model(model, self.tokenizer, tmp)
            if extras:
                from safetensors.torch import save_file

                save_file(extras, str(tmp / EXTRAS_FILE))
            self.run.dump(tmp / CONFIG_FILE)

        ckpt.atomic_dir(self.out / "stages" / stage.name, write)
        self.print(f"stage {stage.name!r} saved to {self.out / 'stages' / stage.name}")

    def _checkpoint(self, optimizer: Any, scheduler: Any, state: dict[str, Any], root: Path) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.save_checkpoint(
                root, self.unwrapped(), optimizer, scheduler, dict(state), self.run.train.keep_last
            )

    def _non_finite(self, terms: Mapping[str, Tensor], state: dict[str, Any], root: Path) -> None:
        values = {k: float(v.detach()) for k, v in terms.items()}
        last = ckpt.latest_checkpoint(root)
        msg = (
            f"non-finite loss at step {state['global_step'] + 1} of stage {state['stage_index']} "
            f"(terms: {values}); training stopped without saving this state. "
            + (
                f"Last good checkpoint: {last} (resume with --resume after lowering train.lr or "
                f"enabling train.max_grad_norm)."
                if last
                else "No checkpoint had been written yet."
            )
        )
        self.logger.write({"step": state["global_step"] + 1, "error": msg})
        raise NonFiniteLossError(msg)


def _allow_new_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide AcceleratorState; a second run in the same process (a notebook, a
    benchmark) with another mixed-precision setting would be refused. Reset only that part — the
    process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and str(shared.get("_mixed_precision", mixed_precision)) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _dict_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _lengths(data: Any) -> list[int]:
    if hasattr(data, "lengths"):
        return list(data.lengths)
    return [1] * len(data)


def _has_frozen(stages: list[Stage]) -> bool:
    return any(s.param_groups is not None for s in stages)


def distill(
    config: RunConfig | str | os.PathLike[str] | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run a recipe end to end and return where the student is and its metrics.

    ``config`` is a RunConfig, a recipe path or a dict; ``overrides`` are ``section.key=value`` strings.
    """
    from ..config import load_config

    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    elif overrides:
        config = load_config(config.to_dict(), overrides)
    return Trainer(config, quiet=quiet, progress=progress).train(resume=resume)
