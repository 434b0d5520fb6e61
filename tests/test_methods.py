"""Every registered method, parametrized from the registry: a new method is picked up automatically."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from bertdistill import list_methods, load_config
from bertdistill.data.loading import Collator
from bertdistill.training.loop import Trainer, distill
from conftest import method_terms, recipe

# Extra recipe sections a method needs to run on the tiny fixtures.
METHOD_SECTIONS: dict[str, dict] = {
    "pkd": {"method": {"init_from": "teacher"}},
    # the recipe's train.lr, not the paper's per-stage learning rates (too small for a few toy steps)
    "tinybert": {"method": {"intermediate_lr": 1e-3, "prediction_lr": 1e-3}},
}

# For "overfits one batch": with a random teacher, gold labels and soft targets disagree, so a method's
# teacher term alone must be driven down.
OVERFIT_SECTIONS: dict[str, dict] = {
    "kd": {"method": {"alpha": 1.0, "temperature": 1.0}},
    # one stage, so that the 40 logged losses are one objective's
    "tinybert": {"method": {"stages": ["task_intermediate"], "intermediate_lr": 3e-3}},
}

# Methods the generic checks (a classification teacher, SST-2 batches, a sequence-classification output) do not
# apply to, with the reason; each has its own equivalent tests.
EXCLUDED: dict[str, str] = {
    "distilbert": "raw-text pre-training distillation (masked-LM teacher, corpus, DistilBertForMaskedLM "
    "output): tests/test_distilbert.py",
    "mlm": "masked-LM training on raw text, no teacher: tests/test_distilbert.py",
}

METHODS = sorted(set(list_methods()) - set(EXCLUDED))


def _cfg(name, teacher_dir, data_dir, tmp_path, **sections):
    extra = copy.deepcopy(METHOD_SECTIONS.get(name, {}))
    for k, v in sections.items():
        extra.setdefault(k, {}).update(v)
    return load_config(recipe(name, teacher_dir, data_dir, tmp_path / "out", tmp_path / "cache", **extra))


@pytest.mark.parametrize("name", METHODS)
def test_one_step_finite_terms_and_frozen_teacher(name, teacher_dir, sst2_dir, tmp_path):
    tr = Trainer(_cfg(name, teacher_dir, sst2_dir, tmp_path), quiet=True)
    data = tr.datasets["train"]
    batch = Collator(tr.tokenizer.pad_token_id)([data[i] for i in range(8)])
    stage = tr.stages[0]
    before = {k: v.clone() for k, v in tr.teacher.model.state_dict().items()} if tr.teacher else {}
    terms, _, _ = method_terms(tr, batch, stage)
    assert terms and all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    sum(terms.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.bundle.parameters())
    if tr.teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in tr.teacher.model.parameters())
        after = tr.teacher.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert not tr.teacher.model.training


@pytest.mark.parametrize("name", METHODS)
def test_overfits_one_batch(name, teacher_dir, sst2_dir, tmp_path):
    cfg = _cfg(
        name,
        teacher_dir,
        sst2_dir,
        tmp_path,
        **OVERFIT_SECTIONS.get(name, {}),
        data={"max_train_examples": 16},
        train={
            "batch_size": 16,
            "max_steps": 40,
            "lr": 3e-3,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "log_every": 1,
            "save_every": 1000,
        },
    )
    result = distill(cfg, quiet=True)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", METHODS)
def test_every_stage_runs_and_round_trips(name, teacher_dir, sst2_dir, tmp_path):
    cfg = _cfg(name, teacher_dir, sst2_dir, tmp_path, train={"max_steps": 4, "eval_every": 2})
    result = distill(cfg, quiet=True)
    out = result.output_dir
    stages = {r["stage"] for r in result.history if "loss" in r}
    fresh = Trainer(cfg, quiet=True)
    assert stages == {s.name for s in fresh.stages}
    model = AutoModelForSequenceClassification.from_pretrained(out)
    built = fresh.method.export_model(fresh.unwrapped())
    assert type(model) is type(built) and model.config.num_hidden_layers == built.config.num_hidden_layers
    assert load_config(out / "bertdistill.yaml") == cfg
    assert (out / "metrics.json").is_file() and (out / "tokenizer.json").is_file()
