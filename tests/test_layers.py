"""The layer API: modes, state, parameters, gradients of each layer."""

import re

import numpy as np
import pytest

import normkit as nk

from .gradcheck import numerical_grad


def _grad_check_layer(layer, x, rng, atol=1e-7):
    dy = rng.standard_normal(layer(x).shape)
    for p in layer.parameters():
        p.grad[...] = 0
    layer(x)
    dx = layer.backward(dy)
    idx, num = numerical_grad(lambda: layer(x), x, dy, rng=rng)
    np.testing.assert_allclose(dx.reshape(-1)[idx], num, rtol=1e-6, atol=atol)
    for p in layer.parameters():
        idx, num = numerical_grad(lambda: layer(x), p.data, dy, rng=rng)
        np.testing.assert_allclose(p.grad.reshape(-1)[idx], num, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("make", [
    lambda: nk.Linear(5, 3, dtype=np.float64),
    lambda: nk.Tanh(), lambda: nk.Sigmoid(),
    lambda: nk.BatchNorm(5, dtype=np.float64),
    lambda: nk.LayerNorm(5, dtype=np.float64),
    lambda: nk.BatchNorm(5, dtype=np.float64).eval(),
])
def test_layer_gradients(rng, make):
    layer = make()
    if layer.parameters():  # move away from the init so every gradient term matters
        for p in layer.parameters():
            p.data[...] = rng.standard_normal(p.data.shape)
    _grad_check_layer(layer, rng.standard_normal((7, 5)), rng)


def test_relu_gradient_away_from_the_kink(rng):
    x = rng.standard_normal((6, 4))
    x[np.abs(x) < 0.1] = 0.5
    relu = nk.ReLU()
    _grad_check_layer(relu, x, rng)


def test_linear_init_like_pytorch(rng):
    layer = nk.Linear(400, 300, rng=rng)
    bound = 1 / np.sqrt(400)
    assert layer.weight.data.shape == (300, 400) and layer.weight.data.dtype == np.float32
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    # uniform on [-b, b]: variance b^2 / 3
    assert abs(layer.weight.data.var() / (bound ** 2 / 3) - 1) < 0.02


def test_dropout_keeps_about_one_minus_p_and_rescales(rng):
    drop = nk.Dropout(0.3, rng=rng)
    x = np.ones((400, 500), np.float32)
    y = drop(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(drop.backward(x), y)  # same mask, same scale
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="p must be a number in"):
        nk.Dropout(1.5)


@pytest.mark.parametrize("make,error,message", [
    (lambda: nk.Linear(0, 3), ValueError, "Linear: in_features must be a positive int, got 0"),
    (lambda: nk.Linear(3, 2.5), ValueError, "Linear: out_features must be a positive int, got 2.5"),
    (lambda: nk.Linear(3, 2, dtype=np.int32), TypeError, "Linear: dtype must be float32 or float64"),
    (lambda: nk.BatchNorm(True), ValueError, "BatchNorm: num_features must be a positive int, got True"),
    (lambda: nk.BatchNorm(4, axis="1"), TypeError, "BatchNorm: axis must be an int, got '1'"),
    (lambda: nk.BatchNorm(4, backend="gpu"), ValueError, "BatchNorm: backend must be one of"),
    (lambda: nk.BatchNorm(4, dtype="float16"), TypeError, "BatchNorm: dtype must be float32"),
    (lambda: nk.LayerNorm(4, dtype=np.int64), TypeError, "LayerNorm: dtype must be float32"),
    (lambda: nk.LayerNorm(4, backend="torch"), ValueError, "LayerNorm: backend must be one of"),
    (lambda: nk.Dropout(float("nan")), ValueError, "Dropout: p must be a number in"),
])
def test_layer_settings_are_checked(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_batchnorm_modes_running_stats_and_freeze(rng):
    bn = nk.BatchNorm(4, momentum=0.5)
    x = (rng.standard_normal((32, 4)) * 3 + 2).astype(np.float32)
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    assert bn.num_batches_tracked == 1
    np.testing.assert_allclose(bn.running_mean, 0.5 * x.mean(axis=0), rtol=1e-5)
    bn.eval()
    stats = bn.running_mean.copy(), bn.running_var.copy()
    y_eval = bn(x)
    np.testing.assert_allclose(y_eval, (x - stats[0]) / np.sqrt(stats[1] + 1e-5), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn(x), y_eval)  # eval is deterministic and changes nothing
    np.testing.assert_array_equal(bn.running_mean, stats[0])
    bn.train().freeze()
    y_frozen = bn(x)
    np.testing.assert_array_equal(y_frozen, y_eval)
    assert bn.num_batches_tracked == 1 and np.array_equal(bn.running_mean, stats[0])
    bn.backward(np.ones_like(x))
    assert np.abs(bn.bias.grad).sum() > 0  # parameters still learn while frozen
    bn.unfreeze()
    bn(x)
    assert bn.num_batches_tracked == 2
    bn.reset_running_stats()
    assert bn.num_batches_tracked == 0 and (bn.running_var == 1).all()


def test_batchnorm_errors_leave_state_unchanged(rng):
    bn = nk.BatchNorm(3)
    bn(rng.standard_normal((8, 3)).astype(np.float32))
    before = bn.state_dict()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="expected input with 3 channels on axis 1"):
        bn(np.ones((4, 5), np.float32))
    with pytest.raises(TypeError, match="int64"):
        bn(np.ones((4, 3), np.int64))
    after = bn.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nk.BatchNorm(3).backward(np.ones((4, 3)))


def test_batchnorm_without_running_stats_uses_batch_stats_in_eval(rng):
    bn = nk.BatchNorm(3, track_running_stats=False, affine=False).eval()
    x = rng.standard_normal((10, 3)) + 5
    np.testing.assert_allclose(bn(x).mean(axis=0), 0, atol=1e-10)
    assert bn.weight is None and bn.parameters() == []
    assert set(bn.state_dict()) == {"num_batches_tracked"}


def test_output_dtype_follows_input(rng):
    model = nk.Sequential(nk.Linear(4, 6), nk.BatchNorm(6), nk.ReLU(), nk.LayerNorm(6), nk.Sigmoid())
    for dtype in (np.float32, np.float64):
        assert model(rng.standard_normal((5, 4)).astype(dtype)).dtype == dtype


def test_sequential_state_dict_keys_and_modes():
    model = nk.seed_model(10, norm="batch")
    keys = model.state_dict().keys()
    assert {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
            "1.num_batches_tracked", "12.weight", "12.bias"} <= set(keys)
    assert len(model.parameters()) == 4 * 2 + 3 * 2
    model.eval()
    assert not any(layer.training for layer in model)
    model.train()
    assert all(layer.training for layer in model)
    with pytest.raises(TypeError, match="not a layer"):
        nk.Sequential(nk.ReLU(), "relu")
    grown = nk.Sequential(nk.Linear(3, 2)).append(nk.BatchNorm(2))
    assert len(grown) == 2 and "1.running_mean" in grown.state_dict()
    with pytest.raises(TypeError, match="item 2 is a str, not a layer"):
        grown.append("relu")
    assert len(grown) == 2


def test_sequential_slice_shares_layers(rng):
    model = nk.seed_model(10, norm="batch", rng=rng)
    model.eval()
    features = model[:-2]  # everything before the output Linear and Sigmoid
    assert isinstance(features, nk.Sequential) and len(features) == len(model) - 2
    assert not features.training and features[1] is model[1]
    x = rng.standard_normal((8, 10)).astype(np.float32)
    np.testing.assert_array_equal(model[-2:](features(x)), model(x))
    assert set(features.state_dict()) < set(model.state_dict())  # same indices: they start at 0
    assert isinstance(model[-1], nk.Sigmoid)


def test_a_layer_cannot_be_used_twice_in_one_sequential():
    # A layer keeps its last forward for its backward: a ReLU object used twice gave the first
    # use the second's mask (dx off by 80% in a check by finite differences), silently.
    act, lin = nk.ReLU(), nk.Linear(4, 4)
    message = r"Sequential: item {} \({}\) is already used at item {}: a layer remembers"
    with pytest.raises(ValueError, match=message.format(3, "ReLU", 1)):
        nk.Sequential(nk.Linear(4, 4), act, nk.Linear(4, 4), act)
    with pytest.raises(ValueError, match=message.format(1, "Linear", 0)):
        nk.Sequential(nk.Sequential(lin, nk.ReLU()), lin)  # inside a nested Sequential too
    model = nk.Sequential(nk.Linear(4, 4), act)
    with pytest.raises(ValueError, match=message.format(2, "ReLU", 1)):
        model.append(act)
    assert len(model) == 2  # not appended
    outer = nk.Sequential(model, nk.Sequential(nk.Linear(4, 4), nk.ReLU()))  # distinct layers are fine
    # modules(): depth first, as PyTorch's
    assert [type(m).__name__ for m in outer.modules()] == [
        "Sequential", "Sequential", "Linear", "ReLU", "Sequential", "Linear", "ReLU"]
    assert next(iter(outer.modules())) is outer and list(act.modules()) == [act]


def test_zero_grad_and_accumulation(rng):
    lin = nk.Linear(3, 2, rng=rng)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    lin(x)
    lin.backward(np.ones((4, 2), np.float32))
    g1 = lin.weight.grad.copy()
    lin(x)
    lin.backward(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(lin.weight.grad, 2 * g1, rtol=1e-6)
    lin.zero_grad()
    assert not lin.weight.grad.any()


@pytest.mark.parametrize("make", [lambda: nk.BatchNorm(3), lambda: nk.LayerNorm(3), lambda: nk.Linear(3, 2),
                                  nk.ReLU, nk.Sigmoid, nk.Tanh, lambda: nk.Dropout(0.2)])
@pytest.mark.parametrize("bad,exc,what", [
    (np.ones((4, 3), np.int32), TypeError, "int32"), (np.ones((4, 3), bool), TypeError, "bool"),
    (np.ones((4, 3), complex), TypeError, "complex"), (np.ones((4, 3), object), TypeError, "object"),
    (np.ones((0, 3), np.float32), ValueError, "empty"),
])
def test_layers_reject_bad_input_naming_themselves(make, bad, exc, what):
    layer = make()
    name = type(layer).__name__
    with pytest.raises(exc, match=f"{name}.*{what}"):
        layer(bad)


@pytest.mark.parametrize("make", [lambda: nk.BatchNorm(3), lambda: nk.LayerNorm(3),
                                  lambda: nk.LayerNorm((2, 3)), lambda: nk.Linear(3, 2)])
def test_layers_name_themselves_on_a_shape_mismatch(make):
    layer = make()
    for shape in ((4, 5), (4, 5, 2)):
        with pytest.raises(ValueError, match=rf"^{type(layer).__name__}: expected .*got shape {re.escape(str(shape))}"):
            layer(np.ones(shape, np.float32))


@pytest.mark.parametrize("make,x_shape,y_shape", [
    (lambda: nk.Linear(3, 2), (4, 3), (4, 2)), (nk.ReLU, (4, 3), (4, 3)), (nk.Sigmoid, (4, 3), (4, 3)),
    (nk.Tanh, (4, 3), (4, 3)), (lambda: nk.Dropout(0.2), (4, 3), (4, 3)),
    (lambda: nk.Dropout(0.2).eval(), (4, 3), (4, 3)), (lambda: nk.BatchNorm(3), (4, 3), (4, 3)),
    (lambda: nk.LayerNorm(3), (4, 3), (4, 3)),
])
def test_backward_checks_the_upstream_gradient(rng, make, x_shape, y_shape):
    """A dy that NumPy would broadcast against the output ((1, C) for (N, C)), or of another
    shape or dtype, raises an error naming the layer; the right one still works."""
    layer = make()
    name = type(layer).__name__
    layer(rng.standard_normal(x_shape).astype(np.float32))
    for bad in (np.ones((1,) + y_shape[1:], np.float32), np.ones(y_shape[1:], np.float32),
                np.ones(y_shape + (1,), np.float32)):
        with pytest.raises(ValueError, match=f"{name}.*dy has shape {re.escape(str(bad.shape))}"):
            layer.backward(bad)
    with pytest.raises(TypeError, match=f"{name}.*dy.*int64"):
        layer.backward(np.ones(y_shape, np.int64))
    assert layer.backward(rng.standard_normal(y_shape).astype(np.float32)).shape == x_shape
    # dx has the input's dtype whatever dy's, as in PyTorch
    for x_dtype, dy_dtype in ((np.float32, np.float64), (np.float64, np.float32)):
        layer(rng.standard_normal(x_shape).astype(x_dtype))
        assert layer.backward(rng.standard_normal(y_shape).astype(dy_dtype)).dtype == x_dtype
    layer(rng.standard_normal(x_shape).astype(np.float32))
    assert layer.backward(rng.standard_normal(y_shape).tolist()).dtype == np.float32  # array-like dy


@pytest.mark.parametrize("make", [lambda: nk.Linear(3, 2), nk.ReLU, nk.Sigmoid, nk.Tanh,
                                  lambda: nk.Dropout(0.2), lambda: nk.BatchNorm(3), lambda: nk.LayerNorm(3)])
def test_backward_before_forward_raises(make):
    layer = make()
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward called before forward"):
        layer.backward(np.ones((4, 3), np.float32))
