import re

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

from bertdistill import load_config
from bertdistill.config import ConfigError
from bertdistill.methods.pkd import patient_loss, pkd_teacher_layers
from bertdistill.training.loop import Trainer, distill
from conftest import method_terms, recipe, save_teacher, tiny_bert_config

NARROW = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def six_layer_teacher_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random 6-layer BERT classifier: 6 → 3 has two intermediate student layers to map."""
    torch.manual_seed(2)
    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=6))
    return save_teacher(model, tmp_path_factory.mktemp("teacher6"), tiny_tokenizer_dir)


@pytest.mark.parametrize(
    ("n_t", "n_s", "strategy", "expected"),
    [
        (12, 6, "skip", [2, 4, 6, 8, 10]),
        (12, 6, "last", [7, 8, 9, 10, 11]),
        (12, 3, "skip", [4, 8]),
        (12, 3, "last", [10, 11]),  # the official 3-layer runs
        (6, 3, "skip", [2, 4]),
        (6, 3, "last", [4, 5]),
    ],
)
def test_patient_layer_indices(n_t, n_s, strategy, expected):
    assert pkd_teacher_layers(n_t, n_s, strategy) == expected


def test_patient_layer_errors():
    with pytest.raises(ConfigError, match="multiple"):
        pkd_teacher_layers(6, 4, "skip")
    with pytest.raises(ConfigError, match="2 <= student layers"):
        pkd_teacher_layers(6, 1, "last")


def test_patient_loss_is_normalised():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    base = patient_loss(s, t)
    assert patient_loss(s * 7.5, t).item() == pytest.approx(base.item(), rel=1e-5)
    assert patient_loss(s, t * 0.01).item() == pytest.approx(base.item(), rel=1e-5)
    assert patient_loss(s, s * 3).item() == pytest.approx(0.0, abs=1e-7)
    sn, tn = s / s.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    assert base.item() == pytest.approx(((sn - tn) ** 2).mean().item(), rel=1e-5)


def test_map_printed_and_projection_trains(teacher_dir, sst2_dir, tmp_path):
    cfg = load_config(
        recipe(
            "pkd",
            teacher_dir,
            sst2_dir,
            tmp_path / "o",
            tmp_path / "c",
            method={"init_from": "teacher"},
            student={
                "init": "random",
                "num_layers": 2,
                "config_overrides": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2},
            },
        )
    )
    tr = Trainer(cfg, quiet=True)
    assert tr.unwrapped().teacher_layers == [2]  # 4-layer teacher, 2-layer student, skip
    assert tr.student_info["patient_map"] == {"student 1": "teacher 2"}
    assert tr.bundle.proj is not None and tr.bundle.proj.in_features == 16
    batch = tr.collate([tr.datasets["train"][i] for i in range(8)])
    stage = tr.stages[0]
    terms, _, _ = method_terms(tr, batch, stage)
    assert set(terms) == {"kd", "ce", "patient"}
    terms["patient"].backward()
    assert tr.bundle.proj.weight.grad is not None and tr.bundle.proj.weight.grad.abs().sum() > 0
    res = distill(cfg, quiet=True)
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(res.output_dir)  # the student proper
    assert saved.config.hidden_size == 16 and not any("proj" in k for k in saved.state_dict())


def _normalised_cls(hidden_states, layers, proj=None):
    rows = [hidden_states[m][:, 0] for m in layers]
    rows = [proj(h) if proj is not None else h for h in rows]
    return [h / h.norm(dim=-1, keepdim=True) for h in rows]


@pytest.mark.parametrize(("strategy", "teacher_layers"), [("skip", [2, 4]), ("last", [4, 5])])
@pytest.mark.parametrize("narrow", [False, True])
def test_patient_term_by_hand(six_layer_teacher_dir, sst2_dir, tmp_path, strategy, teacher_layers, narrow):
    """6 → 3 (METHODS.md): student layers 1, 2 — ``hidden_states[1]``, ``[2]``: not the embeddings, not the last
    layer — learn teacher layers 2, 4 (PKD-Skip) or 4, 5 (PKD-Last); [CLS] states L2-normalised, then the mean
    squared difference over examples × layers × units, times β."""
    student = {"init": "random", "num_layers": 3, "config_overrides": NARROW if narrow else {}}
    method = {"init_from": "teacher", "strategy": strategy, "beta": 100.0}
    cfg = load_config(
        recipe(
            "pkd",
            six_layer_teacher_dir,
            sst2_dir,
            tmp_path / "o",
            tmp_path / "c",
            method=method,
            student=student,
        )
    )
    tr = Trainer(cfg, quiet=True)
    bundle = tr.unwrapped()
    assert (bundle.proj is not None) == narrow
    batch = tr.collate([tr.datasets["train"][i] for i in range(8)])
    terms, _, _ = method_terms(tr, batch, tr.stages[0])
    with torch.no_grad():
        s_hs = bundle.model(**batch["inputs"], output_hidden_states=True).hidden_states
        t_hs = tr.teacher.model(**batch["inputs"], output_hidden_states=True).hidden_states
        s_cls = _normalised_cls(s_hs, [1, 2], bundle.proj)
        t_cls = _normalised_cls(t_hs, teacher_layers)
    squared = sum(((s - t) ** 2).sum().item() for s, t in zip(s_cls, t_cls, strict=True))
    expected = 100.0 * squared / (8 * 2 * 32)  # β · mean over 8 examples × 2 layers × 32 teacher units
    assert terms["patient"].item() == pytest.approx(expected, rel=1e-5)


def _from_pretrained(teacher_dir, encoder_dir, sst2_dir, tmp_path):
    """A PKD config whose student starts from ``encoder_dir``'s first layers (another checkpoint than the teacher)."""
    return load_config(
        recipe(
            "pkd",
            teacher_dir,
            sst2_dir,
            tmp_path / "o",
            tmp_path / "c",
            method={"init_from": "pretrained", "pretrained_path": str(encoder_dir)},
        )
    )


def test_init_from_pretrained_backbone(teacher_dir, encoder_dir, sst2_dir, tmp_path):
    """The student's layer k is a copy of layer k of the pre-trained backbone (``pretrained_path``, here another
    checkpoint than the teacher), embeddings included."""
    cfg = _from_pretrained(teacher_dir, encoder_dir, sst2_dir, tmp_path)
    tr = Trainer(cfg, quiet=True)
    assert tr.student_info["init"] == "pretrained" and tr.student_info["layers"] == [0, 1]
    student = tr.unwrapped().model.bert.state_dict()
    backbone = BertModel.from_pretrained(encoder_dir).state_dict()
    teacher = tr.teacher.model.bert.state_dict()
    copied = [k for k in student if k.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))]
    assert len(copied) > 30
    for k in copied:
        assert torch.equal(student[k], backbone[k]), k
    assert not torch.equal(
        student["encoder.layer.1.output.dense.weight"], teacher["encoder.layer.1.output.dense.weight"]
    )
    with pytest.raises(ConfigError, match="pretrained_path"):
        load_config(
            recipe(
                "pkd",
                teacher_dir,
                sst2_dir,
                tmp_path / "o",
                tmp_path / "c",
                method={"init_from": "pretrained"},
            )
        )


def test_init_from_teacher_copies_the_chosen_layers(teacher_dir, sst2_dir, tmp_path):
    cfg = load_config(
        recipe(
            "pkd",
            teacher_dir,
            sst2_dir,
            tmp_path / "o",
            tmp_path / "c",
            method={"init_from": "teacher"},
            student={"num_layers": None, "layers": [1, 3]},
        )
    )
    tr = Trainer(cfg, quiet=True)
    student = tr.unwrapped().model.bert.state_dict()
    teacher = tr.teacher.model.bert.state_dict()
    for k, v in student.items():
        assert torch.equal(v, teacher[_teacher_key(k, [1, 3])]), k


def _teacher_key(student_key, layers):
    """The teacher's name of a copied student tensor: ``encoder.layer.i.`` → ``encoder.layer.<layers[i]>.``."""
    m = re.match(r"encoder\.layer\.(\d+)\.(.*)", student_key)
    return f"encoder.layer.{layers[int(m[1])]}.{m[2]}" if m else student_key


def test_control_starts_from_the_same_pretrained_layers(teacher_dir, encoder_dir, sst2_dir, tmp_path):
    """`distill --control` (and a benchmark's ``finetune:`` row) of a PKD run with ``init_from: pretrained``
    fine-tunes the same student PKD starts from: the first k layers of the pre-trained backbone, not the
    teacher's."""
    from bertdistill.training.control import control_config

    cfg = _from_pretrained(teacher_dir, encoder_dir, sst2_dir, tmp_path)
    ctrl = control_config(cfg, 7)
    assert ctrl.method.name == "finetune" and ctrl.student.init == "pretrained"
    pkd_student = Trainer(cfg, quiet=True).unwrapped().model.bert.state_dict()
    control = Trainer(ctrl, quiet=True).unwrapped().bert.state_dict()
    teacher = BertModel.from_pretrained(teacher_dir).state_dict()
    assert control.keys() == pkd_student.keys()
    for k, v in pkd_student.items():
        assert torch.equal(control[k], v), k
    assert not torch.equal(
        control["encoder.layer.1.output.dense.weight"], teacher["encoder.layer.1.output.dense.weight"]
    )
    # init_from: teacher keeps the recipe's student section (the teacher's layers, as pkd copies them)
    by_teacher = load_config(
        recipe("pkd", teacher_dir, sst2_dir, tmp_path / "o2", tmp_path / "c", method={"init_from": "teacher"})
    )
    assert control_config(by_teacher, 7).student == by_teacher.student
