import pytest
import torch

from bertdistill.config import ConfigError, StudentConfig
from bertdistill.data.tasks import get_task
from bertdistill.students import PRESETS, build_student, copy_layers, encoder_layers


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_copy_layers_student_layer_i_equals_teacher_layer_sel_i(tiny_model):
    student = copy_layers(tiny_model, [0, 3])
    assert student.config.num_hidden_layers == 2
    assert encoder_layers(tiny_model)[0] == "bert.encoder.layer"
    for i, t in enumerate([0, 3]):
        assert _same(student.bert.encoder.layer[i], tiny_model.bert.encoder.layer[t])
    assert _same(student.bert.embeddings, tiny_model.bert.embeddings)
    assert _same(student.classifier, tiny_model.classifier)
    assert student.config.bertdistill_copied_layers == [0, 3]
    # the copy is independent of the teacher
    student.bert.encoder.layer[0].output.dense.weight.data.add_(1.0)
    assert not _same(student.bert.encoder.layer[0], tiny_model.bert.encoder.layer[0])


def test_build_student_from_teacher_with_selection(tiny_model):
    task = get_task("sst2")
    s, info = build_student(StudentConfig(num_layers=2, layer_selection="uniform"), tiny_model, task)
    assert info == {"init": "teacher", "teacher_layers": [0, 3]}
    s, info = build_student(StudentConfig(layers=[1, 2, 3]), tiny_model, task)
    assert info["teacher_layers"] == [1, 2, 3] and s.config.num_hidden_layers == 3


def test_width_change_needs_random_init(tiny_model):
    task = get_task("sst2")
    with pytest.raises(ConfigError, match="widths must match"):
        build_student(StudentConfig(num_layers=2, config_overrides={"hidden_size": 16}), tiny_model, task)
    s, info = build_student(
        StudentConfig(
            init="random",
            num_layers=2,
            config_overrides={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2},
        ),
        tiny_model,
        task,
    )
    assert info["init"] == "random" and s.config.hidden_size == 16 and s.config.num_hidden_layers == 2


def test_presets_and_errors(tiny_model):
    assert PRESETS["tinybert4"]["hidden_size"] == 312
    with pytest.raises(ConfigError, match="known presets"):
        build_student(StudentConfig(init="random", preset="huge"), tiny_model, get_task("sst2"))
    with pytest.raises(ValueError, match="not valid"):
        copy_layers(tiny_model, [7])
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_student(StudentConfig(), None, get_task("sst2"))


def test_an_albert_student_applies_the_shared_group_at_fewer_depths():
    """ALBERT has one layer group for every depth: its student keeps every weight and runs it at fewer depths,
    so the whole-depth copy is the teacher itself; a student shallower than its number of groups is refused."""
    from conftest import other_encoder

    torch.manual_seed(0)
    teacher = other_encoder("albert").eval()
    ids = torch.randint(5, 40, (2, 9))
    whole = copy_layers(teacher, [0, 1, 2, 3]).eval()
    assert torch.equal(whole(input_ids=ids).logits, teacher(input_ids=ids).logits)
    half = copy_layers(teacher, [0, 3])
    assert half.config.num_hidden_layers == 2
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in half.state_dict().items())
    grouped = other_encoder("albert", num_hidden_groups=2)
    with pytest.raises(ValueError, match="an ALBERT with 2 layer groups needs at least 2 layers, got 1"):
        copy_layers(grouped, [0])
    with pytest.raises(ValueError, match="runs 2 layers per depth"):  # hidden states are not one per layer
        copy_layers(other_encoder("albert", inner_group_num=2), [0, 3])
