"""Built-in methods; importing this package registers each of them."""

from . import fastbert, finetune, kd, pkd, tinybert  # noqa: F401
