"""Tang et al.'s augmentation: the probabilities (checked statistically under a fixed seed), POS replacement
keeps the tag, n-gram bounds, pairs as the official script, determinism, and the CLI."""

import builtins
import json
import math
import random
from collections import Counter

import pytest

from bertdistill.cli import main
from bertdistill.config import ConfigError
from bertdistill.data.augment_tang import (
    PosLexicon,
    TangAugmentConfig,
    TangAugmenter,
    WordTagger,
    augment_tang,
    nltk_tagger,
)
from bertdistill.data.loading import Examples
from conftest import SHARED_DATA

NLTK_DATA = SHARED_DATA / "nltk_data"
WORDS = [f"w{i}" for i in range(10)]
TAGS = ["NN", "VB"] * 5


def _within(observed: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _augmenter(**cfg) -> TangAugmenter:
    # replacements never equal an original word, so every replaced position is visible
    lexicon = PosLexicon({"NN": Counter({"x": 3, "y": 1}), "VB": Counter({"run": 1})})
    return TangAugmenter(lexicon, TangAugmentConfig(**cfg))


def _toy_tagger() -> WordTagger:
    tags = {"the": "DT", "a": "DT", "good": "JJ", "bad": "JJ", "dull": "JJ", "film": "NN", "plot": "NN"}
    return WordTagger(str.split, lambda ws: [tags.get(w, "NN") for w in ws], "toy")


def test_mask_and_pos_probabilities_and_unigram_sampling():
    aug = _augmenter(p_mask=0.1, p_pos=0.1, p_ng=0.0, drop_all_replaced=False)
    rng = random.Random(0)
    n_samples = 4000
    counts: Counter[str] = Counter()
    for _ in range(n_samples):
        out = aug.sample(WORDS, TAGS, rng, drop_all=False)
        assert out is not None and len(out) == len(WORDS)  # no n-gram: same length
        counts.update(out)
    n = n_samples * len(WORDS)
    assert _within(counts["[MASK]"], n, 0.1)
    replaced = counts["x"] + counts["y"] + counts["run"]
    assert _within(replaced, n, 0.1)
    assert _within(counts["x"], counts["x"] + counts["y"], 0.75)  # by unigram frequency: x 3 : y 1
    assert _within(sum(counts[w] for w in WORDS), n, 0.8)


def test_pos_replacement_keeps_the_tag():
    aug = _augmenter(p_mask=0.0, p_pos=1.0, p_ng=0.0)
    rng = random.Random(1)
    for _ in range(200):
        out = aug.sample(WORDS, TAGS, rng, drop_all=False)
        assert out is not None
        for w, tag in zip(out, TAGS, strict=True):
            assert w in aug.lexicon.words[tag]
    assert aug.sample(WORDS, TAGS, rng, drop_all=True) is None  # every word replaced: dropped (official)


def test_ngram_length_bounds_and_probability():
    aug = _augmenter(p_mask=0.0, p_pos=0.0, p_ng=1.0, ngram_max=5)
    rng = random.Random(2)
    lengths: Counter[int] = Counter()
    starts: set[int] = set()
    for _ in range(3000):
        out = aug.sample(WORDS, TAGS, rng, drop_all=False)
        assert out is not None and 1 <= len(out) <= 5
        start = WORDS.index(out[0])
        assert out == WORDS[start : start + len(out)]  # a contiguous n-gram
        lengths[len(out)] += 1
        starts.add(start)
    assert set(lengths) == {1, 2, 3, 4, 5} and all(_within(c, 3000, 0.2) for c in lengths.values())
    assert starts == set(range(10))  # every start, the last one included
    assert aug.ngram(["a", "b"], random.Random(0)) in (["a"], ["b"], ["a", "b"])  # n >= len: whole
    short = _augmenter(p_mask=0.0, p_pos=0.0, p_ng=0.25)
    rng = random.Random(3)
    cut = sum(len(short.sample(WORDS, TAGS, rng, drop_all=False)) < 10 for _ in range(4000))
    assert _within(cut, 4000, 0.25)


def test_pairs_change_one_side_two_thirds_of_the_time():
    aug = _augmenter(p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=3000)
    sents = [(["a", "b"], ["NN", "NN"]), (["c", "d", "e"], ["NN", "VB", "NN"])]
    kinds = Counter()
    for left, right in aug.tries(sents, random.Random(4)):
        kinds[(left == "[MASK] [MASK]", right == "[MASK] [MASK] [MASK]")] += 1
    assert (False, False) not in kinds
    for k in ((True, False), (False, True), (True, True)):
        assert _within(kinds[k], 3000, 1 / 3)


def test_augment_is_deterministic_keeps_originals_and_drops_duplicates():
    ex = Examples([("the good film",), ("a dull plot",), ("the good film",), ("bad",)], [1, 0, 1, 0])
    a = augment_tang(ex, _toy_tagger(), TangAugmentConfig(seed=5), progress=False)
    b = augment_tang(ex, _toy_tagger(), TangAugmentConfig(seed=5), progress=False)
    c = augment_tang(ex, _toy_tagger(), TangAugmentConfig(seed=6), progress=False)
    assert a.examples.texts == b.examples.texts and a.source_index == b.source_index
    assert a.examples.texts != c.examples.texts
    assert a.examples.labels is None  # the teacher labels them
    for i, row in enumerate(ex.texts):  # each original first, in order
        assert a.examples.texts[a.source_index.index(i)] == row
    new = [t for t, s in zip(a.examples.texts, a.source_index, strict=True) if t not in ex.texts]
    assert len(new) == len(set(new)) and new and all(t[0] for t in new)
    assert len(a.examples) <= len(ex) + 4 * 20
    with pytest.raises(ConfigError):
        TangAugmentConfig(p_mask=0.7, p_pos=0.4)


def test_missing_nltk_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_nltk(name, *a, **k):
        if name == "nltk" or name.startswith("nltk."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_nltk)
    with pytest.raises(ConfigError, match=r"bertdistill\[bilstm\]"):
        nltk_tagger(None)


def _need_tagger():
    pytest.importorskip("nltk")
    if not (NLTK_DATA / "taggers").is_dir():
        pytest.skip(f"{NLTK_DATA} not present (the shared data folder sits beside the repo)")


def test_nltk_tagger_reads_the_shared_zip_and_real_replacements_keep_their_tag(tmp_path):
    _need_tagger()
    tagger = nltk_tagger(NLTK_DATA)
    words = tagger.split("The quick brown fox jumps over the lazy dog.")
    assert words[-1] == "." and tagger.tag(words)[:2] == ["DT", "JJ"]
    ex = Examples([("the movie is a charming journey .",), ("a dull , lifeless plot",)], [1, 0])
    res = augment_tang(
        ex, tagger, TangAugmentConfig(p_mask=0.0, p_pos=1.0, p_ng=0.0, n_iter=5), progress=False
    )
    from bertdistill.data.augment_tang import tag_examples

    lex = PosLexicon.build(tag_examples(ex, tagger, progress=False))
    for row, src in zip(res.examples.texts, res.source_index, strict=True):
        words = row[0].split()
        tags = tagger.tag(tagger.split(ex.texts[src][0]))
        assert all(w in lex.words[t] for w, t in zip(words, tags, strict=True))
    with pytest.raises(ConfigError, match="no averaged-perceptron tagger"):
        nltk_tagger(tmp_path)


def test_cli_augment_style_tang(tmp_path, sst2_dir, capsys):
    _need_tagger()
    out = tmp_path / "aug.tsv"
    args = ["augment", "--style", "tang", "--task", "sst2", "--data", str(sst2_dir), "-o", str(out)]
    assert main([*args, "--nltk-data", str(NLTK_DATA), "--max-examples", "20", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source_examples"] == 20 and summary["augmented_examples"] > 20
    lines = out.read_text().splitlines()
    assert lines[0] == "sentence\tsource_index" and any("[MASK]" in ln for ln in lines)
    prov = json.loads((tmp_path / "aug.tsv.provenance.json").read_text())
    assert prov["parameters"]["n_iter"] == 20 and prov["parameters"]["p_ng"] == 0.25
    assert "labels" in prov and "nltk" in prov["tagger"]
    assert main([*args, "--split", "dev", "--nltk-data", str(NLTK_DATA)]) == 2  # never dev / test


def test_cli_augment_says_when_nothing_changed(tmp_path, sst2_dir, capsys):
    """Probabilities of 0 (or an augmenter that knows none of the words): the file holds the originals only, and
    the command says so on stderr, --quiet or not."""
    _need_tagger()
    out = tmp_path / "aug.tsv"
    args = [
        "augment",
        "--style",
        "tang",
        "--task",
        "sst2",
        "--data",
        str(sst2_dir),
        "-o",
        str(out),
        "--quiet",
    ]
    zero = [
        "--p-mask",
        "0",
        "--p-pos",
        "0",
        "--p-ng",
        "0",
        "--max-examples",
        "10",
        "--nltk-data",
        str(NLTK_DATA),
    ]
    assert main([*args, *zero]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["augmented_examples"] == 10
    assert (
        f"augment made no new sentence from 10 source example(s): {out} holds the originals only"
        in captured.err
    )
    assert main([*args, "--max-examples", "10", "--nltk-data", str(NLTK_DATA)]) == 2  # the file exists
    assert main([*args, "--max-examples", "10", "--nltk-data", str(NLTK_DATA), "--overwrite"]) == 0
    assert "no new sentence" not in capsys.readouterr().err
