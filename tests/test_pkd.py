import pytest
import torch

from bertdistill import load_config
from bertdistill.config import ConfigError
from bertdistill.methods.pkd import patient_loss, pkd_teacher_layers
from bertdistill.training.loop import Trainer, distill
from conftest import method_terms, recipe


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


def test_init_from_pretrained_backbone(teacher_dir, sst2_dir, tmp_path):
    cfg = load_config(
        recipe(
            "pkd",
            teacher_dir,
            sst2_dir,
            tmp_path / "o",
            tmp_path / "c",
            method={"init_from": "pretrained", "pretrained_path": str(teacher_dir)},
        )
    )
    tr = Trainer(cfg, quiet=True)
    assert tr.student_info["init"] == "pretrained" and tr.student_info["layers"] == [0, 1]
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
