"""benchmarks/make_corpus.py: the DistilBERT / MobileBERT raw-text corpus from train splits only, built safely when
several benchmarks start at once. Tiny in-memory sources; the shared data is not read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import make_corpus


@pytest.fixture
def sources(monkeypatch):
    """Two train sources (a duplicate across them, one dev sentence among them) and the held-out set."""
    data = {
        "A/train.tsv": ["a good film", "A  good film", "the dev sentence"],
        "B/train.en": ["a dog runs", ""],
    }

    def train_sources(root: Path) -> dict[str, Iterator[str]]:
        return {k: iter(v) for k, v in data.items()}

    monkeypatch.setattr(make_corpus, "train_sources", train_sources)
    monkeypatch.setattr(
        make_corpus, "held_out_sentences", lambda root: {make_corpus._norm("The dev sentence")}
    )
    return data


def test_train_lines_deduplicated_and_held_out_sentences_dropped(sources, tmp_path):
    out = tmp_path / "corpus" / "c.txt"
    stats = make_corpus.build(tmp_path, out)
    assert out.read_text().splitlines() == ["a good film", "a dog runs"]
    assert stats == {"A/train.tsv": 1, "B/train.en": 1, "dropped_as_dev_or_test": 1, "total": 2}
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_builds_that_overlap_each_finish_with_the_whole_corpus(sources, tmp_path, monkeypatch):
    """Two benchmarks (one per core) find the corpus missing and build it at once: a second build runs to its
    end in the middle of the first. Both succeed and the file is whole (one shared temporary name had the
    second truncate the first's file and rename it away, and the first die on its rename)."""
    out = tmp_path / "c.txt"
    plain = make_corpus.train_sources
    started = []

    def overlapping(root: Path) -> dict[str, Iterator[str]]:
        srcs = plain(root)
        if not started:
            started.append(True)

            def first_then_other(it: Iterator[str]) -> Iterator[str]:
                yield next(it)
                make_corpus.build(root, out)  # the other process's whole build
                yield from it

            srcs["A/train.tsv"] = first_then_other(srcs["A/train.tsv"])
        return srcs

    monkeypatch.setattr(make_corpus, "train_sources", overlapping)
    make_corpus.build(tmp_path, out)
    assert out.read_text().splitlines() == ["a good film", "a dog runs"]
    assert list(tmp_path.iterdir()) == [out]


def test_a_failed_build_leaves_no_partial_corpus(sources, tmp_path, monkeypatch):
    def broken(root: Path) -> dict[str, Iterator[str]]:
        def lines() -> Iterator[str]:
            yield "a line"
            raise OSError("disk gone")

        return {"A/train.tsv": lines()}

    monkeypatch.setattr(make_corpus, "train_sources", broken)
    with pytest.raises(OSError, match="disk gone"):
        make_corpus.build(tmp_path, tmp_path / "c.txt")
    assert list(tmp_path.iterdir()) == []
