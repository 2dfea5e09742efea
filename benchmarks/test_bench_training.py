"""What a training loop does around the kernels that test_bench_kernels.py times alone: a whole
training step of the seed model, and a BatchNorm call right after a NumPy matrix product (the
`Linear -> BatchNorm` of every block, where NumPy's BLAS threads and Numba's meet; see
normkit/_threading.py). normkit against PyTorch CPU at the same thread count."""

import numpy as np
import pytest

import normkit as nk
from normkit.benchmark import torch_available

BATCH, IN_FEATURES, CLASSES = 256, 64, 10
IMPLS = ["normkit", "torch"] if torch_available() else ["normkit"]


def _batch():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((BATCH, IN_FEATURES), dtype=np.float32),
            rng.integers(0, CLASSES, BATCH))


def normkit_step(norm):
    model = nk.seed_model(IN_FEATURES, CLASSES, norm=norm, rng=np.random.default_rng(0))
    loss, optimizer = nk.CrossEntropyLoss(), nk.Adam(model.parameters())
    x, y = _batch()

    def step():
        optimizer.zero_grad()
        loss(model(x), y)
        model.backward(loss.backward())
        optimizer.step()
    return step


def torch_step(norm):
    import torch
    blocks = []
    for i in range(3):
        norm_layer = {"batch": torch.nn.BatchNorm1d(256), "layer": torch.nn.LayerNorm(256)}[norm]
        blocks += [torch.nn.Linear(IN_FEATURES if i == 0 else 256, 256), norm_layer,
                   torch.nn.ReLU(), torch.nn.Dropout(0.3)]
    model = torch.nn.Sequential(*blocks, torch.nn.Linear(256, CLASSES))
    optimizer = torch.optim.Adam(model.parameters())
    x, y = (torch.from_numpy(a) for a in _batch())

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("impl", IMPLS)
def test_training_step(benchmark, timed, norm, impl):
    benchmark.group = f"seed model training step, batch {BATCH}, {norm} norm"
    timed(normkit_step(norm) if impl == "normkit" else torch_step(norm), rounds=20)


@pytest.mark.parametrize("impl", IMPLS)
def test_batchnorm_after_numpy_matmul(benchmark, timed, impl):
    # The product runs before each timed call, outside the timing (pedantic's setup).
    rng = np.random.default_rng(0)
    a = rng.standard_normal((360, 64), dtype=np.float32)
    w = rng.standard_normal((256, 64), dtype=np.float32)
    x = a @ w.T
    ones, zeros = np.ones(256, np.float32), np.zeros(256, np.float32)
    if impl == "normkit":
        def call():
            nk.F.batch_norm(x, zeros, ones, ones, zeros)
    else:
        import torch
        xt, onest, zerost = (torch.from_numpy(v) for v in (x, ones, zeros))

        def call():
            torch.nn.functional.batch_norm(xt, zerost, onest, onest, zerost)
    def matmul():
        a @ w.T
    benchmark.group = "BatchNorm eval (360, 256) right after a NumPy matmul"
    benchmark.pedantic(call, setup=matmul, rounds=50, iterations=1, warmup_rounds=1)
