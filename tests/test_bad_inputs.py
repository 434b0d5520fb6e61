"""Every bad input we know the CLI accepts, one row each: the exact one-line message on stderr, exit status 2,
no traceback. docs/reliability.md ("Bad inputs") shows the same table.

A row is (name, command line, recipe edits, message). In the command line ``{recipe}`` is the base tiny kd
recipe (``conftest.recipe``) updated with the row's edits and written to a file. ``{name}`` placeholders in
commands, edits and messages are the fixtures below (tiny random models, small bad data files); nothing
trains, except where a row needs a finished run to resume into (one shared 1-step run).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import BertTokenizerFast, DistilBertConfig, DistilBertForMaskedLM

from bertdistill.cli import main
from bertdistill.config import DataConfig, TrainConfig
from bertdistill.registry import get_method, list_methods
from conftest import (
    SPECIAL,
    WORDS,
    classifier_teacher,
    make_sentence,
    recipe,
    save_teacher,
    write_sst2,
    write_stsb,
)

PREFIX = "bertdistill: configuration error: "
DISTILL = ["distill", "{recipe}", "--quiet", "--set", "train.max_steps=1"]
RESUME = [*DISTILL, "--resume"]
# distilbert on raw text with a masked-LM teacher (its own tiny recipe)
DISTILBERT = {
    "method": {"name": "distilbert", "corpus": ["{corpus}"], "heldout_fraction": 0.1},
    "teacher": {"path": "{mlm_teacher}"},
    "data": {"task": "mlm", "path": None, "max_length": 24},
}


def method_sections(name: str) -> dict[str, Any]:
    """Recipe edits that switch the base recipe to ``name`` at its own tiny test size (``Method.test_config``)."""
    sections = copy.deepcopy(dict(get_method(name).test_config.sections))
    sections["method"] = {"name": name, **sections.get("method", {})}
    return sections


BILSTM, MOBILEBERT = method_sections("bilstm"), method_sections("mobilebert")
CUSTOM = {"task": "custom", "text_fields": ["text"], "labels": ["neg", "pos"], "eval_split": ""}


def row(name: str, argv: list[str], edits: dict[str, Any] | None, message: str) -> Any:
    return pytest.param(argv, edits or {}, message, id=name)


# fmt: off
CASES = [
    # ---- recipe and overrides
    row("unknown method", DISTILL, {"method": {"name": "kdd"}},
        "unknown method 'kdd' (did you mean 'kd'?); known methods: {methods}"),
    row("unknown task", DISTILL, {"data": {"task": "sst"}},
        "data.task: unknown task 'sst' (did you mean 'sst2'?); known GLUE tasks: ['cola', 'mnli', 'mrpc', 'qnli', "
        "'qqp', 'rte', 'sst2', 'stsb', 'wnli'] (raw text: ['mlm', 'multitask', 'translation']). For your own data "
        "set `data.task: custom` with `data.text_fields`, `data.label_field` and `data.labels` (or "
        "`data.regression: true`)."),
    row("unknown key", [*DISTILL, "--set", "train.lrr=3e-5"], None,
        "unknown key(s) ['lrr'] in train (did you mean 'lr'?); valid keys: {train_keys}"),
    row("unknown top-level key", DISTILL, {"ouput_dir": "x"},
        "unknown top-level key(s) ['ouput_dir'] (did you mean 'output_dir'?); valid keys: ['method', 'teacher', 'student', "
        "'data', 'train', 'output_dir']"),
    row("wrong type (number)", [*DISTILL, "--set", "train.lr=fast"], None,
        "train.lr: expected a number, got 'fast'"),
    row("wrong type (integer)", [*DISTILL, "--set", "train.batch_size=1.5"], None,
        "train.batch_size: expected an integer, got '1.5'"),
    row("wrong type (section)", [*DISTILL, "--set", "train=3"], None, "train: expected a mapping, got '3'"),
    row("value out of range", [*DISTILL, "--set", "train.batch_size=0"], None,
        "train.batch_size must be >= 1, got 0"),
    row("bad choice", [*DISTILL, "--set", "data.bad_rows=maybe"], None,
        "data.bad_rows must be error or skip, got 'maybe'"),
    row("unknown tracker", [*DISTILL, "--set", "train.log_with=tensorbord"], None,
        "train.log_with: unknown tracker 'tensorbord' (did you mean 'tensorboard'?); valid: aim, tensorboard, wandb, "
        "trackio, comet_ml, mlflow, clearml, dvclive, swanlab"),
    row("override without =", [*DISTILL, "--set", "train.lr"], None,
        "override 'train.lr' must look like section.key=value (e.g. train.lr=3e-5)"),
    row("recipe not found", ["distill", "{tmp}/nope.yaml"], None,
        "recipe '{tmp}/nope.yaml' not found: no such file, and no shipped recipe of that name "
        "(`bertdistill recipes` lists them all)"),
    row("recipe name misspelt", ["distill", "kd/sts2"], None,
        "recipe 'kd/sts2' not found: no such file, and no shipped recipe of that name; close names: kd/sst2, "
        "pkd/sst2 (`bertdistill recipes` lists them all)"),
    row("distill without a recipe", ["distill", "--task", "sst2"], None,
        "distill: give a RECIPE (a YAML file or a shipped name, see `bertdistill recipes`), or --method and "
        "--task (see --help)"),
    row("recipe and --method", ["distill", "kd/sst2", "--method", "pkd"], None,
        "distill: give a RECIPE or --method, not both (--set changes a recipe's method)"),
    row("recipe not YAML", ["distill", "{tmp}/broken.yaml"], None,
        "{tmp}/broken.yaml:2:1: not valid YAML: expected ',' or '}', but got '<stream end>'"),
    row("recipe not a mapping", ["distill", "{tmp}/list.yaml"], None,
        "{tmp}/list.yaml: a recipe must be a mapping of sections, got list"),
    row("finetune without a model", ["finetune", "--task", "sst2"], None,
        "finetune: give a RECIPE, or --model and --task (see --help)"),
    # ---- missing files
    row("teacher not found", DISTILL, {"teacher": {"path": "{tmp}/no-teacher"}},
        "cannot load '{tmp}/no-teacher' ({tmp}/no-teacher): not a local dir, and the HF hub could not provide it "
        "(offline? misspelt name?). Details: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
        "'{tmp}/no-teacher'. Use `repo_type` argument if needed."),
    row("data path not found", DISTILL, {"data": {"path": "{tmp}/no-data"}},
        "data.path '{tmp}/no-data' does not exist"),
    row("split file not found", DISTILL, {"data": {"eval_split": "validation"}},
        "no validation file in {sst2}: expected validation.tsv, validation.jsonl or validation.csv"),
    row("model dir not found (evaluate)", ["evaluate", "{tmp}/no-model"], None,
        "cannot load '{tmp}/no-model' ({tmp}/no-model): not a local dir, and the HF hub could not provide it "
        "(offline? misspelt name?). Details: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
        "'{tmp}/no-model'. Use `repo_type` argument if needed."),
    row("unknown task (evaluate)", ["evaluate", "{teacher}", "--task", "sst3"], None,
        "data.task: unknown task 'sst3' (did you mean 'sst2'?); known GLUE tasks: ['cola', 'mnli', 'mrpc', "
        "'qnli', 'qqp', 'rte', 'sst2', 'stsb', 'wnli'] (raw text: ['mlm', 'multitask', 'translation']). For your "
        "own data set `data.task: custom` with `data.text_fields`, `data.label_field` and `data.labels` (or "
        "`data.regression: true`)."),
    row("push: not a finished run", ["push", "{tmp}", "--repo-id", "me/x"], None,
        "{tmp} is not a finished bertdistill run (needs metrics.json, bertdistill.yaml and the model weights, "
        "written when `bertdistill distill` completes)"),
    row("push: repo id without an owner", ["push", "{finished}", "--repo-id", "kd-sst2"], None,
        "--repo-id must look like USER/NAME, got 'kd-sst2'"),
    # ---- data files
    row("TSV row with a missing field", DISTILL, {"data": {"path": "{bad}/missing_field"}},
        "{bad}/missing_field/train.tsv:4: 1 tab-separated field(s), expected at least 2; fix the row, or set "
        "data.bad_rows: skip to drop such rows"),
    row("non-UTF-8 byte", DISTILL, {"data": {"path": "{bad}/latin1"}},
        "{bad}/latin1/train.tsv:3: byte 0xe9 at column 4 is not UTF-8; re-encode the file as UTF-8 (e.g. "
        "`iconv -f latin1 -t utf-8 train.tsv > fixed.tsv`)"),
    row("label out of range", DISTILL, {"data": {"path": "{bad}/label_3"}},
        "{bad}/label_3/train.tsv:4: task 'sst2': label '3' is not one of ['0', '1']; check the label column of "
        "your data (or the task's `labels`); fix the row, or set data.bad_rows: skip to drop such rows"),
    row("label not in the label set", DISTILL, {"data": {"path": "{bad}/label_name"}},
        "{bad}/label_name/train.tsv:4: task 'sst2': label 'positive' is not one of ['0', '1']; check the label "
        "column of your data (or the task's `labels`); fix the row, or set data.bad_rows: skip to drop such rows"),
    row("TSV with a header only", DISTILL, {"data": {"path": "{bad}/header_only"}},
        "{bad}/header_only/train.tsv: no examples read; is it a sst2 TSV file?"),
    row("empty TSV", DISTILL, {"data": {"path": "{bad}/empty"}}, "{bad}/empty/train.tsv is empty"),
    row("CSV row with an extra field", DISTILL, {"data": {**CUSTOM, "path": "{bad}/extra.csv"}},
        "{bad}/extra.csv:3: 3 field(s), the header has 2 ['text', 'label']; fix the row, or set data.bad_rows: "
        "skip to drop such rows"),
    row("CSV without the text column", DISTILL, {"data": {**CUSTOM, "path": "{bad}/extra.csv",
                                                         "text_fields": ["sentence"]}},
        "{bad}/extra.csv: column(s) ['sentence'] not found; columns are ['text', 'label']"),
    row("CSV with a header only", DISTILL, {"data": {**CUSTOM, "path": "{bad}/header_only.csv"}},
        "{bad}/header_only.csv: no rows"),
    row("regression label not a number", DISTILL, {"data": {**CUSTOM, "path": "{bad}/score.csv", "labels": [],
                                                            "regression": True}},
        "{bad}/score.csv:3: task 'custom': label 'high' is not a number (a regression target); fix the row, or "
        "set data.bad_rows: skip to drop such rows"),
    row("JSONL line not JSON", DISTILL, {"data": {**CUSTOM, "path": "{bad}/broken.jsonl"}},
        "{bad}/broken.jsonl:2: not valid JSON (Expecting ',' delimiter, column 1); fix the row, or set "
        "data.bad_rows: skip to drop such rows"),
    row("JSONL line not an object", DISTILL, {"data": {**CUSTOM, "path": "{bad}/list.jsonl"}},
        "{bad}/list.jsonl:2: expected a JSON object, got list; fix the row, or set data.bad_rows: skip to drop "
        "such rows"),
    row("JSONL line without the text field", DISTILL, {"data": {**CUSTOM, "path": "{bad}/no_text.jsonl"}},
        "{bad}/no_text.jsonl:2: no value for ['text']; fix the row, or set data.bad_rows: skip to drop such rows"),
    row("custom task without labels", DISTILL, {"data": {**CUSTOM, "path": "{bad}/extra.csv", "labels": []}},
        "data: custom task 'custom': a classification task needs `labels` (at least 2 names, in index order); "
        "for a real-valued target set `regression: true`"),
    row("metric that does not fit the task", DISTILL,
        {"data": {**CUSTOM, "path": "{bad}/good.csv", "labels": ["neg", "pos", "mixed"], "metrics": ["f1"]}},
        "data: custom task 'custom': f1 is the binary F1 of the second label; this task has 3 labels (use "
        "macro_f1)"),
    row("metrics for a GLUE task", DISTILL, {"data": {"metrics": ["macro_f1"]}},
        "data.metrics applies to custom tasks; 'sst2' is scored by its official metrics (for other ones, use "
        "data.task: custom with its files and fields)"),
    row("predict input not found", ["predict", "{teacher}", "{tmp}/no-input.txt"], None,
        "[Errno 2] No such file or directory: '{tmp}/no-input.txt'"),
    # ---- models that do not fit the method or the data
    row("sequence longer than the positions", DISTILL, {"data": {"max_length": 100}},
        "data.max_length 100 is longer than the teacher's 64 positions ({teacher}); set data.max_length to at "
        "most 64"),
    row("student layers the teacher lacks", DISTILL, {"student": {"layers": [0, 7]}},
        "student.layers / student.num_layers: layers [0, 7] are not valid 0-based layer numbers of a 4-layer "
        "teacher"),
    row("student deeper than the teacher", DISTILL, {"student": {"num_layers": 9}},
        "student.layers / student.num_layers: the student has more layers (9) than the teacher (4); choose "
        "student.num_layers <= the teacher's depth"),
    row("student embeds fewer ids than the vocabulary (kd)", DISTILL,
        {"student": {"init": "pretrained", "path": "{small_vocab}"}},
        "the student embeds 45 token ids, the teacher's tokenizer has 49: kd feeds the student the teacher's "
        "token ids, so both must share one vocabulary; build the student from the teacher (student.init: teacher "
        "or random)"),
    row("student with another tokenizer (tinybert)", DISTILL,
        {"method": {"name": "tinybert"}, "student": {"init": "pretrained", "path": "{other_vocab}"}},
        "student.path '{other_vocab}' has its own vocabulary (49 tokens, the teacher's tokenizer 49; e.g. "
        "differing (token, id) pairs [('good', 5), ('x0', 5), ('great', 6)]): tinybert feeds the student the "
        "teacher's token ids, so both must share one vocabulary; use a student pre-trained with the teacher's "
        "tokenizer, or student.init: teacher / random"),
    row("vocabulary mismatch (distilbert)", DISTILL,
        {**DISTILBERT, "student": {"init": "pretrained", "path": "{small_vocab_mlm}"}},
        "student '{small_vocab_mlm}' does not fit the teacher (vocabulary 45 vs the teacher's 49): distilbert's "
        "cosine and soft-target losses compare hidden states and vocabulary logits without a projection; use "
        "student.init: teacher or random (the teacher's widths)"),
    row("width mismatch without projection (distilbert)", DISTILL,
        {**DISTILBERT, "student": {"init": "pretrained", "path": "{wide_mlm}"}},
        "student '{wide_mlm}' does not fit the teacher (width 48 vs the teacher's 32): distilbert's cosine and "
        "soft-target losses compare hidden states and vocabulary logits without a projection; use student.init: "
        "teacher or random (the teacher's widths)"),
    row("kd hidden_map beyond the layers", DISTILL, {"method": {"hidden_weight": 1.0, "hidden_map": [[0, 9]]}},
        "method.hidden_map [[0, 9]]: a pair is [student, teacher] hidden-state indices, 0 (embeddings) to 2 for the "
        "student and 4 for the teacher"),
    row("width mismatch without projection (kd hidden MSE)", DISTILL,
        {"method": {"hidden_weight": 1.0},
         "student": {"init": "random", "config_overrides": {"hidden_size": 48, "num_attention_heads": 4}}},
        "kd's hidden MSE needs student and teacher of the same width (48 vs 32); use tinybert for projections"),
    row("head-count mismatch (tinybert attention)", DISTILL,
        {"method": {"name": "tinybert"},
         "student": {"init": "random", "config_overrides": {"hidden_size": 48, "num_attention_heads": 3}}},
        "the student has 3 attention heads, the teacher 4: the attention loss needs equal counts or a student "
        "count that divides the teacher's (teacher heads are averaged in groups)"),
    row("teacher without a classifier (kd)", DISTILL, {"teacher": {"path": "{encoder}"}},
        "teacher '{encoder}' has no trained head for the logits this method reads (the checkpoint lacks "
        "['classifier.bias', 'classifier.weight'], so they would be random); fine-tune it on the task first "
        "(`bertdistill finetune --model {encoder} --task TASK -o DIR`) and set teacher.path to DIR"),
    row("teacher without an MLM head (distilbert)", DISTILL, {**DISTILBERT, "teacher": {"path": "{encoder}"}},
        "teacher '{encoder}' has no trained masked-LM head (the checkpoint lacks ['cls.predictions.bias', "
        "'cls.predictions.decoder.bias', 'cls.predictions.transform.LayerNorm.bias', "
        "'cls.predictions.transform.LayerNorm.weight'] …), so AutoModelForMaskedLM would give it random head "
        "weights. Train the head first: `bertdistill finetune --task mlm --model {encoder} --corpus FILE -o DIR` "
        "(add --train-body to adapt the encoder too), then set teacher.path to DIR."),
    # ---- a teacher fine-tuned for another task: caught before training, for every kind of student
    row("teacher of another task (kd)", DISTILL, {"teacher": {"path": "{teacher3}"}},
        "teacher '{teacher3}' has 3 output(s) but task 'sst2' needs 2 (['0', '1']); set teacher.path to a model fine-tuned on this task (`bertdistill finetune --task TASK ...`)"),
    row("teacher of another task (fastbert)", DISTILL, {"method": {"name": "fastbert"}, "teacher": {"path": "{teacher3}"}},
        "teacher '{teacher3}' has 3 output(s) but task 'sst2' needs 2 (['0', '1']); set teacher.path to a model fine-tuned on this task (`bertdistill finetune --task TASK ...`)"),
    row("teacher of another task (bilstm)", DISTILL, {**BILSTM, "teacher": {"path": "{teacher3}"}},
        "teacher '{teacher3}' has 3 output(s) but task 'sst2' needs 2 (['0', '1']); set teacher.path to a model fine-tuned on this task (`bertdistill finetune --task TASK ...`)"),
    row("teacher of another task (mobilebert)", DISTILL, {**MOBILEBERT, "teacher": {"path": "{teacher3}"}},
        "teacher '{teacher3}' has 3 output(s) but task 'sst2' needs 2 (['0', '1']); set teacher.path to a model fine-tuned on this task (`bertdistill finetune --task TASK ...`)"),
    row("regression teacher on a classification task", DISTILL, {"teacher": {"path": "{teacher_reg}"}},
        "teacher '{teacher_reg}' has 1 output(s) but task 'sst2' needs 2 (['0', '1']); set teacher.path to a model fine-tuned on this task (`bertdistill finetune --task TASK ...`)"),
    row("classifier teacher on a regression task", DISTILL,
        {"teacher": {"path": "{teacher3}"}, "data": {"task": "stsb", "path": "{stsb}"}},
        "teacher '{teacher3}' has 3 output(s) but task 'stsb' needs 1 (a regression score); set teacher.path to a model fine-tuned on this task (`bertdistill finetune --task TASK ...`)"),
    row("teacher with the task's labels in another order", DISTILL,
        {"teacher": {"path": "{teacher_swapped}"}, "data": {**CUSTOM, "path": "{bad}/good.csv"}},
        "teacher '{teacher_swapped}' orders its labels ['pos', 'neg'], task 'custom' ['neg', 'pos']: its logits "
        "would be read against the wrong classes (e.g. roberta-large-mnli against GLUE MNLI). For your own data "
        "set data.labels in the teacher's order; else use a teacher fine-tuned with the task's order "
        "(`bertdistill finetune`)"),
    row("fastbert on a regression task", DISTILL,
        {"method": {"name": "fastbert"}, "teacher": {"path": "{teacher_reg}"}, "data": {"task": "stsb", "path": "{stsb}"}},
        "fastbert exits on classification entropy; it does not apply to a regression task ('stsb'): distil it with "
        "kd, pkd or tinybert"),
    # ---- writing over a finished run or model
    row("a new run into a finished run's dir", [*DISTILL, "--set", "output_dir={finished}"], None,
        "--output {finished} already holds a run or a model (model weights, metrics.json, checkpoints); this "
        "run would write over it: --resume to continue it, --overwrite to train over it, or give another --output"),
    row("export into a model dir", ["export", "{finished}", "-o", "{teacher}"], None,
        "--output {teacher} already holds a run or a model (model weights); the export would write over it: "
        "give a new --output"),
    row("export-task into a model dir", ["export-task", "{finished}", "sst2", "-o", "{teacher}"], None,
        "--output {teacher} already holds a run or a model (model weights); export-task would write over it: "
        "give a new --output"),
    row("evaluate a model of another task", ["evaluate", "{teacher3}", "--task", "sst2", "--data", "{sst2}"], None,
        "model '{teacher3}' has 3 output(s) but task 'sst2' needs 2 (['0', '1']); evaluate it on the task it was "
        "trained for (--task, --data), or fine-tune it on this one"),
    row("evaluate a model without a trained head", ["evaluate", "{encoder}", "--task", "sst2", "--data", "{sst2}"],
        None,
        "model '{encoder}' lacks trained weights for this task's outputs (['classifier.bias', 'classifier.weight'] are "
        "not in its checkpoint, so they would be random); fine-tune it first (`bertdistill finetune --model "
        "{encoder} --task TASK -o DIR`)"),
    row("config_overrides value of the wrong type", DISTILL,
        {"student": {"init": "random", "config_overrides": {"hidden_size": "big"}}},
        "student.config_overrides.hidden_size: TypeError: Field 'hidden_size' expected int, got str (value: 'big')"),
    row("evaluate an unfinished run", ["evaluate", "{unfinished}"], None,
        "cannot load '{unfinished}': it is an unfinished bertdistill kd run (no final model; its checkpoints are "
        "under {unfinished}/checkpoints): finish it with `bertdistill distill ... -o {unfinished} --resume`"),
    row("an unfinished run as teacher", DISTILL, {"teacher": {"path": "{unfinished}"}},
        "cannot load '{unfinished}' as AutoModelForSequenceClassification: it is an unfinished bertdistill kd run "
        "(no final model; its checkpoints are under {unfinished}/checkpoints): finish it with `bertdistill distill "
        "... -o {unfinished} --resume`. Details: Unrecognized model in {unfinished}. Should have a `model_type` key "
        "in its config.json."),
    row("generate over its own input", ["generate", "{finished}", "{tmp}/lines.txt", "-o", "{tmp}/lines.txt"], None,
        "generate: --output is the input file, which it would replace; give another file"),
    row("finetune with a distillation recipe", ["finetune", "kd/sst2"], None,
        "finetune: kd/sst2 is a kd recipe; `bertdistill finetune` runs finetune (or mlm) recipes: run this one with "
        "`bertdistill distill`"),
    row("empty output_dir", DISTILL, {"output_dir": ""},
        "output_dir is empty; give a dir (or leave it unset for runs/<method>-<task>)"),
    row("augment over the data it reads", ["augment", "--task", "sst2", "--data", "{sst2}", "--mlm", "{mlm_teacher}",
                                           "-o", "{sst2}/train.tsv", "--overwrite"], None,
        "augment: --output {sst2}/train.tsv is the data it reads; give another file"),
    row("augment into an existing file", ["augment", "--task", "sst2", "--data", "{sst2}", "--mlm", "{mlm_teacher}",
                                          "-o", "{tmp}/lines.txt"], None,
        "augment: --output {tmp}/lines.txt exists; give a new file, or --overwrite to replace it (never the data it "
        "reads)"),
    row("augment a split given as a path", ["augment", "--task", "sst2", "--data", "{sst2}", "--mlm", "{mlm_teacher}",
                                            "--split", "../sst2/dev", "-o", "{tmp}/aug.tsv"], None,
        "augment reads a task's training split by name (got --split '../sst2/dev'); point --data at the task's "
        "dir, and never augment evaluation data"),
    row("augment with a model that is not a masked LM", ["augment", "--task", "sst2", "--data", "{sst2}", "--mlm",
                                                          "{teacher}", "-o", "{tmp}/aug.tsv"], None,
        "augment --mlm '{teacher}' has no trained masked-LM head (its checkpoint lacks ['cls.predictions.bias', "
        "'cls.predictions.decoder.bias', 'cls.predictions.transform.LayerNorm.bias'] …, so its word predictions "
        "would be random): give a masked LM"),
    row("compare models of different tasks", ["compare", "{finished}", "{stsb_model}"], None,
        "these models were trained on different tasks (sst2, stsb): one table compares them on one task; give "
        "--task (and --data) to score them all on it, or compare each against its own teacher"),
    row("corpus not UTF-8 (distilbert)", DISTILL, {**DISTILBERT, "method": {**DISTILBERT["method"],
                                                                            "corpus": ["{tmp}/latin1.txt"]}},
        "{tmp}/latin1.txt:2: byte 0xe9 at column 7 is not UTF-8; re-encode the file as UTF-8 (e.g. `iconv -f "
        "latin1 -t utf-8 latin1.txt > fixed.txt`)"),
    # ---- numbers and recipes that would be ignored or misread
    row("duplicate key in a recipe", ["distill", "{tmp}/dup.yaml"], None,
        "{tmp}/dup.yaml:3: duplicate key 'train': YAML keeps only the last one, so the first would be ignored "
        "without a word; merge them into one"),
    row("max_steps 0", [*DISTILL, "--set", "train.max_steps=0"], None,
        "train.max_steps must be >= 1 (or null to run by train.epochs), got 0"),
    row("lr not a number", [*DISTILL, "--set", "train.lr=nan"], None, "train.lr must be a number > 0, got nan"),
    row("adam_betas with one value", [*DISTILL, "--set", "train.adam_betas=[0.9]"], None,
        "train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got [0.9]"),
    row("malformed --set value", [*DISTILL, "--set", "train.adam_betas=[0.9,"], None,
        "cannot parse value '[0.9,' as YAML: expected the node content, but found '<stream end>'"),
    row("dropout outside [0, 1) (bilstm)", DISTILL, {**BILSTM, "method": {**BILSTM["method"], "dropout": 2.0}},
        "method.dropout must be in [0, 1), got 2.0"),
    row("a stage's own lr 0 (fastbert)", DISTILL, {"method": {"name": "fastbert", "distill_lr": 0.0}},
        "stage 'self_distill': lr 0.0: a stage's epochs, steps, lr and batch size (set by the method's config, "
        "`bertdistill recipes NAME` shows them) must be > 0 and its warm-up in [0, 1)"),
    row("config_overrides field misspelt", DISTILL,
        {"student": {"init": "random", "config_overrides": {"hidden_sizee": 64}}},
        "student.config_overrides: ['hidden_sizee'] is not a field of BertConfig (did you mean 'hidden_size'?)"),
    row("a task teacher with another vocabulary (mtdnn_kd)", DISTILL,
        {"method": {"name": "mtdnn_kd", "tasks": [{"task": "sst2", "path": "{sst2}", "teachers": ["{other_vocab}"]}]},
         "data": {"task": "multitask", "path": None}},
        "stage 'train': teacher '{other_vocab}' has another vocabulary than the run's tokenizer (49 against 49 "
        "tokens; e.g. differing (token, id) pairs [('good', 5), ('x0', 5), ('great', 6)]): it would read the "
        "run's token ids as other tokens; every teacher of a run must share one tokenizer"),
    row("ensemble members with other vocabularies", ["evaluate", "{teacher}", "{other_vocab}", "--task", "sst2",
                                                     "--data", "{sst2}"], None,
        "an ensemble's members must share a tokenizer: {other_vocab} and {teacher} differ (49 against 49 tokens; "
        "e.g. differing (token, id) pairs [('good', 5), ('x0', 5), ('great', 6)])"),
    # ---- resuming into another run's output dir
    row("resume with another method", RESUME, {"method": {"name": "pkd", "init_from": "teacher"},
                                               "output_dir": "{finished}"},
        "--resume: {finished} holds a run with method.name 'kd', this recipe has 'pkd'; resume with the recipe "
        "that made it ({finished}/bertdistill.yaml) or write this run to another --output"),
    row("resume with another student", RESUME, {"student": {"num_layers": 3}, "output_dir": "{finished}"},
        "checkpoint {finished}/checkpoints/step-0000001 does not match the model built from the recipe (missing "
        "['bert.encoder.layer.2.attention.output.LayerNorm.bias', "
        "'bert.encoder.layer.2.attention.output.LayerNorm.weight', 'bert.encoder.layer.2.attention.output.dense.bias', "
        "'bert.encoder.layer.2.attention.output.dense.weight', 'bert.encoder.layer.2.attention.self.key.bias'], "
        "unexpected []); resume with the recipe that wrote it, or write this run to another --output"),
]
# fmt: on

MESSAGE_PREFIXES = {"predict input not found": "bertdistill: "}
"""Rows whose message is not a configuration error (a missing input file: ``bertdistill: <OSError>``)."""


def _fill(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every ``{name}`` replaced (in strings, lists and dicts)."""
    if isinstance(value, str):
        for k, v in names.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def _update(base: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in edits.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _write_bad_data(root: Path, good: list[str]) -> None:
    """Small data files, each with one bad row (or none at all)."""
    dev = "\n".join(good) + "\n"

    def tsv(name: str, text: str | bytes) -> None:
        d = root / name
        d.mkdir(parents=True)
        (d / "train.tsv").write_bytes(text if isinstance(text, bytes) else text.encode())
        (d / "dev.tsv").write_text(dev)

    head, body = good[0], good[1:]
    tsv("missing_field", "\n".join([head, *body[:2], "a sentence and no label", *body[2:]]) + "\n")
    tsv("latin1", ("\n".join([head, body[0]]) + "\n").encode() + b"caf\xe9 film\t1\n")
    tsv("label_3", "\n".join([head, *body[:2], "a good film\t3", *body[2:]]) + "\n")
    tsv("label_name", "\n".join([head, *body[:2], "a good film\tpositive", *body[2:]]) + "\n")
    tsv("header_only", head + "\n")
    tsv("empty", "")
    (root / "good.csv").write_text("text,label\ngood film,pos\nbad film,neg\nfine plot,pos\ndull plot,neg\n")
    (root / "extra.csv").write_text("text,label\ngood film,pos\nbad film,neg,extra\n")
    (root / "header_only.csv").write_text("text,label\n")
    (root / "score.csv").write_text("text,label\ngood film,4.5\nbad film,high\n")
    (root / "broken.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"\n')
    (root / "list.jsonl").write_text('{"text": "good", "label": "pos"}\n["bad", "neg"]\n')
    (root / "no_text.jsonl").write_text('{"text": "good", "label": "pos"}\n{"label": "neg"}\n')


@pytest.fixture(scope="module")
def names(
    tmp_path_factory, _teacher_session, tiny_tokenizer_dir, mlm_teacher_dir, encoder_dir, glove_file
) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad_inputs")
    sst2 = write_sst2(tmp / "sst2", n_train=16, n_dev=8)
    _write_bad_data(tmp / "bad", (sst2 / "train.tsv").read_text().splitlines()[:6])
    (tmp / "broken.yaml").write_text("method: {name: kd\n")
    (tmp / "list.yaml").write_text("- kd\n")
    (tmp / "lines.txt").write_text("ein hund\n")
    (tmp / "latin1.txt").write_bytes(b"a good film\nun caf\xe9 noir\n")
    (tmp / "dup.yaml").write_text("method: {name: kd}\ntrain: {lr: 1.0e-4}\ntrain: {epochs: 1}\n")
    rng = random.Random(0)
    (tmp / "corpus.txt").write_text("\n".join(make_sentence(rng, i % 2) for i in range(40)) + "\n")

    # a classifier with 45 token ids (fewer than the tiny tokenizer's 49); one with 49 ids of other tokens
    other = tmp / "other_tok"
    vocab = SPECIAL + [f"x{i}" for i in range(len(WORDS) + 20)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(other)
    save_teacher(classifier_teacher(vocab_size=45), tmp / "small_vocab", tiny_tokenizer_dir)
    save_teacher(classifier_teacher(), tmp / "other_vocab", other)
    # classifiers of other tasks: three classes; one regression score
    save_teacher(classifier_teacher(num_labels=3), tmp / "teacher3", tiny_tokenizer_dir)
    save_teacher(classifier_teacher(num_labels=1), tmp / "teacher_reg", tiny_tokenizer_dir)
    swapped = {"id2label": {0: "pos", 1: "neg"}, "label2id": {"pos": 0, "neg": 1}}
    save_teacher(classifier_teacher(**swapped), tmp / "teacher_swapped", tiny_tokenizer_dir)
    torch.manual_seed(0)
    shape = {"n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 64}
    for name, kw in (
        ("small_vocab_mlm", {"vocab_size": 45, "dim": 32}),
        ("wide_mlm", {"vocab_size": 49, "dim": 48}),
    ):
        save_teacher(DistilBertForMaskedLM(DistilBertConfig(**shape, **kw)), tmp / name, tiny_tokenizer_dir)

    names = {
        "tmp": str(tmp),
        "bad": str(tmp / "bad"),
        "sst2": str(sst2),
        "stsb": str(write_stsb(tmp / "stsb", n_train=16, n_dev=8)),
        "teacher3": str(tmp / "teacher3"),
        "teacher_reg": str(tmp / "teacher_reg"),
        "teacher_swapped": str(tmp / "teacher_swapped"),
        "glove": str(glove_file),
        "teacher": str(_teacher_session),
        "mlm_teacher": str(mlm_teacher_dir),
        "encoder": str(encoder_dir),
        "corpus": str(tmp / "corpus.txt"),
        "small_vocab": str(tmp / "small_vocab"),
        "other_vocab": str(tmp / "other_vocab"),
        "small_vocab_mlm": str(tmp / "small_vocab_mlm"),
        "wide_mlm": str(tmp / "wide_mlm"),
        "finished": str(tmp / "finished"),
        "unfinished": str(tmp / "unfinished"),
        "stsb_model": str(tmp / "stsb_model"),
        "methods": str(sorted(list_methods())),
        "train_keys": str([f.name for f in dataclasses.fields(TrainConfig)]),
    }
    # the finished run that the resume rows point at (one step)
    base = _base(names)
    assert main(["distill", _write(tmp / "finished.yaml", {**base, "output_dir": names["finished"]}), "--quiet",
                 "--set", "train.max_steps=1"]) == 0  # fmt: skip
    # the finished run as if trained on STS-B (its recipe says so): a student of another task
    stsb_model = Path(names["stsb_model"])
    shutil.copytree(names["finished"], stsb_model, ignore=shutil.ignore_patterns("checkpoints"))
    rec = yaml.safe_load((stsb_model / "bertdistill.yaml").read_text())
    rec["data"]["task"] = "stsb"
    (stsb_model / "bertdistill.yaml").write_text(yaml.safe_dump(rec))
    # a run killed before its final model: its recipe and a checkpoint, no weights at the top
    unfinished = Path(names["unfinished"])
    (unfinished / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        Path(names["finished"]) / "checkpoints" / "step-0000001", unfinished / "checkpoints" / "step-0000001"
    )
    shutil.copy(Path(names["finished"]) / "bertdistill.yaml", unfinished / "bertdistill.yaml")
    return names


def _base(names: dict[str, str]) -> dict[str, Any]:
    tmp = Path(names["tmp"])
    return recipe("kd", Path(names["teacher"]), Path(names["sst2"]), tmp / "out", tmp / "cache")


def _write(path: Path, rec: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(rec))
    return str(path)


@pytest.mark.parametrize(("argv", "edits", "message"), CASES)
def test_bad_input_gives_one_clear_line(request, names, argv, edits, message, capsys, tmp_path):
    rec = _update(_base(names), _fill(edits, names))
    argv = [_write(tmp_path / "recipe.yaml", rec) if a == "{recipe}" else _fill(a, names) for a in argv]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    prefix = MESSAGE_PREFIXES.get(request.node.callspec.id, PREFIX)
    assert (rc, err.splitlines()) == (2, [prefix + _fill(message, names)])


def test_every_row_has_a_unique_name():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


def test_skipped_rows_are_counted_in_metrics_and_the_summary(names, capsys, tmp_path):
    """``data.bad_rows: skip`` drops the malformed rows and says so even with --quiet: on stderr, in the printed
    summary and in metrics.json."""
    out = tmp_path / "run"
    rec = _update(_base(names), {"data": {"path": f"{names['bad']}/missing_field", "bad_rows": "skip"},
                                 "output_dir": str(out)})  # fmt: skip
    capsys.readouterr()
    assert main(["distill", _write(tmp_path / "r.yaml", rec), "--quiet", "--set", "train.max_steps=1"]) == 0
    captured = capsys.readouterr()
    train_file = f"{names['bad']}/missing_field/train.tsv"
    expected = {"skipped_rows": 1, "skipped_rows_by_file": {train_file: 1}}
    assert json.loads((out / "metrics.json").read_text())["data"] == expected
    assert json.loads(captured.out)["data"] == expected
    assert captured.err.splitlines() == [
        f"bertdistill: skipped 1 malformed data row(s) (data.bad_rows: skip); see {out / 'metrics.json'} "
        "(data.skipped_rows_by_file)"
    ]


def test_rows_are_errors_by_default_for_glue_and_custom_data():
    assert DataConfig().bad_rows == "error" and DataConfig(task="custom").bad_rows == "error"


def test_label_order_check_catches_roberta_large_mnli_and_passes_placeholders():
    """Our MNLI orders its classes contradiction, entailment, neutral (GLUE's files, BERT's run_classifier);
    roberta-large-mnli names its outputs CONTRADICTION, NEUTRAL, ENTAILMENT, and the hub's GLUE dataset orders them
    entailment, neutral, contradiction: both refused. Placeholder names (LABEL_0 …), other names, and the task's
    own order (any case) pass."""
    from transformers import BertConfig, BertForSequenceClassification

    from bertdistill.checks import check_teacher_labels
    from bertdistill.config import ConfigError
    from bertdistill.data.tasks import get_task

    mnli = get_task("mnli")
    assert list(mnli.labels) == ["contradiction", "entailment", "neutral"]

    def teacher(names):
        cfg = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                         vocab_size=10, id2label=dict(enumerate(names)))  # fmt: skip
        return BertForSequenceClassification(cfg)

    for names in (["CONTRADICTION", "NEUTRAL", "ENTAILMENT"], ["entailment", "neutral", "contradiction"]):
        with pytest.raises(ConfigError, match="orders its labels .* against the wrong classes"):
            check_teacher_labels(teacher(names), mnli)
    for names in (
        ["LABEL_0", "LABEL_1", "LABEL_2"],
        ["Contradiction", "Entailment", "Neutral"],
        ["no", "yes", "maybe"],
    ):
        check_teacher_labels(teacher(names), mnli)
