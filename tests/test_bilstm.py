"""Tang et al.'s BiLSTM student: siamese symmetry, loss golden values, the teacher cache keyed by the teacher's
tokens, augmented rows without labels, resume after a kill, and evaluate / compare / predict on a saved student
through the CLI."""

import json
import math

import pytest
import torch
import yaml
from transformers import BertForSequenceClassification

from bertdistill.cli import main
from bertdistill.config import ConfigError
from bertdistill.data.loading import TokenizedDataset
from bertdistill.data.words import WordVocab
from bertdistill.inference import load_student
from bertdistill.methods.bilstm import (
    NO_LABEL,
    BiLSTM,
    BiLSTMClassifier,
    BiLSTMModelConfig,
    BiLSTMRunner,
    has_label,
    logit_mse,
    pair_features,
    partial_label_loss,
)
from bertdistill.protocol import Needs
from bertdistill.recipes import load_config
from bertdistill.teachers import CachedTeacher, Teacher
from bertdistill.training.loop import Trainer, distill
from conftest import assert_same_run, kill_then_resume, method_terms, recipe


def bilstm_recipe(teacher_dir, data_dir, tmp_path, glove=None, task="sst2", **method):
    r = recipe("bilstm", teacher_dir, data_dir, tmp_path / "out", tmp_path / "cache", task=task)
    r["method"].update({"hidden_size": 16, "mlp_size": 16, "dropout": 0.0, **method})
    if glove is not None:
        r["method"]["vectors"] = str(glove)
    r["train"].update(adam_eps=1e-6, weight_decay=0.0, max_grad_norm=None)
    return r


# ----------------------------------------------------------------------------------------------- the model


def test_siamese_features_are_symmetric():
    torch.manual_seed(0)
    h1, h2 = torch.randn(3, 8), torch.randn(3, 8)
    f, g = pair_features(h1, h2), pair_features(h2, h1)
    assert f.shape == (3, 32)
    torch.testing.assert_close(f[:, 16:], g[:, 16:])  # h1⊙h2 and |h1−h2| do not depend on the order
    torch.testing.assert_close(f[:, :8], g[:, 8:16])
    torch.testing.assert_close(f[:, 8:16], g[:, :8])
    torch.testing.assert_close(f[:, 24:], (h1 - h2).abs())

    model = BiLSTMClassifier(
        BiLSTMModelConfig(vocab_size=20, embedding_dim=6, hidden_size=4, mlp_size=5, siamese=True)
    )
    model.eval()
    a, b = [3, 4, 5], [6, 7]
    ab = torch.tensor([a + b]), torch.ones(1, 5, dtype=torch.long), torch.tensor([[0, 0, 0, 1, 1]])
    ba = torch.tensor([b + a]), torch.ones(1, 5, dtype=torch.long), torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad():
        fab, fba = model.features(*ab), model.features(*ba)
        # one shared encoder: each side is the single-sentence encoding of that sentence
        ha = model.encode(torch.tensor([a]), torch.tensor([3]))
        hb = model.encode(torch.tensor([b]), torch.tensor([2]))
    torch.testing.assert_close(fab, pair_features(ha, hb))
    torch.testing.assert_close(fab[:, 16:], fba[:, 16:])


def test_padding_does_not_change_a_sentence_vector():
    torch.manual_seed(0)
    for pooling in ("last", "max"):
        model = BiLSTMClassifier(
            BiLSTMModelConfig(vocab_size=20, embedding_dim=6, hidden_size=4, pooling=pooling)
        )
        model.eval()
        with torch.no_grad():
            alone = model(torch.tensor([[3, 4, 5]])).logits
            padded = model(
                torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]]), torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
            )
        torch.testing.assert_close(alone[0], padded.logits[0])


def test_save_and_load_round_trip(tmp_path):
    cfg = BiLSTMModelConfig(
        vocab_size=12, embedding_dim=4, hidden_size=3, mlp_size=5, id2label={0: "neg", 1: "pos"}
    )
    model = BiLSTMClassifier(cfg)
    model.save_pretrained(tmp_path)
    again = BiLSTMClassifier.from_pretrained(tmp_path)
    assert (
        again.config == cfg
        and json.loads((tmp_path / "config.json").read_text())["model_type"] == "bertdistill-bilstm"
    )
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, again.state_dict()[k])


# ----------------------------------------------------------------------------------------------- losses


def test_loss_golden_values():
    zs = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    zt = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert float(logit_mse(zs, zt)) == pytest.approx((1 + 0 + 4 + 9) / 4)  # nn.MSELoss: mean over B × C
    assert float(logit_mse(zt, zt)) == 0.0
    y = torch.tensor([1, NO_LABEL])
    ce0 = math.log(1 + math.exp(-1.0))  # CE of row 0 ([1, 2], label 1)
    assert float(partial_label_loss(zs, y, regression=False)) == pytest.approx(ce0 / 2)  # row 1: no label
    assert has_label(y).tolist() == [True, False]
    yr = torch.tensor([0.5, float("nan")])
    assert has_label(yr).tolist() == [True, False]
    assert float(partial_label_loss(torch.tensor([[1.5], [9.0]]), yr, regression=True)) == pytest.approx(
        1.0 / 2
    )


def test_method_loss_mse_only_on_unlabelled_rows(teacher_dir, sst2_dir, tmp_path):
    tr = Trainer(load_config(bilstm_recipe(teacher_dir, sst2_dir, tmp_path, alpha=0.3)), quiet=True)
    stage = tr.stages[0]
    assert (stage.optimizer, stage.lr, stage.batch_size, stage.scheduler) == ("adadelta", 1.0, 50, "constant")
    data = tr.datasets["train"]
    batch = tr.collate([data[i] for i in range(4)])
    batch["labels"] = torch.tensor([1, 0, NO_LABEL, NO_LABEL])
    terms, s_out, t_out = method_terms(tr, batch, stage)
    z, zt = s_out.logits.detach(), t_out.logits
    ce = torch.nn.functional.cross_entropy(z[:2], batch["labels"][:2], reduction="sum") / 4
    torch.testing.assert_close(terms["ce"].detach(), 0.3 * ce)
    torch.testing.assert_close(terms["mse"].detach(), 0.7 * ((z - zt) ** 2).mean())
    # the official pipeline's hard term: the teacher's argmax, every row
    tr.method.cfg.hard_labels = "teacher"
    terms, s_out, _ = method_terms(tr, batch, stage)
    ce_t = torch.nn.functional.cross_entropy(s_out.logits.detach(), zt.argmax(-1))
    torch.testing.assert_close(terms["ce"].detach(), 0.3 * ce_t)


# ----------------------------------------------------------------------------------------------- data and teacher


def test_teacher_cache_is_keyed_by_the_teachers_tokens(teacher_dir, sst2_dir, glove_file, tmp_path):
    r = bilstm_recipe(teacher_dir, sst2_dir, tmp_path, glove_file)
    r["train"]["max_steps"] = 3
    cfg = load_config(r)
    tr = Trainer(cfg, quiet=True)
    train = tr.datasets["train"]
    assert isinstance(train.vocab, WordVocab) and isinstance(train.teacher, TokenizedDataset)
    batch = tr.collate([train[i] for i in range(5)])
    assert batch["inputs"]["input_ids"].max() < len(train.vocab) and "teacher_inputs" in batch
    assert batch["teacher_inputs"]["input_ids"][0, 0] == 2  # the teacher's own [CLS] ... [SEP]
    assert batch["inputs"]["input_ids"].shape[1] < batch["teacher_inputs"]["input_ids"].shape[1]

    distill(cfg, quiet=True)
    teacher = Teacher(BertForSequenceClassification.from_pretrained(teacher_dir))
    root = (
        tmp_path
        / "cache"
        / "teacher"
        / CachedTeacher.fingerprint(teacher, train.teacher, Needs(logits=True), "float32")
    )
    assert (root / "meta.json").is_file()
    assert len(list((tmp_path / "cache" / "teacher").glob("*/meta.json"))) == 1
    cache = CachedTeacher.load_or_build(teacher, train, Needs(logits=True), 0, tmp_path / "cache")
    with torch.no_grad():
        live = teacher.model(**batch["teacher_inputs"]).logits
    torch.testing.assert_close(cache.features(batch).logits, live, rtol=1e-5, atol=1e-5)
    # another student vocabulary (other word ids) of the same text: the same cache, not rebuilt
    other = Trainer(load_config(bilstm_recipe(teacher_dir, sst2_dir, tmp_path, max_vocab=10)), quiet=True)
    odata = other.datasets["train"]
    assert odata.input_ids != train.input_ids and odata.teacher.input_ids == train.teacher.input_ids
    assert CachedTeacher.load_or_build(teacher, odata, Needs(logits=True), 0, tmp_path / "cache").root == root
    # the student's ids alone are never the key: the same student ids with other teacher tokens miss
    view = TokenizedDataset([[*x[:-1], 4, x[-1]] for x in train.teacher.input_ids], None, None)
    shifted = TokenizedDataset(train.input_ids, None, train.labels, teacher=view)
    assert CachedTeacher.fingerprint(teacher, view, Needs(logits=True), "float32") != root.name
    assert (
        CachedTeacher.load_or_build(teacher, shifted, Needs(logits=True), 0, tmp_path / "cache").root != root
    )


def test_augmented_rows_are_unlabelled_and_taught_by_the_teacher(teacher_dir, sst2_dir, tmp_path):
    train_rows = (sst2_dir / "train.tsv").read_text().splitlines()[1:]
    first = train_rows[0].split("\t")[0].strip()
    aug = tmp_path / "aug.tsv"
    aug.write_text(f"sentence\tsource_index\n{first}\t0\n[MASK] good film\t0\nthe plot [MASK]\t0\n")
    r = bilstm_recipe(teacher_dir, sst2_dir, tmp_path, augmented_data=str(aug))
    tr = Trainer(load_config(r), quiet=True)
    data = tr.datasets["train"]
    n = len(train_rows)
    assert len(data) == n + 2  # the original in the file is not added twice
    assert data.labels[:n] == [int(x.split("\t")[1]) for x in train_rows]
    assert data.labels[n:] == [NO_LABEL, NO_LABEL]
    assert "[MASK]" in data.vocab.index and len(data.teacher) == len(data)
    mask_id = tr.tokenizer.mask_token_id
    assert mask_id in data.teacher.input_ids[n]  # the teacher reads [MASK] as its own mask token
    batch = tr.collate([data[i] for i in (0, n, n + 1)])
    terms, _, _ = method_terms(tr, batch, tr.stages[0])
    assert set(terms) == {"ce", "mse"}
    r["method"]["alpha"] = 1.0
    with pytest.raises(ConfigError, match="augmented"):
        load_config(r)


def test_labels_only_runs_without_a_teacher(teacher_dir, sst2_dir, tmp_path):
    r = bilstm_recipe(teacher_dir, sst2_dir, tmp_path, alpha=1.0)
    r["train"]["max_steps"] = 2
    tr = Trainer(load_config(r), quiet=True)
    assert tr.teacher is None and tr.datasets["train"].teacher is None
    batch = tr.collate([tr.datasets["train"][i] for i in range(4)])
    assert "teacher_inputs" not in batch
    terms, _, _ = method_terms(tr, batch, tr.stages[0])
    assert set(terms) == {"ce"}
    distill(load_config(r), quiet=True)
    assert not (tmp_path / "cache" / "teacher").exists()


def test_glove_initialises_the_embeddings(teacher_dir, sst2_dir, glove_file, tmp_path):
    tr = Trainer(load_config(bilstm_recipe(teacher_dir, sst2_dir, tmp_path, glove_file)), quiet=True)
    model, vocab = tr.unwrapped(), tr.datasets["train"].vocab
    assert model.embedding.embedding_dim == 8 and tr.student_info["found"] > 0
    line = glove_file.read_text().splitlines()[0].split()
    torch.testing.assert_close(
        model.embedding.weight[vocab.index[line[0]]].detach(), torch.tensor([float(x) for x in line[1:]])
    )
    assert model.embedding.weight[0].abs().sum() == 0


def test_a_vectors_file_that_misses_the_words_is_warned_about(
    teacher_dir, sst2_dir, glove_file, tmp_path, caplog
):
    """A GloVe file of another language or casing covers few training words: the run says so (the toy file,
    which covers most of them, does not)."""
    sparse = tmp_path / "other-language.txt"
    sparse.write_text("".join(line + "\n" for line in glove_file.read_text().splitlines()[:2]))
    with caplog.at_level("WARNING", logger="bertdistill.methods.bilstm"):
        Trainer(load_config(bilstm_recipe(teacher_dir, sst2_dir, tmp_path / "a", glove_file)), quiet=True)
    assert "have a vector in" not in caplog.text
    with caplog.at_level("WARNING", logger="bertdistill.methods.bilstm"):
        tr = Trainer(load_config(bilstm_recipe(teacher_dir, sst2_dir, tmp_path / "b", sparse)), quiet=True)
    n = len(tr.datasets["train"].vocab) - 2
    assert f"only {100 * 2 / n:.1f}% of the {n} training words have a vector in {sparse}" in caplog.text


# ----------------------------------------------------------------------------------------------- resume and inference


def test_resume_after_a_kill_matches_the_uninterrupted_run(
    teacher_dir, sst2_dir, glove_file, tmp_path, monkeypatch
):
    def cfg(out):
        r = bilstm_recipe(teacher_dir, sst2_dir, tmp_path, glove_file, dropout=0.1, batch_size=16)
        r["train"].update(epochs=2, save_every=3, log_every=1, eval_every=4)
        r["output_dir"] = str(out)
        return load_config(r)

    full = distill(cfg(tmp_path / "full"), quiet=True)
    last, resumed = kill_then_resume(cfg(tmp_path / "killed"), monkeypatch, 2, tmp_path / "killed")
    assert last == "step-0000006"
    assert_same_run(full, resumed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, _teacher_session, sst2_dir, stsb_dir, glove_file):
    tmp = tmp_path_factory.mktemp("bilstm")
    outs = {}
    for task, data in (("sst2", sst2_dir), ("stsb", stsb_dir)):
        r = bilstm_recipe(_teacher_session, data, tmp / task, glove_file, task=task)
        r["train"]["max_steps"] = 6
        if task == "stsb":  # a regression teacher: the same tiny BERT with one output
            t = tmp / "teacher-stsb"
            BertForSequenceClassification.from_pretrained(
                _teacher_session, num_labels=1, ignore_mismatched_sizes=True
            ).save_pretrained(t)
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(_teacher_session).save_pretrained(t)
            r["teacher"]["path"] = str(t)
        (tmp / f"{task}.yaml").write_text(yaml.safe_dump(r))
        assert main(["distill", str(tmp / f"{task}.yaml"), "--quiet"]) == 0
        outs[task] = tmp / task / "out"
    return outs


def test_saved_dir_loads_with_load_student(saved):
    import bertdistill

    d = saved["sst2"]
    assert {"model.safetensors", "config.json", "vocab.json", "bertdistill.yaml"} <= {
        f.name for f in d.iterdir()
    }
    runner = bertdistill.load_student(d)
    assert isinstance(runner, BiLSTMRunner) and not runner.model.training
    assert runner.describe()["layers"] == 1 and runner.describe()["vocab"] == len(runner.tokenizer)
    pair = load_student(saved["stsb"])
    assert pair.is_pair() and pair.model.config.siamese


def test_cli_evaluate_compare_predict(saved, teacher_dir, sst2_dir, tmp_path, capsys):
    d = str(saved["sst2"])
    assert main(["evaluate", d, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["task"] == "sst2" and 0 <= row["score"] <= 1 and row["examples"] == 32 and row["layers"] == 1
    rows_json = tmp_path / "rows.json"
    rc = main(
        [
            "compare",
            str(teacher_dir),
            d,
            "--task",
            "sst2",
            "--data",
            str(sst2_dir),
            "--latency-sentences",
            "5",
            "--json",
            str(rows_json),
        ]
    )
    assert rc == 0
    rows = json.loads(rows_json.read_text())
    assert (
        rows[1]["retention"] is not None
        and rows[1]["params"] < rows[0]["params"]
        and rows[1]["latency_speedup"] > 0
    )
    capsys.readouterr()
    texts = tmp_path / "in.txt"
    texts.write_text("A gripping, funny film!\nDull and boring [MASK].\n")
    assert main(["predict", d, str(texts)]) == 0
    preds = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(preds) == 2 and preds[0]["label"] in ("0", "1") and len(preds[0]["probs"]) == 2
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("the good film\tthe great movie\na dull plot\tvery nice acting\n")
    assert main(["predict", str(saved["stsb"]), str(pairs)]) == 0
    scores = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(scores) == 2 and all(isinstance(s["score"], float) for s in scores)
    assert main(["evaluate", str(saved["stsb"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metric"] == "pearson"


def test_recipes_parse_with_the_papers_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTDISTILL_DATA_DIR", str(tmp_path))  # the recipes' GloVe path is under it
    for task in ("sst2", "mrpc"):
        cfg = load_config(f"bilstm/{task}")
        m = cfg.method
        assert (m.hidden_size, m.mlp_size, m.optimizer, m.lr, m.batch_size) == (150, 200, "adadelta", 1.0, 50)
        assert cfg.train.epochs == 30 and cfg.train.adadelta_rho == 0.95 and cfg.train.max_grad_norm is None
        assert m.vectors == str(tmp_path / "glove-6B-50d-subset" / "glove.6B.50d.subset.txt.gz")


def test_no_dev_or_test_text_enters_training_through_augmented_rows(teacher_dir, sst2_dir, tmp_path, caplog):
    """An augmented row whose text is a dev or test sentence is dropped (it would be trained on, teacher-labelled),
    with a warning that counts them; a file whose provenance says it was made from dev is refused."""
    train_rows = (sst2_dir / "train.tsv").read_text().splitlines()[1:]
    dev = (sst2_dir / "dev.tsv").read_text().splitlines()[1].split("\t")[0].strip()
    test = (sst2_dir / "test.tsv").read_text().splitlines()[1].split("\t")[1].strip()
    first = train_rows[0].split("\t")[0].strip()
    aug = tmp_path / "aug.tsv"
    aug.write_text(f"sentence\tsource_index\n{first}\t0\n[MASK] good film\t0\n{dev}\t0\n{test}\t0\n")
    r = bilstm_recipe(teacher_dir, sst2_dir, tmp_path, augmented_data=str(aug))
    with caplog.at_level("WARNING"):
        data = Trainer(load_config(r), quiet=True).datasets["train"]
    assert len(data) == len(train_rows) + 1  # only "[MASK] good film" is added
    assert "dropped 2 of its 4 rows whose text is an evaluation example" in caplog.text
    (tmp_path / "aug.tsv.provenance.json").write_text(json.dumps({"task": "sst2", "split": "dev"}))
    with pytest.raises(
        ConfigError, match=r"made from the 'dev' split; train on text derived from the training"
    ):
        Trainer(load_config(r), quiet=True)


def test_the_papers_training_settings_hold_without_a_recipe(tmp_path):
    """`distill --method bilstm --task T` for a task without a shipped recipe, or a recipe without a train
    section, trains as the paper does (AdaDelta's eps 1e-6, no weight decay, no clipping, 30 epochs), not with the
    engine's AdamW defaults; a recipe's own values win; other methods keep the engine's defaults."""
    from bertdistill.recipes import quick_recipe

    t = load_config(quick_recipe("bilstm", "qnli")).train
    assert (t.epochs, t.adam_eps, t.weight_decay, t.max_grad_norm, t.adadelta_rho) == (
        30,
        1e-6,
        0.0,
        None,
        0.95,
    )
    t = load_config({"method": {"name": "bilstm"}, "train": {"epochs": 2, "weight_decay": 0.1}}).train
    assert (t.epochs, t.weight_decay, t.adam_eps) == (2, 0.1, 1e-6)
    t = load_config({"method": {"name": "kd"}}).train
    assert (t.epochs, t.adam_eps, t.weight_decay, t.max_grad_norm) == (3.0, 1e-8, 0.01, 1.0)


def test_the_control_trains_on_gold_labels_even_when_the_run_uses_the_teachers(
    teacher_dir, sst2_dir, tmp_path
):
    """`hard_labels: teacher` puts CE on the teacher's argmax; its no-KD control must not read the teacher."""
    r = bilstm_recipe(teacher_dir, sst2_dir, tmp_path, hard_labels="teacher")
    ctl = BiLSTM.control_recipe(r, 5)
    assert ctl["method"]["hard_labels"] == "gold" and ctl["method"]["alpha"] == 1.0
    assert not load_config(ctl).method.uses_teacher()
