"""The output-buffer cache (normkit._memory): reuse, and never two live arrays on one buffer."""

import gc

import numpy as np
import pytest

import normkit
from normkit import _memory, config
from normkit import functional as F
from normkit import reference as R

from .conftest import assert_close

SMALL = 4096  # bytes: the tests lower the cache's threshold so that small arrays go through it


@pytest.fixture
def cache(monkeypatch):
    monkeypatch.setattr(config, "OUTPUT_CACHE_MIN_BYTES", SMALL)
    monkeypatch.setattr(config, "OUTPUT_CACHE_BYTES", 64 * SMALL)
    normkit.empty_cache()
    yield
    normkit.empty_cache()


def _address(a):
    return a.__array_interface__["data"][0]


def test_empty_is_a_writable_c_contiguous_array(cache):
    a = _memory.empty((8, 3, 50), np.float32)
    assert a.shape == (8, 3, 50) and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable
    a[...] = 1.5
    assert a.sum() == 1.5 * a.size


def test_a_freed_buffer_is_reused_for_the_same_size(cache):
    a = _memory.empty((64, 64), np.float64)
    address = _address(a)
    del a
    gc.collect()
    assert _memory.cached_bytes() == 64 * 64 * 8
    b = _memory.empty((128, 32), np.float64)  # same bytes, another shape
    assert _address(b) == address
    assert _memory.cached_bytes() == 0
    c = _memory.empty((64, 64), np.float32)  # other size: a new buffer
    assert _address(c) != address


def test_a_buffer_with_a_live_view_is_not_reused(cache):
    a = _memory.empty((64, 64), np.float64)
    a[...] = 7.0
    view = a[1:, ::2]
    address = _address(a)
    del a
    gc.collect()
    assert _memory.cached_bytes() == 0
    b = _memory.empty((64, 64), np.float64)
    b[...] = -1.0
    assert _address(b) != address
    assert np.all(view == 7.0)
    del view
    gc.collect()
    assert _memory.cached_bytes() == 64 * 64 * 8


def test_the_cache_is_bounded_and_can_be_emptied(cache, monkeypatch):
    monkeypatch.setattr(config, "OUTPUT_CACHE_BYTES", 3 * SMALL)
    arrays = [_memory.empty((SMALL // 8,), np.float64) for _ in range(5)]
    addresses = [_address(a) for a in arrays]
    while arrays:  # free them oldest first
        del arrays[0]
    gc.collect()
    assert _memory.cached_bytes() == 3 * SMALL  # the first two freed were dropped
    assert _address(_memory.empty((SMALL // 8,), np.float64)) == addresses[4]  # newest first
    normkit.empty_cache()
    assert _memory.cached_bytes() == 0
    too_big = _memory.empty((4 * SMALL // 8,), np.float64)  # over the whole cache: plain np.empty
    assert isinstance(too_big.base, np.ndarray) or too_big.base is None


def test_cache_off_keeps_nothing(monkeypatch):
    monkeypatch.setattr(config, "OUTPUT_CACHE_BYTES", 0)
    a = _memory.empty((1 << 20,), np.float32)
    assert isinstance(a.base, np.ndarray)  # a view of a plain NumPy block, not a cached buffer
    del a
    gc.collect()
    assert _memory.cached_bytes() == 0


@pytest.mark.parametrize("shape, dtype", [((3,), np.float32), ((7, 5), np.float64),
                                          ((SMALL // 4,), np.float32), ((4 * SMALL // 8,), np.float64)])
def test_outputs_start_on_a_cache_line(cache, shape, dtype):
    # small (np.empty), cached and over-the-cache outputs alike; reused buffers too
    for _ in range(2):
        a = _memory.empty(shape, dtype)
        assert _address(a) % 64 == 0 and a.shape == shape and a.flags.c_contiguous
        a[...] = 1.0  # the whole array is writable memory of its own
        del a
        gc.collect()


def _in_window(output, input_address):
    """Whether ``output`` starts 1 to ALIAS_WINDOW bytes after ``input_address`` modulo 1 MiB."""
    return 0 < (_address(output) - input_address) % _memory.ALIAS_SPAN <= _memory.ALIAS_WINDOW


def test_output_address_moves_out_of_each_inputs_window():
    mib, window = _memory.ALIAS_SPAN, _memory.ALIAS_WINDOW
    base = 5 * mib + 100                 # first 64-byte boundary: 5 MiB + 128
    assert _memory.output_address(base, []) == 5 * mib + 128
    assert _memory.output_address(base, [7 * mib + 200]) == 5 * mib + 128      # after: stays
    assert _memory.output_address(base, [3 * mib + 128]) == 5 * mib + 128      # same offset: fine
    assert _memory.output_address(base, [3 * mib + 127]) == 5 * mib + 128 + window  # 1 byte after
    assert _memory.output_address(base, [3 * mib + 128 - window]) == 5 * mib + 192  # window's end
    # two inputs, the second's window starting where the first's ends: past both, within padding
    address = _memory.output_address(base, [mib + 100, 9 * mib + 100 + window])
    assert address == 5 * mib + 128 + 2 * window and address - base < _memory.PADDING


@pytest.mark.parametrize("nbytes", [SMALL, 64 * SMALL * 2])  # cached buffers and plain ones
def test_outputs_start_where_asked_in_a_line(cache, nbytes):
    shape = (nbytes // 8,)
    x = np.empty(shape)
    for line_offset in (0, 8, 56):
        out = _memory.empty(shape, np.float64, apart_from=(x,), line_offset=line_offset)
        assert _address(out) % 64 == line_offset and not _in_window(out, _address(x))
        out[...] = 1.0  # inside its own buffer
        del out
        gc.collect()
    for bad in (4, 64, -8):
        with pytest.raises(ValueError, match="line_offset must be a multiple of 8 in"):
            _memory.empty(shape, np.float64, line_offset=bad)


@pytest.mark.parametrize("nbytes", [SMALL, 64 * SMALL * 2])  # cached buffers and plain ones
@pytest.mark.parametrize("header", [0, 16, 48])             # the input's offset past a line
def test_outputs_keep_clear_of_their_inputs(cache, nbytes, header):
    # x 16-64 bytes before where the output would otherwise start, dy a window after x: the
    # output must move past x's window and then past dy's.
    shape = (nbytes // 4,)
    first = _memory.empty(shape, np.float32)
    natural = _address(first)
    del first
    gc.collect()
    block = np.empty(2 * _memory.ALIAS_SPAN + 2 * nbytes, np.uint8)
    def input_at(offset_in_span):  # a float32 array at that address modulo 1 MiB
        start = (offset_in_span - _address(block)) % _memory.ALIAS_SPAN
        return block[start:start + nbytes].view(np.float32)
    x = input_at((natural - 64 + header) % _memory.ALIAS_SPAN)
    dy = input_at((natural - 64 + header + _memory.ALIAS_WINDOW) % _memory.ALIAS_SPAN)  # next
    for inputs in [(x,), (x, dy), (dy, x)]:
        out = _memory.empty(shape, np.float32, apart_from=inputs)
        assert _address(out) % 64 == 0 and out.shape == shape
        assert not any(_in_window(out, _address(a)) for a in inputs)
        out[...] = 2.0  # inside its own buffer
        assert out.sum() == 2.0 * out.size
        if nbytes < config.OUTPUT_CACHE_BYTES:  # the cached buffer came back, moved within it
            assert 0 < _address(out) - natural < _memory.PADDING
        del out
        gc.collect()
    with pytest.raises(ValueError, match="at most 2"):
        _memory.empty(shape, np.float32, apart_from=(x, dy, x))


def test_layers_outputs_stay_independent_when_buffers_are_reused(cache, rng, kernel_build):
    # Forward and backward outputs go through the cache; results kept by the caller must not be
    # overwritten by later calls, and each call must match the reference.
    layer = normkit.BatchNorm(16)
    kept = []
    for _ in range(4):
        x = rng.standard_normal((64, 16, 5))
        y = layer(x)
        dx = layer.backward(rng.standard_normal(y.shape))
        kept.append((x, y.copy(), y, dx.copy(), dx))
        del y, dx
    for x, y_copy, y, dx_copy, dx in kept:
        np.testing.assert_array_equal(y, y_copy)
        np.testing.assert_array_equal(dx, dx_copy)
    x = rng.standard_normal((32, 40))
    for _ in range(3):  # LayerNorm through freed, reused buffers
        y, saved = F.layer_norm(x, 40)
        y_ref, _ = R.layer_norm(x, (40,))
        assert_close(y, y_ref, np.float64)
        del y, saved
        gc.collect()
    assert _memory.cached_bytes() > 0


def test_work_arrays_reuse_freed_buffers():
    normkit.empty_cache()
    n = _memory.WORK_CACHE_MIN_BYTES // 8  # float64 values
    a = _memory.work_array((2, n // 2))
    assert a.dtype == np.float64 and a.flags.c_contiguous and a.flags.writeable
    address = _address(a)
    del a
    gc.collect()
    assert _memory.cached_bytes() == n * 8
    b = _memory.work_array((4, n // 4))  # same bytes: the same buffer
    assert _address(b) == address and _memory.cached_bytes() == 0
    del b
    small = _memory.work_array((n // 2,))  # below the threshold: an ordinary array, never cached
    del small
    gc.collect()
    assert _memory.cached_bytes() == n * 8
    normkit.empty_cache()


def test_layer_norm_backward_partials_are_reused(rng):
    # Wide rows, few of them: the dweight/dbias partials (2 x 16 chunks x 8192 float64) are the
    # large temporary that glibc used to hand back to the OS after every call.
    normkit.empty_cache()
    x = rng.standard_normal((16, 8192)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(8192).astype(np.float32)
    _, saved = F.layer_norm(x, 8192, w, None)
    first = F.layer_norm_backward(dy, saved)
    gc.collect()
    assert _memory.cached_bytes() == 2 * 16 * 8192 * 8
    second = F.layer_norm_backward(dy, saved)  # takes the cached buffer: same results
    for a, b in zip(first[:2], second[:2]):
        np.testing.assert_array_equal(a, b)
    _, ref_saved = R.layer_norm(x, 8192, w, None)
    assert_close(second[1], R.layer_norm_backward(dy, ref_saved)[1], np.float32, scale=16)
    normkit.empty_cache()


def test_line_placed_copies_start_at_the_offset_asked_for(rng):
    values = rng.standard_normal(37)
    for offset in range(0, 64, 8):
        placed = _memory.line_placed(values, offset)
        assert placed.ctypes.data % 64 == offset and placed.dtype == np.float64
        np.testing.assert_array_equal(placed, values)
        assert not np.shares_memory(placed, values)
    as_float32 = _memory.line_placed(values, 20, np.float32)  # 20: rounded down to a multiple of 4
    assert as_float32.ctypes.data % 64 == 20 and as_float32.dtype == np.float32
    np.testing.assert_array_equal(as_float32, values.astype(np.float32))
    assert _memory.line_placed(values, 20).ctypes.data % 64 == 16  # ... and of 8
