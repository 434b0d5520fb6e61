"""benchmarks/replay.py: the tensor comparison, the case table, the recipe patching, a real replay of a tiny
recipe from this checkout's tree (the same code twice → bit-identical; another seed → different), and the
result's schema and report cells."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmarks import harness as H
from benchmarks import replay, report
from benchmarks.schema import validate


def _model(d: Path, **tensors: torch.Tensor) -> None:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))


def test_compare_models_finds_each_kind_of_difference(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    w = torch.arange(6.0).reshape(2, 3)
    for root in (a, b):
        _model(root / "kd", w=w.clone(), b=torch.zeros(3))
        _model(root / "kd/checkpoints/step-4", w=torch.rand(2, 3))  # checkpoints are not compared
    same = replay.compare_models(a, b)
    assert same["identical"] and same["tensors"] == 2 and same["models"] == ["kd/model.safetensors"]

    _model(b / "kd", w=w.clone(), b=torch.tensor([0.0, 0.0, 1e-7]))
    one = replay.compare_models(a, b)
    assert (
        not one["identical"]
        and one["differing"] == ["kd/model.safetensors:b"]
        and one["differing_count"] == 1
    )

    _model(b / "kd", w=w.clone())  # a tensor missing on one side
    assert replay.compare_models(a, b)["differing"] == ["kd/model.safetensors:b"]

    _model(b / "kd", w=w.clone(), b=torch.zeros(3))
    _model(b / "stage2", w=w.clone())  # a model saved by one side only
    extra = replay.compare_models(a, b)
    assert not extra["identical"] and extra["models_in_one_only"] == ["stage2/model.safetensors"]

    assert not replay.compare_models(tmp_path / "none", tmp_path / "none2")["identical"]  # nothing saved


def test_every_headline_file_has_a_case():
    table = replay.cases(Path("/t/sst2"), Path("/t/mrpc"))
    results = dict(report.load_results(H.RESULTS)[0])
    checked = 0
    for names in report.HEADLINES.values():
        for name in names:
            if name in results:
                r = results[name]
                assert replay.case_key(str(r["method"]), str(r["task"]), table, name), name
                checked += 1
    assert checked >= 15
    # a file with a shape of its own has a case of its own; the others share their method's
    assert replay.case_key("mobilebert", "sst2", table, "mobilebert_sst2_tiny") == (
        "mobilebert",
        "mobilebert_sst2_tiny",
    )
    assert replay.case_key("mobilebert", "sst2", table, "mobilebert_sst2") == ("mobilebert", "sst2")
    assert replay.case_key("mtdnn_kd", "stsb", table, "mtdnn_kd_5ep_stsb") == ("mtdnn_kd", "*")
    assert replay.case_key("nope", "sst2", table, "x") is None
    for steps in table.values():
        for step in steps:  # each names a shipped recipe
            assert (H.ROOT / "src/bertdistill/recipe_files" / f"{step.recipe}.yaml").is_file(), step.recipe


def test_fields_are_set_and_substituted():
    raw = {"train": {"lr": 1e-4}}
    names = {"steps": 6, "out:pretrain": "/runs/pretrain", "fixtures": "/fx"}
    replay.set_field(raw, "train.max_steps", replay.substitute("{steps}", names))
    replay.set_field(raw, "student.path", replay.substitute("{out:pretrain}", names))
    replay.set_field(raw, "method.corpus", replay.substitute(["{fixtures}/corpus.txt"], names))
    assert raw == {
        "train": {"lr": 1e-4, "max_steps": 6},
        "student": {"path": "/runs/pretrain"},
        "method": {"corpus": ["/fx/corpus.txt"]},
    }


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(steps=3, threads=1, train_examples=48, eval_examples=16, work=tmp_path / "work")


def test_a_replay_from_this_tree_is_bit_identical_and_a_reseeded_one_is_not(tmp_path, teacher_dir, sst2_dir):
    """The real path: ``kd/sst2`` patched and run through the CLI in a subprocess from a tree's ``src/`` (this
    checkout), twice; then with another seed."""
    args = _args(tmp_path)
    fields = {"teacher.path": str(teacher_dir), "data.path": str(sst2_dir), "data.max_length": 32}
    steps = [replay.Step("kd", "kd/sst2", fields)]
    runs = {}
    for label, extra in (("a", {}), ("b", {}), ("seed43", {"train.seed": 43})):
        runs[label] = tmp_path / label
        case = [replay.Step(s.label, s.recipe, {**s.fields, **extra}) for s in steps]
        replay.run_case(H.ROOT, case, runs[label], args, tmp_path)
    written = replay.yaml.safe_load((runs["a"] / "kd.yaml").read_text())
    assert written["train"]["max_steps"] == 3 and written["teacher"]["path"] == str(teacher_dir)
    same = replay.compare_models(runs["a"], runs["b"])
    assert same["identical"] and same["tensors"] > 0
    assert replay.final_metrics(runs["a"], steps) == replay.final_metrics(runs["b"], steps)
    other = replay.compare_models(runs["a"], runs["seed43"])
    assert not other["identical"] and other["differing_count"] > 0


def test_a_failing_run_names_the_recipe_and_the_log_tail(tmp_path):
    bad = [replay.Step("kd", "kd/sst2", {"teacher.path": str(tmp_path / "no-such-teacher")})]
    with pytest.raises(RuntimeError, match=r"kd/sst2 in .* exited"):
        replay.run_case(H.ROOT, bad, tmp_path / "out", _args(tmp_path), tmp_path)


def _result(rows: list[dict], against: str = "a" * 40) -> dict:
    return {
        **H.provenance(
            "replay",
            seeds=[42],
            steps=6,
            train_examples=128,
            precision="fp32",
            optimizer="the recipes' own",
            train_threads=1,
            timing_threads=None,
        ),
        "date": "2026-12-06",
        "what": "test",
        "against": against,
        "steps_per_stage": 6,
        "rows": rows,
        "sanity": {"what": "seed 42 vs 43", "outcome": "different", "tensors": 4, "differing_count": 4},
    }


def test_the_result_validates_and_the_report_shows_it():
    rows = [
        {"file": "kd_x", "method": "kd", "task": "sst2", "commit": "e0610e3" + "0" * 33, "outcome": "bit-identical",
         "models": ["kd/model.safetensors"], "tensors": 114,
         "metrics": {"commit": {"accuracy": 0.5}, "against": {"accuracy": 0.5}}},
        {"file": "mb_x", "method": "mobilebert", "task": "sst2", "commit": "7d87dd2" + "0" * 33,
         "outcome": "same library code"},
        {"file": "cm_x", "method": "cmlm", "task": "t", "commit": "", "outcome": "not replayed: no commit"},
    ]  # fmt: skip
    r = _result(rows)
    assert validate(r) == []
    assert validate({**r, "sanity": None}) != []
    replays = report.newest_replays([("replay_a", r), ("other", {"kind": "distill"})])
    assert report.describe_replay(replays, "kd_x", "e0610e3") == (
        "bit-identical to `aaaaaaa` (114 tensors, 6 steps per stage; replay_a)"
    )
    assert report.describe_replay(replays, "mb_x", "7d87dd2") == "same `src/` as `aaaaaaa` (replay_a)"
    assert report.describe_replay(replays, "kd_x", "1234567") == "-"  # the file was measured again since
    assert report.describe_replay(replays, "nope", "e0610e3") == "-"
    # a newer replay of the same file wins
    newer = _result([{**rows[0], "outcome": "different"}], against="b" * 40) | {"date": "2026-12-07"}
    replays = report.newest_replays([("replay_b", newer), ("replay_a", r)])
    assert report.describe_replay(replays, "kd_x", "e0610e3") == "different (replay_b)"
    text = "\n".join(report.render_replay("replay_a", r))
    assert "| kd_x | e0610e3 | bit-identical | 1 | 114 | accuracy 0.5 / 0.5 |" in text
    assert "| cm_x | not recorded | not replayed: no commit |  |  |  |" in text
    assert "**different** (4 of 4 tensors differ)" in text
    json.dumps(r)  # written as JSON


def test_a_tree_whose_src_is_not_imported_is_refused(tmp_path):
    """A tree without the package (or shadowed by an installed copy) would replay today's code on both sides: the
    driver stops instead of comparing a commit with itself."""
    fake = tmp_path / "tree"
    (fake / "src/bertdistill/recipe_files/kd").mkdir(parents=True)
    (fake / "src/bertdistill/recipe_files/kd/sst2.yaml").write_text("method: {name: kd}\n")
    with pytest.raises(RuntimeError, match="was imported from .* not from"):
        replay.run_case(fake, [replay.Step("kd", "kd/sst2")], tmp_path / "out", _args(tmp_path), tmp_path)


def test_prune_removes_only_the_runs_of_unused_trees(tmp_path, capsys):
    """The replay cache grows by a reference tree's runs every time the code moves; after a replay, runs and
    extracted trees of src/ trees that neither the reference nor a headline file has are removed, at the replay's
    settings only."""
    args = _args(tmp_path)
    settings = args.work / "runs" / "s3-n48-e16-t1"
    other_settings = args.work / "runs" / "s6-n128-e32-t1"
    for parent in (settings, other_settings, args.work / "trees"):
        for tree in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
            (parent / tree / "kd-sst2").mkdir(parents=True)
            (parent / tree / "kd-sst2" / "model.safetensors").write_bytes(b"x" * 10)
    replay.prune(args, {"aaaaaaaaaaaa"})
    assert sorted(p.name for p in settings.iterdir()) == ["aaaaaaaaaaaa"]
    assert sorted(p.name for p in (args.work / "trees").iterdir()) == ["aaaaaaaaaaaa"]
    assert sorted(p.name for p in other_settings.iterdir()) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert "bbbbbbbbbbbb" in capsys.readouterr().out


def test_headline_commits_are_those_recorded_and_present():
    """Every headline file's recorded commit that this checkout has, and nothing else: the trees a prune keeps."""
    results, _ = replay.load_results(H.RESULTS)
    by_name = dict(results)
    expected = set()
    for names in replay.HEADLINES.values():
        for n in names:
            c = str(by_name.get(n, {}).get("commit") or "").removesuffix("+dirty")
            if c and replay.git("rev-parse", "--verify", f"{c}^{{commit}}") is not None:
                expected.add(c)
    assert replay.headline_commits(by_name) == expected
    fake = {"kd_sst2_3layer": {"commit": "0" * 40}}  # recorded, but not in this checkout: not kept
    assert replay.headline_commits(fake) == set()
