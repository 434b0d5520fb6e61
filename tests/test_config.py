from pathlib import Path

import pytest

from bertdistill.config import ConfigError
from bertdistill.methods.kd import KDConfig
from bertdistill.recipes import load_config, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


def base():
    return {"method": {"name": "kd"}, "teacher": {"path": "x"}}


def test_unknown_key_lists_valid_keys():
    r = base()
    r["train"] = {"learning_rate": 1e-3}
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) \['learning_rate'\] in train; valid keys: \[.*'lr'"
    ):
        load_config(r)


def test_unknown_method_lists_known_methods():
    with pytest.raises(ConfigError, match="known methods: .*'kd'"):
        load_config({"method": {"name": "nope"}})


def test_missing_method_section():
    with pytest.raises(ConfigError, match="method"):
        load_config({"train": {}})


def test_method_dispatch_and_yaml_float_strings(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("method: {name: kd, alpha: 0.7, temperature: 2}\ntrain: {lr: 3e-5, epochs: 2}\n")
    cfg = load_config(p)
    assert isinstance(cfg.method, KDConfig)
    assert cfg.method.alpha == 0.7 and cfg.method.temperature == 2.0
    assert cfg.train.lr == 3e-5 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads 3e-5 as a string


def test_overrides_are_typed_by_field():
    cfg = load_config(
        base(),
        [
            "train.lr=3e-5",
            "train.max_steps=10",
            "data.bucket_by_length=false",
            "student.layers=[0, 2]",
            "method.alpha=0.9",
            "train.max_grad_norm=null",
            "student.config_overrides={hidden_size: 64}",
        ],
    )
    assert cfg.train.lr == 3e-5
    assert cfg.train.max_steps == 10
    assert cfg.data.bucket_by_length is False
    assert cfg.student.layers == [0, 2]
    assert cfg.method.alpha == 0.9
    assert cfg.train.max_grad_norm is None
    assert cfg.student.config_overrides == {"hidden_size": 64}


def test_a_dotted_override_into_a_mapping_is_typed_like_the_rest():
    # `--set student.config_overrides.KEY=VALUE` used to store the text "0.3", which a model config then
    # received as a string
    cfg = load_config(
        base(),
        [
            "student.config_overrides={hidden_size: 64}",
            "student.config_overrides.hidden_dropout_prob=0.3",
            "student.config_overrides.num_hidden_layers=2",
            "student.config_overrides.hidden_act=gelu_new",
        ],
    )
    assert cfg.student.config_overrides == {
        "hidden_size": 64,
        "hidden_dropout_prob": 0.3,
        "num_hidden_layers": 2,
        "hidden_act": "gelu_new",
    }
    assert isinstance(cfg.student.config_overrides["hidden_dropout_prob"], float)


def test_bad_values_are_clear_errors():
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        load_config(base(), ["train.batch_size=lots"])
    with pytest.raises(ConfigError, match=r"method.alpha must be in \[0, 1\]"):
        load_config(base(), ["method.alpha=1.5"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(base(), ["train.lr"])
    with pytest.raises(ConfigError, match="train.scheduler"):
        load_config(base(), ["train.scheduler=step"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("does/not/exist.yaml")


def test_dump_round_trip(tmp_path):
    cfg = load_config(base(), ["train.lr=2e-5", "student.num_layers=3"])
    cfg.dump(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_recipe_loads(name, monkeypatch, tmp_path):
    monkeypatch.setenv("BERTDISTILL_DATA_DIR", str(tmp_path))  # some name files under it (GloVe, corpora)
    cfg = load_config(name)
    # <method>/ holds that method's recipes; a method's follow-up step may run another method (DistilBERT's
    # task-specific step is `kd` from the distilled dir)
    follow_up = {"distilbert/sst2": "kd"}
    assert cfg.method.name == follow_up.get(name, name.split("/")[0])
