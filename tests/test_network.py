"""Whole networks: finite-difference gradients, agreement with PyTorch, save/load, bad states."""

import numpy as np
import pytest

import normkit as nk

from .gradcheck import numerical_grad


def _small_net(rng):
    return nk.Sequential(
        nk.Linear(6, 8, rng=rng, dtype=np.float64), nk.BatchNorm(8, dtype=np.float64), nk.ReLU(),
        nk.Linear(8, 8, rng=rng, dtype=np.float64), nk.LayerNorm(8, dtype=np.float64), nk.Tanh(),
        nk.Linear(8, 3, rng=rng, dtype=np.float64))


def test_whole_network_gradients_by_finite_differences(rng):
    net = _small_net(rng)
    for p in net.parameters():  # non-trivial norm parameters too
        p.data[...] += 0.3 * rng.standard_normal(p.data.shape)
    x = rng.standard_normal((10, 6))
    labels = rng.integers(0, 3, 10)
    loss = nk.CrossEntropyLoss()

    def value():
        return np.array(loss(net(x), labels))

    net.zero_grad()
    loss(net(x), labels)
    dx = net.backward(loss.backward())
    idx, num = numerical_grad(value, x, 1.0, rng=rng)
    np.testing.assert_allclose(dx.reshape(-1)[idx], num, rtol=1e-5, atol=1e-8)
    for name, p in net.named_parameters():
        idx, num = numerical_grad(value, p.data, 1.0, max_entries=15, rng=rng)
        np.testing.assert_allclose(p.grad.reshape(-1)[idx], num, rtol=1e-5, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_seed_model_matches_torch(rng, norm):
    torch = pytest.importorskip("torch")
    model = nk.seed_model(10, norm=norm, dropout=0.0, rng=rng, dtype=np.float64)
    layers = []
    for layer in model:
        if isinstance(layer, nk.Linear):
            t = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
            with torch.no_grad():
                t.weight.copy_(torch.from_numpy(layer.weight.data))
                t.bias.copy_(torch.from_numpy(layer.bias.data))
        elif isinstance(layer, nk.BatchNorm):
            t = torch.nn.BatchNorm1d(layer.num_features, dtype=torch.float64)
        elif isinstance(layer, nk.LayerNorm):
            t = torch.nn.LayerNorm(layer.normalized_shape, dtype=torch.float64)
        elif isinstance(layer, nk.ReLU):
            t = torch.nn.ReLU()
        elif isinstance(layer, nk.Dropout):
            t = torch.nn.Dropout(0.0)
        else:
            t = torch.nn.Sigmoid()
        layers.append(t)
    tmodel = torch.nn.Sequential(*layers)
    x = rng.standard_normal((64, 10))
    y = rng.integers(0, 2, (64, 1)).astype(np.float64)
    loss = nk.BCELoss()
    value = loss(model(x), y)
    model.backward(loss.backward())
    tloss = torch.nn.functional.binary_cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=1e-10)
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=1e-7, atol=1e-10, err_msg=name)
    for name, buf in tmodel.named_buffers():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_allclose(model.state_dict()[name], buf.numpy(), rtol=1e-10)


def test_save_load_round_trip_is_bit_identical(rng, tmp_path):
    model = nk.seed_model(10, norm="batch", rng=rng)
    x = rng.standard_normal((50, 10)).astype(np.float32)
    for _ in range(3):
        model(x)  # moves the running statistics
    for p in model.parameters():
        p.data += rng.standard_normal(p.data.shape).astype(np.float32) * 0.1
    model.eval()
    path = tmp_path / "model.npz"
    nk.save(model, path)
    clone = nk.seed_model(10, norm="batch", rng=np.random.default_rng(123)).eval()
    assert not np.array_equal(clone(x), model(x))
    nk.load_state(clone, path)
    np.testing.assert_array_equal(clone(x), model(x))
    assert clone[1].num_batches_tracked == 3
    # a path without ".npz": save adds it (NumPy's savez), and load_state finds that file
    nk.save(model, tmp_path / "bare")
    assert (tmp_path / "bare.npz").exists()
    other = nk.seed_model(10, norm="batch", rng=np.random.default_rng(7)).eval()
    nk.load_state(other, str(tmp_path / "bare"))
    np.testing.assert_array_equal(other(x), model(x))


def test_load_state_refuses_files_save_did_not_write(tmp_path):
    model = nk.seed_model(10, norm="batch")
    before = model.state_dict()
    (tmp_path / "text.npz").write_text("not an archive")
    np.save(tmp_path / "one.npy", np.ones(3))
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 a zip cut short")
    for name, why in [("text.npz", "pickled"), ("one.npy", "it holds a single array"),
                      ("cut.npz", "not a zip file")]:
        with pytest.raises(ValueError, match=rf"load_state: '.*{name}' is not a file written by "
                                             rf"normkit.save \(an .npz archive\): .*{why}"):
            nk.load_state(model, str(tmp_path / name))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_seed_model_blocks():
    assert [type(layer).__name__ for layer in nk.seed_model(4, blocks=0)] == ["Linear", "Sigmoid"]
    assert len(nk.seed_model(4, 3, blocks=1, norm="layer")) == 5
    with pytest.raises(ValueError, match="seed_model: blocks must be an int >= 0, got -1"):
        nk.seed_model(4, blocks=-1)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.pop("1.running_var"), r"missing keys \['1.running_var'\]"),
    (lambda s: s.update({"99.weight": np.ones(3)}), r"unexpected keys \['99.weight'\]"),
    (lambda s: s.update({"0.weight": np.ones((3, 3))}), r"0.weight: expected shape \(256, 10\), got \(3, 3\)"),
    # entries late in the load order, so that a check made while loading would be too late
    (lambda s: s.update({"12.bias": np.array(["a"])}), r"12.bias: expected real numbers, got dtype <U1"),
    (lambda s: s.update({"12.bias": s["12.bias"] + 1j}), r"12.bias: expected real numbers, got dtype complex"),
    (lambda s: s.update({"9.running_var": s["9.running_var"].astype(object)}), r"dtype object"),
    (lambda s: s.update({"9.num_batches_tracked": 2.5}), r"9.num_batches_tracked: expected whole numbers, got 2.5"),
    # values eval mode would turn into NaN outputs, or that do not fit the layer's dtype
    (lambda s: s["9.running_var"].__setitem__(3, -0.5), r"9.running_var: a variance cannot be negative, got -0.5"),
    (lambda s: s["9.running_var"].__setitem__(3, np.nan), r"9.running_var: expected finite values, got nan"),
    (lambda s: s["5.running_mean"].__setitem__(0, -np.inf), r"5.running_mean: expected finite values, got -inf"),
    (lambda s: s.update({"9.num_batches_tracked": -1}), r"9.num_batches_tracked: expected a count >= 0, got -1"),
    (lambda s: s.update({"12.weight": s["12.weight"].astype(np.float64) * 1e300}), r"12.weight: values too large for float32"),
])
def test_bad_state_dicts_raise_and_change_nothing(rng, edit, match):
    model = nk.seed_model(10, norm="batch", rng=rng)
    state = model.state_dict()
    for k in state:
        state[k] = state[k] + 1  # every entry differs, so a partial load would show
    edit(state)
    before = model.state_dict()
    with pytest.raises(ValueError, match=match):
        model.load_state_dict(state)
    after = model.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_eval_mode_is_deterministic(rng):
    model = nk.seed_model(10, norm="batch", rng=rng)
    x = rng.standard_normal((20, 10)).astype(np.float32)
    model(x)
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))
    # and a single sample works in eval mode
    assert model(x[:1]).shape == (1, 1)
