"""What a forward pass keeps for its backward pass. Opaque to users: pass it back unchanged.

Plain slotted dataclasses, not frozen ones: a frozen dataclass sets each field through
``object.__setattr__``, ~2 us more per forward call (measured), a tenth of a small one.
"""

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(eq=False, slots=True)
class BatchNormSaved:
    backend: str                 # "numpy", "numba" or "cuda": who runs the backward
    x: Any                       # the input (the layout view the kernels read, for numba)
    x_shape: tuple
    axis: int
    mean: Any                    # per channel, float64: batch mean (training) or running mean
    rstd: Any                    # per channel, float64: 1 / sqrt(var + eps)
    weight: Optional[Any]        # per channel, float64, or None
    has_bias: bool
    param_dtype: Optional[np.dtype]
    batch_stats: bool            # True: normalised with batch statistics (the training backward)
    count: int                   # values per channel
    running_stats_updated: Optional[bool]  # whether this call changed the running statistics
    #                                       (None: not known; cuda, running statistics on the device)
    layout: Any = None           # numba: the BatchNormLayout the kernels used; cuda: the
    #                              same, or None when the input was C-contiguous
    host_io: bool = True         # cuda: the caller passed host arrays, so results go back to the host
    params_on_device: bool = False  # cuda: weight/bias were device arrays: so are their gradients


@dataclass(eq=False, slots=True)
class LayerNormSaved:
    backend: str
    x: Any                       # the input (the (rows, cols) view the kernels read, for numba)
    x_shape: tuple
    normalized_shape: tuple
    mean: Any                    # per row, float64 (cuda: a device (2, rows) array of mean, rstd)
    rstd: Any                    # per row, float64 (cuda: None)
    weight: Optional[Any]        # flattened, float64, or None
    has_bias: bool
    param_dtype: Optional[np.dtype]
    host_io: bool = True         # cuda: the caller passed host arrays, so results go back to the host
    params_on_device: bool = False  # cuda: weight/bias were device arrays: so are their gradients


def param_dtype(weight, bias):
    """The dtype gradients of the affine parameters are returned in (the parameters' own)."""
    for p in (weight, bias):
        if p is not None:
            return np.asarray(p).dtype
    return None
