"""The method registry: ``@register("kd")`` on a Method class, ``get_method("kd")`` to look it up.

Only methods are looked up by name; losses, layer maps and builders are plain imports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .protocol import Method

METHODS: dict[str, type[Method]] = {}

M = TypeVar("M", bound="type[Method]")


def register(name: str) -> Callable[[M], M]:
    def deco(cls: M) -> M:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {METHODS[name].__qualname__}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def _load_builtin_methods() -> None:
    from . import methods  # noqa: F401  (importing the package registers every built-in method)


def get_method(name: str) -> type[Method]:
    _load_builtin_methods()
    try:
        return METHODS[name]
    except KeyError:
        from .config import did_you_mean

        raise KeyError(
            f"unknown method {name!r}{did_you_mean(name, METHODS)}; known methods: {sorted(METHODS)}"
        ) from None


def list_methods() -> dict[str, str]:
    """Registered method names with the first line of each class's docstring."""
    _load_builtin_methods()
    return {n: (cls.__doc__ or "").strip().splitlines()[0] for n, cls in sorted(METHODS.items())}
