"""Cross-checks against PyTorch's BatchNorm1d/2d and LayerNorm (skipped when torch is absent)."""

import numpy as np
import pytest

from normkit import functional as F

torch = pytest.importorskip("torch")


def _t(a, grad=False):
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("shape,module", [((32, 6), "BatchNorm1d"), ((8, 5, 13), "BatchNorm1d"),
                                          ((4, 3, 7, 9), "BatchNorm2d"), ((4, 3, 70, 9), "BatchNorm2d")])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_batch_norm_matches_torch_over_steps_then_eval(rng, shape, module, momentum):
    c = shape[1]
    bn = getattr(torch.nn, module)(c, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(_t(rng.standard_normal(c)))
        bn.bias.copy_(_t(rng.standard_normal(c)))
    w, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    rm, rv = np.zeros(c), np.ones(c)
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        dy = rng.standard_normal(shape)
        xt = _t(x, grad=True)
        yt = bn(xt)
        yt.backward(_t(dy))
        y, saved = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum,
                                num_batches_tracked=step)
        dx, dw, db = F.batch_norm_backward(dy, saved)
        np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-10)
        np.testing.assert_allclose(dw, bn.weight.grad.numpy(), atol=1e-9)
        np.testing.assert_allclose(db, bn.bias.grad.numpy(), atol=1e-9)
        bn.weight.grad = bn.bias.grad = None
        np.testing.assert_allclose(rm, bn.running_mean.numpy(), atol=1e-12)
        np.testing.assert_allclose(rv, bn.running_var.numpy(), atol=1e-12)
    bn.eval()
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    xt = _t(x, grad=True)
    bn(xt).backward(_t(dy))
    y, saved = F.batch_norm(x, rm, rv, w, b, training=False)
    np.testing.assert_allclose(y, bn(_t(x)).detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(F.batch_norm_backward(dy, saved)[0], xt.grad.numpy(), atol=1e-10)


@pytest.mark.parametrize("shape,ns", [((16, 10), (10,)), ((4, 6, 32), (32,)), ((3, 4, 5, 6), (5, 6))])
def test_layer_norm_matches_torch(rng, shape, ns):
    ln = torch.nn.LayerNorm(ns, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(_t(rng.standard_normal(ns)))
        ln.bias.copy_(_t(rng.standard_normal(ns)))
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    xt = _t(x, grad=True)
    ln(xt).backward(_t(dy))
    y, saved = F.layer_norm(x, ns, ln.weight.detach().numpy(), ln.bias.detach().numpy())
    dx, dw, db = F.layer_norm_backward(dy, saved)
    np.testing.assert_allclose(y, ln(_t(x)).detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(dw, ln.weight.grad.numpy(), atol=1e-9)
    np.testing.assert_allclose(db, ln.bias.grad.numpy(), atol=1e-9)


def test_float32_channels_last_matches_torch(rng):
    x = rng.standard_normal((4, 5, 6, 3)).astype(np.float32)
    y, _ = F.batch_norm(x, None, None, training=True, axis=-1)
    yt = torch.nn.functional.batch_norm(torch.from_numpy(x).permute(0, 3, 1, 2), None, None, training=True)
    np.testing.assert_allclose(y, yt.permute(0, 2, 3, 1).numpy(), atol=2e-5)
