"""Word-level text: the splitter, the vocabulary (round trip, OOV), word-vector files (GloVe / word2vec, a
malformed line named by its line number) and the pair layout."""

import gzip

import pytest
import torch

from bertdistill.config import ConfigError
from bertdistill.data.loading import Examples
from bertdistill.data.words import (
    UNK_INIT_RANGE,
    WordVocab,
    load_word_vectors,
    split_segments,
    split_words,
    vector_dim,
    word_dataset,
)
from conftest import SHARED_DATA


def test_split_words_ptb_style_keeps_special_tokens_whole():
    assert split_words("Don't miss it, [MASK]!") == ["do", "n't", "miss", "it", ",", "[MASK]", "!"]
    assert split_words("It's a gripping film.") == ["it", "'s", "a", "gripping", "film", "."]
    ptb = "it 's a charming and often affecting journey . "  # already PTB-tokenised (GLUE SST-2): unchanged
    assert split_words(ptb) == ptb.split()
    assert split_words("Ca n't", lowercase=False) == ["Ca", "n't"]
    assert split_words("") == []


def test_vocab_order_min_count_and_oov():
    texts = ["the film is good", "the film is bad", "the plot"]
    vocab = WordVocab.build(texts)
    assert vocab.words[:2] == ["<pad>", "<unk>"] and vocab.pad_token_id == 0 and vocab.unk_token_id == 1
    assert vocab.words[2:] == ["the", "film", "is", "bad", "good", "plot"]  # by count, ties alphabetical
    assert vocab.encode("The FILM is superb") == [2, 3, 4, 1]  # lower-cased; OOV -> <unk>
    assert vocab.encode("") == [1] and vocab.encode("!!", max_length=1) == [1]
    assert vocab.encode("the film is good", max_length=2) == [2, 3]
    assert WordVocab.build(texts, min_count=2).words[2:] == ["the", "film", "is"]
    assert WordVocab.build(texts, max_size=1).words == ["<pad>", "<unk>", "the"]
    with pytest.raises(ConfigError):
        WordVocab.build(texts, min_count=0)


def test_vocab_round_trip(tmp_path):
    vocab = WordVocab.build(["A good film [MASK] .", "naïve, charming"], lowercase=True)
    vocab.save_pretrained(tmp_path)
    again = WordVocab.from_pretrained(tmp_path)
    assert again.words == vocab.words and again.lowercase is True and "[MASK]" in again.index
    for text in ["a good naïve film", "unknown words here", "[MASK] charming"]:
        assert again.encode(text) == vocab.encode(text)
    cased = WordVocab.build(["Good film"], lowercase=False)
    cased.save_pretrained(tmp_path)
    assert WordVocab.from_pretrained(tmp_path).encode("good Good") == [1, cased.index["Good"]]
    with pytest.raises(ConfigError, match="vocab.json"):
        WordVocab.from_pretrained(tmp_path / "nowhere")


def test_pairs_are_one_sequence_with_segments():
    vocab = WordVocab.build(["a b c", "d e"])
    ex = Examples([("a b c", "d e"), ("c", "zzz")], [1, 0])
    ds = word_dataset(ex, vocab, max_length=2)
    a, b, c, d, e = (vocab.index[w] for w in "abcde")
    assert ds.input_ids == [[a, b, d, e], [c, 1]]  # each text cut to 2 words; OOV -> <unk>
    assert ds.token_type_ids == [[0, 0, 1, 1], [0, 1]]
    assert ds[0]["labels"] == 1 and ds.vocab is vocab
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    tt = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]])
    (ia, la), (ib, lb) = split_segments(ids, mask, tt)
    assert la.tolist() == [3, 1] and lb.tolist() == [2, 2]
    assert ia.tolist() == [[5, 6, 7], [5, 0, 0]] and ib.tolist() == [[8, 9], [8, 9]]


def _write(path, lines):
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["vec.txt", "vec.txt.gz"])
def test_glove_vectors_load_with_random_oov_rows(tmp_path, name):
    f = _write(tmp_path / name, ["good 1 2 3", "film 0.5 -0.5 0", "unused 9 9 9"])
    vocab = WordVocab.build(["good film", "plot"])
    assert vector_dim(f) == 3
    vec = load_word_vectors(f, vocab, seed=3)
    assert vec.dim == 3 and vec.found == 2 and vec.weight.shape == (len(vocab), 3)
    assert vec.weight[vocab.index["good"]].tolist() == [1.0, 2.0, 3.0]
    assert vec.weight[vocab.index["film"]].tolist() == [0.5, -0.5, 0.0]
    assert vec.weight[0].abs().sum() == 0  # <pad>
    oov = vec.weight[[1, vocab.index["plot"]]]  # <unk> and a word the file lacks
    assert (oov.abs() <= UNK_INIT_RANGE).all() and oov.abs().sum() > 0
    torch.testing.assert_close(load_word_vectors(f, vocab, seed=3).weight, vec.weight)  # seeded
    assert not torch.equal(load_word_vectors(f, vocab, seed=4).weight[1], vec.weight[1])
    assert vec.describe(vocab)["coverage"] == pytest.approx(2 / 3, abs=1e-3)


def test_word2vec_header_and_case_folding(tmp_path):
    f = _write(tmp_path / "w2v.txt", ["3 2", "Good 1 1", "good 2 2", "Film 3 3"])
    vocab = WordVocab.build(["good film"])  # lower-cased
    vec = load_word_vectors(f, vocab)
    assert vec.weight[vocab.index["good"]].tolist() == [2.0, 2.0]  # the exact word wins over a cased one
    assert vec.weight[vocab.index["film"]].tolist() == [3.0, 3.0]  # a cased word serves a lower-cased vocab


def test_malformed_vector_lines_are_named_by_line_number(tmp_path):
    vocab = WordVocab.build(["good film"])
    short = _write(tmp_path / "short.txt", ["good 1 2 3", "other 1 2 3", "film 1 2"])
    with pytest.raises(ConfigError, match=r"short\.txt:3: a vector of 2 values, expected 3"):
        load_word_vectors(short, vocab)
    nan = _write(tmp_path / "nan.txt", ["good 1 2 3", "film 1 x 3"])
    with pytest.raises(ConfigError, match=r"nan\.txt:2: 'x' is not a number"):
        load_word_vectors(nan, vocab)
    with pytest.raises(ConfigError, match="expected 4"):
        load_word_vectors(_write(tmp_path / "ok.txt", ["good 1 2 3"]), vocab, dim=4)
    with pytest.raises(ConfigError, match="not found"):
        load_word_vectors(tmp_path / "missing.txt", vocab)


def test_shared_glove_subset_covers_sst2_words():
    glove = SHARED_DATA / "glove-6B-50d-subset" / "glove.6B.50d.subset.txt.gz"
    sst2 = SHARED_DATA / "SST-2" / "train.tsv"
    if not glove.is_file() or not sst2.is_file():
        pytest.skip(f"{glove} or {sst2} not present (the shared data folder sits beside the repo)")
    lines = sst2.read_text().splitlines()[1:2001]
    vocab = WordVocab.build(line.split("\t")[0] for line in lines)
    vec = load_word_vectors(glove, vocab)
    assert vec.dim == 50 and vec.found / (len(vocab) - 2) > 0.95
