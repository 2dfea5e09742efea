"""normkit: BatchNorm and LayerNorm as fast Numba CPU and numba.cuda GPU kernels, with a NumPy
reference for every kernel and a small PyTorch-like layer API."""

__version__ = "0.1.0"

from . import config, functional, nn, reference  # noqa: E402
from . import functional as F  # noqa: E402
from ._info import format_info, info  # noqa: E402
from ._memory import empty_cache  # noqa: E402
from ._running import NonFiniteBatchWarning  # noqa: E402
from ._threading import SpinningThreadsWarning, get_num_threads, set_num_threads  # noqa: E402
from .functional import batch_norm, batch_norm_backward, layer_norm, layer_norm_backward  # noqa: E402
from .losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss  # noqa: E402
from .models import seed_model  # noqa: E402
from .nn import (BatchNorm, Dropout, LayerNorm, Linear, Module, Parameter, ReLU,  # noqa: E402
                 Sequential, Sigmoid, Tanh)
from .optim import SGD, Adam  # noqa: E402
from .random import manual_seed  # noqa: E402
from .serialization import load_state, save  # noqa: E402
from .training import History, StopTraining, evaluate, fit, predict  # noqa: E402
from .distributed import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm  # noqa: E402

__all__ = [
    "F", "functional", "reference", "nn", "config", "info", "format_info", "empty_cache", "NonFiniteBatchWarning",
    "set_num_threads", "get_num_threads", "SpinningThreadsWarning",
    "batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward",
    "Module", "Parameter", "BatchNorm", "LayerNorm", "Linear", "ReLU", "Sigmoid", "Tanh",
    "Dropout", "Sequential", "SGD", "Adam", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss",
    "MSELoss", "fit", "predict", "evaluate", "History", "StopTraining", "save", "load_state", "manual_seed",
    "seed_model", "SyncBatchNorm", "convert_sync_batchnorm", "revert_sync_batchnorm",
]
