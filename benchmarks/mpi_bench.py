"""Data-parallel training step over MPI: step time and communication per process.

    for n in 1 2 4; do NUMBA_NUM_THREADS=1 mpiexec -n $n python benchmarks/mpi_bench.py; done

The seed model (3 x Linear(256) -> SyncBatchNorm -> ReLU -> Dropout) on digits, global batch 128,
Adam. Bytes are counted from the buffers each collective moves per process (sent + received).
"""

import time

from mpi4py import MPI

import normkit as nk
from normkit import datasets
from normkit.distributed import GradientSync, SyncBatchNorm, convert_sync_batchnorm


def main(epochs=3, batch=128):
    comm = MPI.COMM_WORLD
    size, rank = comm.Get_size(), comm.Get_rank()
    X, y, _, _ = datasets.load_digits()
    nk.manual_seed(0)
    model = convert_sync_batchnorm(nk.seed_model(64, 10, norm="batch"), comm)
    opt = nk.Adam(model.parameters())
    nk.fit(model, X, y, loss=nk.CrossEntropyLoss(), optimizer=opt, epochs=1, batch_size=batch,
           progress=False, comm=comm)  # warm-up: Numba compiles or loads its cache here
    comm.Barrier()
    start = time.perf_counter()
    nk.fit(model, X, y, loss=nk.CrossEntropyLoss(), optimizer=opt, epochs=epochs, batch_size=batch,
           progress=False, comm=comm)
    comm.Barrier()
    steps = epochs * (len(X) // batch)
    step_ms = 1e3 * (time.perf_counter() - start) / steps
    grad_bytes = GradientSync(model.parameters(), comm).bytes_per_step if size > 1 else 0
    bn_bytes = 0
    if size > 1:
        for layer in model:
            if isinstance(layer, SyncBatchNorm):
                c = layer.num_features
                bn_bytes += 8 * (3 * c + size * 3 * c)  # forward Allgather: send 3C, receive P x 3C
                bn_bytes += 8 * 2 * (2 * c)              # backward Allreduce of 2C values
    if rank == 0:
        print(f"| {size} | {step_ms:.2f} | {grad_bytes / 1e6:.2f} | {bn_bytes / 1e3:.1f} |")


if __name__ == "__main__":
    main()
