import pytest
import torch
from transformers import AutoTokenizer

from bertdistill.data.loading import BatchSampler, Collator, Examples, teacher_view, tokenize
from bertdistill.protocol import Needs
from bertdistill.teachers import CachedTeacher, Teacher


def _data(tok, n=20, offset=0):
    import random

    from conftest import make_sentence

    rng = random.Random(offset)
    ex = Examples([(make_sentence(rng, i % 2),) for i in range(n)], [i % 2 for i in range(n)])
    return tokenize(ex, tok, 32)


def test_teacher_is_frozen(tiny_model):
    t = Teacher(tiny_model)
    assert not t.model.training
    assert all(not p.requires_grad for p in t.model.parameters())


def test_cache_matches_live_teacher_and_is_reused(tiny_model, teacher_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    data = _data(tok)
    coll = Collator(tok.pad_token_id)
    teacher = Teacher(tiny_model)
    needs = Needs(
        logits=True, hidden_states=True, hidden_layers=(0, 2), attentions=True, attention_layers=(1,)
    )
    cache = CachedTeacher.load_or_build(teacher, data, needs, tok.pad_token_id, tmp_path, batch_size=7)
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=BatchSampler(data.lengths, 6, seed=1), collate_fn=coll
    )
    for batch in loader:
        live, cached = teacher.features(batch, needs), cache.features(batch)
        mask = batch["inputs"]["attention_mask"].bool()
        torch.testing.assert_close(cached.logits, live.logits, rtol=1e-5, atol=1e-5)
        assert set(cached.hidden_states) == {0, 2} and set(cached.attentions) == {1}
        for k in (0, 2):
            torch.testing.assert_close(
                cached.hidden_states[k][mask], live.hidden_states[k][mask], rtol=1e-5, atol=1e-5
            )
        m2 = mask[:, None, :, None] & mask[:, None, None, :]
        a_live, a_cached = live.attentions[1], cached.attentions[1]
        torch.testing.assert_close(
            a_cached[m2.expand_as(a_live)], a_live[m2.expand_as(a_live)], rtol=1e-5, atol=1e-5
        )

    # second time: a hit, the teacher is never called
    calls = []
    teacher.model.register_forward_hook(lambda *a: calls.append(1))
    again = CachedTeacher.load_or_build(teacher, data, needs, tok.pad_token_id, tmp_path)
    assert again.root == cache.root and not calls


def test_cls_only_cache_keeps_first_position(tiny_model, teacher_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    data = _data(tok)
    coll = Collator(tok.pad_token_id)
    teacher = Teacher(tiny_model)
    full = Needs(logits=True, hidden_states=True, hidden_layers=(1, 3))
    cls_only = Needs(logits=True, hidden_states=True, hidden_layers=(1, 3), cls_only=True)
    cache = CachedTeacher.load_or_build(teacher, data, cls_only, tok.pad_token_id, tmp_path, batch_size=7)
    # one vector per example and layer on disk
    assert cache.tensors["hidden.1"].numel() == len(data) * tiny_model.config.hidden_size
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=BatchSampler(data.lengths, 6, seed=1), collate_fn=coll
    )
    for batch in loader:
        live_full, live_cls, cached = (
            teacher.features(batch, full),
            teacher.features(batch, cls_only),
            cache.features(batch),
        )
        for k in (1, 3):
            assert cached.hidden_states[k].shape == live_cls.hidden_states[k].shape
            assert live_cls.hidden_states[k].shape[1] == 1
            torch.testing.assert_close(cached.hidden_states[k], live_full.hidden_states[k][:, :1])


def test_cache_invalidated_by_data_teacher_and_needs(tiny_model, teacher_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    data, other = _data(tok), _data(tok, offset=1)
    teacher = Teacher(tiny_model)
    needs = Needs()
    fp = CachedTeacher.fingerprint(teacher, data, needs, "float32")
    assert CachedTeacher.fingerprint(teacher, other, needs, "float32") != fp
    assert CachedTeacher.fingerprint(teacher, data, Needs(hidden_states=True), "float32") != fp
    assert CachedTeacher.fingerprint(teacher, data, needs, "float16") != fp
    changed = Teacher(torch.nn.Module.to(tiny_model, "cpu"))
    with torch.no_grad():
        changed.model.classifier.bias.add_(0.1)
    assert CachedTeacher.fingerprint(changed, data, needs, "float32") != fp


def test_bf16_cache_is_keyed_apart_and_computed_under_autocast(tiny_model, teacher_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    data = _data(tok)
    teacher = Teacher(tiny_model)
    needs = Needs(logits=True)
    fp32 = CachedTeacher.load_or_build(teacher, data, needs, tok.pad_token_id, tmp_path, batch_size=7)
    bf16 = CachedTeacher.load_or_build(
        teacher, data, needs, tok.pad_token_id, tmp_path, batch_size=7, compute="bf16"
    )
    assert bf16.root != fp32.root and bf16.meta["compute"] == "bf16" and fp32.meta["compute"] == "fp32"
    a, b = fp32.tensors["logits"], bf16.tensors["logits"]
    assert a.dtype == b.dtype == torch.float32  # stored in the cache dtype either way
    assert not torch.equal(a, b)  # other numbers: computed in bf16
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
    # the fp32 key is the one earlier caches were written under (no "compute" field in it)
    assert fp32.root.name == CachedTeacher.fingerprint(teacher, teacher_view(data), needs, "float32")
    with pytest.raises(ValueError, match="compute must be"):
        CachedTeacher.load_or_build(teacher, data, needs, tok.pad_token_id, tmp_path, compute="int4")


def test_built_cache_is_served_from_memory_and_equals_its_files(tiny_model, teacher_dir, tmp_path):
    """The build keeps what it computed (and the SHA-256 of the bytes it wrote) instead of reading every shard
    back; what it serves equals what a later process reads from disk, whose checksums match."""
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    data = _data(tok, n=23)
    teacher = Teacher(tiny_model)
    needs = Needs(logits=True, hidden_states=True, hidden_layers=(1,))
    built = CachedTeacher.load_or_build(
        teacher, data, needs, tok.pad_token_id, tmp_path, batch_size=4, shard_examples=8, dtype="bfloat16"
    )
    assert built.built_now and built.meta["shards"] == 3 and len(built.meta["sha256"]) == 3
    reopened = CachedTeacher.open(built.root, needs)  # checks every shard against the recorded SHA-256
    assert set(reopened.tensors) == set(built.tensors)
    for key, t in built.tensors.items():
        assert torch.equal(t, reopened.tensors[key]), key
    assert (
        built.tensors["logits"].dtype == torch.bfloat16 and built.tensors["hidden.1"].dtype == torch.bfloat16
    )
    batch = Collator(tok.pad_token_id)([data[i] for i in range(5)])
    served = built.features(batch)
    assert served.logits.dtype == torch.float32 and served.hidden_states[1].dtype == torch.float32
    # each example's stored token rows, then zeros to the batch's width
    flat, off, h = built.tensors["hidden.1"], built.offsets["hidden.1"], tiny_model.config.hidden_size
    for i, r in enumerate(batch["idx"].tolist()):
        k = int(built.lengths[r])
        torch.testing.assert_close(
            served.hidden_states[1][i, :k], flat[off[r] : off[r + 1]].float().view(k, h)
        )
        assert not served.hidden_states[1][i, k:].any()


def test_cache_dtype_auto_follows_mixed_precision():
    from bertdistill.config import ConfigError, TeacherConfig

    auto = TeacherConfig()
    assert auto.cache_dtype == "auto"
    assert auto.resolved_cache_dtype("bf16") == "bfloat16"
    assert auto.resolved_cache_dtype("fp16") == "float16"
    assert auto.resolved_cache_dtype("no") == "float32"
    assert TeacherConfig(cache_dtype="float32").resolved_cache_dtype("bf16") == "float32"
    with pytest.raises(ConfigError, match=r"teacher.cache_dtype must be one of .*got 'fp8'"):
        TeacherConfig(cache_dtype="fp8")
    with pytest.raises(ConfigError, match="teacher.batch_size must be >= 1"):
        TeacherConfig(batch_size=0)


def test_teacher_batch_size_defaults_by_device():
    from bertdistill.config import TeacherConfig

    assert TeacherConfig().resolved_batch_size("cpu") == 32
    assert TeacherConfig().resolved_batch_size("cuda") == 128
    assert TeacherConfig(batch_size=64).resolved_batch_size("cpu") == 64


def test_two_builders_of_one_cache_build_it_once(tiny_model, teacher_dir, tmp_path):
    """Two runs asking for the same cache at once (two benchmark jobs on one data set): the second waits for
    the first's build (a lock on ``<root>.lock``), then serves the finished cache; the teacher runs once."""
    import threading
    import time

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    data = _data(tok, n=24)
    teacher = Teacher(tiny_model)
    needs = Needs(logits=True)
    calls: list[int] = []

    def slow(*_):
        calls.append(1)
        time.sleep(0.05)  # keeps the first build going while the second arrives

    teacher.model.register_forward_hook(slow)
    out: dict[str, CachedTeacher] = {}

    def build(name):
        out[name] = CachedTeacher.load_or_build(
            teacher, data, needs, tok.pad_token_id, tmp_path, batch_size=4
        )

    first = threading.Thread(target=build, args=("first",))
    first.start()
    while not calls:  # the first build is under way
        time.sleep(0.005)
    build("second")
    first.join()
    assert len(calls) == 6  # 24 examples at batch 4, computed once
    assert out["first"].built_now and not out["second"].built_now
    torch.testing.assert_close(out["second"].tensors["logits"], out["first"].tensors["logits"])
    assert [p.name for p in (tmp_path / "teacher").iterdir()] == [out["first"].root.name]  # no lock file left
