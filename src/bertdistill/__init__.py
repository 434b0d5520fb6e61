"""bertdistill: knowledge distillation for BERT-family models — eight papers, one engine.

Public API::

    from bertdistill import distill, load_config, load_student, get_method, list_methods, evaluate
    result = distill("kd/sst2", ["teacher.path=runs/teacher-sst2"])  # a shipped recipe, or a YAML path
"""

from .config import ConfigError, RunConfig
from .recipes import load_config
from .registry import get_method, list_methods, register

__version__ = "0.1.0"


def distill(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a recipe end to end; see :func:`bertdistill.training.loop.distill`."""
    from .training.loop import distill as _distill

    return _distill(*args, **kwargs)


def load_student(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Any saved student, ready to run through its method's runner; see
    :func:`bertdistill.inference.load_student`."""
    from .inference import load_student as _load

    return _load(*args, **kwargs)


def evaluate(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Score a model dir on a task; see :func:`bertdistill.evaluation.evaluate`."""
    from .evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def push_to_hub(*args, **kwargs):  # type: ignore[no-untyped-def]
    """A finished run's model card and its upload to the HF hub; see
    :func:`bertdistill.model_card.push_to_hub` and docs/sharing.md."""
    from .model_card import push_to_hub as _push

    return _push(*args, **kwargs)


__all__ = [
    "ConfigError",
    "RunConfig",
    "distill",
    "evaluate",
    "get_method",
    "list_methods",
    "load_config",
    "load_student",
    "push_to_hub",
    "register",
]
