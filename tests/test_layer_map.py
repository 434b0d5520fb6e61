import pytest

from bertdistill.layer_map import select_layers, uniform_hidden_map


def test_uniform_selection_matches_distilbert_official():
    assert select_layers(12, 6, "uniform") == [0, 2, 4, 7, 9, 11]


@pytest.mark.parametrize(
    ("n_t", "n_s", "strategy", "expected"),
    [
        (6, 3, "first", [0, 1, 2]),
        (6, 3, "last", [3, 4, 5]),
        (6, 3, "uniform", [0, 3, 5]),
        (4, 2, "uniform", [0, 3]),
        (12, 1, "uniform", [11]),
        (6, 6, "uniform", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_selection_strategies(n_t, n_s, strategy, expected):
    assert select_layers(n_t, n_s, strategy) == expected


def test_selection_errors():
    with pytest.raises(ValueError, match="more layers"):
        select_layers(4, 6)
    with pytest.raises(ValueError, match="unknown layer selection"):
        select_layers(6, 3, "random")


def test_uniform_hidden_map_includes_embeddings():
    assert uniform_hidden_map(12, 4) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    assert uniform_hidden_map(6, 3, include_embeddings=False) == [(1, 2), (2, 4), (3, 6)]
    with pytest.raises(ValueError, match="multiple"):
        uniform_hidden_map(6, 4)
