"""Bad input gets a clear error, and a call that raises changes no state."""

import numpy as np
import pytest

import normkit
from normkit import functional as F

BACKENDS = ["numba", "numpy"]


def _state(c=4):
    return np.arange(c, dtype=np.float32), np.ones(c, dtype=np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x,kwargs,exc,match", [
    (np.ones((4, 4), np.int64), {}, TypeError, "float32 or float64.*int64"),
    (np.ones((4, 4), bool), {}, TypeError, "bool"),
    (np.ones((4, 4), np.complex128), {}, TypeError, "complex"),
    (np.ones((4, 4), np.float16), {}, TypeError, "float16"),
    (np.ones((4, 4), object), {}, TypeError, "object"),
    (np.ones((0, 4), np.float32), {}, ValueError, "empty"),
    (np.ones(4, np.float32), {}, ValueError, "at least 2 dimensions"),
    (np.ones((4, 5), np.float32), {}, ValueError, r"running_mean must have shape \(5,\) to match the input's 5 channels, got \(4,\)"),
    (np.ones((4, 4), np.float32), {"axis": 2}, ValueError, "axis 2 is out of range"),
    (np.ones((4, 4), np.float32), {"eps": 0.0}, ValueError, "eps"),
    (np.ones((4, 4), np.float32), {"eps": float("nan")}, ValueError, "eps"),
    (np.ones((4, 4), np.float32), {"momentum": 1.5}, ValueError, "momentum"),
    (np.ones((4, 4), np.float32), {"momentum": None}, ValueError, "num_batches_tracked"),
    (np.ones((1, 4), np.float32), {}, ValueError, "more than 1 value per channel"),
    (np.ones((4, 4), np.float32), {"weight": np.ones(3)}, ValueError, r"weight must have shape \(4,\)"),
    (np.ones((4, 4), np.float32), {"bias": np.ones((4, 1))}, ValueError, r"bias must have shape \(4,\)"),
    (np.ones((4, 4), np.float32), {"weight": np.ones(4, int)}, TypeError, "weight"),
    (np.ones((4, 4), np.float32), {"backend": "gpu"}, ValueError, "backend must be one of"),
])
def test_batch_norm_rejects_bad_input_without_touching_state(backend, x, kwargs, exc, match):
    rm, rv = _state()
    before = rm.copy(), rv.copy()
    kwargs = {"backend": backend, **kwargs}
    with pytest.raises(exc, match=match):
        F.batch_norm(x, rm, rv, training=True, **kwargs)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_running_stat_problems(backend):
    x = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros(4)
        ro.flags.writeable = False
        F.batch_norm(x, ro, np.ones(4), training=True, backend=backend)
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        F.batch_norm(x, np.zeros(4), None, training=True, backend=backend)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        F.batch_norm(x, None, None, training=False, backend=backend)
    with pytest.raises(TypeError, match="running_mean must be float32 or float64"):
        F.batch_norm(x, np.zeros(4, int), np.ones(4), training=True, backend=backend)
    stats = np.array([0.0, 0, 0, 0, 1, 1, 1, 1])
    for rm, rv in ((stats[:4], stats[:4]), (stats[:4], stats[2:6])):
        with pytest.raises(ValueError, match="running_mean and running_var share memory"):
            F.batch_norm(x, rm, rv, training=True, backend=backend)
        assert stats.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    F.batch_norm(x, stats[:4], stats[4:], training=True, backend=backend)  # halves of one array


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x,ns,kwargs,exc,match", [
    (np.ones((4, 5), np.int32), 5, {}, TypeError, "int32"),
    (np.ones((4, 0), np.float32), 0, {}, ValueError, "empty"),
    (np.ones((4, 5), np.float32), 4, {}, ValueError, r"trailing dimensions must equal normalized_shape \(4,\)"),
    (np.ones((4, 5), np.float32), (2, 4, 5), {}, ValueError, "trailing dimensions"),
    (np.ones((4, 5), np.float32), "5", {}, TypeError, "normalized_shape"),
    (np.ones((4, 5), np.float32), 5, {"weight": np.ones(4)}, ValueError, r"weight must have shape \(5,\)"),
    (np.ones((4, 5), np.float32), 5, {"eps": -1.0}, ValueError, "eps"),
])
def test_layer_norm_rejects_bad_input(backend, x, ns, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        F.layer_norm(x, ns, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_rejects_wrong_dy(backend):
    _, saved = F.batch_norm(np.ones((4, 3)), None, None, training=True, backend=backend)
    with pytest.raises(ValueError, match=r"dy has shape \(3, 4\)"):
        F.batch_norm_backward(np.ones((3, 4)), saved)
    with pytest.raises(TypeError, match="saved must be what batch_norm returned"):
        F.batch_norm_backward(np.ones((4, 3)), "nope")
    _, saved = F.layer_norm(np.ones((4, 3)), 3, backend=backend)
    with pytest.raises(TypeError, match="dy must be a float32 or float64"):
        F.layer_norm_backward(np.ones((4, 3), int), saved)
    with pytest.raises(ValueError, match=r"layer_norm_backward: dy has shape \(4, 1, 3\) but the "
                                         r"forward's input had shape \(4, 3\)"):
        F.layer_norm_backward(np.ones((4, 1, 3)), saved)  # NumPy would broadcast it
    with pytest.raises(TypeError, match="saved must be what layer_norm returned, got BatchNormSaved"):
        F.layer_norm_backward(np.ones((4, 3)), F.batch_norm(np.ones((4, 3)), None, None, training=True)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_but_does_not_poison_running_stats(backend):
    rng = np.random.default_rng(1)
    rm, rv = _state()
    x = rng.standard_normal((16, 4)).astype(np.float32)
    x[3, 1] = np.nan
    before = rm.copy(), rv.copy()
    with pytest.warns(normkit.NonFiniteBatchWarning, match="1 of 4 channels"):
        y, saved = F.batch_norm(x, rm, rv, training=True, backend=backend)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2, 3]]).all()
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])
    assert not saved.running_stats_updated
    x[3, 1] = np.inf
    with pytest.warns(normkit.NonFiniteBatchWarning):
        F.batch_norm(x, rm, rv, training=True, backend=backend)
    np.testing.assert_array_equal(rm, before[0])
    # A clean batch afterwards updates as usual, and eval mode stays finite.
    x[3, 1] = 0.0
    _, saved = F.batch_norm(x, rm, rv, training=True, backend=backend)
    assert saved.running_stats_updated and not np.array_equal(rm, before[0])
    y_eval, _ = F.batch_norm(x, rm, rv, training=False, backend=backend)
    assert np.isfinite(y_eval).all()


def test_cuda_backend_error_or_device_arrays_refused_on_cpu():
    from normkit import _backend
    x = np.ones((4, 3), np.float32)
    if not _backend.cuda_available():
        with pytest.raises(RuntimeError, match=r"normkit\[cuda\]"):
            F.batch_norm(x, None, None, training=True, backend="cuda")

    class FakeDevice:
        __cuda_array_interface__ = {}
    with pytest.raises(TypeError, match="CUDA device array but backend='numba'"):
        F.layer_norm(FakeDevice(), 3, backend="numba")
    # "auto" never picks CUDA for NumPy input.
    _, saved = F.batch_norm(x + np.arange(4)[:, None], None, None, training=True, backend="auto")
    assert saved.backend == "numba"


@pytest.fixture
def reload_config(monkeypatch):
    """config re-read from the environment the test sets; read again from the real one after."""
    import importlib

    from normkit import config
    yield lambda: importlib.reload(config)
    monkeypatch.undo()
    importlib.reload(config)


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", ""])
def test_bad_environment_settings_name_the_variable(monkeypatch, reload_config, value):
    monkeypatch.setenv("NORMKIT_ONE_PASS_BYTES", value)
    with pytest.raises(ValueError, match=f"environment variable NORMKIT_ONE_PASS_BYTES must be an "
                                         f"integer >= 0, got '{value}'"):
        reload_config()


def test_environment_settings_are_read(monkeypatch, reload_config):
    monkeypatch.setenv("NORMKIT_ONE_PASS_BYTES", "12345")
    monkeypatch.setenv("NORMKIT_OUTPUT_CACHE_BYTES", "0")
    config = reload_config()
    assert (config.ONE_PASS_BYTES, config.OUTPUT_CACHE_BYTES, config.STREAM_MIN_BYTES) == (12345, 0, 8 << 20)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_arrays_are_refused_not_unmasked(backend):
    """A mask would be ignored by the kernels (and honoured by NumPy's reference): refused."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    masked = np.ma.masked_array(x, mask=x > 1)
    rm, rv = _state()
    before = rm.copy(), rv.copy()
    with pytest.raises(TypeError, match="batch_norm: x is a masked array"):
        F.batch_norm(masked, rm, rv, training=True, backend=backend)
    with pytest.raises(TypeError, match="running_var is a masked array"):
        F.batch_norm(x, rm, np.ma.masked_array(rv), training=True, backend=backend)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])
    with pytest.raises(TypeError, match="layer_norm: x is a masked array"):
        F.layer_norm(masked, 4, backend=backend)
    _, saved = F.layer_norm(x, 4, backend=backend)
    with pytest.raises(TypeError, match="dy is a masked array"):
        F.layer_norm_backward(masked, saved)
    with pytest.raises(TypeError, match="Linear: x is a masked array"):
        normkit.Linear(4, 2)(masked)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_ndarray_subclasses_compute_as_plain_arrays():
    """np.matrix turns * into a matrix product; the layers see a plain ndarray view instead."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    dy = rng.standard_normal((8, 3)).astype(np.float32)
    results = []
    for as_input in (np.asarray, np.asmatrix):
        normkit.manual_seed(0)
        model = normkit.Sequential(normkit.Linear(4, 3), normkit.ReLU(), normkit.BatchNorm(3),
                                   normkit.Sigmoid())
        y = model(as_input(x))
        dx = model.backward(as_input(dy))
        assert type(y) is np.ndarray and type(dx) is np.ndarray
        results.append((y, dx, model.parameters()[0].grad.copy()))
    for plain, subclass in zip(*results):
        np.testing.assert_array_equal(plain, subclass)
