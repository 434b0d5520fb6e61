"""Which teacher layers a student layer copies or learns from — the L+1 indexing stated once.

Two index spaces, never mixed:

* *layer numbers* (0-based): ``encoder.layer[i]`` and ``attentions[i]``; a model with L layers has 0..L-1.
* *hidden-state indices*: ``hidden_states[m]``, 0 = embedding output, m = output of layer number m-1.
"""

from __future__ import annotations


def _check(n_teacher: int, n_student: int) -> None:
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"layer counts must be >= 1 (teacher {n_teacher}, student {n_student})")
    if n_student > n_teacher:
        raise ValueError(
            f"the student has more layers ({n_student}) than the teacher ({n_teacher}); "
            "choose student.num_layers <= the teacher's depth"
        )


def select_layers(n_teacher: int, n_student: int, strategy: str = "uniform") -> list[int]:
    """Teacher layer numbers (0-based) a student of ``n_student`` layers is initialised from.

    ``first``: 0..k-1 (Patient KD); ``last``: the top k; ``uniform``: evenly spread with the first and the
    last layer always included — round(linspace(0, N-1, k)), which for 12→6 gives DistilBERT's official
    [0, 2, 4, 7, 9, 11].
    """
    _check(n_teacher, n_student)
    if strategy == "first":
        return list(range(n_student))
    if strategy == "last":
        return list(range(n_teacher - n_student, n_teacher))
    if strategy == "uniform":
        if n_student == 1:
            return [n_teacher - 1]
        step = (n_teacher - 1) / (n_student - 1)
        # round half up (not Python's banker's rounding) so the spread is symmetric and deterministic
        return [int(i * step + 0.5) for i in range(n_student)]
    raise ValueError(f"unknown layer selection {strategy!r}; use first, last or uniform")


def uniform_hidden_map(
    n_teacher: int, n_student: int, include_embeddings: bool = True
) -> list[tuple[int, int]]:
    """(student, teacher) *hidden-state index* pairs for a uniform map with k = N / M (TinyBERT):
    student ``hidden_states[m]`` ↔ teacher ``hidden_states[m·k]``, m = 0..M (0 = embeddings) or 1..M."""
    _check(n_teacher, n_student)
    if n_teacher % n_student:
        raise ValueError(
            f"a uniform map needs the teacher depth ({n_teacher}) to be a multiple of the student's ({n_student}); "
            "give the pairs explicitly instead"
        )
    k = n_teacher // n_student
    start = 0 if include_embeddings else 1
    return [(m, m * k) for m in range(start, n_student + 1)]


def proportional_layer(m: int, n_teacher: int, n_student: int) -> int:
    """``g(m) = m·N/M`` rounded half up (exact when M divides N): the teacher hidden-state index learnt by
    student hidden-state index m. 6→4: 0, 2, 3, 5, 6; 12→4: 0, 3, 6, 9, 12."""
    return (2 * m * n_teacher + n_student) // (2 * n_student)


def tinybert_layer_maps(
    n_teacher: int, n_student: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """TinyBERT's uniform maps (Jiao et al. 2020 §3.2, ``g(m) = m·N/M``), both as (student, teacher) pairs:

    * hidden, in *hidden-state indices*: ``(m, g(m))`` for m = 0..M — 0 ↔ 0 is the embedding layer;
    * attention, in *layer numbers* (0-based, no embedding entry): ``(i, g(i + 1) − 1)`` for i = 0..M−1, i.e.
      student layer i learns the attention of the teacher layer whose output it learns. With k = N/M an
      integer this is the official ``teacher_atts[i·k + k − 1]`` (4-of-12: teacher layers 3, 6, 9, 12 1-based).

    When M does not divide N (a 4-layer student of a 6-layer teacher) g is rounded half up (an extension;
    the paper only uses integer k)."""
    _check(n_teacher, n_student)
    g = [proportional_layer(m, n_teacher, n_student) for m in range(n_student + 1)]
    hidden = [(m, g[m]) for m in range(n_student + 1)]
    attention = [(i, g[i + 1] - 1) for i in range(n_student)]
    return hidden, attention
