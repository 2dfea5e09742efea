"""normkit: BatchNorm and LayerNorm as fast Numba CPU and numba.cuda GPU kernels, with a NumPy
reference for every kernel and a small PyTorch-like layer API."""

__version__ = "0.1.0"

from . import config, functional, reference  # noqa: E402
from . import functional as F  # noqa: E402
from ._info import format_info, info  # noqa: E402
from ._running import NonFiniteBatchWarning  # noqa: E402
from .functional import batch_norm, batch_norm_backward, layer_norm, layer_norm_backward  # noqa: E402

__all__ = [
    "F", "functional", "reference", "config", "info", "format_info", "NonFiniteBatchWarning",
    "batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward",
]
