"""ONNX export (``bertdistill export``): every student type exports and its graphs reproduce eager within the
tolerance, int8 graphs agree on most predictions, export dirs run in ``evaluate`` / ``compare`` / ``predict``,
and what cannot be exported says so. Tiny random models (a few training steps each); each export is traced once
per module and shared by the tests that read it. Skipped without the ``export`` extra."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from bertdistill.cli import main
from bertdistill.config import ConfigError
from bertdistill.data.loading import Examples
from bertdistill.inference import Predictor, load_student
from bertdistill.methods.bilstm import BiLSTMClassifier, BiLSTMModelConfig, PaddedBiLSTM
from bertdistill.precision import with_precision
from bertdistill.training.loop import distill
from conftest import OTHER_ENCODERS, other_encoder, tiny_bert_config
from test_methods import _cfg

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bertdistill import export as export_mod
from bertdistill.export import EXPORT_FILE, TOLERANCE, export, require_onnx

SHORT = {"max_steps": 2, "eval_every": 1000, "save_every": 1000}


@pytest.fixture(scope="module")
def fx(
    teacher_dir,
    mlm_teacher_dir,
    encoder_dir,
    corpus_file,
    sst2_dir,
    stsb_dir,
    tiny_tokenizer_dir,
    glove_file,
    parallel_dir,
):
    return {
        "parallel": parallel_dir,
        "teacher": teacher_dir,
        "mlm_teacher": mlm_teacher_dir,
        "encoder": encoder_dir,
        "corpus": corpus_file,
        "sst2": sst2_dir,
        "stsb": stsb_dir,
        "tokenizer": tiny_tokenizer_dir,
        "glove": glove_file,
    }


@pytest.fixture(scope="module")
def teacher_dir(_teacher_session):
    return _teacher_session


@pytest.fixture(scope="module")
def students(fx, tmp_path_factory):
    """``students(name)``: a saved student of method ``name`` (its registry test config, 2 steps), built once."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = distill(
                _cfg(name, fx, tmp_path_factory.mktemp(name), train=SHORT), quiet=True
            ).output_dir
        return made[name]

    return get


@pytest.fixture(scope="module")
def exports(students, tmp_path_factory):
    """``exports(name, **kw)``: the export dir and record of that student, exported once per arguments."""
    made = {}

    def get(name, **kw):
        key = (name, repr(sorted(kw.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"onnx-{name}")
            made[key] = (out, export(students(name), out, **kw))
        return made[key]

    return get


def _dev_batch(runner, fx, n=8):
    rows = [(t,) for t in ("the movie was good", "bad", "a very dull and boring story", "nice")]
    data = runner.encode(Examples(rows * (n // 4), None), 32)
    return runner.collator()([data[i] for i in range(len(rows) * (n // 4))])


def _assert_passed(record, labels=True):
    """Passed, within the tolerance, and (``labels``: a classifier) every prediction as eager's."""
    fp32 = record["parity"]["samples"]["onnx-fp32"]
    assert record["passed"] and record["tolerance"] == TOLERANCE
    assert 0 <= fp32["max_abs_diff"] <= TOLERANCE
    if labels:
        assert fp32["agreement"] == 1.0 and fp32["rows_compared"] >= 11
    else:  # regression: no labels to agree on
        assert fp32["agreement"] is None
    assert set(record["versions"]) >= {"torch", "onnx", "onnxruntime", "transformers"}


# ----------------------------------------------------------------------------------------------- every student type


@pytest.mark.parametrize("name", ["mobilebert", "bilstm"])  # kd: through the CLI; fastbert: below
def test_classifier_students_export_and_the_export_dir_predicts_like_eager(name, exports, students, fx):
    out, record = exports(name)
    _assert_passed(record)
    assert (out / "model.onnx").is_file() and json.loads((out / EXPORT_FILE).read_text())["passed"]
    eager, onnx = load_student(students(name)), load_student(out)
    assert onnx.onnx.precision == "onnx-fp32" and onnx.describe()["runtime"] == "onnxruntime-onnx-fp32"
    batch = _dev_batch(eager, fx)
    with torch.no_grad():
        a, b = eager.predict(batch), onnx.predict(batch)
    torch.testing.assert_close(b.logits, a.logits, atol=TOLERANCE, rtol=0)


# ----------------------------------------------------------------------------------------------- FastBERT


@pytest.fixture(scope="module")
def fastbert_export(tmp_path_factory, tiny_tokenizer_dir, sst2_dir):
    """A tiny random FastBERT student dir (4 layers, branches of varied confidence, as after training) and its
    export dir with int8 graphs: ``(student dir, export dir, record)``."""
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from bertdistill.methods.fastbert import from_classifier

    torch.manual_seed(0)
    model = from_classifier(BertForSequenceClassification(tiny_bert_config(attn_implementation="sdpa")))
    with torch.no_grad():
        for i, b in enumerate(model.branches):
            b.out.weight.mul_(10.0 * (i + 1))
    student = tmp_path_factory.mktemp("fastbert-random") / "student"
    model.save_pretrained(student)
    BertTokenizerFast.from_pretrained(tiny_tokenizer_dir).save_pretrained(student)
    recipe = {"method": {"name": "fastbert"}, "data": {"task": "sst2", "path": str(sst2_dir)}}
    (student / "bertdistill.yaml").write_text(yaml.safe_dump(recipe))
    out = student.parent / "onnx"
    return student, out, export(student, out, quantize="int8")


FASTBERT_GRAPHS = [
    "embeddings",
    *[f"layer_{i}" for i in range(1, 5)],
    *[f"branch_{i}" for i in range(1, 4)],
    "head",
]


def _fastbert_batch(runner, n):
    words = [
        "the movie was good",
        "bad",
        "a very dull and boring story",
        "nice",
        "great acting and a fine plot",
    ]
    rows = [(" ".join(words[(i + j) % 5] for j in range(1 + i % 3)),) for i in range(n)]
    data = runner.encode(Examples(rows, None), 32)
    return runner.collator()([data[i] for i in range(n)])


def test_fastbert_exports_one_graph_per_piece_each_quantised(fastbert_export):
    _, out, record = fastbert_export
    _assert_passed(record)
    assert sorted(record["graphs"]) == sorted(FASTBERT_GRAPHS)
    assert record["graphs"]["layer_2"]["inputs"] == ["hidden_states", "attention_mask"]
    assert record["graphs"]["branch_1"]["outputs"] == ["logits"]
    assert sorted(record["quantized"]) == sorted(FASTBERT_GRAPHS)
    assert all((out / f"{g}.onnx").is_file() and (out / f"{g}.int8.onnx").is_file() for g in FASTBERT_GRAPHS)
    assert not (out / "model.onnx").exists()  # no full-depth graph: the layer graphs are the model


@pytest.mark.parametrize("n", [1, 7])
def test_fastbert_export_dir_exits_early_as_eager_does(fastbert_export, n):
    """Loaded back from disk, the graphs give eager early exit's logits, exit layers and FLOPs at every speed,
    batch 1 and a batch whose rows leave at different layers."""
    student, out, _ = fastbert_export
    eager, onnx = load_student(student), load_student(out)
    assert onnx.onnx.path == str(out)
    batch = _fastbert_batch(eager, n)
    layers = set()
    for speed in (None, 0.0, 0.8, 0.9, 0.95, 1.0):
        a, b = eager.predict(batch, speed=speed), onnx.predict(batch, speed=speed)
        torch.testing.assert_close(b.logits, a.logits, atol=TOLERANCE, rtol=0)
        assert set(a.extras) == set(b.extras)
        for k, v in a.extras.items():
            assert torch.equal(v, b.extras[k]), (speed, k)  # exit layers and FLOPs: the real exits
        if speed is not None:
            layers |= set(a.extras["exit_layer"].tolist())
    assert layers >= {1, 4} and (n == 1 or len(layers) >= 3), layers  # early, middle and full-depth exits


@pytest.mark.parametrize("arch", list(OTHER_ENCODERS))
def test_fastbert_of_another_family_exports_and_exits_early_as_eager_does(
    arch, tmp_path, tiny_tokenizer_dir, sst2_dir
):
    """A FastBERT student around a RoBERTa / DistilBERT / ELECTRA / DeBERTa-v2 / ALBERT backbone: its pieces
    (ELECTRA's and ALBERT's embedding projections, DeBERTa's masked embeddings, relative positions and first-layer
    convolution — the conftest shapes have each) export, and the graphs exit at
    the layers eager does, with its logits."""
    from transformers import BertTokenizerFast

    from bertdistill.methods.fastbert import from_classifier

    torch.manual_seed(0)
    depth = {"n_layers": 2} if arch == "distilbert" else {"num_hidden_layers": 2}  # 5 graphs to export, not 9
    model = from_classifier(other_encoder(arch, **depth))
    with torch.no_grad():
        for i, b in enumerate(model.branches):
            b.out.weight.mul_(10.0 * (i + 1))
    student = tmp_path / "student"
    model.save_pretrained(student)
    tok = BertTokenizerFast.from_pretrained(tiny_tokenizer_dir)
    if arch == "distilbert":
        tok.model_input_names = ["input_ids", "attention_mask"]
    tok.save_pretrained(student)
    recipe = {"method": {"name": "fastbert"}, "data": {"task": "sst2", "path": str(sst2_dir)}}
    (student / "bertdistill.yaml").write_text(yaml.safe_dump(recipe))
    _assert_passed(export(student, tmp_path / "onnx"))
    eager, onnx = load_student(student), load_student(tmp_path / "onnx")
    batch = _fastbert_batch(eager, 7)
    layers = set()
    for speed in (None, 0.0, 0.9, 1.0):
        a, b = eager.predict(batch, speed=speed), onnx.predict(batch, speed=speed)
        torch.testing.assert_close(b.logits, a.logits, atol=TOLERANCE, rtol=0)
        for k, v in a.extras.items():
            assert torch.equal(v, b.extras[k]), (speed, k)
        if speed is not None:
            layers |= set(a.extras["exit_layer"].tolist())
    assert len(layers) >= 2, layers


def test_fastbert_onnx_runs_only_the_graphs_of_the_rows_left(fastbert_export, monkeypatch):
    """Every row leaving at branch 1 runs the embeddings, layer 1 and branch 1 only; rows that leave drop out of
    the next graphs' batch; without ``speed`` (and in the timing reference) no branch runs."""
    _, out, _ = fastbert_export
    onnx = load_student(out)
    calls = []
    run = export_mod.Sessions.run

    def counting(self, name, inputs):
        calls.append((name, int(inputs["input_ids" if name == "embeddings" else "hidden_states"].shape[0])))
        return run(self, name, inputs)

    monkeypatch.setattr(export_mod.Sessions, "run", counting)
    batch = _fastbert_batch(onnx, 7)
    assert (onnx.predict(batch, speed=1.0).extras["exit_layer"] == 1).all()
    assert calls == [("embeddings", 7), ("layer_1", 7), ("branch_1", 7)]
    full = ["embeddings", "layer_1", "layer_2", "layer_3", "layer_4", "head"]
    calls.clear()
    onnx.predict(batch)
    assert [c[0] for c in calls] == full
    calls.clear()
    onnx.reference(speed=1.0)(batch)  # what early exit is timed against: the same graphs at full depth
    assert [c[0] for c in calls] == full
    calls.clear()
    exits = onnx.predict(batch, speed=0.9).extras["exit_layer"]
    rows = dict((name, k) for name, k in calls if name.startswith("layer_"))
    assert rows == {f"layer_{i}": int((exits >= i).sum()) for i in range(1, int(exits.max()) + 1)}
    assert rows["layer_1"] > rows[f"layer_{int(exits.max())}"], exits  # some rows left before the last layer


def test_fastbert_export_made_with_speed_is_timed_against_full_depth(fastbert_export, monkeypatch):
    """``export --speed S`` records ``speed`` as an option of the export; the timing reference of that export is
    still its graphs at full depth (no branch), not early exit at ``S`` again."""
    student, out, record = fastbert_export
    blobs = {n: (out / g["file"]).read_bytes() for n, g in record["graphs"].items()}
    eager = load_student(student)
    fixed = export_mod.onnx_runner(eager, blobs, export_mod.OnnxInfo(str(out), "onnx-fp32"), {"speed": 1.0})
    calls = []
    run = export_mod.Sessions.run

    def counting(self, name, inputs):
        calls.append(name)
        return run(self, name, inputs)

    monkeypatch.setattr(export_mod.Sessions, "run", counting)
    batch = _fastbert_batch(eager, 7)
    options = fixed.check_options({})
    assert options == {"speed": 1.0}
    assert (fixed.predict(batch, **options).extras["exit_layer"] == 1).all()
    calls.clear()
    fixed.reference(**options)(batch)
    assert calls == ["embeddings", "layer_1", "layer_2", "layer_3", "layer_4", "head"]


def test_fastbert_int8_graphs_load_and_exit_early(fastbert_export):
    student, out, record = fastbert_export
    eager, q = load_student(student), load_student(out / "layer_1.int8.onnx")
    assert q.onnx.precision == "onnx-int8" and q.describe()["runtime"] == "onnxruntime-onnx-int8"
    assert q.describe()["size_mb"] < load_student(out).describe()["size_mb"]
    assert record["parity"]["samples"]["onnx-int8"]["rows_compared"] >= 11
    batch = _fastbert_batch(eager, 7)
    a, b = eager.predict(batch, speed=0.9), q.predict(batch, speed=0.9)
    assert b.logits.shape == a.logits.shape and b.extras["exit_layer"].shape == (7,)
    assert ((b.extras["exit_layer"] >= 1) & (b.extras["exit_layer"] <= 4)).all()
    assert (a.logits.argmax(-1) == b.logits.argmax(-1)).float().mean() >= 0.7


def test_distilbert_classifier_exports_without_token_type_ids(fx, tmp_path, tiny_tokenizer_dir):
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=45, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    student = tmp_path / "distil"
    DistilBertForSequenceClassification(cfg).save_pretrained(student)
    BertTokenizerFast.from_pretrained(tiny_tokenizer_dir).save_pretrained(student)
    recipe = {"method": {"name": "distilbert"}, "data": {"task": "sst2", "path": str(fx["sst2"])}}
    (student / "bertdistill.yaml").write_text(yaml.safe_dump(recipe))
    record = export(student, tmp_path / "onnx")
    _assert_passed(record)
    assert record["graphs"]["model"]["inputs"] == ["input_ids", "attention_mask"]


def test_seq2seq_student_exports_encoder_and_decoder_and_translates_like_eager(exports, students):
    out, record = exports("cmlm")
    _assert_passed(record)
    assert set(record["graphs"]) == {"encoder", "decoder"}
    texts = ["the movie was good", "", "a very dull and boring story about the plot"]
    eager, onnx = load_student(students("cmlm")), load_student(out)
    assert onnx.generate(texts) == eager.generate(texts)
    with pytest.raises(ConfigError, match="greedily"):
        onnx.generate(texts, beam=2)


def test_multitask_student_exports_one_head(exports, students, fx):
    with pytest.raises(ConfigError, match="--head"):
        export(students("mtdnn_kd"), fx["sst2"].parent / "never")  # several heads: one must be chosen
    out, record = exports("mtdnn_kd", options={"head": "stsb"})
    _assert_passed(record, labels=False)  # the stsb head regresses
    assert record["options"] == {"head": "stsb"}
    onnx = load_student(out)
    assert onnx.check_options({})["head"] == "stsb"  # the exported head is the default
    with pytest.raises(ConfigError, match="head=stsb"):
        onnx.check_options({"head": "sst2"})
    eager = load_student(students("mtdnn_kd"))
    batch = _dev_batch(eager, fx)
    torch.testing.assert_close(
        onnx.predict(batch, head="stsb").logits,
        eager.predict(batch, head="stsb").logits,
        atol=TOLERANCE,
        rtol=0,
    )


@pytest.mark.parametrize("pooling", ["last", "max"])
@pytest.mark.parametrize("siamese", [False, True])
def test_padded_bilstm_equals_the_packed_student(pooling, siamese):
    """The traced BiLSTM (no packed sequences) computes what the saved student computes."""
    torch.manual_seed(0)
    model = BiLSTMClassifier(
        BiLSTMModelConfig(
            vocab_size=30, embedding_dim=6, hidden_size=5, mlp_size=7, pooling=pooling, siamese=siamese
        )
    ).eval()
    ids = torch.randint(2, 30, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 1:] = 0
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    types[2] = 0  # an empty second sentence
    with torch.no_grad():
        torch.testing.assert_close(
            PaddedBiLSTM(model)(ids, mask, types), model(ids, mask, types).logits, atol=1e-6, rtol=0
        )


# ----------------------------------------------------------------------------------------------- int8, CLI, timing


@pytest.fixture(scope="module")
def kd_cli_export(students, fx, tmp_path_factory):
    """``bertdistill export kd-student --quantize int8 --check`` (on the toy SST-2 dev set)."""
    out = tmp_path_factory.mktemp("onnx-kd-cli") / "export"
    args = ["export", str(students("kd")), "--format", "onnx", "--quantize", "int8", "--output", str(out)]
    assert main([*args, "--check", str(fx["sst2"]), "--task", "sst2"]) == 0
    return out


def test_int8_export_loads_and_agrees_on_most_predictions(kd_cli_export, students, fx):
    record = json.loads((kd_cli_export / EXPORT_FILE).read_text())
    _assert_passed(record)
    check = record["parity"]["check"]
    assert check["task"] == "sst2" and check["examples"] == 32 and check["onnx-fp32"]["agreement"] == 1.0
    assert check["onnx-fp32"]["score_change"] == pytest.approx(0.0, abs=1e-9)
    int8 = check["onnx-int8"]
    assert int8["agreement"] >= 0.9 and int8["max_abs_diff"] > 0  # quantised: close, not equal
    assert (kd_cli_export / "model.int8.onnx").is_file()
    eager, q = load_student(students("kd")), load_student(kd_cli_export / "model.int8.onnx")
    assert q.onnx.precision == "onnx-int8"
    batch = _dev_batch(eager, fx)
    same = (eager.predict(batch).logits.argmax(-1) == q.predict(batch).logits.argmax(-1)).float().mean()
    assert same >= 0.75


def test_evaluate_and_compare_time_the_export_against_the_teacher(
    kd_cli_export, students, teacher_dir, fx, capsys
):
    common = ["--task", "sst2", "--data", str(fx["sst2"]), "--threads", "1"]
    assert (
        main(
            [
                "evaluate",
                str(kd_cli_export),
                *common,
                "--precision",
                "fp32",
                "onnx-int8",
                "--json",
                "--timing",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["runtime"] for r in rows] == ["onnxruntime-onnx-fp32", "onnxruntime-onnx-int8"]
    assert all(r["latency_ms_median"] > 0 for r in rows)
    json_path = kd_cli_export.parent / "rows.json"
    args = ["compare", str(teacher_dir), str(kd_cli_export), *common, "--latency-sentences", "4"]
    assert main([*args, "--precision", "fp32", "onnx-int8", "--json", str(json_path)]) == 0
    rows = json.loads(json_path.read_text())
    assert "runtime" not in rows[0]  # the teacher: fp32 eager
    assert [r.get("runtime") for r in rows[1:]] == ["onnxruntime-onnx-fp32", "onnxruntime-onnx-int8"]
    assert all("latency_speedup" in r for r in rows[1:])
    onnx_mb = sum(f.stat().st_size for f in kd_cli_export.glob("model.onnx")) / 2**20
    assert rows[1]["size_mb"] == pytest.approx(onnx_mb)  # the graph's size, not the copied weights'


def test_predict_reads_the_export_dir(kd_cli_export, students):
    texts = [("the movie was good",), ("bad and dull",)]
    a = list(Predictor(students("kd")).predict(texts))
    b = list(Predictor(kd_cli_export).predict(texts))
    assert [r["label"] for r in a] == [r["label"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["probs"] == pytest.approx(y["probs"], abs=1e-4)


def _count_calls(monkeypatch, name):
    """Calls of ``bertdistill.export.<name>`` from now on (first positional argument of each)."""
    calls = []
    real = getattr(export_mod, name)

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(export_mod, name, counting)
    return calls


def test_onnx_precision_exports_an_eager_student_on_the_fly(students, fx, monkeypatch):
    """`compare --precision onnx-fp32` alone exports fp32 graphs and quantises nothing."""
    quantized = _count_calls(monkeypatch, "quantize_graphs")
    eager = load_student(students("kd"), task="sst2")
    onnx = with_precision(eager, "onnx-fp32")
    assert onnx.onnx.path is None and onnx.describe()["runtime"] == "onnxruntime-onnx-fp32"
    assert quantized == [] and onnx.onnx.record["quantized"] == {}
    batch = _dev_batch(eager, fx)
    torch.testing.assert_close(
        onnx.predict(batch).logits, eager.predict(batch).logits, atol=TOLERANCE, rtol=0
    )
    with pytest.raises(ConfigError, match="already runs in ONNX Runtime"):
        with_precision(onnx, "onnx-int8")
    assert quantized == []


def test_both_onnx_precisions_of_an_eager_student_come_from_one_export(students, fx, monkeypatch):
    """`compare --precision onnx-fp32 onnx-int8` on an eager student traces it once (a second torch.export of the
    same BiLSTM in one process failed on a real student: its sequence axis came out static); the int8 graphs are
    quantised from the fp32 ones on the first int8 request, once."""
    exported = _count_calls(monkeypatch, "export_runner")
    quantized = _count_calls(monkeypatch, "quantize_graphs")
    eager = load_student(students("bilstm"), task="sst2")
    fp32 = with_precision(eager, "onnx-fp32")
    assert len(exported) == 1 and quantized == []
    int8 = with_precision(eager, "onnx-int8")
    assert len(exported) == 1 and len(quantized) == 1
    assert with_precision(eager, "onnx-int8").describe()["size_mb"] == int8.describe()["size_mb"]
    assert len(exported) == 1 and len(quantized) == 1  # cached: neither traced nor quantised again
    assert fp32.describe()["runtime"] == "onnxruntime-onnx-fp32"
    assert int8.describe()["runtime"] == "onnxruntime-onnx-int8"
    assert int8.describe()["size_mb"] < fp32.describe()["size_mb"]
    record = int8.onnx.record
    assert record["quantized"] == {"model": "model.int8.onnx"}
    assert record["parity"]["samples"]["onnx-int8"]["rows_compared"] >= 11
    batch = _dev_batch(eager, fx)
    torch.testing.assert_close(
        fp32.predict(batch).logits, eager.predict(batch).logits, atol=TOLERANCE, rtol=0
    )
    assert int8.predict(batch).logits.shape == fp32.predict(batch).logits.shape


# ----------------------------------------------------------------------------------------------- failures


def test_export_fails_when_onnx_logits_differ(kd_cli_export, students, tmp_path, monkeypatch, capsys):
    def traced(graphs, out_dir, opset):  # the kd student's graph, already traced: only the check runs again
        (out_dir / "model.onnx").write_bytes((kd_cli_export / "model.onnx").read_bytes())
        return {"model": out_dir / "model.onnx"}

    run = export_mod.Sessions.run

    def off(self, name, inputs):
        return [o + 1e-3 if o.is_floating_point() else o for o in run(self, name, inputs)]

    monkeypatch.setattr(export_mod, "write_graphs", traced)
    monkeypatch.setattr(export_mod.Sessions, "run", off)
    out = tmp_path / "export"
    assert main(["export", str(students("kd")), "--output", str(out)]) == 1
    assert (
        "export failed: ONNX outputs differ from eager by 0.001 > tolerance 0.0001" in capsys.readouterr().err
    )
    record = json.loads((out / EXPORT_FILE).read_text())
    assert not record["passed"] and not list(out.glob("*.onnx"))  # the failed graphs are not left to be used
    monkeypatch.setattr(export_mod.Sessions, "run", run)
    with pytest.raises(ConfigError, match="failed its parity check"):
        load_student(out)


def test_unsupported_students_give_a_clear_error(mlm_teacher_dir, teacher_dir, second_teacher_dir, tmp_path):
    mlm = tmp_path / "mlm"
    mlm.mkdir()
    for f in mlm_teacher_dir.iterdir():
        (mlm / f.name).write_bytes(f.read_bytes())
    (mlm / "bertdistill.yaml").write_text(
        yaml.safe_dump({"method": {"name": "mlm"}, "data": {"task": "mlm"}})
    )
    with pytest.raises(ConfigError, match="masked LM .* is not exported to ONNX"):
        export(mlm, tmp_path / "a")
    with pytest.raises(ConfigError, match="not a saved student dir"):
        export(f"{teacher_dir}+{second_teacher_dir}", tmp_path / "b")
    with pytest.raises(ConfigError, match="must be onnx"):
        export(teacher_dir, tmp_path / "c", fmt="tflite")
    with pytest.raises(ConfigError, match="new dir"):
        export(teacher_dir, teacher_dir)


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"bertdistill\[export\]"):
        require_onnx()


def test_an_export_is_not_exported_again(kd_cli_export, tmp_path):
    with pytest.raises(ConfigError, match="already an ONNX export"):
        export(kd_cli_export, tmp_path / "again")
    with pytest.raises(ConfigError, match="onnx-fp32 or onnx-int8"):
        with_precision(load_student(kd_cli_export), "bf16")


def test_deploy_bench_measures_a_seq2seq_student_without_a_teacher(students, fx, tmp_path):
    """A C-MLM student has no teacher that translates: ``deploy_bench`` without ``--teacher`` scores its forms
    by BLEU and measures them against itself in fp32 eager; the file (validated on write) has no teacher."""
    from benchmarks import deploy_bench
    from benchmarks.schema import validate

    student = students("cmlm")
    argv = ["--task", "translation", "--data", str(fx["parallel"]), "--student", f"cmlm={student}"]
    argv += ["--precision", "fp32", "int8", "onnx-fp32", "--latency-sentences", "4", "--split", "test"]
    assert deploy_bench.main([*argv, "--name", "deploy_t", "--results-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "deploy_t.json").read_text())
    assert result["metric"] == "bleu" and result["split"] == "test" and result["max_score_loss"] == 0.5
    assert result["teacher"] is None and result["teacher_latency_ms"] is None
    rows = {r["precision"]: r for r in result["rows"]}
    assert set(rows) == {"fp32", "int8", "onnx-fp32"} and sum(r["best"] for r in rows.values()) == 1
    assert all(r["speedup_vs_teacher"] is None and r["method"] == "cmlm" for r in rows.values())
    assert rows["fp32"]["speedup_vs_fp32"] == 1.0 and 0.0 <= rows["int8"]["score"] <= 100.0
    # greedy ONNX decoding gives eager's tokens (the parity test above): the same BLEU
    assert rows["onnx-fp32"]["score"] == pytest.approx(rows["fp32"]["score"])
    assert validate(result) == []
    result["rows"][0]["speedup_vs_teacher"] = 2.0  # a speed-up against a teacher the file does not have
    assert any("without a teacher" in p for p in validate(result))
    with pytest.raises(SystemExit):  # --teacher-forms needs a teacher
        deploy_bench.main([*argv, "--teacher-forms", "--results-dir", str(tmp_path)])
