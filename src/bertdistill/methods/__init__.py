"""Built-in methods; importing this package registers each of them."""

from . import bilstm, cmlm, distilbert, fastbert, finetune, kd, mlm, mobilebert, mtdnn_kd, pkd, tinybert  # noqa: F401
