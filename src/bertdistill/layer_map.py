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
