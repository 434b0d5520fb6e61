"""Built-in methods; importing this package registers each of them."""

from . import finetune, kd  # noqa: F401
