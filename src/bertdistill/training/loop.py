"""The one training loop: stages → steps → loss terms → backward. It never branches on a method's name.

:func:`distill` builds a :class:`Trainer`: the method, the teacher, the datasets, the student bundle and the
accelerator. :meth:`Trainer.train` then runs each stage of the method in three plain pieces —
:meth:`~Trainer.setup_stage` (trainable parameters, optimizer, schedule, loader, teacher source),
:meth:`~Trainer.step` (one micro-batch: teacher outputs, student forward, loss terms, backward, update) and
:meth:`~Trainer.after_step` (counters, logging, evaluation and model selection, checkpoints) — over a typed
:class:`TrainerState`, which is what a checkpoint stores to resume exactly. A non-finite loss stops the run
and names the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import Tensor, nn
from torch.profiler import record_function
from torch.utils.data import DataLoader

from .. import checks
from ..config import ConfigError, RunConfig, TrainConfig
from ..data.loading import TokenizedDataset, resolve_task, teacher_view, truncation_warning
from ..data.rows import skipped_rows
from ..data.tasks import collapse_warning
from ..hub import from_pretrained, save_hf_model
from ..inference import eval_loop
from ..killpoints import kill_point
from ..protocol import Features, Method, Needs, Stage, unwrap
from ..registry import get_method
from ..teachers import CachedTeacher, EnsembleTeacher, GroupedSource, Teacher
from . import checkpoint as ckpt
from . import embedding_grad, tracking
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


@dataclass
class TrainerState:
    """Where a run is: what a checkpoint stores (``trainer_state.json``) to resume exactly."""

    stage_index: int = 0
    stage_step: int = 0
    """Optimizer steps taken in the current stage."""
    global_step: int = 0
    epoch: int = 0
    """Epoch of the current stage (seeds its shuffle)."""
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (skipped on resume)."""
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stage_done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainerState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def start_stage(self, index: int) -> None:
        """A new stage starts its own epochs and model selection (the final model comes from the last)."""
        self.stage_index, self.stage_step, self.epoch, self.batch_in_epoch = index, 0, 0, 0
        self.bad_evals, self.stage_done, self.best_metric, self.best_step = 0, False, None, None


@dataclass
class StageRun:
    """Everything one stage runs with, built by :meth:`Trainer.setup_stage`."""

    stage: Stage
    index: int
    sampler: Any
    loader: Any
    optimizer: Any
    scheduler: Any
    source: Any
    """Teacher outputs: a Teacher, EnsembleTeacher, CachedTeacher, GroupedSource, or None."""
    needs: Needs
    total: int
    evaluate: bool
    bar: Any = None
    sums: dict[str, float] = field(default_factory=dict)
    n_sum: int = 0
    t_last: float = field(default_factory=time.perf_counter)


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
        self.trackers = run.train.trackers
        tracking.check_installed(
            self.trackers
        )  # before loading anything: a missing package is a one-line error
        if run.train.cpu_threads:
            torch.set_num_threads(run.train.cpu_threads)
        seed_everything(run.train.seed)

        self.stages = self.method.stages()
        runs_teacher = self.method.runs_teacher()
        teacher_model: nn.Module | None = None
        if run.teacher.path:
            teacher_model = self.method.load_teacher_model(run.teacher.path)
        elif runs_teacher:
            raise ConfigError(
                f"method {self.method.name!r} needs a teacher: set teacher.path to a fine-tuned model dir or hub "
                "name (make one with `bertdistill finetune`)"
            )
        self.tokenizer = _load_tokenizer(run)
        with skipped_rows() as self.skipped_rows:  # data.bad_rows: skip -> counted in metrics.json
            self.datasets = self.method.datasets(self.tokenizer)
        cut = truncation_warning(self.datasets.get("train"), run.data.max_length)
        if cut:
            log.warning(cut)
        self.collate = self.method.collator(self.tokenizer, self.datasets)
        self.student_tokenizer = self.method.student_tokenizer(self.tokenizer, self.datasets)
        seed_everything(run.train.seed)
        built = self.method.build_student(teacher_model, self.datasets)
        self.student_info = built.info
        if teacher_model is not None and any(  # a classifier of another task stops here, not stages later
            s.uses_teacher and s.teacher is None and self.method.teacher_needs(s, built.bundle).logits
            for s in self.stages
        ):
            checks.check_teacher_labels(teacher_model, self.task)
        checks.check_positions(
            run.data.max_length, {"teacher": teacher_model}, self.method.teacher_length(run.data.max_length)
        )
        checks.check_positions(run.data.max_length, {"student": built.bundle})
        student_model = self.method.export_model(built.bundle, None)
        checks.check_shared_vocab(run, self.tokenizer, self.student_tokenizer, student_model)
        # the run's teacher serves every stage that names no teacher of its own; else it only built the student
        self.teacher = Teacher(teacher_model) if (teacher_model is not None and runs_teacher) else None

        ddp = DistributedDataParallelKwargs(
            find_unused_parameters=len(self.stages) > 1
            or any(s.param_groups is not None for s in self.stages)
            or type(self.method).sparse_parameters
        )
        dynamo = _dynamo_plugin(run.train.compile)
        _fresh_state_if_changed(run.train.mixed_precision, dynamo)
        self.acc = Accelerator(
            mixed_precision=run.train.mixed_precision,
            gradient_accumulation_steps=run.train.grad_accum,
            kwargs_handlers=[ddp],
            log_with=self.trackers or None,
            project_dir=str(run.resolved_tracking_dir()) if self.trackers else None,
            # the schedule counts optimizer steps of this process's loader (already sharded): accelerate's
            # default would step it num_processes times per update, decaying the lr N× too fast under DDP
            step_scheduler_with_optimizer=False,
            dynamo_plugin=dynamo,
        )
        if run.train.mixed_precision == "bf16" and self.acc.device.type == "cpu":
            from ..precision import cpu_bf16

            native, why = cpu_bf16()
            (log.info if native else log.warning)("train.mixed_precision=bf16: %s", why)
        if self.teacher is not None:
            self.teacher.to(self.acc.device)
        self._stage_teachers: dict[str, Teacher] = {}
        self.bundle = self.acc.prepare(built.bundle)
        # the eager module inside the wrappers (DDP, torch.compile's — whose state dict would carry an
        # ``_orig_mod.`` prefix — whether train.compile or `accelerate launch --dynamo_backend` set it): what
        # evaluation, saving, export and the loss see. Found once: accelerate's unwrap walks every submodule.
        self._eager = unwrap(self.acc.unwrap_model(self.bundle, keep_torch_compile=False))
        log.info(
            "process %d/%d: student %s, teacher %s (inference only, never wrapped)",
            self.acc.process_index,
            self.acc.num_processes,
            type(self.bundle).__name__,
            type(self.teacher.model).__name__ if self.teacher is not None else None,
        )
        self.logger = JsonlLogger(self.out / LOG_FILE, enabled=self.acc.is_main_process)
        self.metric_name = run.train.metric_for_best or self.task.main_metric
        self.eval_loader = None
        if "eval" in self.datasets:
            ev = self.datasets["eval"]
            sampler = self.method.batch_sampler(
                ev, run.train.eval_batch_size, shuffle=False, seed=run.train.seed, stage=None
            )
            self.eval_loader = self.acc.prepare(
                DataLoader(
                    ev,
                    batch_sampler=sampler,
                    collate_fn=self.collate,
                    generator=torch.Generator().manual_seed(run.train.seed),
                )
            )
        elif self.task.num_labels and any(s.evaluate and s.trains for s in self.stages):
            log.warning(
                "no labelled evaluation data (data.eval_split %r): the run saves its last model unscored and "
                "selects no best model; set data.eval_split (or data.selection_fraction), or score it later with "
                "`bertdistill evaluate %s --data FILE`",
                run.data.eval_split,
                self.out,
            )

    # ------------------------------------------------------------------ helpers
    def unwrapped(self) -> nn.Module:
        return self._eager

    def print(self, msg: str) -> None:
        if not self.quiet and self.acc.is_main_process:
            from rich.console import Console

            Console(stderr=True).print(msg, highlight=False)

    def _teacher_at(self, path: str, stage: Stage, keep: set[str]) -> Teacher:
        """A stage's own teacher, loaded once and kept while a later stage uses it."""
        for name in list(self._stage_teachers):
            if name not in keep:
                del self._stage_teachers[name]
        if path not in self._stage_teachers:
            checks.check_teacher_vocab(path, self.tokenizer, f"stage {stage.name!r}: teacher")
            model = self.method.load_teacher_model(path, stage)
            self._stage_teachers[path] = Teacher(model).to(self.acc.device)
        return self._stage_teachers[path]

    def _teacher_source(
        self, stage: Stage, si: int, data: Any, needs: Needs, progress: Any, label: str = "teacher cache"
    ) -> Any:
        """Where the stage's teacher outputs come from: live, cached on disk, or per group."""
        if not stage.uses_teacher:
            return None
        later = self.stages[si:]
        keep = {s.teacher for s in later if s.teacher} | {
            p for s in later for ps in (s.group_teachers or {}).values() for p in ps
        }
        if stage.group_teachers is not None:
            parts = getattr(data, "parts", None)
            if parts is None:
                raise ConfigError(
                    f"stage {stage.name!r} names teachers per group, but its data has no groups"
                )
            sources: dict[str, Any] = {}
            for group, paths in stage.group_teachers.items():
                if group not in parts:
                    raise ConfigError(
                        f"stage {stage.name!r}: no data group {group!r}; groups are {list(parts)}"
                    )
                if not paths:
                    sources[group] = None
                    continue
                members = [self._teacher_at(p, stage, keep) for p in paths]
                regression = bool(getattr(parts[group], "regression", False))
                teacher: Any = members[0] if len(members) == 1 else EnsembleTeacher(members, regression)
                checks.check_teacher_outputs(teacher, needs, getattr(parts[group], "spec", None))
                sources[group] = self._maybe_cached(teacher, stage, parts[group], needs, progress, label)
            return GroupedSource(sources)
        teacher = self.teacher if stage.teacher is None else self._teacher_at(stage.teacher, stage, keep)
        if teacher is None:
            raise ConfigError(f"stage {stage.name!r} uses a teacher, but none is set (teacher.path)")
        checks.check_teacher_outputs(teacher, needs, self.task)
        return self._maybe_cached(teacher, stage, data, needs, progress, label)

    def _maybe_cached(
        self, teacher: Any, stage: Stage, data: Any, needs: Needs, progress: Any, label: str = "teacher cache"
    ) -> Any:
        if not (
            self.run.teacher.cache and stage.cacheable and isinstance(teacher_view(data), TokenizedDataset)
        ):
            return teacher
        with self.acc.main_process_first():
            cache_dir = Path(self.run.teacher.cache_dir).expanduser() if self.run.teacher.cache_dir else None
            return CachedTeacher.load_or_build(
                teacher,
                data,
                needs,
                self.tokenizer.pad_token_id or 0,
                cache_dir,
                self.run.teacher.resolved_cache_dtype(self.run.train.mixed_precision),
                self.run.teacher.resolved_batch_size(self.acc.device.type),
                progress,
                label,
                compute={"no": "fp32"}.get(self.run.train.mixed_precision, self.run.train.mixed_precision),
            )

    def evaluate_now(self, stage: Stage | None) -> dict[str, float]:
        return self._evaluate(stage)[0]

    def _evaluate(self, stage: Stage | None) -> tuple[dict[str, float], str]:
        """The stage's metrics on the eval set and the name of the one that selects models (``train.
        metric_for_best``, else the runner's main metric: a stage may score differently from the task, e.g. a
        teacher stage by masked-token accuracy)."""
        assert self.eval_loader is not None
        runner = self.method.runner(self.unwrapped(), self.student_tokenizer, stage)
        metrics = eval_loop(runner, self.eval_loader, self._gather, **self.method.eval_options(stage))
        return metrics, self.run.train.metric_for_best or runner.main_metric()

    def _gather(self, t: Tensor) -> Tensor:
        """``gather_for_metrics`` that also takes batches of different sizes on different processes (grouped
        multi-task evaluation: one process's batch ends a task while another's is full): equal sizes go through
        the tensor all-gather, uneven ones through the object gather, row by row."""
        if self.acc.num_processes == 1:
            return self.acc.gather_for_metrics(t)
        sizes = self.acc.gather(torch.tensor([t.shape[0]], device=t.device))
        if bool((sizes == sizes[0]).all()):
            return self.acc.gather_for_metrics(t)
        rows = self.acc.gather_for_metrics(t.cpu(), use_gather_object=True)
        return torch.stack(list(rows)).to(t.device) if len(rows) else t[:0]

    def _save_model(self, target: Path, stage: Stage | None, metrics: dict[str, Any] | None = None) -> None:
        model = self.method.export_model(self.unwrapped(), stage)

        def write(tmp: Path) -> None:
            save_hf_model(model, self.student_tokenizer, tmp)
            if metrics is not None:
                (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1))

        ckpt.guarded_write(target, write, what="the model", then=self._intact)

    # ------------------------------------------------------------------ main
    def train(self, resume: bool = False, overwrite: bool = True) -> RunResult:
        """Train into the output dir. ``overwrite=False`` (the command line's default): a new run (not ``resume``)
        into a dir that holds saved weights, a finished run's scores or checkpoints stops with a ConfigError."""
        # one process trains into a dir at a time: a second one stops with RunDirBusyError before it touches it.
        # Under DDP rank 0 holds the lock and tells the other ranks whether it got it, so all of them stop together
        with ExitStack() as held:
            busy: str | None = None
            occupied: str | None = None
            if self.acc.is_main_process:
                try:
                    held.enter_context(ckpt.run_dir_lock(self.out))
                except ckpt.RunDirBusyError as e:
                    busy = str(e)
                if busy is None and not resume and not overwrite:
                    try:
                        checks.refuse_occupied_output(self.out, "this run", OCCUPIED_HOW)
                    except ConfigError as e:
                        occupied = str(e)
            if self.acc.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                busy, occupied = broadcast_object_list([busy, occupied], from_process=0)
            if busy is not None:
                raise ckpt.RunDirBusyError(busy)
            if occupied is not None:
                raise ConfigError(occupied)
            return self._train_run(resume)

    def _train_run(self, resume: bool) -> RunResult:
        run, acc = self.run, self.acc
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt_root = self.out / "checkpoints"
        state = TrainerState()
        if resume:
            # what a kill left half done is tidied, and damaged checkpoints are set aside, before reading any
            if acc.is_main_process:
                ckpt.recover_run_dir(self.out)
                ckpt.latest_good_checkpoint(ckpt_root)
            acc.wait_for_everyone()
        resume_from = ckpt.latest_checkpoint(ckpt_root) if resume else None
        if resume and resume_from is None:
            self.print(f"[yellow]--resume: no checkpoint under {ckpt_root}; starting from scratch")
        if resume_from is not None:
            checks.check_resume(self.out, run, CONFIG_FILE)
            self._warn_changed_config()
            state = TrainerState.from_dict(ckpt.load_trainer_state(resume_from))
            ckpt.load_bundle(resume_from, self.unwrapped())
            self.print(f"resuming from {resume_from} (step {state.global_step}, stage {state.stage_index})")
        elif acc.is_main_process:
            # a new run: nothing an earlier run left here may pass for this one's (checkpoints, weights, scores)
            removed = ckpt.clear_previous_run(self.out)
            if removed:
                self.print(
                    f"[yellow]a new run into {self.out}: removed the earlier run's {', '.join(removed)}"
                )
        if acc.is_main_process:
            run.dump(self.out / CONFIG_FILE)
        if self.student_info:
            self.print(f"student: {self.student_info}")
        if not self.trackers:
            return self._train(state, ckpt_root, resume_from)
        self._start_tracking(state)
        try:
            return self._train(state, ckpt_root, resume_from)
        finally:
            self._end_tracking()

    def _start_tracking(self, state: TrainerState) -> None:
        """``train.log_with``: one tracker run per output dir (project = its name), the resolved config as its
        hyperparameters. A resumed run hides TensorBoard's events after the checkpoint it resumes (those steps
        are run again)."""
        kwargs = {"tensorboard": {"purge_step": state.global_step + 1}} if state.global_step else {}
        self.acc.init_trackers(
            self.out.resolve().name, config=tracking.flat_config(self.run.to_dict()), init_kwargs=kwargs
        )

    def _end_tracking(self) -> None:
        """What ``Accelerator.end_training`` does but for destroying the process group, which a control run
        (a second Trainer in the same process) still needs: finish each tracker (flush and close)."""
        for tracker in self.acc.trackers:
            tracker.finish()
        self.acc.trackers.clear()

    def _track(self, kind: str, stage: Stage, values: Mapping[str, Any], step: int) -> None:
        """``train/<term>`` / ``eval/<metric>`` (``train/<stage>/<term>`` for methods of several stages)."""
        if not self.trackers:
            return
        prefix = kind if len(self.stages) == 1 else f"{kind}/{stage.name}"
        self.acc.log(tracking.scalars(prefix, values), step=step)

    def _train(self, state: TrainerState, ckpt_root: Path, resume_from: Path | None) -> RunResult:
        acc = self.acc
        with _progress(self.show_progress and acc.is_main_process) as progress:
            for si, stage in enumerate(self.stages):
                if si < state.stage_index:
                    continue
                if si > state.stage_index:
                    state.start_stage(si)
                    if acc.is_main_process:
                        shutil.rmtree(self.out / "best", ignore_errors=True)
                if state.stage_done:
                    continue
                if not stage.trains:
                    self.prepare_stage(stage, si, state, progress)
                    state.stage_done = True
                    continue
                sr = self.setup_stage(stage, si, state, progress, resume_from)
                resume_from = None
                self.run_stage(sr, state, ckpt_root, progress)
                if len(self.stages) > 1:
                    self._save_stage_output(stage)
                kill_point("stage_end")
                state.stage_done = True
        return self._finish(state)

    def prepare_stage(self, stage: Stage, si: int, state: TrainerState, progress: Any) -> None:
        """A stage that trains nothing (``Stage.trains`` False): build its teacher outputs for its data in the
        teacher cache — resumable, with a progress bar — for the stages after it, and report the time."""
        data = self.datasets.get(stage.data)
        if data is None:
            raise ConfigError(
                f"stage {stage.name!r} reads dataset {stage.data!r}, which the method did not build"
            )
        n = len(data)  # type: ignore[arg-type]
        needs = self.method.teacher_needs(stage, self.unwrapped())
        t0 = time.perf_counter()
        source = self._teacher_source(stage, si, data, needs, progress, label=stage.name)
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "step": state.global_step,
            "stage": stage.name,
            "prepared": "teacher cache" if isinstance(source, CachedTeacher) else "nothing",
            "examples": n,
            "seconds": seconds,
        }
        if isinstance(source, CachedTeacher):
            record.update(
                cache=str(source.root),
                cache_hit=not source.built_now,
                build_seconds=source.build_seconds,
                examples_per_s=n / source.build_seconds if source.build_seconds else None,
            )
            how = "built" if source.built_now else "found (cache hit)"
            self.print(
                f"stage {si + 1}/{len(self.stages)} [bold]{stage.name}[/]: teacher outputs of {n:,} "
                f"examples {how} in {seconds:.1f} s (extraction time {source.build_seconds or 0.0:.1f} s) at "
                f"{source.root}"
            )
            diagnostics = self.method.prepared(stage, source.tensors)
            record.update(diagnostics)
            if diagnostics.get("warning"):
                log.warning("stage %s: %s", stage.name, diagnostics["warning"])
        else:
            self.print(
                f"stage {si + 1}/{len(self.stages)} [bold]{stage.name}[/]: nothing to prepare (teacher.cache is "
                "off: the stages that read the teacher run it live)"
            )
        self.logger.write(record)

    def setup_stage(
        self, stage: Stage, si: int, state: TrainerState, progress: Any, resume_from: Path | None
    ) -> StageRun:
        """Trainable parameters, optimizer and schedule, loader and teacher source of one stage."""
        acc, tr = self.acc, self.run.train
        data = self.datasets.get(stage.data)
        if data is None:
            raise ConfigError(
                f"stage {stage.name!r} reads dataset {stage.data!r}, which the method did not build"
            )
        bundle = self.unwrapped()
        groups = (
            [{"params": list(bundle.named_parameters())}]
            if stage.param_groups is None
            else stage.param_groups(bundle)
        )
        trainable = {id(p) for g in groups for _, p in g["params"]}
        for p in bundle.parameters():
            p.requires_grad_(id(p) in trainable)
        seed = tr.seed + 1000 * si
        batch_size = stage.batch_size or tr.batch_size
        sampler = self.method.batch_sampler(data, batch_size, shuffle=True, seed=seed, stage=stage)
        # the loader's own generator: creating its iterator (which draws a base seed) must not consume the
        # global RNG that dropout reads, or a resumed run's dropout masks drift from an uninterrupted run's
        loader = acc.prepare(
            DataLoader(
                data,
                batch_sampler=sampler,
                collate_fn=self.collate,
                generator=torch.Generator().manual_seed(seed),
            )
        )
        updates_per_epoch = max(1, math.ceil(len(loader) / tr.grad_accum))
        max_steps = stage_step_count(stage, tr)
        epochs = stage.epochs if stage.epochs is not None else tr.epochs
        total = max_steps or max(1, math.ceil(epochs * updates_per_epoch))
        lr = stage.lr or tr.lr
        warmup = int((stage.warmup_ratio if stage.warmup_ratio is not None else tr.warmup_ratio) * total)
        optimizer = build_optimizer(groups, tr, lr, stage.optimizer)
        scheduler = build_scheduler(optimizer, stage.scheduler or tr.scheduler, warmup, total)
        optimizer, scheduler = acc.prepare(optimizer, scheduler)
        if resume_from is not None:
            ckpt.load_optim(resume_from, optimizer, scheduler)
        needs = self.method.teacher_needs(stage, bundle)
        source = self._teacher_source(stage, si, data, needs, progress)
        n_params = sum(p.numel() for g in groups for _, p in g["params"])
        kind = (
            "cached"
            if isinstance(source, CachedTeacher)
            else "per group"
            if isinstance(source, GroupedSource)
            else "live"
            if source
            else "none"
        )
        self.print(
            f"stage {si + 1}/{len(self.stages)} [bold]{stage.name}[/]: {total} steps "
            f"({updates_per_epoch}/epoch, batch {batch_size}×{tr.grad_accum}×{acc.num_processes}), lr {lr:g}, "
            f"{n_params:,} trainable params, teacher: {kind}"
        )
        bar = (
            progress.add_task(stage.name, total=total, completed=state.stage_step, terms="")
            if progress
            else None
        )
        return StageRun(
            stage,
            si,
            sampler,
            loader,
            optimizer,
            scheduler,
            source,
            needs,
            total,
            evaluate=stage.evaluate and self.eval_loader is not None,
            bar=bar,
        )

    def run_stage(self, sr: StageRun, state: TrainerState, ckpt_root: Path, progress: Any) -> None:
        """Epochs of one stage until its step budget is spent or early stopping says stop."""
        tables = self._persistent_embedding_grads()
        try:
            self._run_stage(sr, state, ckpt_root, progress)
        finally:
            if tables:
                embedding_grad.uninstall(self._eager)

    def _persistent_embedding_grads(self) -> list[nn.Embedding]:
        """``train.persistent_embedding_grad``: a persistent gradient buffer for the student's large trainable
        embedding tables (:mod:`.embedding_grad`), in a single process without torch.compile (``self.bundle`` is
        the eager module itself: no DDP or dynamo wrapper)."""
        if not self.run.train.persistent_embedding_grad or self.acc.num_processes > 1:
            return []
        if self.bundle is not self._eager:
            return []
        tables = embedding_grad.install(self._eager)
        if tables:
            log.info(
                "persistent embedding gradient for %s",
                ", ".join(f"{m.num_embeddings}×{m.embedding_dim}" for m in tables),
            )
        return tables

    def _run_stage(self, sr: StageRun, state: TrainerState, ckpt_root: Path, progress: Any) -> None:
        self.bundle.train()
        stop = False
        while not stop and state.stage_step < sr.total:
            it = sr.loader
            if state.batch_in_epoch:
                it = self.acc.skip_first_batches(sr.loader, state.batch_in_epoch)
            # the epoch seeds the shuffle; accelerate's loaders re-set it from their own counter at each
            # iteration, so set it through them (a resumed run's counter starts at 0)
            for obj in (sr.sampler, it):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(state.epoch)
            batches = iter(it)
            while True:
                with record_function("bertdistill.data"):  # labelled ranges: benchmarks/profile_step.py
                    batch = next(batches, None)
                if batch is None:
                    break
                terms = self.step(sr, batch, state, ckpt_root)
                state.batch_in_epoch += 1
                for k, v in terms.items():
                    sr.sums[k] = sr.sums.get(k, 0.0) + v
                sr.n_sum += 1
                if not self.acc.sync_gradients:
                    continue
                with record_function("bertdistill.after_step"):
                    stop = self.after_step(sr, state, ckpt_root, progress)
                if stop:
                    break
            if not stop and state.batch_in_epoch:
                # the loader ran out on a non-sync micro-batch tail: flush the epoch
                state.epoch += 1
                state.batch_in_epoch = 0
        if sr.bar is not None:
            progress.remove_task(sr.bar)

    def step(
        self, sr: StageRun, batch: Mapping[str, Any], state: TrainerState, ckpt_root: Path
    ) -> dict[str, float]:
        """One micro-batch: teacher outputs, student forward (through the DDP wrapper), loss terms, backward,
        and (on a synchronising micro-batch) the optimizer update. Returns the terms as floats."""
        acc, tr = self.acc, self.run.train
        with acc.accumulate(self.bundle):
            t_out: Features | None = None
            if sr.source is not None:
                with record_function("bertdistill.teacher"), acc.autocast():
                    t_out = sr.source.features(batch, sr.needs)
            with record_function("bertdistill.student_forward"):
                s_out = self.bundle(**self.method.student_inputs(batch, sr.stage))
            with record_function("bertdistill.loss"):
                terms = self.method.loss(sr.stage, batch, s_out, t_out, self.unwrapped())
                loss = torch.stack([v.float() for v in terms.values()]).sum()
                values = {k: float(v.detach()) for k, v in terms.items()}
            if not math.isfinite(sum(values.values())):
                self._non_finite(values, state, ckpt_root, sr.stage.name)
            with record_function("bertdistill.backward"):
                acc.backward(loss)
            with record_function("bertdistill.optimizer"):
                if acc.sync_gradients and tr.max_grad_norm:
                    acc.clip_grad_norm_(self.bundle.parameters(), tr.max_grad_norm)
                sr.optimizer.step()
                if acc.sync_gradients:
                    sr.scheduler.step()
                sr.optimizer.zero_grad(set_to_none=True)
        return values

    def after_step(self, sr: StageRun, state: TrainerState, ckpt_root: Path, progress: Any) -> bool:
        """Counters, logging, evaluation / model selection and checkpoints after an optimizer step; True
        when the stage ends (its step budget, or early stopping)."""
        tr = self.run.train
        kill_point("step")
        state.stage_step += 1
        state.global_step += 1
        if sr.bar is not None:
            progress.update(
                sr.bar, advance=1, terms=" ".join(f"{k}={v / sr.n_sum:.4f}" for k, v in sr.sums.items())
            )
        end_of_stage = state.stage_step >= sr.total
        if state.stage_step % tr.log_every == 0 or end_of_stage:
            self._log_terms(sr, state, progress)
        end_of_epoch = state.batch_in_epoch >= len(sr.loader)
        do_eval = sr.evaluate and (
            (tr.eval_every and state.stage_step % tr.eval_every == 0)
            or (not tr.eval_every and end_of_epoch)
            or end_of_stage
        )
        stop = self._eval_and_select(state, sr.stage) if do_eval else False
        if do_eval:
            kill_point("eval")
        do_save = (
            (tr.save_every and state.stage_step % tr.save_every == 0)
            or (not tr.save_every and (do_eval or end_of_epoch))
            or end_of_stage
        )
        if end_of_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
        if do_save:
            self._checkpoint(sr, state, ckpt_root)
        return stop or end_of_stage

    def _intact(self) -> str:
        """What a user still has when writing a model under the run dir failed, and what to do."""
        last = ckpt.latest_checkpoint(self.out / "checkpoints")
        if last is None:
            return "no checkpoint was written yet: make room and run again"
        return f"the checkpoint {last} is intact: make room and run again with --resume"

    def _checkpoint(self, sr: StageRun, state: TrainerState, root: Path) -> None:
        # finite loss terms can still give a diverged update (an inf gradient): never save it as "good"
        bad = [n for n, p in self.unwrapped().named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            self._non_finite({}, state, root, sr.stage.name, bad_params=bad)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            ckpt.save_checkpoint(
                root, self.unwrapped(), sr.optimizer, sr.scheduler, state.to_dict(), self.run.train.keep_last
            )

    def _log_terms(self, sr: StageRun, state: TrainerState, progress: Any) -> None:
        now = time.perf_counter()
        rec = {
            "step": state.global_step,
            "stage": sr.stage.name,
            "epoch": state.epoch,
            "lr": sr.scheduler.get_last_lr()[0],
            **{k: v / sr.n_sum for k, v in sr.sums.items()},
            "loss": sum(sr.sums.values()) / sr.n_sum,
            "sec_per_step": (now - sr.t_last) / max(1, sr.n_sum),
        }
        self.logger.write(rec)
        if self.trackers:
            self._track("train", sr.stage, {k: v for k, v in rec.items() if k != "step"}, state.global_step)
        if progress is None and not self.quiet and self.acc.is_main_process:
            self.print(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items())
            )
        sr.sums, sr.n_sum, sr.t_last = {}, 0, now

    def _eval_and_select(self, state: TrainerState, stage: Stage) -> bool:
        """Evaluate, keep the best, count patience; True when early stopping says stop."""
        metrics, metric_name = self._evaluate(stage)
        step = state.global_step
        if metric_name not in metrics:
            raise ConfigError(
                f"stage {stage.name!r}: the model-selection metric {metric_name!r} (train.metric_for_best, else "
                f"the runner's main metric) is not one of {sorted(metrics)}"
            )
        value = metrics[metric_name]
        improved = state.best_metric is None or value > state.best_metric
        self.logger.write({"step": step, "stage": stage.name, "eval": metrics, "improved": improved})
        self._track("eval", stage, metrics, step)
        self.print(
            f"step {step} eval: "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + (" [green](best)[/]" if improved else "")
        )
        if improved:
            state.best_metric, state.best_step, state.bad_evals = value, step, 0
            if self.acc.is_main_process:
                self._save_model(self.out / "best", stage, {"step": step, **metrics})
            return False
        state.bad_evals += 1
        patience = self.run.train.early_stopping_patience
        if patience is not None and state.bad_evals >= patience:
            self.print(f"early stopping: no improvement of {metric_name} in {patience} evaluations")
            return True
        return False

    def _finish(self, state: TrainerState) -> RunResult:
        """The final model: the best evaluated one of the last stage, else the last; metrics.json."""
        acc = self.acc
        acc.wait_for_everyone()
        final_metrics: dict[str, Any] = {}
        if acc.is_main_process:
            best_dir = self.out / "best"
            if state.best_metric is not None and best_dir.is_dir():
                ckpt.publish_files(best_dir, self.out)
                final_metrics = json.loads((best_dir / METRICS_FILE).read_text())
            else:
                last = self.stages[-1]
                final_metrics = {"step": state.global_step}
                if self.eval_loader is not None and any(s.evaluate for s in self.stages):
                    final_metrics.update(self.evaluate_now(last))
                tmp_final = self.out / ".final"
                self._save_model(tmp_final, last)
                ckpt.publish_files(tmp_final, self.out)
                shutil.rmtree(tmp_final, ignore_errors=True)
            final_metrics = {"task": self.task.name, "method": self.method.name, **final_metrics}
            if self.skipped_rows:
                final_metrics["data"] = {
                    "skipped_rows": sum(self.skipped_rows.values()),
                    "skipped_rows_by_file": dict(self.skipped_rows),
                }
            warning = collapse_warning("the student", final_metrics, self.task.main_metric)
            if warning:
                log.warning(warning)
                final_metrics["warnings"] = [warning]
            (self.out / METRICS_FILE).write_text(json.dumps(final_metrics, indent=1))
            self.run.dump(self.out / CONFIG_FILE)
        return RunResult(self.out, final_metrics, self.logger.records, acc.is_main_process)

    def _warn_changed_config(self) -> None:
        """A resumed run goes on with the config it is given; say which settings differ from the run it
        resumes (e.g. more epochs on purpose, or a wrong recipe by accident)."""
        prev_path = self.out / CONFIG_FILE
        if not prev_path.is_file():
            return
        from ..recipes import load_config

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
        starts from), loadable with ``from_pretrained``, plus the method's extras (e.g. projections). Written by
        the main process; every process waits for it, since a later stage may load it (C-MLM's soft labels are
        the saved ``stages/teacher``'s)."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            bundle = self.unwrapped()
            model = self.method.export_model(bundle, stage)
            extras = {k: v.detach().cpu().contiguous() for k, v in self.method.export_extras(bundle).items()}

            def write(tmp: Path) -> None:
                save_hf_model(model, self.student_tokenizer, tmp)
                if extras:
                    from safetensors.torch import save_file

                    save_file(extras, str(tmp / EXTRAS_FILE))
                self.run.dump(tmp / CONFIG_FILE)

            ckpt.guarded_write(self.out / "stages" / stage.name, write, what="the stage", then=self._intact)
            self.print(f"stage {stage.name!r} saved to {self.out / 'stages' / stage.name}")
        self.acc.wait_for_everyone()

    def _non_finite(
        self,
        values: Mapping[str, float],
        state: TrainerState,
        root: Path,
        stage: str,
        bad_params: list[str] | None = None,
    ) -> None:
        """Stop the run: name what went non-finite (loss terms, else the weights after an update), the step
        and the stage, and the last good checkpoint to resume from."""
        last = ckpt.latest_checkpoint(root)
        if bad_params:
            step, what = state.global_step, f"non-finite weights {bad_params[:5]} after"
        else:
            bad = sorted(k for k, v in values.items() if not math.isfinite(v))
            step, what = state.global_step + 1, f"non-finite loss term(s) {bad} at"
        msg = (
            f"{what} step {step} (stage {state.stage_index} {stage!r}"
            + (f", terms: {dict(values)}" if values else "")
            + "); training stopped without saving this state. "
            + (
                f"Last good checkpoint: {last} (resume with --resume after lowering train.lr or "
                f"enabling train.max_grad_norm)."
                if last
                else "No checkpoint had been written yet."
            )
        )
        self.logger.write({"step": step, "error": msg})
        raise NonFiniteLossError(msg)


def _dynamo_plugin(compile: bool | str) -> Any:
    """accelerate's dynamo plugin for ``train.compile``: inductor with the mode asked for (``prepare`` then wraps
    the student in ``torch.compile``); when off, accelerate's own default, which reads the environment, so
    `accelerate launch --dynamo_backend` still works."""
    from accelerate.utils import TorchDynamoPlugin

    if compile is False:
        return TorchDynamoPlugin()
    return TorchDynamoPlugin(backend="inductor", mode="default" if compile is True else compile)


def _fresh_state_if_changed(mixed_precision: str, dynamo: Any) -> None:
    """accelerate keeps one process-wide AcceleratorState and sets it up once: a second run in the same process
    (a notebook, a benchmark) with another mixed-precision setting would be refused, and one with another
    ``train.compile`` would silently keep the first run's. Reset only that part — the process group
    (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if not shared:
        return
    old = shared.get("dynamo_plugin")
    same_dynamo = old is not None and (old.backend, old.mode) == (dynamo.backend, dynamo.mode)
    if str(shared.get("_mixed_precision", mixed_precision)) != mixed_precision or not same_dynamo:
        AcceleratorState._reset_state(reset_partial_state=False)


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _dict_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def stage_step_count(stage: Stage, train: TrainConfig) -> int | None:
    """The stage's optimizer steps, or None to run by epochs: its own step count (a method's per-stage option,
    such as mobilebert's ``layer_steps``), capped by ``train.max_steps`` when both are set, so that
    ``--max-steps N`` shortens every stage of every method; else whichever of the two is set."""
    steps = [n for n in (stage.max_steps, train.max_steps) if n]
    return min(steps) if steps else None


OCCUPIED_HOW = "--resume to continue it, --overwrite to train over it, or give another --output"


def distill(
    config: RunConfig | str | os.PathLike[str] | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = True,
    quiet: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run a recipe end to end and return where the student is and its metrics.

    ``config`` is a RunConfig, a recipe path or a dict; ``overrides`` are ``section.key=value`` strings.
    """
    from ..recipes import load_config

    if not isinstance(config, RunConfig) or overrides:
        config = load_config(config, overrides)
    if not config.train.control:
        return Trainer(config, quiet=quiet, progress=progress).train(resume=resume, overwrite=overwrite)
    from . import control as ctl

    ctl.control_config(config, 1)  # a method without a control fails here, before any training
    trainer = Trainer(config, quiet=quiet, progress=progress)
    result = trainer.train(resume=resume, overwrite=overwrite)
    ctrl_cfg = ctl.control_config(config, ctl.total_steps(result.history, result.metrics))
    trainer.print(f"control run (the same student without distillation) -> {ctrl_cfg.resolved_output_dir()}")
    ctrl = Trainer(ctrl_cfg, quiet=quiet, progress=progress).train(resume=resume)
    if result.main_process:
        result.metrics = ctl.attach(result.output_dir, trainer.task.main_metric, result.metrics, ctrl.metrics)
        trainer.print(result.metrics["control"]["verdict"])
    return result
