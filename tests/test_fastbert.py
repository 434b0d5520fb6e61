"""FastBERT rules: frozen backbone during self-distillation, KL(teacher ‖ branch), exact speed-0 inference,
monotone exits, batched == per-sample exits, Auto-class round trip."""

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from bertdistill import load_config
from bertdistill.config import ConfigError
from bertdistill.data.tasks import get_task
from bertdistill.methods.fastbert import (
    FastBertForSequenceClassification,
    FastBertRunner,
    count_flops,
    early_exit,
    exit_flops,
    from_classifier,
    normalized_entropy,
    piece_flops,
)
from bertdistill.training.loop import Trainer, distill
from conftest import (
    DROPOUT,
    OTHER_ENCODERS,
    method_terms,
    other_encoder,
    recipe,
    tiny_bert_config,
)


@pytest.fixture
def fast_model():
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(attn_implementation="sdpa")).eval()
    model = from_classifier(teacher).eval()
    with torch.no_grad():  # varied branch confidences, as after training
        for i, b in enumerate(model.branches):
            b.out.weight.mul_(10.0 * (i + 1))
    return teacher, model


def _batch(n=8, width=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, width), generator=g)
    mask = torch.ones_like(ids)
    for r in range(n):
        k = int(torch.randint(3, width + 1, (1,), generator=g))
        mask[r, k:] = 0
        ids[r, k:] = 0
    ids[:, 0] = 2
    return {"input_ids": ids, "attention_mask": mask}


def test_speed_zero_reproduces_the_teacher(fast_model):
    teacher, model = fast_model
    b = _batch()
    res = early_exit(model, b, 0.0)
    with torch.no_grad():
        ref = teacher(**b).logits
    assert torch.equal(res.logits.argmax(-1), ref.argmax(-1))
    torch.testing.assert_close(res.logits, ref, rtol=1e-5, atol=1e-6)
    assert (res.exit_layer == 4).all()


def test_higher_speed_never_exits_later(fast_model):
    _, model = fast_model
    b = _batch(n=16)
    means, per_row = [], []
    for s in [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]:
        r = early_exit(model, b, s)
        means.append(r.exit_layer.float().mean().item())
        per_row.append(r.exit_layer)
    assert all(a >= b for a, b in itertools.pairwise(means)), means
    assert all((a >= b).all() for a, b in itertools.pairwise(per_row))
    assert means[0] == 4 and means[-1] < 4  # some rows do leave early


@pytest.mark.parametrize("speed", [0.2, 0.5, 0.8])
def test_batched_exit_equals_per_sample_exit(fast_model, speed):
    _, model = fast_model
    b = _batch(n=8)
    batched = early_exit(model, b, speed)
    for r in range(8):
        k = int(b["attention_mask"][r].sum())
        one = early_exit(
            model,
            {
                "input_ids": b["input_ids"][r : r + 1, :k],
                "attention_mask": b["attention_mask"][r : r + 1, :k],
            },
            speed,
        )
        assert one.exit_layer.item() == batched.exit_layer[r].item()
        torch.testing.assert_close(one.logits[0], batched.logits[r], rtol=1e-4, atol=1e-5)


@pytest.fixture(params=list(OTHER_ENCODERS))
def other_fast_model(request):
    """FastBERT around a RoBERTa / DistilBERT / ELECTRA / DeBERTa-v2 / ALBERT classifier, branches of varied
    confidence."""
    torch.manual_seed(0)
    teacher = other_encoder(request.param).eval()
    model = from_classifier(teacher).eval()
    with torch.no_grad():
        for i, b in enumerate(model.branches):
            b.out.weight.mul_(10.0 * (i + 1))
    return teacher, model


def test_another_family_exits_early_as_bert_does(other_fast_model, tmp_path):
    """Another family's classifier as the backbone: speed 0 is the teacher itself (its own head, run layer by
    layer), rows leave at several layers, batched exits equal per-sample exits, and the saved dir reloads."""
    teacher, model = other_fast_model
    b = _batch()
    with torch.no_grad():
        ref = teacher(**b).logits
    torch.testing.assert_close(early_exit(model, b, 0.0).logits, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(**b, branches=False).logits, ref, rtol=1e-5, atol=1e-6)
    layers = set()
    for speed in (0.5, 0.9, 0.99):
        res = early_exit(model, b, speed)
        layers |= set(res.exit_layer.tolist())
        for r in range(8):
            k = int(b["attention_mask"][r].sum())
            one = early_exit(model, {n: v[r : r + 1, :k] for n, v in b.items()}, speed)
            assert one.exit_layer.item() == res.exit_layer[r].item()
            torch.testing.assert_close(one.logits[0], res.logits[r], rtol=1e-4, atol=1e-5)
    assert len(layers) >= 2, layers  # rows leave at different layers
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    again = early_exit(loaded, b, 0.99)
    assert torch.equal(again.exit_layer, res.exit_layer)  # res: the last speed's
    torch.testing.assert_close(again.logits, res.logits)


def _bert_layer_flops(t, h, inter):
    """One BERT layer over t tokens: Q, K, V, output and the two FFN matmuls, then q·kᵀ and softmax·v."""
    return 2 * t * (4 * h * h + 2 * h * inter) + 4 * t * t * h


def _branch_flops(t, h, b, c):
    """The paper's branch: H→b on every token, b-wide self-attention, then b→b and b→C on the first token."""
    return 2 * t * (h * b + 4 * b * b) + 4 * t * t * b + 2 * (b * b + b * c)


@pytest.mark.parametrize("t", [3, 7, 12])
def test_flops_of_a_bert_backbone_are_the_layer_formula(fast_model, t):
    """Counted by running each piece, a BERT backbone's FLOPs are the closed forms (embeddings: lookups only;
    head: pooler and classifier), so counting adds nothing BERT did not already cost on paper."""
    _, model = fast_model
    f = piece_flops(model, t)
    h, inter, b = 32, 64, model.config.branch_hidden
    assert f.embed == 0
    assert f.layers == (_bert_layer_flops(t, h, inter),) * 4
    assert f.branches == (_branch_flops(t, h, b, 2),) * 3
    assert f.head == 2 * (h * h + h * 2)
    assert f.full == 4 * _bert_layer_flops(t, h, inter) + 2 * (h * h + h * 2)


@pytest.mark.parametrize("speed", [0.0, 0.5, 0.9, 1.0])
def test_exit_flops_are_what_early_exit_runs(fast_model, speed):
    """The FLOPs charged to each row equal the FLOPs counted while early exit runs that row alone, at every
    exit layer; at speed 0 a row costs exactly the full model (speed-up 1, not more)."""
    _, model = fast_model
    b = _batch(n=8)
    seen = set()
    for r in range(8):
        k = int(b["attention_mask"][r].sum())
        row = {n: v[r : r + 1, :k] for n, v in b.items()}
        res = early_exit(model, row, speed)
        spent, full = exit_flops(model, torch.tensor([k]), res.exit_layer, torch.tensor([speed > 0]))
        assert spent.item() == count_flops(early_exit, model, row, speed)[0]
        assert full.item() == piece_flops(model, k).full
        if speed == 0:
            assert spent.item() == full.item()
        seen.add(res.exit_layer.item())
    if speed >= 0.9:
        assert min(seen) < 4  # rows left early, so the early-exit bookkeeping was exercised


def test_flops_speedup_of_the_runner(fast_model):
    """evaluate's figure: the full model's FLOPs over those spent, summed over the rows of every batch; exactly
    1 at speed 0 (the branches do not run)."""
    _, model = fast_model
    runner = FastBertRunner(model, tokenizer=None, task=get_task("sst2"))
    batches = [_batch(n=8, seed=1), _batch(n=5, seed=2)]
    labels = torch.zeros(13, dtype=torch.long)
    for speed in (0.0, 1.0):
        preds = [runner.predict({"inputs": b}, speed=speed) for b in batches]
        extras = {k: torch.cat([p.extras[k] for p in preds]) for k in preds[0].extras}
        logits = torch.cat([p.logits for p in preds])
        m = runner.metrics(logits, labels, extras)
        spent = sum(
            float(
                exit_flops(model, p.extras["length"], p.extras["exit_layer"], p.extras["branched"])[0].sum()
            )
            for p in preds
        )
        full = sum(piece_flops(model, int(t)).full for b in batches for t in b["attention_mask"].sum(-1))
        assert m["flops_speedup"] == pytest.approx(full / spent)
        if speed == 0.0:
            assert m["flops_speedup"] == 1.0
        else:  # every row leaves at layer 1: it costs layer 1 and branch 1 (128 wide here: more than a layer)
            assert (extras["exit_layer"] == 1).all()
            first = sum(
                piece_flops(model, int(t)).layers[0] + piece_flops(model, int(t)).branches[0]
                for b in batches
                for t in b["attention_mask"].sum(-1)
            )
            assert m["flops_speedup"] == pytest.approx(full / first)
        assert m["mean_exit_layer"] == float(extras["exit_layer"].float().mean())


def test_flops_count_each_familys_own_layers(other_fast_model):
    """Another family's pieces are counted as they run: ELECTRA's and ALBERT's embedding projection, DeBERTa's
    relative-position attention terms and first-layer convolution; BERT-shaped layers cost the BERT formula."""
    teacher, model = other_fast_model
    arch = teacher.config.model_type
    t, h, c = 9, 32, 2
    with torch.inference_mode():  # as a caller may count (e.g. from a timing loop)
        f = piece_flops(model, t)
    inter = 64
    assert f.head == 2 * (h * h + h * c)  # every family's head: one h×h layer, then the classifier
    if arch in ("electra", "albert"):
        assert f.embed == 2 * t * 16 * h  # embedding_size 16 projected to the width
    else:
        assert f.embed == 0
    if arch.startswith("deberta"):
        assert all(x > _bert_layer_flops(t, h, inter) for x in f.layers)  # c2p and p2c terms
        assert f.layers[0] > f.layers[1] == f.layers[2]  # the convolution after layer 1
    else:
        assert f.layers == (_bert_layer_flops(t, h, inter),) * 4
    assert piece_flops(model, 2 * t).full > f.full


def test_a_head_fastbert_would_run_otherwise_than_its_teacher_is_refused(monkeypatch):
    """A head FastBERT would run differently from the family's own classifier is caught by comparing logits
    with the teacher's, not trusted."""
    from bertdistill.methods import fastbert

    monkeypatch.setattr(fastbert, "_head_kind", lambda model: "pooled")  # DeBERTa's head read as BERT's
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"cannot wrap DebertaV2ForSequenceClassification.*logits differ"):
        from_classifier(other_encoder("deberta-v2"))


def test_deberta_v1_with_relative_attention_is_wrapped_too():
    """DeBERTa (v1): relative attention like v2, without v2's convolution."""
    from transformers import DebertaConfig, DebertaForSequenceClassification

    shape = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4}
    torch.manual_seed(0)
    cfg = DebertaConfig(intermediate_size=64, relative_attention=True, pos_att_type=["p2c", "c2p"], **shape)
    teacher = DebertaForSequenceClassification(cfg).eval()
    model = from_classifier(teacher).eval()
    b = _batch()
    with torch.no_grad():
        ref = teacher(**b).logits
    torch.testing.assert_close(early_exit(model, b, 0.0).logits, ref, rtol=1e-5, atol=1e-6)


def test_an_encoder_fastbert_cannot_step_through_is_refused():
    """Layers that take positions their encoder computes once (MPNet's relative bias, RoFormer's rotary
    positions), and an ALBERT with several layers per depth, would run wrong layer by layer: refused."""
    from transformers import (
        MPNetConfig,
        MPNetForSequenceClassification,
        RoFormerConfig,
        RoFormerForSequenceClassification,
    )

    shape = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(0)
    for model, said in (
        (MPNetForSequenceClassification(MPNetConfig(**shape)), r"MPNetLayer also takes \['position_bias'\]"),
        (
            RoFormerForSequenceClassification(RoFormerConfig(**shape)),
            r"RoFormerLayer also takes \['sinusoidal_pos'\]",
        ),
        (other_encoder("albert", inner_group_num=2), "this ALBERT runs 2 layers per depth"),
    ):
        with pytest.raises(ConfigError, match=said):
            from_classifier(model)


def test_exit_rule_uses_normalised_entropy():
    z = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    u = normalized_entropy(z)
    assert u[0].item() == pytest.approx(1.0) and u[1].item() < 1e-6
    assert normalized_entropy(torch.zeros(1, 5)).item() == pytest.approx(1.0)


def test_self_distillation_kl_direction_and_frozen_backbone(teacher_dir, sst2_dir, tmp_path):
    cfg = load_config(
        recipe("fastbert", teacher_dir, sst2_dir, tmp_path / "o", tmp_path / "c", train={"max_steps": 3})
    )
    tr = Trainer(cfg, quiet=True)
    model = tr.bundle
    stage = tr.stages[-1]
    assert stage.name == "self_distill"
    data = tr.datasets["train"]
    batch = tr.collate([data[i] for i in range(8)])
    terms, out, _ = method_terms(tr, batch, stage)
    p_t = F.softmax(out.logits, -1)
    manual = sum((p_t * (p_t.log() - F.log_softmax(z, -1))).sum(-1).mean() for z in out.branch_logits)
    assert terms["self_distill"].item() == pytest.approx(manual.item(), rel=1e-5)  # KL(p_teacher ‖ p_branch)
    assert "labels" in batch  # ... and the loss never read them:
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    assert tr.method.loss(stage, unlabelled, out, None, tr.unwrapped())[
        "self_distill"
    ].item() == pytest.approx(manual.item(), rel=1e-5)

    before = copy.deepcopy(model.state_dict())
    res = distill(cfg, quiet=True)
    after = AutoModelForSequenceClassification.from_pretrained(res.output_dir).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("branches.") for k in changed)
    assert any(k.startswith("branches.0.") for k in changed) and any(
        k.startswith("branches.2.") for k in changed
    )


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("frozen_backbone", [True, False])
def test_training_branch_logits_are_the_early_exit_logits(fast_model, layer, frozen_backbone):
    """Branch i (after layer i) sees the same hidden state in training (``hidden_states[i]``, 1-based layer)
    as at inference, where the runner's early exit leaves at that layer with that branch's logits."""
    _, model = fast_model
    with torch.no_grad():
        for i, branch in enumerate(model.branches, start=1):
            if i < layer:  # uniform predictions, u = 1: nobody leaves before `layer`
                branch.out.weight.zero_()
                branch.out.bias.zero_()
            elif i == layer:  # confident: (nearly) every row leaves here
                branch.out.weight.mul_(100.0)
    batch = {"inputs": _batch(n=8)}
    with torch.no_grad():
        pred = FastBertRunner(model.eval(), tokenizer=None).predict(batch, speed=0.9)
        training = model.train()(**batch["inputs"], frozen_backbone=frozen_backbone)
    left = pred.extras["exit_layer"] == layer
    assert left.sum() >= 6, pred.extras["exit_layer"]
    torch.testing.assert_close(
        pred.logits[left], training.branch_logits[layer - 1][left], rtol=1e-4, atol=1e-5
    )


def test_frozen_backbone_is_deterministic_inside_training_steps(
    dropout_teacher_dir, sst2_dir, tmp_path, monkeypatch
):
    """A backbone with dropout 0.3: inside each real self-distillation step (bundle in train mode), repeating the
    step's forward gives the same teacher-classifier logits — the frozen backbone and its classifier run in eval
    mode, so the soft targets carry no dropout noise."""
    cfg = load_config(
        recipe(
            "fastbert", dropout_teacher_dir, sst2_dir, tmp_path / "o", tmp_path / "c", train={"max_steps": 3}
        )
    )
    tr = Trainer(cfg, quiet=True)
    assert tr.unwrapped().bert.config.hidden_dropout_prob == DROPOUT
    loss = tr.method.loss
    repeats: list[bool] = []

    def repeat_then_loss(stage, batch, student_out, teacher_out, bundle):
        assert tr.bundle.training
        again = tr.bundle(**tr.method.student_inputs(batch, stage))
        repeats.append(torch.equal(student_out.logits, again.logits))
        return loss(stage, batch, student_out, teacher_out, bundle)

    monkeypatch.setattr(tr.method, "loss", repeat_then_loss)
    tr.train()
    assert repeats == [True] * 3


def test_auto_class_round_trip(fast_model, tmp_path):
    _, model = fast_model
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, FastBertForSequenceClassification)
    b = _batch()
    r1, r2 = early_exit(model, b, 0.5), early_exit(loaded, b, 0.5)
    assert torch.equal(r1.exit_layer, r2.exit_layer)
    torch.testing.assert_close(r1.logits, r2.logits)
    assert not list(tmp_path.glob("*.py"))  # no remote code


def test_two_stages_final_model_comes_from_the_last_stage(teacher_dir, sst2_dir, tmp_path):
    """finetune then self_distill: each stage trains only its parameters; model selection restarts per stage."""
    cfg = load_config(
        recipe(
            "fastbert",
            teacher_dir,
            sst2_dir,
            tmp_path / "o",
            tmp_path / "c",
            method={"finetune_epochs": 1, "distill_epochs": 1},
        )
    )
    res = distill(cfg, quiet=True)
    stages = [r["stage"] for r in res.history if "loss" in r]
    assert stages[0] == "finetune" and stages[-1] == "self_distill"
    evals = [r for r in res.history if "eval" in r]
    assert [e["stage"] for e in evals] == ["finetune", "self_distill"]
    assert res.metrics["step"] == evals[-1]["step"]  # not the finetune stage's model
    assert all(
        {"ce"} == {k for k in r if k in ("ce", "self_distill")}
        for r in res.history
        if r.get("stage") == "finetune" and "loss" in r
    )


def test_sweep_sets_a_static_kd_student_of_the_same_task_only(tmp_path):
    """``fastbert_sweep``: the static ``kd`` student beside the sweep comes from a kd result of the SAME task,
    with its file and commit; an MRPC sweep gets none from an SST-2 file (it once carried SST-2's score)."""
    from benchmarks.fastbert_sweep import static_kd_student

    kd = {"task": "sst2", "student_score": 0.87, "latency_speedup": 1.9, "throughput_speedup": 2.0}
    kd |= {"student_layers": 3, "commit": "abc", "rows": []}
    f = tmp_path / "kd.json"
    f.write_text(json.dumps(kd))
    got = static_kd_student(str(f), "sst2")
    assert got == {
        "student_score": 0.87,
        "latency_speedup": 1.9,
        "throughput_speedup": 2.0,
        "student_layers": 3,
        "source": str(f),
        "commit": "abc",
    }
    assert static_kd_student(str(f), "mrpc") is None
    assert static_kd_student(str(tmp_path / "absent.json"), "sst2") is None


@pytest.mark.parametrize("speed", [-0.1, 1.5, float("nan")])
def test_a_speed_outside_0_1_is_refused(fast_model, speed):
    _, model = fast_model
    with pytest.raises(ConfigError, match=r"--speed must be in \[0, 1\] \(0 = full depth\), got"):
        FastBertRunner(model, tokenizer=None).check_options({"speed": speed})
    assert FastBertRunner(model, tokenizer=None).check_options({"speed": 1.0}) == {"speed": 1.0}


def test_flops_are_counted_on_the_fp32_model_in_eval_mode_without_touching_the_rng(fast_model):
    """Counting runs the pieces: during training's evaluation it must not draw dropout masks (a resumed run, whose
    cache of counted lengths starts empty, would drift from an uninterrupted one) nor leave the model in eval mode;
    and an int8 copy (quantised linears the FLOP counter cannot see) reports the fp32 model's FLOPs."""
    from bertdistill.precision import with_precision

    _, model = fast_model
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    state = torch.random.get_rng_state()
    piece_flops(model, 13)
    assert torch.equal(torch.random.get_rng_state(), state) and model.training
    model.eval()
    runner = FastBertRunner(model, tokenizer=None, task=get_task("sst2"))
    b = _batch(n=8)
    labels = torch.zeros(8, dtype=torch.long)
    int8 = with_precision(runner, "int8")
    assert int8.model is not model and int8.flops_model is model
    pred = int8.predict({"inputs": b}, speed=0.9)
    spent, full = exit_flops(model, pred.extras["length"], pred.extras["exit_layer"], pred.extras["branched"])
    assert int8.metrics(pred.logits, labels, pred.extras)["flops_speedup"] == float(full.sum() / spent.sum())
    assert full.sum() > 0 and spent.sum() > 0
