"""C-MLM (Chen et al. 2020): conditional-MLM masking, masked copies and soft labels, top-k renormalisation, the
KD loss against hand computations, the vocabulary check, parallel data, resumable soft-label extraction, and a
tiny end-to-end run that translates and is scored by sacreBLEU."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertForMaskedLM,
    BertTokenizerFast,
)

from bertdistill import teachers
from bertdistill.cli import main
from bertdistill.config import ConfigError, DataConfig
from bertdistill.data.loading import Examples
from bertdistill.data.parallel import (
    decode_ids,
    detokenize,
    encode_pairs,
    load_parallel,
    merge_wordpieces,
    translation_metrics,
)
from bertdistill.evaluation import evaluate
from bertdistill.inference import load_student
from bertdistill.losses import label_smoothed_ce, topk_sharpness, topk_soft_ce
from bertdistill.methods.cmlm import (
    CMLM,
    FLAT_TARGETS,
    CMLMCollator,
    CMLMSoftLabeler,
    Seq2SeqRunner,
    check_vocab_alignment,
    masked_copies,
    soft_label_warning,
)
from bertdistill.protocol import Features, Needs, TokenTopK
from bertdistill.recipes import load_config
from bertdistill.teachers import CachedTeacher, Teacher
from bertdistill.training.loop import Trainer, distill
from conftest import SHARED_DATA, SPECIAL, WORDS, make_sentence, recipe, tiny_bert_config, toy_translation

TINY_STUDENT = CMLM.test_config.sections["student"]  # the method's own tiny seq2seq student


def cmlm_recipe(teacher_dir: Path, data_dir: Path, tmp: Path, **sections):
    r = recipe("cmlm", teacher_dir, data_dir, tmp / "out", tmp / "cache", task="translation")
    r["student"] = copy.deepcopy(dict(TINY_STUDENT))
    r["data"]["max_length"] = 16
    r["train"].update(max_steps=3, log_every=1, batch_size=8)
    for k, v in sections.items():
        r.setdefault(k, {}).update(v)
    return r


def pairs(n: int, seed: int = 0, min_words: int = 2) -> Examples:
    rng = random.Random(seed)
    texts: list[tuple[str, ...]] = []
    for i in range(n):
        src = make_sentence(rng, i % 2).split()
        while len(src) < min_words:
            src += make_sentence(rng, i % 2).split()
        texts.append((" ".join(src), " ".join(toy_translation(src))))
    return Examples(texts, None)


@pytest.fixture
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def mlm(mlm_teacher_dir):
    return AutoModelForMaskedLM.from_pretrained(mlm_teacher_dir).eval()


def teacher_batch(tok, n=6, seed=0, min_words=2):
    data = encode_pairs(pairs(n, seed, min_words), tok, 32)
    return data, CMLMCollator(tok, 0.15, seed)([data[i] for i in range(len(data))])


# ----------------------------------------------------------------------------------------------- masking


def test_cmlm_fine_tuning_masks_only_target_tokens(tok):
    data, batch = teacher_batch(tok, n=32, min_words=6)
    t = batch["teacher_inputs"]
    target = (t["token_type_ids"] == 1) & t["attention_mask"].bool()
    masked = batch["mlm_labels"] != -100
    assert masked.any(1).all()  # at least one per example
    assert not (masked & ~target).any()  # never a source token, [CLS], the middle [SEP] or padding
    changed = batch["cmlm_input_ids"] != t["input_ids"]
    assert torch.equal(changed, masked)  # always [MASK] (no 80/10/10) and nothing else touched
    assert (batch["cmlm_input_ids"][masked] == tok.mask_token_id).all()
    assert torch.equal(batch["mlm_labels"][masked], t["input_ids"][masked])
    # the final [SEP] (end of sentence) is a target token the teacher learns to predict too
    last = t["attention_mask"].sum(1) - 1
    assert (t["input_ids"][torch.arange(len(last)), last] == tok.sep_token_id).all()
    many = [CMLMCollator(tok, 0.15, s)([data[i] for i in range(len(data))]) for s in range(10)]
    assert any(b["mlm_labels"][torch.arange(len(last)), last].ne(-100).any() for b in many)
    # a resumed run redraws the same masks for the same batch
    again = CMLMCollator(tok, 0.15, 0)([data[i] for i in range(len(data))])
    assert torch.equal(again["mlm_labels"], batch["mlm_labels"])


def test_masked_copies_mask_every_target_token_exactly_once(tok):
    _, batch = teacher_batch(tok, n=12, seed=3, min_words=1)
    t = batch["teacher_inputs"]
    target = (t["token_type_ids"] == 1) & t["attention_mask"].bool()
    n = target.sum(1)
    assert n.min() <= 7 < n.max()  # both regimes: fewer targets than copies, and more
    mc = masked_copies(t["input_ids"], t["attention_mask"], t["token_type_ids"], 7, tok.mask_token_id)
    for b in range(len(n)):
        rows = (mc.example == b).nonzero()[:, 0]
        assert len(rows) == min(7, int(n[b]))
        times = mc.predict[rows].sum(0)
        assert torch.equal(times, target[b].long())  # each target position masked once, nothing else
        positions = target[b].nonzero()[:, 0]
        for j, r in enumerate(rows.tolist()):  # copy j masks target tokens j, j+7, j+14, ...
            assert torch.equal(mc.predict[r].nonzero()[:, 0], positions[j::7])
            assert (mc.input_ids[r][mc.predict[r]] == tok.mask_token_id).all()
            unmasked = ~mc.predict[r]
            assert torch.equal(mc.input_ids[r][unmasked], t["input_ids"][b][unmasked])
    assert torch.equal(mc.counts, n)
    assert torch.equal(mc.labels, t["input_ids"][target])  # example by example, in position order


def test_every_target_position_gets_exactly_one_soft_label(tok, mlm):
    """The soft labeler's rows are, in order, each target token's logits with that token masked in its copy —
    checked against running the teacher on every copy by hand."""
    _, batch = teacher_batch(tok, n=5, seed=1, min_words=5)
    t = batch["teacher_inputs"]
    labeler = CMLMSoftLabeler(mlm, tok.mask_token_id, copies=3, max_rows=4).eval()
    with torch.no_grad():
        out = labeler(t["input_ids"], t["attention_mask"], t["token_type_ids"])
    target = (t["token_type_ids"] == 1) & t["attention_mask"].bool()
    assert torch.equal(out.row_counts, target.sum(1)) and out.logits.shape[0] == int(target.sum())
    rows = []
    with torch.no_grad():
        for b in range(len(target)):
            k = int(t["attention_mask"][b].sum())
            positions = target[b].nonzero()[:, 0].tolist()
            for rank, pos in enumerate(positions):
                ids = t["input_ids"][b, :k].clone()
                ids[[p for r, p in enumerate(positions) if r % 3 == rank % 3]] = tok.mask_token_id
                logits = mlm(input_ids=ids[None], token_type_ids=t["token_type_ids"][b, :k][None]).logits
                rows.append(logits[0, pos])
    torch.testing.assert_close(out.logits, torch.stack(rows), rtol=1e-4, atol=1e-4)
    # through the teacher cache: one top-k row per target token, equal to the live teacher's
    needs = Needs(logits=False, token_topk=4)
    live = Teacher(labeler).features(batch, needs)
    assert live.topk is not None and torch.equal(live.topk.counts, target.sum(1))
    torch.testing.assert_close(live.topk.values, torch.stack(rows).topk(4, -1).values, rtol=1e-4, atol=1e-4)


def test_soft_labels_through_the_cache_match_the_live_teacher(tok, mlm, tmp_path):
    data = encode_pairs(pairs(23, seed=2, min_words=3), tok, 32)
    teacher = Teacher(CMLMSoftLabeler(mlm, tok.mask_token_id))
    needs = Needs(logits=False, token_topk=8)
    cache = CachedTeacher.load_or_build(teacher, data, needs, 0, tmp_path, batch_size=5, shard_examples=7)
    assert cache.meta["shards"] == 4 and cache.build_seconds is not None
    assert int(cache.tensors["topk.values"].shape[0]) == sum(len(x) for x in data.target_ids)
    collate = CMLMCollator(tok, 0.15, 0)
    for idx in ([0, 5, 6, 7, 22], [13, 1]):
        batch = collate([data[i] for i in idx])
        live, cached = teacher.features(batch, needs).topk, cache.features(batch).topk
        assert live is not None and cached is not None
        assert torch.equal(cached.counts, torch.tensor([len(data.target_ids[i]) for i in idx]))
        assert torch.equal(cached.indices, live.indices)
        torch.testing.assert_close(cached.values, live.values, rtol=1e-5, atol=1e-5)
    # the number of copies is part of the teacher's fingerprint
    assert Teacher(CMLMSoftLabeler(mlm, tok.mask_token_id, copies=5)).fingerprint() != teacher.fingerprint()


class OracleSoftLabeler(CMLMSoftLabeler):
    """A C-MLM labeler that knows the answer: its soft label for each target token is one-hot on that token (the
    rows, counts and labels are the real labeler's, so the rows keep the real order)."""

    def __init__(self, labeler: CMLMSoftLabeler) -> None:
        super().__init__(labeler.mlm, labeler.mask_token_id, labeler.copies)
        self.config.cmlm_oracle = True  # its own cache key

    def forward(self, input_ids, attention_mask, token_type_ids, **_):
        out = super().forward(input_ids, attention_mask, token_type_ids)
        logits = torch.nn.functional.one_hot(out.labels, out.logits.shape[-1]).float() * 10.0
        return type(out)(logits=logits, row_counts=out.row_counts, labels=out.labels)


def test_soft_labels_reach_the_student_aligned_with_its_labels(
    tmp_path, mlm_teacher_dir, parallel_dir, monkeypatch
):
    """Issue 16: soft-label row i (the teacher's distribution for target token i, extracted with it masked) is
    the KD target of the decoder position trained to predict target token i. An oracle teacher (one-hot on the
    true token) through the real path — soft-label stage, sharded ragged cache built in length-sorted teacher
    batches, shuffled and length-bucketed student batches over two epochs, targets cut at max_length — must give a
    top-1 equal to the MLE label at every real target position, and not to the label one position earlier or
    later."""
    monkeypatch.setattr(teachers, "SHARD_EXAMPLES", 7)  # 64 pairs in 10 shards (offsets shifted on merge)
    r = cmlm_recipe(
        mlm_teacher_dir,
        parallel_dir,
        tmp_path,
        method={"teacher_path": str(mlm_teacher_dir)},
        teacher={"batch_size": 5},
        data={"max_length": 8},  # some targets are cut (toy sentences have 3 to 10 words)
        train={"max_steps": 12, "eval_every": 1000},  # 8 batches per epoch: two epochs, reshuffled
    )
    tr = Trainer(load_config(r), quiet=True)
    assert [s.name for s in tr.stages] == ["soft_labels", "student"]
    data = tr.datasets["train"]
    assert any(len(t) == 8 for t in data.target_ids) and any(len(t) < 8 for t in data.target_ids)
    load = tr.method.load_teacher_model

    def oracle(path, stage=None):
        model = load(path, stage)
        return OracleSoftLabeler(model) if stage is not None else model

    monkeypatch.setattr(tr.method, "load_teacher_model", oracle)
    seen = {"tokens": 0, "same": 0, "prev": 0, "next": 0, "examples": set(), "batches": 0}
    loss = tr.method.loss

    def checked_loss(stage, batch, student_out, teacher_out, bundle):
        terms = loss(stage, batch, student_out, teacher_out, bundle)  # first: its row-count check
        if stage.name == "student":
            labels = batch["labels"]
            real = labels != -100
            top1 = teacher_out.topk.indices[:, 0]
            prev, nxt = torch.full_like(labels, -100), torch.full_like(labels, -100)
            prev[:, 1:], nxt[:, :-1] = labels[:, :-1], labels[:, 1:]
            seen["tokens"] += int(real.sum())
            seen["same"] += int((top1 == labels[real]).sum())
            seen["prev"] += int((top1 == prev[real]).sum())
            seen["next"] += int((top1 == nxt[real]).sum())
            seen["examples"].update(batch["idx"].tolist())
            seen["batches"] += 1
            # the decoder reads [CLS] + the target shifted right: position i predicts labels[i]
            dec = batch["decoder_input_ids"]
            assert (dec[:, 0] == tr.tokenizer.cls_token_id).all()
            assert torch.equal(dec[:, 1:][real[:, 1:]], labels[:, :-1][real[:, 1:]])
        return terms

    monkeypatch.setattr(tr.method, "loss", checked_loss)
    result = tr.train()
    prepared = next(rec for rec in result.history if rec.get("stage") == "soft_labels")
    assert prepared["prepared"] == "teacher cache"
    assert seen["batches"] == 12 and seen["examples"] == set(range(len(data)))
    assert seen["tokens"] > 0 and seen["same"] == seen["tokens"]  # every position aligned
    assert seen["prev"] < 0.2 * seen["tokens"] and seen["next"] < 0.2 * seen["tokens"]


# ----------------------------------------------------------------------------------------------- the loss


def test_topk_renormalisation():
    """The teacher's distribution is a softmax over its top-k logits only (the rest get 0), not the full
    softmax cut to the top-k."""
    z_t = torch.tensor([[4.0, 1.0, 3.0, -2.0, 0.5]])
    values, ids = z_t.topk(3, -1)  # logits 4, 3, 1 at ids 0, 2, 1
    t = 2.0
    e = [math.exp(4 / t), math.exp(3 / t), math.exp(1 / t)]
    p = [x / sum(e) for x in e]
    assert sum(p) == pytest.approx(1.0)
    full = torch.softmax(z_t / t, -1)[0, [0, 2, 1]]
    assert float(full.sum()) < 0.99  # the full softmax leaves mass outside the top-3
    z_s = torch.tensor([[0.2, -0.1, 0.7, 0.0, 1.0]])
    log_q = torch.log_softmax(z_s, -1)[0]
    expected = -(p[0] * log_q[0] + p[1] * log_q[2] + p[2] * log_q[1])
    assert float(topk_soft_ce(z_s, values, ids, t)) == pytest.approx(float(expected), rel=1e-6)
    # equal to a cross-entropy against the dense target that is 0 outside the top-k
    dense = torch.zeros(5)
    dense[[0, 2, 1]] = torch.tensor(p)
    assert float(topk_soft_ce(z_s, values, ids, t)) == pytest.approx(float(-(dense * log_q).sum()), rel=1e-6)
    assert float(topk_soft_ce(z_s, values, ids, t)) != pytest.approx(float(-(full * log_q[[0, 2, 1]]).sum()))


def _log_softmax(xs):
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def test_soft_label_sharpness_and_the_flat_target_warning():
    """Golden values: two rows of top-4 logits at t = 2. Row 1 [2, 0, 0, 0] / 2 -> p = [e, 1, 1, 1] / (e + 3);
    row 2 all equal -> uniform (entropy ratio 1). The warning names what is flat and what to do, and only
    when the run uses the KD term."""
    z = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    stats = topk_sharpness(z, 2.0)
    e = math.e
    p1 = torch.tensor([e, 1, 1, 1]) / (e + 3)
    h1 = float(-(p1 * p1.log()).sum())
    assert stats["top1_prob"] == pytest.approx((e / (e + 3) + 0.25) / 2)
    assert stats["entropy_ratio"] == pytest.approx((h1 / math.log(4) + 1.0) / 2)
    assert stats["logit_gap"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert stats["top1_prob_t1"] == pytest.approx((e**2 / (e**2 + 3) + 0.25) / 2)
    flat = topk_sharpness(torch.tensor([[3.0, 2.6, 2.1, 1.7, 1.3, 0.9, 0.4, 0.0]]), 10.0)  # gap 3, t = 10
    assert flat["entropy_ratio"] > FLAT_TARGETS
    msg = soft_label_warning(flat, 8, 10.0, 0.5)
    assert (
        msg is not None and "nearly uniform over the teacher's top 8" in msg and "method.temperature" in msg
    )
    assert soft_label_warning(flat, 8, 10.0, 0.0) is None  # the no-KD control reads no soft labels
    sharp = topk_sharpness(torch.tensor([[20.0, 12.0, 11.0, 10.5, 10.0, 9.5, 9.0, 8.5]]), 10.0)
    assert sharp["entropy_ratio"] < FLAT_TARGETS and soft_label_warning(sharp, 8, 10.0, 0.5) is None


def test_kd_loss_golden_values():
    """``topk_soft_ce`` and ``label_smoothed_ce`` against numbers computed by hand."""
    z_s = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    top = torch.tensor([[10.0, 0.0], [5.0, 5.0]])
    ids = torch.tensor([[2, 1], [0, 1]])
    # t = 10: row 0 p = softmax([1, 0]) = [e/(e+1), 1/(e+1)]; row 1 p = [1/2, 1/2]
    e = math.e
    q0, q1 = _log_softmax([0.0, 1.0, 2.0]), _log_softmax([1.0, 0.0, 0.0])
    row0 = -(e / (e + 1) * q0[2] + 1 / (e + 1) * q0[1])
    row1 = -(0.5 * q1[0] + 0.5 * q1[1])
    assert row0 == pytest.approx(0.67648, abs=1e-4) and row1 == pytest.approx(1.05144, abs=1e-4)
    assert float(topk_soft_ce(z_s, top, ids, 10.0)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # no temperature on the student: scaling the student's logits changes the loss; no t² on the term
    assert float(topk_soft_ce(z_s / 10, top, ids, 10.0)) != pytest.approx((row0 + row1) / 2)
    # label smoothing 0.1: (1 − ε)·(−log q_y) + ε·mean_v(−log q_v)
    y = torch.tensor([2, 0])
    eps = 0.1
    ls0 = (1 - eps) * -q0[2] + eps * -sum(q0) / 3
    ls1 = (1 - eps) * -q1[0] + eps * -sum(q1) / 3
    assert float(label_smoothed_ce(z_s, y, eps)) == pytest.approx((ls0 + ls1) / 2, rel=1e-6)


def test_method_loss_is_alpha_kd_plus_one_minus_alpha_mle(tmp_path, mlm_teacher_dir, parallel_dir):
    cfg = load_config(cmlm_recipe(mlm_teacher_dir, parallel_dir, tmp_path, method={"alpha": 0.3, "topk": 2}))
    tr = Trainer(cfg, quiet=True)
    stage = next(s for s in tr.stages if s.name == "student")
    labels = torch.tensor([[5, 7, 3, -100], [6, 3, -100, -100]])
    logits = torch.randn(2, 4, tr.student_tokenizer.vocab_size)
    topk = TokenTopK(
        torch.tensor([[3.0, 1.0], [2.0, 2.0], [0.0, -1.0], [4.0, 0.0], [1.0, 0.5]]),
        torch.tensor([[5, 1], [7, 2], [3, 4], [6, 9], [3, 3]]),
        torch.tensor([3, 2]),
    )
    out = type("Out", (), {"logits": logits})()
    terms = tr.method.loss(stage, {"labels": labels}, out, Features(topk=topk), tr.unwrapped())
    real = labels != -100
    rows, y = logits[real], labels[real]
    kd = (
        sum(
            -sum(
                p * float(torch.log_softmax(rows[i], -1)[j])
                for p, j in zip(
                    torch.softmax(topk.values[i] / 10.0, -1).tolist(), topk.indices[i].tolist(), strict=True
                )
            )
            for i in range(5)
        )
        / 5
    )
    mle = float(torch.nn.functional.cross_entropy(rows, y, label_smoothing=0.1))
    assert set(terms) == {"kd", "mle"}
    assert float(terms["kd"]) == pytest.approx(0.3 * kd, rel=1e-5)
    assert float(terms["mle"]) == pytest.approx(0.7 * mle, rel=1e-5)
    with pytest.raises(ConfigError, match="do not fit"):
        bad = TokenTopK(topk.values[:4], topk.indices[:4], torch.tensor([2, 2]))
        tr.method.loss(stage, {"labels": labels}, out, Features(topk=bad), tr.unwrapped())


# ----------------------------------------------------------------------------------------------- vocabulary


@pytest.fixture(scope="module")
def other_vocab_teacher(tmp_path_factory):
    """A C-MLM-shaped teacher whose tokenizer orders the same words differently (same size)."""
    d = tmp_path_factory.mktemp("other_vocab")
    vocab = SPECIAL + list(reversed(WORDS)) + [f"w{i}" for i in range(20)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(d)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(d)
    return d


def test_vocabulary_alignment_error(tok, other_vocab_teacher, tmp_path, mlm_teacher_dir, parallel_dir):
    theirs = AutoTokenizer.from_pretrained(other_vocab_teacher)
    with pytest.raises(ConfigError, match="vocabulary mismatch.*differing"):
        check_vocab_alignment(tok, theirs, what="the teacher")
    with pytest.raises(ConfigError, match="vocabulary mismatch.*ids"):
        check_vocab_alignment(tok, other_size=len(tok) + 3)
    check_vocab_alignment(tok, AutoTokenizer.from_pretrained(mlm_teacher_dir), other_size=len(tok))
    # a fine-tuned teacher with another vocabulary (the same size) is refused before the soft labels are extracted,
    # by the check every stage teacher goes through
    r = cmlm_recipe(
        mlm_teacher_dir, parallel_dir, tmp_path, method={"teacher_path": str(other_vocab_teacher)}
    )
    with pytest.raises(
        ConfigError, match=r"stage 'soft_labels': teacher .* has another vocabulary .*differing"
    ):
        distill(load_config(r), quiet=True)


# ----------------------------------------------------------------------------------------------- data


def test_parallel_data_formats(tmp_path, tok):
    ex = pairs(5, seed=4)
    (tmp_path / "tsv").mkdir()
    (tmp_path / "tsv" / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in ex.texts))
    m30k, onmt = tmp_path / "m30k", tmp_path / "onmt"
    m30k.mkdir()
    onmt.mkdir()
    (m30k / "val.de").write_text("".join(f"{s}\n" for s, _ in ex.texts) + "\n")  # a trailing empty line
    (m30k / "val.en").write_text("".join(f"{t}\n" for _, t in ex.texts) + "\n")
    (onmt / "src-train.txt").write_text("".join(f"{s}\n" for s, _ in ex.texts))
    (onmt / "tgt-train.txt").write_text("".join(f"{t}\n" for _, t in ex.texts))
    for cfg, split in (
        (DataConfig(task="translation", path=str(tmp_path / "tsv")), "train"),
        (DataConfig(task="translation", path=str(tmp_path / "tsv" / "train.tsv")), "test"),
        (DataConfig(task="translation", path=str(m30k), text_fields=["de", "en"]), "dev"),  # dev finds val
        (DataConfig(task="translation", path=str(onmt)), "train"),
    ):
        assert load_parallel(cfg, split).texts == ex.texts
    (m30k / "test.de").write_text("a\nb\n")
    (m30k / "test.en").write_text("a\n")
    with pytest.raises(ConfigError, match="line-aligned"):
        load_parallel(DataConfig(task="translation", path=str(m30k), text_fields=["de", "en"]), "test")
    with pytest.raises(ConfigError, match="no train pairs"):
        load_parallel(DataConfig(task="translation", path=str(m30k), text_fields=["de", "en"]), "train")
    # an HF translation dataset (save_to_disk; a hub name goes through the same reader)
    import datasets

    rows = [{"translation": {"de": s, "en": t}} for s, t in ex.texts]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hf"))
    hf = DataConfig(task="translation", path=str(tmp_path / "hf"), format="hf", text_fields=["de", "en"])
    assert load_parallel(hf, "dev").texts == ex.texts


def test_encoding_aligns_student_targets_with_teacher_targets(tok):
    data = encode_pairs(pairs(6, seed=5, min_words=8), tok, 10)
    for i in range(len(data)):
        src, tgt, teacher = data.input_ids[i], data.target_ids[i], data.teacher.input_ids[i]
        assert len(src) <= 10 and len(tgt) <= 10  # max_length per side, specials included
        assert src[0] == tok.cls_token_id and src[-1] == tok.sep_token_id and tgt[-1] == tok.sep_token_id
        assert teacher == src + tgt
        assert data.teacher.token_type_ids[i] == [0] * len(src) + [1] * len(tgt)


def test_detokenize():
    cases = {
        "a man ' s t - shirt , ( red ) isn ' t \" blue \" .": "a man's t-shirt, (red) isn't \"blue\".",
        "two dogs ' toys cost 1 , 000 dollars ; 3 . 5 kg": "two dogs' toys cost 1,000 dollars; 3.5 kg",
    }
    for words, text in cases.items():
        assert detokenize(words.split()) == text
    assert merge_wordpieces(["play", "##ing", "ball", "##s"]) == ["playing", "balls"]


def test_bleu_is_sacrebleu_on_detokenised_text(tok):
    import sacrebleu

    refs = ["the movie was good .", "a film is bad"]
    hyps = ["The movie was good.", "a film was bad"]
    m = translation_metrics(hyps, refs, lowercase=True)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score)
    # 13a tokens: hypotheses 5 + 4, references 5 + 4 → ratio 1, no penalty; one word dropped → 8 / 9
    assert m["length_ratio"] == pytest.approx(1.0) and m["brevity_penalty"] == pytest.approx(1.0)
    short = translation_metrics(["the movie was good .", "a film bad"], refs, lowercase=True)
    assert short["length_ratio"] == pytest.approx(8 / 9)
    assert short["brevity_penalty"] == pytest.approx(math.exp(1 - 9 / 8))
    ids = tok("the movie was good")["input_ids"] + tok("bad")["input_ids"] + [tok.pad_token_id] * 3
    assert decode_ids(tok, ids[1:]) == "the movie was good"  # stops at the first [SEP], drops specials


@pytest.mark.skipif(
    not (SHARED_DATA / "Multi30k-de-en").is_dir(), reason="../shared/data/Multi30k-de-en absent"
)
def test_multi30k_reads_as_de_to_en_pairs():
    cfg = DataConfig(task="translation", path=str(SHARED_DATA / "Multi30k-de-en"), text_fields=["de", "en"])
    dev, test = load_parallel(cfg, "dev"), load_parallel(cfg, "test")
    assert (len(dev), len(test)) == (1014, 1000)
    assert test.texts[0] == (
        "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
        "A man in an orange hat starring at something.",
    )


# ----------------------------------------------------------------------------------------------- end to end


def write_pair_files(root: Path) -> Path:
    """Multi30k's layout (``<split>.de`` / ``<split>.en``) with toy pairs."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 48, 0), ("val", 12, 1), ("test", 10, 2)):
        ex = pairs(n, seed)
        (root / f"{split}.de").write_text("".join(f"{s}\n" for s, _ in ex.texts))
        (root / f"{split}.en").write_text("".join(f"{t}\n" for _, t in ex.texts))
    return root


def test_end_to_end_translates_and_is_scored_by_sacrebleu(tmp_path, mlm_teacher_dir, capsys):
    import sacrebleu

    data = write_pair_files(tmp_path / "toy")
    r = cmlm_recipe(
        mlm_teacher_dir,
        data,
        tmp_path,
        data={"text_fields": ["de", "en"], "eval_split": "dev"},
        train={"max_steps": 6, "eval_every": 3},
    )
    features = Teacher.features
    calls: list[int] = []

    def counted(self, batch, needs):
        calls.append(len(batch["idx"]))
        return features(self, batch, needs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Teacher, "features", counted)
        result = distill(load_config(r), quiet=True)
    assert (
        sum(calls) == 48
    )  # the teacher ran once per training pair (the extraction); the student read the cache
    out = result.output_dir
    assert "bleu" in result.metrics and "chrf" in result.metrics
    stages = [rec for rec in result.history if "stage" in rec]
    assert {rec["stage"] for rec in stages if "loss" in rec} == {"teacher", "student"}
    teacher_evals = [rec["eval"] for rec in stages if rec.get("stage") == "teacher" and "eval" in rec]
    assert teacher_evals and "cmlm_accuracy" in teacher_evals[0]
    prepared = next(rec for rec in stages if rec.get("stage") == "soft_labels")
    assert (
        prepared["prepared"] == "teacher cache"
        and prepared["build_seconds"] > 0
        and not prepared["cache_hit"]
    )
    # the soft labels' sharpness is logged with the stage; flat ones (a tiny random teacher) come with a warning
    sharp = prepared["soft_labels"]
    assert set(sharp) == {"top1_prob", "entropy_ratio", "logit_gap", "top1_prob_t1"}
    assert 1 / 8 <= sharp["top1_prob"] <= sharp["top1_prob_t1"] <= 1 and 0 <= sharp["entropy_ratio"] <= 1
    assert ("warning" in prepared) == (sharp["entropy_ratio"] > FLAT_TARGETS)
    student_log = [rec for rec in stages if rec.get("stage") == "student" and "loss" in rec]
    assert all({"kd", "mle"} <= set(rec) for rec in student_log)
    # HF format: the student and the stage-teacher load with plain transformers
    assert type(AutoModelForSeq2SeqLM.from_pretrained(out)).__name__ == "M2M100ForConditionalGeneration"
    AutoModelForMaskedLM.from_pretrained(out / "stages" / "teacher")
    # decoding: greedy and beam search, one output per input line (empty lines kept)
    runner = load_student(out)
    assert isinstance(runner, Seq2SeqRunner)
    sources = [
        s
        for s, _ in load_parallel(
            DataConfig(task="translation", path=str(data), text_fields=["de", "en"]), "test"
        ).texts
    ]
    greedy = runner.generate([sources[0], "", *sources[1:]], beam=1)
    beam = runner.generate(sources, beam=3, length_penalty=0.6)
    assert greedy[1] == "" and len(greedy) == len(sources) + 1 and len(beam) == len(sources)
    assert all(isinstance(t, str) for t in greedy + beam)
    # evaluate: BLEU of the detokenised output against the raw references, by sacreBLEU
    row = evaluate(out, split="test", beam=2)
    refs = [
        t
        for _, t in load_parallel(
            DataConfig(task="translation", path=str(data), text_fields=["de", "en"]), "test"
        ).texts
    ]
    hyps = runner.generate(sources, beam=2, max_length=128)
    assert row["metric"] == "bleu" and 0.0 <= row["score"] <= 100.0
    assert row["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score)
    # the C-MLM teacher saved after its stage scores by masked-token accuracy
    t_row = evaluate(out / "stages" / "teacher", split="test")
    assert t_row["metric"] == "cmlm_accuracy" and 0.0 <= t_row["score"] <= 1.0
    # the CLI: generate (file -> text) and evaluate with --beam
    src_file = tmp_path / "src.txt"
    src_file.write_text("\n".join(sources[:3]) + "\n")
    capsys.readouterr()
    assert main(["generate", str(out), str(src_file), "--beam", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == runner.generate(sources[:3], beam=2)
    assert main(["evaluate", str(out), "--split", "test", "--beam", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(row["score"])
    assert main(["predict", str(out), str(src_file), "--beam", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["translation"] for r in rows] == runner.generate(sources[:3], beam=2)
    # a C-MLM teacher generates nothing: a clear error, exit status 2
    assert main(["generate", str(out / "stages" / "teacher"), str(src_file)]) == 2


def test_no_kd_control_reads_no_teacher(tmp_path, mlm_teacher_dir, parallel_dir):
    r = cmlm_recipe(mlm_teacher_dir, parallel_dir, tmp_path, method={"alpha": 0.0})
    tr = Trainer(load_config(r), quiet=True)
    assert [(s.name, s.uses_teacher) for s in tr.stages] == [("student", False)]
    result = tr.train()
    assert all(set(rec) & {"kd", "mle"} == {"mle"} for rec in result.history if "loss" in rec)


def test_live_teacher_without_the_cache(tmp_path, mlm_teacher_dir, parallel_dir):
    """teacher.cache off: stage soft_labels has nothing to prepare and the student reads the teacher live."""
    r = cmlm_recipe(mlm_teacher_dir, parallel_dir, tmp_path, teacher={"cache": False}, train={"max_steps": 2})
    result = distill(load_config(r), quiet=True)
    prepared = next(rec for rec in result.history if rec.get("stage") == "soft_labels")
    assert prepared["prepared"] == "nothing"
    student = [rec for rec in result.history if rec.get("stage") == "student" and "loss" in rec]
    assert student and all(math.isfinite(rec["kd"]) for rec in student)


# ----------------------------------------------------------------------------------------------- resume


def test_resume_during_soft_label_extraction(tmp_path, mlm_teacher_dir, parallel_dir, monkeypatch):
    """A run killed in the middle of the soft-label extraction resumes it at the first missing shard (the done
    shards are not recomputed) and ends with the same soft labels as an uninterrupted extraction."""
    monkeypatch.setattr(teachers, "SHARD_EXAMPLES", 16)  # the toy train set (64 pairs) in 4 shards
    r = cmlm_recipe(mlm_teacher_dir, parallel_dir, tmp_path, train={"max_steps": 2})
    cfg = load_config(r)
    compute = CachedTeacher._compute
    calls: list[int] = []

    def killed_after_two_shards(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[2].start)
        return compute(*args, **kwargs)

    monkeypatch.setattr(CachedTeacher, "_compute", staticmethod(killed_after_two_shards))
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, quiet=True)
    partial = list((tmp_path / "cache" / "teacher").glob("*.partial"))
    assert len(partial) == 1 and len(list(partial[0].glob("part-*.safetensors"))) == 2
    assert calls == [0, 16]

    def count(*args, **kwargs):
        calls.append(args[2].start)
        return compute(*args, **kwargs)

    monkeypatch.setattr(CachedTeacher, "_compute", staticmethod(count))
    result = distill(cfg, resume=True, quiet=True)
    assert calls == [0, 16, 32, 48]  # only the two missing shards were computed
    prepared = next(rec for rec in result.history if rec.get("stage") == "soft_labels")
    assert prepared["build_seconds"] > 0
    resumed = CachedTeacher.open(Path(prepared["cache"]), Needs(logits=False, token_topk=8))
    # an uninterrupted extraction with the same teacher
    tr = Trainer(cfg, quiet=True)
    teacher = Teacher(
        tr.method.load_teacher_model(str(result.output_dir / "stages" / "teacher"), tr.stages[1])
    )
    fresh = CachedTeacher.load_or_build(
        teacher,
        tr.datasets["train"],
        Needs(logits=False, token_topk=8),
        0,
        tmp_path / "fresh",
        shard_examples=64,
    )
    assert fresh.root.name == resumed.root.name  # the same fingerprint
    for key in ("topk.values", "topk.indices", "offsets.topk", "lengths"):
        torch.testing.assert_close(resumed.tensors[key], fresh.tensors[key], rtol=1e-5, atol=1e-5)


def test_extraction_progress_bar(tok, mlm, tmp_path):
    class Bar:
        def __init__(self):
            self.tasks, self.advanced = [], 0

        def add_task(self, description, total, **_):
            self.tasks.append((description, total))
            return 0

        def advance(self, task, n=1):
            self.advanced += n

        def remove_task(self, task):
            pass

    data = encode_pairs(pairs(10, seed=6), tok, 32)
    bar = Bar()
    teacher = Teacher(CMLMSoftLabeler(mlm, tok.mask_token_id))
    CachedTeacher.load_or_build(
        teacher,
        data,
        Needs(logits=False, token_topk=4),
        0,
        tmp_path,
        batch_size=3,
        progress=bar,
        label="soft_labels",
    )
    assert bar.tasks == [("soft_labels", 4)] and bar.advanced == 4


def test_bench_records_how_a_reused_teacher_was_trained(tmp_path, mlm_teacher_dir, parallel_dir):
    """``cmlm_bench --teacher RUN``: the result says how that teacher was trained (pairs, steps, precision,
    threads), read from the teacher-only run; a teacher dir that is not a run gives ``None``."""
    from benchmarks import cmlm_bench
    from benchmarks import harness as H

    r = cmlm_recipe(mlm_teacher_dir, parallel_dir, tmp_path, method={"stages": ["teacher"]})
    r["data"]["max_train_examples"] = 40
    r["train"]["cpu_threads"] = 1
    out = distill(load_config(r), quiet=True).output_dir
    got = cmlm_bench.teacher_training(H.read_run(out))
    assert got is not None and got["sec_per_step"] > 0
    assert {k: v for k, v in got.items() if k != "sec_per_step"} == {
        "train_examples": 40,
        "epochs": load_config(r).method.teacher_epochs,
        "steps": 3,
        "precision": "fp32",
        "threads": 1,
    }
    assert cmlm_bench.teacher_training(None) is None


def test_bench_kd_set_changes_the_kd_row_only(tmp_path):
    """``cmlm_bench --kd-set``: the override reaches the kd row's config and leaves the no_kd control as it was,
    so a control trained for another KD setting can be linked."""
    from benchmarks import cmlm_bench

    base = ["--data", str(tmp_path), "--set", "train.batch_size=4"]
    teacher = tmp_path / "teacher"
    args = cmlm_bench.parse_args(base)
    plain = cmlm_bench.bench_rows(args, teacher)
    hot = cmlm_bench.bench_rows(cmlm_bench.parse_args([*base, "--kd-set", "method.temperature=2"]), teacher)
    assert [r.name for r in hot] == ["kd", "no_kd"]
    assert hot[0].overrides == (*plain[0].overrides, "method.temperature=2")
    assert hot[1].overrides == plain[1].overrides == ("method.alpha=0.0",)
    common = cmlm_bench.common_overrides(args, tmp_path / "work")
    kd, no_kd = (row.config(1, common, tmp_path / row.name) for row in hot)
    assert kd.method.temperature == 2 and kd.method.alpha == 0.5
    assert no_kd.method.temperature == plain[1].config(1, common, tmp_path / "n").method.temperature == 10
    assert no_kd.method.alpha == 0.0


def test_bench_set_replaces_a_default_override_of_the_same_key(tmp_path):
    """``cmlm_bench --set teacher.cache_dir=DIR``: the user's value replaces the benchmark's default, and the
    overrides (which the result file records) list the key once, with the value the runs used."""
    from benchmarks import cmlm_bench

    mine = f"teacher.cache_dir={tmp_path / 'shared-cache'}"
    args = cmlm_bench.parse_args(["--data", str(tmp_path), "--threads", "1", "--set", mine])
    common = cmlm_bench.common_overrides(args, tmp_path / "work")
    assert [o for o in common if o.startswith("teacher.cache_dir=")] == [mine]
    assert f"data.path={tmp_path}" in common and "train.cpu_threads=1" in common
    default = cmlm_bench.common_overrides(cmlm_bench.parse_args(["--data", str(tmp_path)]), tmp_path / "work")
    assert f"teacher.cache_dir={tmp_path / 'work' / 'cache'}" in default


def test_bench_train_only_trains_the_named_row_and_writes_no_result(tmp_path, monkeypatch):
    """``cmlm_bench --train-only no_kd``: one core's share of a parallel sweep trains that row alone (no teacher
    needed for the control) and writes no result file; a later run without it scores the linked rows."""
    from benchmarks import cmlm_bench
    from benchmarks import harness as H

    monkeypatch.setattr(H, "WORK", tmp_path / "work")
    data = write_pair_files(tmp_path / "toy")
    results = tmp_path / "results"
    argv = ["--smoke", "--data", str(data), "--teacher", str(tmp_path / "absent-teacher"), "--seeds", "1"]
    argv += ["--name", "t", "--results-dir", str(results), "--threads", "1", "--train-only", "no_kd"]
    assert cmlm_bench.main(argv) == 0
    work = tmp_path / "work" / "t-smoke"
    assert H.is_finished(work / "no_kd-seed1")
    assert not (work / "kd-seed1").exists()
    assert not results.exists()
    with pytest.raises(SystemExit):
        cmlm_bench.parse_args(["--data", str(data), "--train-only", "teacher"])


def test_bench_dev_bleu_is_the_kept_checkpoints_selection_score(tmp_path):
    """Rows record the dev BLEU the run selected its checkpoint on (metrics.json), so a setting can be chosen on
    dev rather than on the test BLEU the table reports; a run that kept no evaluation gives ``None``."""
    from benchmarks import cmlm_bench
    from benchmarks import harness as H

    def record(metrics):
        return H.RunRecord(tmp_path, None, metrics, metrics, 1, 1000, {"student": 1000}, None, True)

    assert cmlm_bench.dev_bleu(record({"step": 1000, "bleu": 23.83, "chrf": 45.0})) == 23.83
    assert cmlm_bench.dev_bleu(record({})) is None


def test_max_length_is_checked_against_what_the_teacher_reads(mlm_teacher_dir, parallel_dir, tmp_path):
    """The C-MLM teacher reads source and target together, up to 2 × data.max_length tokens: a max_length that
    fits the teacher's 64 positions on one side but not on both is refused before training, not at the first long
    pair."""
    r = cmlm_recipe(mlm_teacher_dir, parallel_dir, tmp_path, data={"max_length": 40})
    with pytest.raises(
        ConfigError,
        match=r"data.max_length 40 makes the teacher read up to 80 tokens \(\[CLS\] source \[SEP\] target \[SEP\], "
        r"each side up to data.max_length\), more than its 64 positions .*; set data.max_length to at most 32",
    ):
        distill(load_config(r), quiet=True)
