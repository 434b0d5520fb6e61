"""Recipes that travel: shipped as package data and run by name, no repo-relative paths, GLUE from the hub
unless ``$BERTDISTILL_DATA_DIR`` or ``data.path`` says otherwise, one clear line when offline, the recipe-less
quick path, and (``slow``) a built wheel in a fresh venv running a recipe by name."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from transformers import AutoModelForSequenceClassification

from bertdistill.cli import main
from bertdistill.config import ConfigError, DataConfig
from bertdistill.data.loading import load_examples
from bertdistill.data.local import DATA_DIR_ENV, expand_data_dir
from bertdistill.data.tasks import get_task
from bertdistill.recipes import (
    RECIPE_DIR,
    find_recipe,
    load_config,
    quick_recipe,
    read_recipe,
    recipe_description,
    shipped_recipes,
)
from conftest import write_sst2

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "bertdistill"
OFFLINE = "Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)"
"""What ``datasets.load_dataset`` raises (as ConnectionError) without a network or with HF_HUB_OFFLINE=1."""


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch):
    """Each test starts without ``$BERTDISTILL_DATA_DIR``, whatever the developer's shell exports."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ----------------------------------------------------------------------------------------------- package data


def test_every_recipe_file_is_shipped_and_declared_as_package_data():
    on_disk = sorted(p.relative_to(PKG).as_posix() for p in (PKG / RECIPE_DIR).rglob("*.y*ml"))
    found = sorted(p.relative_to(PKG).as_posix() for p in shipped_recipes().values())
    assert found == on_disk and len(found) >= 20
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for rel in on_disk:
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns["bertdistill"]), f"{rel} not in the wheel"
    assert not list((ROOT / "recipes").rglob("*.yaml"))  # the checkout's recipes/ only points here


def test_no_shipped_recipe_names_a_path_outside_itself():
    """A recipe copied anywhere (or installed from a wheel) must not point into the repository's neighbours."""
    for name, path in shipped_recipes().items():
        text = path.read_text()
        assert "../" not in text and "shared/data" not in text, name
        data = yaml.safe_load(text).get("data", {})
        assert data.get("path") is None or "${" + DATA_DIR_ENV + "}" in data["path"], name


def test_every_recipe_has_a_one_line_description_listed_by_the_cli(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps to the terminal: one row per line
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, path in shipped_recipes().items():
        desc = recipe_description(path)
        assert desc.endswith(".") and "\n" not in desc and len(desc) > 30, name
        assert any(name in line and desc in line for line in lines), name


def test_recipes_name_prints_the_file_to_copy(capsys):
    assert main(["recipes", "kd/sst2"]) == 0
    assert capsys.readouterr().out == shipped_recipes()["kd/sst2"].read_text()


# ----------------------------------------------------------------------------------------------- names


def test_a_name_finds_the_shipped_recipe_and_a_file_on_disk_wins(tmp_path, monkeypatch):
    shipped = shipped_recipes()["kd/sst2"]
    assert find_recipe("kd/sst2") == find_recipe("kd/sst2.yaml") == shipped
    assert load_config("kd/sst2").method.name == "kd"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kd").mkdir()
    (tmp_path / "kd" / "sst2").write_text("method: {name: finetune}\n")
    assert find_recipe("kd/sst2") == Path("kd/sst2")
    assert load_config("kd/sst2").method.name == "finetune"


@pytest.mark.parametrize(
    ("source", "close"),
    [
        ("kd/sts2", "kd/sst2"),
        ("recipes/tinybert/sst2.yaml", "tinybert/sst2"),
        ("tinybert/genral", "tinybert/general"),
    ],
)
def test_an_unknown_name_lists_the_close_ones(source, close):
    with pytest.raises(ConfigError, match="close names: ") as e:
        find_recipe(source)
    assert close in str(e.value).split("close names: ")[1] and "bertdistill recipes" in str(e.value)


# ----------------------------------------------------------------------------------------------- local data


def test_data_dir_serves_a_task_without_data_path(tmp_path, monkeypatch):
    write_sst2(tmp_path / "SST-2", n_train=10, n_dev=4)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    ex = load_examples(DataConfig(task="sst2"), get_task("sst2"), "train")
    assert len(ex) == 10 and ex.source == str(tmp_path / "SST-2" / "train.tsv")
    # an explicit data.path still wins
    write_sst2(tmp_path / "other", n_train=6, n_dev=2)
    assert (
        len(load_examples(DataConfig(task="sst2", path=str(tmp_path / "other")), get_task("sst2"), "train"))
        == 6
    )
    with pytest.raises(ConfigError, match=rf"{DATA_DIR_ENV}=.* has no MRPC/ folder for task mrpc"):
        load_examples(DataConfig(task="mrpc"), get_task("mrpc"), "train")


def test_data_dir_placeholder_expands_or_says_what_to_set(tmp_path, monkeypatch):
    raw = {
        "method": {
            "vectors": "${BERTDISTILL_DATA_DIR}/glove/g.txt",
            "corpus": ["${BERTDISTILL_DATA_DIR}/c.txt"],
        }
    }
    with pytest.raises(ConfigError) as e:
        expand_data_dir(raw)
    assert str(e.value) == (
        "method.vectors is '${BERTDISTILL_DATA_DIR}/glove/g.txt' but BERTDISTILL_DATA_DIR is not set: export "
        "BERTDISTILL_DATA_DIR=DIR (the dir holding glove/g.txt) or --set 'method.vectors=PATH'"
    )
    with pytest.raises(ConfigError, match=r"--set 'method.corpus=\[PATH\]'"):
        expand_data_dir({"method": {"corpus": raw["method"]["corpus"]}})
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert expand_data_dir(raw) == {
        "method": {"vectors": f"{tmp_path}/glove/g.txt", "corpus": [f"{tmp_path}/c.txt"]}
    }
    # an override replaces the placeholder before it is expanded: no variable needed
    monkeypatch.delenv(DATA_DIR_ENV)
    cfg = load_config("bilstm/sst2", ["method.vectors=null"])
    assert cfg.method.vectors is None


def test_offline_hub_is_one_line_saying_how_to_point_at_local_data(
    teacher_dir, tmp_path, monkeypatch, capsys
):
    """The hub failure simulated at its boundary: ``datasets.load_dataset`` raises what it raises offline."""
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError(OFFLINE)

    monkeypatch.setattr(datasets, "load_dataset", offline)
    rc = main(
        ["distill", "kd/sst2", "--teacher", str(teacher_dir), "-o", str(tmp_path / "out"), "--quiet",
         "--set", f"teacher.cache_dir={tmp_path / 'cache'}"]
    )  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == (
        "bertdistill: configuration error: cannot read sst2 from the HF hub (nyu-mll/glue/sst2: "
        f"{OFFLINE}); for local GLUE files export BERTDISTILL_DATA_DIR=DIR (a dir holding SST-2/) or "
        "--set data.path=DIR/SST-2"
    )


# ----------------------------------------------------------------------------------------------- quick path


def test_quick_path_builds_on_the_shipped_recipe_and_trains(teacher_dir, sst2_dir, tmp_path):
    out = tmp_path / "out"
    rc = main(
        ["distill", "--method", "kd", "--teacher", str(teacher_dir), "--task", "sst2", "--student-layers", "2",
         "--data", str(sst2_dir), "--output", str(out), "--max-steps", "2", "--quiet",
         "--set", f"teacher.cache_dir={tmp_path / 'cache'}", "--set", "data.max_length=32"]
    )  # fmt: skip
    assert rc == 0
    saved = yaml.safe_load((out / "bertdistill.yaml").read_text())
    shipped = read_recipe("kd/sst2")
    assert saved["method"] == {
        **saved["method"],
        **shipped["method"],
    }  # the paper's α and T, not the defaults
    assert saved["train"]["lr"] == shipped["train"]["lr"] and saved["train"]["max_steps"] == 2
    assert (saved["teacher"]["path"], saved["data"]["path"]) == (str(teacher_dir), str(sst2_dir))
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_hidden_layers == 2
    assert "accuracy" in json.loads((out / "metrics.json").read_text())


def test_quick_path_without_a_shipped_recipe_uses_the_method_defaults():
    assert "stsb" not in {n.split("/")[1] for n in shipped_recipes() if n.startswith("kd/")}
    assert quick_recipe("kd", "stsb") == {"method": {"name": "kd"}, "data": {"task": "stsb"}}
    assert quick_recipe("kd", "SST-2") == read_recipe("kd/sst2")  # task names as get_task reads them
    cfg = load_config(quick_recipe("kd", "stsb"), ["student.num_layers=2"])
    assert cfg.data.task == "stsb" and cfg.data.path is None and cfg.student.num_layers == 2
    with pytest.raises(ConfigError, match="unknown method 'kdd'"):
        quick_recipe("kdd", "sst2")


# ----------------------------------------------------------------------------------------------- the wheel


@pytest.mark.slow
def test_a_built_wheel_in_a_fresh_venv_runs_a_recipe_by_name(teacher_dir, tmp_path):
    """Build the wheel from a copy of the source, install it (no deps) into a fresh venv that sees the main
    venv's third-party packages only through a ``.pth`` line, and run the CLI from outside the checkout."""
    import shutil

    src = tmp_path / "src-copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src], check=True)
    (wheel,) = wheels.glob("bertdistill-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, *pip[1:], "install", "--no-deps", "--no-index", wheel], check=True)
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())  # fmt: skip
    # torch, transformers, ... from the main venv; appended after the fresh venv's own site-packages
    main_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "zz_main_venv.pth").write_text(main_site + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", DATA_DIR_ENV)}
    env["HF_HUB_OFFLINE"] = "1"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:  # the wheel's console script
        return subprocess.run([venv / "bin" / "bertdistill", *argv], cwd=tmp_path, env=env, text=True,
                              capture_output=True)  # fmt: skip

    where = subprocess.check_output([py, "-c", "import bertdistill; print(bertdistill.__file__)"], env=env,
                                    cwd=tmp_path, text=True)  # fmt: skip
    assert where.startswith(str(site)), where
    listing = cli("recipes")
    assert listing.returncode == 0 and "kd/sst2" in listing.stdout and "tinybert/general" in listing.stdout
    data = tmp_path / "data"
    write_sst2(data / "SST-2")
    env[DATA_DIR_ENV] = str(data)  # local data through the variable; the recipe by name
    run = cli("distill", "kd/sst2", "--teacher", str(teacher_dir), "--student-layers", "2", "-o", "out",
              "--max-steps", "2", "--quiet", "--set", "data.max_length=32", "--set", "teacher.cache_dir=cache")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "accuracy" in json.loads((tmp_path / "out" / "metrics.json").read_text())
    saved = yaml.safe_load((tmp_path / "out" / "bertdistill.yaml").read_text())
    assert saved["method"]["temperature"] == read_recipe("kd/sst2")["method"]["temperature"]
