"""BatchNorm's elementwise arithmetic on one 1-D row or run (compiled, inlined into the kernels of
:mod:`._bn_wide`, :mod:`._bn_runs` and :mod:`._bn_one_pass`): y = (x - centre) * scale + shift
and dx = dy * k_dy + (x - centre) * k_x + k_0, with per-channel scalars (runs) or per-column
vectors (wide). Outputs worth it are written with streaming stores (see _streaming.py): the
scalar loops write the values before the first 64-byte line and after the last whole one. The
line writers spell out the same arithmetic in the same order, so both round alike (tested).
"""

from ._compile import inline_helper
from ._streaming import at, line_span, line_writer, part

# (The scalar loops run from 0 over slices: an index from range(j0, j1) could be negative as far
# as Numba knows, and the wraparound check it then adds stops LLVM vectorising the loop.)


@inline_helper
def affine_values(x, centre, scale, shift, out):
    for j in range(out.shape[0]):
        out[j] = (x[j] - at(centre, j)) * at(scale, j) + at(shift, j)


affine_lines = line_writer(
    lambda m, x, centre, scale, shift: m.add(m.mul(m.sub(x, centre), scale), shift))


@inline_helper
def affine_row(x, centre, scale, shift, out, stream):
    """out = (x - centre) * scale + shift, in out's dtype (see :func:`affine`)."""
    if not stream:  # first, before any line arithmetic: 5-20% of the kernel on runs of 49-196
        affine_values(x, centre, scale, shift, out)
        return
    start, stop, step = line_span(out, x.strides[0] == x.itemsize)
    if stop == 0:  # nothing to stream: one loop, no slicing (it costs on short rows)
        affine_values(x, centre, scale, shift, out)
        return
    if start:
        affine_values(x[:start], part(centre, 0, start), part(scale, 0, start),
                      part(shift, 0, start), out[:start])
    for j in range(start, stop, step):
        affine_lines(out, j, (x, centre, scale, shift))
    n = out.shape[0]
    if stop < n:
        affine_values(x[stop:], part(centre, stop, n), part(scale, stop, n),
                      part(shift, stop, n), out[stop:])


@inline_helper
def grad_input_values(dy, x, centre, k_dy, k_x, k_0, out):
    for j in range(out.shape[0]):
        out[j] = dy[j] * at(k_dy, j) + ((x[j] - at(centre, j)) * at(k_x, j) + at(k_0, j))


grad_input_lines = line_writer(
    lambda m, dy, x, centre, k_dy, k_x, k_0:
    m.add(m.mul(dy, k_dy), m.add(m.mul(m.sub(x, centre), k_x), k_0)))


@inline_helper
def grad_input_row(dy, x, centre, k_dy, k_x, k_0, out, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0, in out's dtype (see :func:`grad_input`)."""
    if not stream:  # first, as in affine_row
        grad_input_values(dy, x, centre, k_dy, k_x, k_0, out)
        return
    unit_strides = x.strides[0] == x.itemsize and dy.strides[0] == dy.itemsize
    start, stop, step = line_span(out, unit_strides)
    if stop == 0:
        grad_input_values(dy, x, centre, k_dy, k_x, k_0, out)
        return
    if start:
        grad_input_values(dy[:start], x[:start], part(centre, 0, start), part(k_dy, 0, start),
                          part(k_x, 0, start), part(k_0, 0, start), out[:start])
    for j in range(start, stop, step):
        grad_input_lines(out, j, (dy, x, centre, k_dy, k_x, k_0))
    n = out.shape[0]
    if stop < n:
        grad_input_values(dy[stop:], x[stop:], part(centre, stop, n), part(k_dy, stop, n),
                          part(k_x, stop, n), part(k_0, stop, n), out[stop:])
