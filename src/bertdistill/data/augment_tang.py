"""Tang et al. 2019 data augmentation (§3.3 of "Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks"; official code ``castorini/d-bert``, ``dbert/distill/run/augment_data.py`` and
``augment_paired_data.py``). The teacher labels every row it produces; no label is ever copied.

Per example, ``n_iter`` = 20 times, for every word draw X ~ U(0, 1):

* X < ``p_mask`` = 0.1 → ``[MASK]`` (the teacher's mask token; the student learns it as one more word);
* X < ``p_mask + p_pos`` = 0.2 → a word with the same part-of-speech tag, sampled by unigram frequency over
  the whole training split (the official ``pos_dict[tag]`` lists every occurrence, so a uniform choice from it
  is a draw by frequency; it may return the word itself);
* else the word is kept.

Then, with probability ``p_ng`` = 0.25, only a random n-gram of the sample is kept, n uniform in [1, 5] (the
official scripts draw this coin before the words). A sample already produced — or equal to any original
sentence — is dropped; so is a single-sentence sample whose every word was replaced (official). Each
example's original text comes first in the output.

**Pairs** (official ``augment_paired_data.py``): the part-of-speech lexicon is built from both sentences; each
try draws ``roll`` ~ U(0, 1) and ``both`` = U(0, 1) > ``pair_single_prob`` (2/3): sentence 1 is augmented when
``roll < 0.5`` or ``both``, sentence 2 when ``roll ≥ 0.5`` or ``both`` — so each try changes one side with
probability 2/3 and both with 1/3; the other side stays the (tokenised) original. A try that leaves a side
empty is skipped; duplicates are dropped as pairs.

Words and tags: NLTK's Treebank word tokenizer (``NLTKWordTokenizer``: what ``nltk.word_tokenize`` runs
after its Punkt sentence split, which needs no data) and its averaged-perceptron tagger, read from an NLTK
data dir (``--nltk-data``, ``$BERTDISTILL_NLTK_DATA``, or NLTK's own search path; the shared zip with its
folder named ``averaged_perceptron_tagger/`` is read in place). spaCy (``tagger="spacy"``) when installed.

Differences from the official scripts (also in ``docs/methods/bilstm.md``): one RNG per example, seeded from
``(seed, example index)`` (results do not depend on chunking; the official script runs one global stream); the
n-gram start is uniform over all ``len − n + 1`` positions and n ≥ len keeps the whole sample (official:
``randrange(len − n)`` never picks the last n-gram, and n ≥ len ends the example's remaining tries); the
paired script's default ``n_iter`` is 10 and both scripts default to ``window_prob`` 0 — we use the paper's
20 and 0.25 for both.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .augment import AugmentResult
from .loading import Examples

log = logging.getLogger(__name__)

NLTK_DATA_ENV = "BERTDISTILL_NLTK_DATA"
TAGGER_FILE = "averaged_perceptron_tagger_eng.weights.json"
INSTALL_HINT = "pip install 'bertdistill[bilstm]' (or pip install 'nltk>=3.9,<4')"


@dataclass
class TangAugmentConfig:
    n_iter: int = 20
    """Tries per example (paper: 20)."""
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ng: float = 0.25
    """Probability of keeping only an n-gram of a sample (paper 0.25; the official scripts' default is 0)."""
    ngram_max: int = 5
    """n of the n-gram is uniform in [1, ngram_max]."""
    pair_single_prob: float = 2 / 3
    """Pairs: probability that a try changes one side only (official ``single_only_prob``)."""
    drop_all_replaced: bool = True
    """Single sentences: drop a sample whose every word was masked or replaced (official)."""
    mask_token: str = "[MASK]"
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("p_mask", "p_pos", "p_ng", "pair_single_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augment {name} must be in [0, 1], got {v}")
        if self.p_mask + self.p_pos > 1.0:
            raise ConfigError(f"augment p_mask + p_pos must be <= 1, got {self.p_mask + self.p_pos}")
        if self.n_iter < 0 or self.ngram_max < 1:
            raise ConfigError("augment needs n_iter >= 0 and ngram_max >= 1")


# ----------------------------------------------------------------------------------------------- taggers


@dataclass
class WordTagger:
    """How text becomes words (``split``) and words get part-of-speech tags (``tag``)."""

    split: Callable[[str], list[str]]
    tag: Callable[[list[str]], list[str]]
    name: str


def _import_nltk() -> Any:
    try:
        import nltk
    except ImportError:
        raise ConfigError(
            f"Tang augmentation tags words with NLTK, which is not installed: {INSTALL_HINT}"
        ) from None
    return nltk


def _tagger_in(nltk: Any, root: Path) -> Any | None:
    """A path pointer to the English averaged-perceptron tagger under NLTK data dir ``root`` (an extracted
    ``taggers/averaged_perceptron_tagger_eng/`` folder, or the zip whatever its inner folder's name), or None."""
    taggers = root / "taggers"
    folder = taggers / "averaged_perceptron_tagger_eng"
    if (folder / TAGGER_FILE).is_file():
        return nltk.data.FileSystemPathPointer(str(folder.resolve()))
    z = taggers / "averaged_perceptron_tagger_eng.zip"
    if z.is_file():
        import zipfile

        with zipfile.ZipFile(z) as zf:
            inner = next((n for n in zf.namelist() if n.endswith("/" + TAGGER_FILE)), None)
        if inner is not None:
            return nltk.data.ZipFilePathPointer(str(z.resolve()), inner[: -len(TAGGER_FILE)])
    return None


def nltk_tagger(data_dir: str | os.PathLike[str] | None = None) -> WordTagger:
    """NLTK's Treebank word split and averaged-perceptron tagger; the tagger's data from ``data_dir``, else
    ``$BERTDISTILL_NLTK_DATA``, else NLTK's own search path (``$NLTK_DATA``, ``~/nltk_data`` …)."""
    nltk = _import_nltk()
    from nltk.tag.perceptron import PerceptronTagger
    from nltk.tokenize import NLTKWordTokenizer

    given = data_dir or os.environ.get(NLTK_DATA_ENV)
    tagger = PerceptronTagger(load=False)
    if given:
        root = Path(given).expanduser().resolve()
        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))  # NLTK only opens files under its data path
        loc = _tagger_in(nltk, root)
        if loc is None:
            raise ConfigError(
                f"no averaged-perceptron tagger under {root}: expected taggers/averaged_perceptron_tagger_eng/ "
                "or taggers/averaged_perceptron_tagger_eng.zip (e.g. ../shared/data/nltk_data)"
            )
        tagger.load_from_json("eng", loc)
    else:
        try:
            tagger.load_from_json("eng")
        except LookupError:
            raise ConfigError(
                "NLTK's averaged_perceptron_tagger_eng was not found: pass --nltk-data DIR (e.g. "
                f"../shared/data/nltk_data) or set ${NLTK_DATA_ENV}"
            ) from None
    splitter = NLTKWordTokenizer()
    return WordTagger(
        split=splitter.tokenize,
        tag=lambda words: [t for _, t in tagger.tag(words)],
        name="nltk averaged perceptron (eng)",
    )


def spacy_tagger(model: str = "en_core_web_sm") -> WordTagger:
    """spaCy's tokenizer and fine-grained (PTB) tags, when spaCy and ``model`` are installed."""
    try:
        import spacy
        from spacy.tokens import Doc
    except ImportError:
        raise ConfigError("--tagger spacy: spaCy is not installed (pip install spacy)") from None
    try:
        nlp = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
    except OSError as e:
        raise ConfigError(f"--tagger spacy: cannot load spaCy model {model!r}: {e}") from None

    def tag(words: list[str]) -> list[str]:
        doc = Doc(nlp.vocab, words=words)
        for _, proc in nlp.pipeline:
            doc = proc(doc)
        return [t.tag_ for t in doc]

    return WordTagger(
        split=lambda text: [t.text for t in nlp.tokenizer(text)], tag=tag, name=f"spacy {model}"
    )


def load_tagger(
    kind: str = "nltk", nltk_data: str | None = None, spacy_model: str = "en_core_web_sm"
) -> WordTagger:
    if kind == "nltk":
        return nltk_tagger(nltk_data)
    if kind == "spacy":
        return spacy_tagger(spacy_model)
    raise ConfigError(f"--tagger must be nltk or spacy, got {kind!r}")


# ----------------------------------------------------------------------------------------------- the lexicon


class PosLexicon:
    """Words by part-of-speech tag with their counts: ``sample(tag, rng)`` draws by unigram frequency."""

    def __init__(self, counts: dict[str, Counter[str]]) -> None:
        self.words: dict[str, list[str]] = {}
        self.cum: dict[str, list[int]] = {}
        for tag, c in counts.items():
            ordered = sorted(c, key=lambda w: (-c[w], w))
            self.words[tag] = ordered
            total, cum = 0, []
            for w in ordered:
                total += c[w]
                cum.append(total)
            self.cum[tag] = cum

    @classmethod
    def build(cls, tagged: Sequence[Sequence[tuple[list[str], list[str]]]]) -> PosLexicon:
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for row in tagged:
            for words, tags in row:
                for w, t in zip(words, tags, strict=True):
                    counts[t][w] += 1
        return cls(dict(counts))

    def sample(self, tag: str, rng: random.Random) -> str:
        cum = self.cum[tag]
        return self.words[tag][bisect.bisect_right(cum, rng.random() * cum[-1])]

    def tags(self) -> list[str]:
        return sorted(self.words)


# ----------------------------------------------------------------------------------------------- generation


@dataclass
class TangAugmenter:
    """Masking, POS-guided replacement and n-gram sampling over tagged examples (see the module doc)."""

    lexicon: PosLexicon
    cfg: TangAugmentConfig = field(default_factory=TangAugmentConfig)

    def sample(
        self, words: list[str], tags: list[str], rng: random.Random, drop_all: bool
    ) -> list[str] | None:
        """One perturbed copy of a sentence (None when every word was replaced and ``drop_all``)."""
        c = self.cfg
        ngram = rng.random() < c.p_ng  # official order: the n-gram coin first
        out: list[str] = []
        replaced = 0
        for w, t in zip(words, tags, strict=True):
            x = rng.random()
            if x < c.p_mask:
                out.append(c.mask_token)
            elif x < c.p_mask + c.p_pos:
                out.append(self.lexicon.sample(t, rng))
            else:
                out.append(w)
                continue
            replaced += 1
        if drop_all and words and replaced == len(words):
            return None
        return self.ngram(out, rng) if ngram else out

    def ngram(self, words: list[str], rng: random.Random) -> list[str]:
        """A random n-gram, n uniform in [1, ngram_max]; the whole sentence when n ≥ its length."""
        n = rng.randint(1, self.cfg.ngram_max)
        if n >= len(words):
            return words
        start = rng.randrange(len(words) - n + 1)
        return words[start : start + n]

    def tries(self, tagged: list[tuple[list[str], list[str]]], rng: random.Random) -> list[tuple[str, ...]]:
        """``n_iter`` candidate rows of one example (1 or 2 tagged texts), before de-duplication."""
        out: list[tuple[str, ...]] = []
        for _ in range(self.cfg.n_iter):
            row = self._try_single(tagged[0], rng) if len(tagged) == 1 else self._try_pair(tagged, rng)
            if row is not None:
                out.append(row)
        return out

    def _try_single(self, sent: tuple[list[str], list[str]], rng: random.Random) -> tuple[str, ...] | None:
        words = self.sample(*sent, rng, drop_all=self.cfg.drop_all_replaced)
        return None if not words else (" ".join(words),)

    def _try_pair(
        self, sents: list[tuple[list[str], list[str]]], rng: random.Random
    ) -> tuple[str, ...] | None:
        roll = rng.random()
        both = rng.random() > self.cfg.pair_single_prob
        sides: list[list[str] | None] = [list(sents[0][0]), list(sents[1][0])]
        if roll < 0.5 or both:
            sides[0] = self.sample(*sents[0], rng, drop_all=False)
        if roll >= 0.5 or both:
            sides[1] = self.sample(*sents[1], rng, drop_all=False)
        if not sides[0] or not sides[1]:
            return None
        return (" ".join(sides[0]), " ".join(sides[1]))


def tag_examples(
    examples: Examples, tagger: WordTagger, progress: bool = True
) -> list[list[tuple[list[str], list[str]]]]:
    """Every text of every example split into words and tagged."""
    from tqdm.auto import tqdm

    out = []
    for row in tqdm(examples.texts, desc="pos tags", disable=not progress, unit="ex"):
        tagged = []
        for text in row:
            words = tagger.split(text)
            tagged.append((words, tagger.tag(words) if words else []))
        out.append(tagged)
    return out


def augment_tang(
    examples: Examples,
    tagger: WordTagger,
    cfg: TangAugmentConfig | None = None,
    progress: bool = True,
) -> AugmentResult:
    """Each example's original row, then its new rows; unlabelled (``labels`` None), with the index of their
    source example. Deterministic under ``cfg.seed``; logs the throughput."""
    from tqdm.auto import tqdm

    cfg = cfg or TangAugmentConfig()
    t0 = time.perf_counter()
    tagged = tag_examples(examples, tagger, progress)
    aug = TangAugmenter(PosLexicon.build(tagged), cfg)
    seen: set[tuple[str, ...]] = set(examples.texts)
    seen.update(tuple(" ".join(w) for w, _ in row) for row in tagged)
    texts: list[tuple[str, ...]] = []
    src: list[int] = []
    bar = tqdm(range(len(examples)), desc="augment (tang)", disable=not progress, unit="ex")
    for i in bar:
        texts.append(tuple(examples.texts[i]))
        src.append(i)
        rng = random.Random(cfg.seed * 1_000_003 + i)
        for row in aug.tries(tagged[i], rng):
            if row not in seen:
                seen.add(row)
                texts.append(row)
                src.append(i)
    result = AugmentResult(
        Examples(texts, None, f"augment-tang:{examples.source}"), src, time.perf_counter() - t0
    )
    log.info(
        "tang augmentation: %d examples -> %d rows in %.1fs (%.1f source examples/s)",
        len(examples),
        len(texts),
        result.seconds,
        result.sentences_per_s,
    )
    return result


def provenance_record(
    cfg: TangAugmentConfig, result: AugmentResult, n_source: int, tagger: str, **sources: Any
) -> dict[str, Any]:
    return {
        "method": "Tang et al. 2019 data augmentation (masking, POS-guided replacement, n-gram sampling)",
        **sources,
        "tagger": tagger,
        "parameters": asdict(cfg),
        "source_examples": n_source,
        "augmented_examples": len(result.examples),
        "expansion": round(len(result.examples) / max(1, n_source), 3),
        "seconds": round(result.seconds, 3),
        "source_sentences_per_s": round(result.sentences_per_s, 3),
        "labels": "none: the teacher labels every row (never copied from the source)",
    }


__all__ = [
    "NLTK_DATA_ENV",
    "PosLexicon",
    "TangAugmentConfig",
    "TangAugmenter",
    "WordTagger",
    "augment_tang",
    "load_tagger",
    "nltk_tagger",
    "provenance_record",
    "spacy_tagger",
    "tag_examples",
]
