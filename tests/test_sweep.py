"""``bertdistill sweep`` and ``data.selection_fraction``: the selection slice is carved from train and never trained
on (not even as an augmented variant or through the teacher cache), a 2×2 grid writes the right sweep.json / table /
best.yaml without reading dev, a killed sweep resumes, and a bad --grid is one clear line."""

from __future__ import annotations

import json

import pytest
import yaml

from bertdistill import distill, list_methods, load_config
from bertdistill.cli import main
from bertdistill.config import ConfigError, DataConfig
from bertdistill.data import loading
from bertdistill.data.loading import (
    Examples,
    load_examples,
    resolve_task,
    run_eval_examples,
    run_train_examples,
    selection_split,
    without_selection,
)
from bertdistill.sweep import sweep, table
from bertdistill.training.loop import Trainer
from conftest import recipe, write_sst2
from test_methods import _cfg
from test_methods import fixtures as fixtures  # the fixture the methods' test configs read

STEPS = {"max_steps": 2, "save_every": 1, "log_every": 1}
GRID = ["method.temperature=1,4", "method.alpha=0.5,0.9"]


# ----------------------------------------------------------------------------------------------- the slice


def test_selection_split_is_seeded_disjoint_and_keeps_duplicates_together():
    texts = [(f"s{i % 40}",) for i in range(100)]  # every text 2-3 times
    ex = Examples(texts, [i % 2 for i in range(100)], "x")
    kept, held = selection_split(ex, 0.1)
    assert (kept, held) == selection_split(ex, 0.1)  # seeded, not from the run's seed
    assert sorted(kept + held) == list(range(100)) and not set(kept) & set(held)
    assert 10 <= len(held) <= 13  # about the fraction, whole duplicate groups
    assert not {texts[i] for i in kept} & {texts[i] for i in held}
    with pytest.raises(ConfigError, match="selection_fraction"):
        DataConfig(selection_fraction=1.0)


def test_run_examples_carve_the_slice_from_train_and_never_read_dev(sst2_dir, monkeypatch):
    cfg = DataConfig(task="sst2", path=str(sst2_dir), selection_fraction=0.25)
    task = resolve_task(cfg)
    full = load_examples(cfg, task, "train")
    read = []
    original = loading.load_examples
    monkeypatch.setattr(
        loading, "load_examples", lambda c, t, split: read.append(split) or original(c, t, split)
    )
    train, ev = run_train_examples(cfg, task), run_eval_examples(cfg, task)
    assert ev is not None and "dev" not in read
    assert len(train) + len(ev) == len(full) and len(ev) == len(selection_split(full, 0.25)[1]) >= 24
    assert not set(train.texts) & set(ev.texts) and set(ev.texts) <= set(full.texts)


def test_augmented_rows_of_selection_examples_are_dropped(sst2_dir, tmp_path):
    cfg = DataConfig(task="sst2", path=str(sst2_dir), selection_fraction=0.25)
    task = resolve_task(cfg)
    full = load_examples(cfg, task, "train")
    held = {full.texts[i] for i in selection_split(full, 0.25)[1]}
    # what `bertdistill augment` writes: each source's original row, then its variants, with source_index
    rows, sources = [], []
    for i, t in enumerate(full.texts):
        rows += [t, (t[0] + " variant",), (t[0] + " other",)]
        sources += [i, i, i]
    aug = tmp_path / "aug.tsv"
    aug.write_text(
        "sentence\tsource_index\n" + "".join(f"{r[0]}\t{s}\n" for r, s in zip(rows, sources, strict=True))
    )
    for path in (aug, tmp_path / "bare.tsv"):
        if path.name == "bare.tsv":  # no source_index: groups start at the rows that are training examples
            path.write_text("sentence\n" + "".join(f"{r[0]}\n" for r in rows))
        ex = load_examples(DataConfig(task="sst2", path=str(path)), task, "train")
        kept = without_selection(ex, cfg, task)
        assert len(kept) == 3 * (len(full) - len(held))
        assert not any(t in held or (t[0].rsplit(" ", 1)[0],) in held for t in kept.texts)
    other = tmp_path / "other.tsv"
    other.write_text("sentence\nnot a training sentence\n")
    with pytest.raises(ConfigError, match="cannot be told apart"):
        without_selection(load_examples(DataConfig(task="sst2", path=str(other)), task, "train"), cfg, task)


@pytest.mark.parametrize(("name", "key"), [("tinybert", "train_data"), ("bilstm", "augmented_data")])
def test_a_method_never_trains_on_variants_of_selection_examples(name, key, fixtures, tmp_path):
    cfg = DataConfig(task="sst2", path=str(fixtures["sst2"]), selection_fraction=0.25)
    task = resolve_task(cfg)
    full = load_examples(cfg, task, "train")
    held = {full.texts[i][0] for i in selection_split(full, 0.25)[1]}
    aug = tmp_path / "aug.tsv"
    aug.write_text(
        "sentence\tsource_index\n"
        + "".join(f"{t[0]}\t{i}\n{t[0]} very\t{i}\n" for i, t in enumerate(full.texts))
    )
    tr = Trainer(
        _cfg(name, fixtures, tmp_path, method={key: str(aug)}, data={"selection_fraction": 0.25}), quiet=True
    )
    trained = {t[0] for t in tr.datasets["train"].texts}
    assert {f"{t} very" for t in set(full.texts[i][0] for i in range(len(full))) - held} <= trained
    assert not trained & (held | {f"{t} very" for t in held})


def _texts(ds):
    parts = getattr(ds, "parts", None)
    if parts is not None:
        return {(name, t) for name, p in parts.items() for t in getattr(p, "texts", [])}
    return set(getattr(ds, "texts", None) or [])


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_every_method_trains_without_the_slice_and_evaluates_on_it(name, fixtures, tmp_path):
    """Whatever datasets a method builds, the selection slice is its eval set and in none of its training
    sets; the cache of teacher outputs is built from (and keyed by) the training set without the slice."""
    cfg = _cfg(name, fixtures, tmp_path, data={"selection_fraction": 0.25})
    tr = Trainer(cfg, quiet=True)
    held = _texts(tr.datasets.get("eval"))
    if not held:
        pytest.skip(
            f"{name} trains on a raw-text corpus here, scored on the corpus's own held-out lines (never dev)"
        )
    for key, ds in tr.datasets.items():
        if key != "eval":
            assert not _texts(ds) & held, f"{name}: dataset {key!r} trains on selection examples"
    if not getattr(tr.datasets["eval"], "parts", None):  # one task: the slice is train rows, none from dev
        assert held <= set(load_examples(cfg.data, tr.task, cfg.data.train_split).texts)


def test_teacher_cache_holds_only_the_training_part(teacher_dir, sst2_dir, tmp_path):
    cache = tmp_path / "cache"
    r = recipe(
        "kd", teacher_dir, sst2_dir, tmp_path / "out", cache, data={"selection_fraction": 0.25}, train=STEPS
    )
    distill(r, quiet=True)
    cfg = load_config(r)
    full = load_examples(cfg.data, resolve_task(cfg.data), "train")
    metas = [json.loads(p.read_text()) for p in cache.rglob("meta.json")]
    assert metas and all(m["examples"] == len(selection_split(full, 0.25)[0]) < len(full) for m in metas)


# ----------------------------------------------------------------------------------------------- the sweep


@pytest.fixture
def sweep_recipe(teacher_dir, tmp_path):
    data = write_sst2(tmp_path / "data", n_train=64, n_dev=16)
    return recipe("kd", teacher_dir, data, tmp_path / "unused", tmp_path / "cache", train=STEPS)


def test_2x2_sweep_outputs_without_reading_dev(sweep_recipe, tmp_path, monkeypatch):
    read = []
    original = loading.load_examples
    monkeypatch.setattr(
        loading, "load_examples", lambda c, t, split: read.append(split) or original(c, t, split)
    )
    out = tmp_path / "sweep"
    res = sweep(sweep_recipe, GRID, out, seeds=[1, 2], log=lambda m: None)
    assert "dev" not in read and set(read) == {"train"}

    rec = json.loads((out / "sweep.json").read_text())
    assert rec["seeds"] == [1, 2] and rec["selection_fraction"] == 0.1 and rec["final_dev"] is None
    assert len(rec["points"]) == 4
    assert {
        (p["overrides"]["method.temperature"], p["overrides"]["method.alpha"]) for p in rec["points"]
    } == {(1.0, 0.5), (1.0, 0.9), (4.0, 0.5), (4.0, 0.9)}
    for p in rec["points"]:
        assert p["seeds"] == [1, 2] and p["steps"] == [2, 2]
        for d, score in zip(p["runs"], p["scores"], strict=True):
            run = load_config(f"{d}/bertdistill.yaml")
            assert run.data.selection_fraction == 0.1
            assert (run.method.temperature, run.method.alpha) == (
                p["overrides"]["method.temperature"],
                p["overrides"]["method.alpha"],
            )
            assert score == json.loads((tmp_path / d / "metrics.json").read_text())["accuracy"]
        assert p["mean"] == pytest.approx(sum(p["scores"]) / 2)
    by_rank = sorted(rec["points"], key=lambda p: p["rank"])
    assert [p["rank"] for p in by_rank] == [1, 2, 3, 4]
    assert [p["mean"] for p in by_rank] == sorted((p["mean"] for p in by_rank), reverse=True)
    best = max(rec["points"], key=lambda p: p["mean"])
    assert rec["best"]["mean"] == best["mean"]

    text = (out / "best.yaml").read_text()
    assert text.startswith("#") and "selection_fraction" in text.split("\n", 5)[2]
    chosen = load_config(out / "best.yaml")
    assert chosen.data.selection_fraction is None and chosen.data.eval_split == "dev"
    assert chosen.method.temperature == rec["best"]["overrides"]["method.temperature"]
    assert chosen.method.alpha == rec["best"]["overrides"]["method.alpha"]
    assert chosen.train.max_steps == 2 and chosen.train.seed == 1
    assert yaml.safe_load(text)["method"]["name"] == "kd"

    md = table(res)
    assert md.count("\n| ") == 4 and "(best)" in md and "dev not read" in md
    assert (out / "sweep.png").stat().st_size > 0


def test_killed_sweep_resumes_and_skips_finished_runs(sweep_recipe, tmp_path, monkeypatch):
    import bertdistill.training.loop as loop

    calls = []
    original_distill, original_ckpt = loop.distill, loop.Trainer._checkpoint

    def counting(cfg, *a, resume=False, **k):
        calls.append((cfg.output_dir, resume))
        return original_distill(cfg, *a, resume=resume, **k)

    runs_seen: list = []

    def crash_in_third_run(self, *a, **k):
        original_ckpt(self, *a, **k)
        if self.out not in runs_seen:
            runs_seen.append(self.out)
            if len(runs_seen) == 3:  # right after the first checkpoint of the third run
                raise KeyboardInterrupt

    monkeypatch.setattr(loop, "distill", counting)
    monkeypatch.setattr(loop.Trainer, "_checkpoint", crash_in_third_run)
    out = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        sweep(sweep_recipe, GRID, out, log=lambda m: None)
    assert len(calls) == 3 and not (out / "sweep.json").exists()
    killed = calls[-1][0]
    monkeypatch.setattr(loop.Trainer, "_checkpoint", original_ckpt)

    calls.clear()
    sweep(sweep_recipe, GRID, out, log=lambda m: None)
    # two finished runs reused (not trained), the killed one resumed from its checkpoint, the last trained
    assert calls[0] == (killed, True) and len(calls) == 2 and not calls[1][1]
    calls.clear()
    res = sweep(sweep_recipe, GRID, out, final_dev=True, log=lambda m: None)
    assert calls == []  # all four reused
    fd = json.loads((out / "sweep.json").read_text())["final_dev"]
    assert fd["split"] == "dev" and len(fd["scores"]) == 1 and "once" in fd["note"]
    assert "Final dev" in table(res)


# ----------------------------------------------------------------------------------------------- bad grids


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("method.temperature", "must look like section.key=v1,v2"),
        ("method.temprature=1,2", "unknown key"),
        ("method.temperature=", "empty value"),
        ("method.temperature=1,,2", "empty value"),
        ("method.temperature=abc", "expected a number"),
        ("train.seed=1,2", "use --seeds"),
    ],
)
def test_bad_grid_is_one_clear_line(grid, message, sweep_recipe, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(sweep_recipe))
    rc = main(["sweep", str(path), "--grid", grid, "--output", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "--grid" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_cli_sweep_prints_the_ranked_table(sweep_recipe, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(sweep_recipe))
    out = tmp_path / "s"
    argv = [
        "sweep",
        str(path),
        "--grid",
        "method.alpha=0.2,0.8",
        "--set",
        "train.lr=2e-3",
        "-o",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["set"] == ["train.lr=2e-3"] and rec["grid"] == {"method.alpha": ["0.2", "0.8"]}
    assert "| rank | method.alpha |" in printed and "best.yaml" in printed
    assert load_config(out / "best.yaml").train.lr == 2e-3


def test_selection_fraction_flag_is_checked(sweep_recipe, tmp_path):
    with pytest.raises(ConfigError, match="^data.selection_fraction must be between 0 and 1"):
        sweep(sweep_recipe, GRID, tmp_path / "s", selection_fraction=0.0, log=lambda m: None)
