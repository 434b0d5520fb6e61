"""Build the raw-text corpus of the DistilBERT recipe from the TRAIN splits of the shared data, outside the repo.

    python -m benchmarks.make_corpus            # -> ~/.cache/bertdistill/corpus/glue-train-sentences.txt

Sources (train splits only; one sentence per line, de-duplicated, order kept): SST-2 train (GLUE, phrase-level),
SST-2-sentence train (stsa.binary.train — its dev/test files are GLUE SST-2's dev/test and are never read),
MRPC train (both sentences), STS-B train (both sentences), Multi30k English train. As a guard, any line equal
(case- and space-insensitively) to a sentence of a dev or test split of these sets is dropped and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.harness import SHARED

DEFAULT_OUT = Path("~/.cache/bertdistill/corpus/glue-train-sentences.txt")


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _glue(task: str, path: Path) -> Iterator[str]:
    from bertdistill.data.loading import read_tsv
    from bertdistill.data.tasks import get_task

    spec = get_task(task)
    for texts in read_tsv(path, spec, labelled=False).texts:
        yield from texts


def _stsa(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield line.split(" ", 1)[1] if line[:2] in ("0 ", "1 ") else line


def _lines(path: Path) -> Iterator[str]:
    yield from path.read_text(encoding="utf-8").splitlines()


def train_sources(root: Path) -> dict[str, Iterator[str]]:
    return {
        "SST-2/train.tsv": _glue("sst2", root / "SST-2" / "train.tsv"),
        "SST-2-sentence/stsa.binary.train": _stsa(root / "SST-2-sentence" / "stsa.binary.train"),
        "MRPC/train.tsv": _glue("mrpc", root / "MRPC" / "train.tsv"),
        "STS-B/train.tsv": _glue("stsb", root / "STS-B" / "train.tsv"),
        "Multi30k-de-en/train.en": _lines(root / "Multi30k-de-en" / "train.en"),
    }


def held_out_sentences(root: Path) -> set[str]:
    """Sentences of every dev / test split of the same sets (never allowed in the corpus)."""
    out: set[str] = set()
    for task, d in (("sst2", "SST-2"), ("mrpc", "MRPC"), ("stsb", "STS-B")):
        out.update(_norm(s) for s in _glue(task, root / d / "dev.tsv"))
    from bertdistill.data.loading import read_tsv
    from bertdistill.data.tasks import TaskSpec, TsvLayout

    test_layout = {
        "SST-2": TaskSpec("sst2-test", ("sentence",), tsv=TsvLayout(("sentence",), None)),
        "MRPC": TaskSpec("mrpc-test", ("a", "b"), tsv=TsvLayout(("#1 String", "#2 String"), None)),
        "STS-B": TaskSpec("stsb-test", ("a", "b"), tsv=TsvLayout(("sentence1", "sentence2"), None)),
    }
    for d, spec in test_layout.items():
        for texts in read_tsv(root / d / "test.tsv", spec, labelled=False).texts:
            out.update(_norm(s) for s in texts)
    for f in ("stsa.binary.dev", "stsa.binary.test"):
        out.update(_norm(s) for s in _stsa(root / "SST-2-sentence" / f))
    for f in ("val.en", "test.en"):
        out.update(_norm(s) for s in _lines(root / "Multi30k-de-en" / f) if s.strip())
    return out


def build(root: Path, out: Path) -> dict[str, int]:
    banned = held_out_sentences(root)
    seen: set[str] = set()
    stats: dict[str, int] = {}
    dropped = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    # a temporary file of this build's own, renamed over ``out`` when complete: benchmarks started together (one per
    # core) may all find the corpus missing and build it at once; each then writes the same text and the last
    # rename wins, where one shared temporary name had one build truncate and then move away another's file
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8") as f:
            for name, lines in train_sources(root).items():
                n = 0
                for line in lines:
                    text = " ".join(line.split())
                    key = _norm(text)
                    if not text or key in seen:
                        continue
                    seen.add(key)
                    if key in banned:
                        dropped += 1
                        continue
                    f.write(text + "\n")
                    n += 1
                stats[name] = n
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    stats["dropped_as_dev_or_test"] = dropped
    stats["total"] = sum(v for k, v in stats.items() if "/" in k)
    return stats


def ensure(out: str | Path = DEFAULT_OUT, root: Path = SHARED) -> Path:
    """The corpus at ``out`` (``~`` expanded), built from ``root``'s train splits first if it is missing (the
    build's counts printed)."""
    path = Path(out).expanduser()
    if not path.is_file():
        print(json.dumps(build(root, path)), flush=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED), help="the shared data dir (default: ../shared/data)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    out = Path(args.out).expanduser()
    if Path(__file__).resolve().parents[1] in out.resolve().parents:
        raise SystemExit(
            f"{out}: write the corpus outside the repository (shared data is never copied into it)"
        )
    stats = build(Path(args.data), out)
    print(json.dumps({"corpus": str(out), **stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
