"""Accuracy of float32 BatchNorm / LayerNorm forward for inputs with a growing mean.

Prints a Markdown table: per input, the largest absolute error of normkit's and PyTorch's
float32 output against float64 maths on the same (float32) values. Run:

    python benchmarks/accuracy.py [--rows 4096] [--cols 256]
"""

import argparse

import numpy as np

from normkit import functional as F
from normkit import reference as R

SHIFTS = (0.0, 1e2, 1e4, 1e6)


def errors(x):
    """{implementation: (BN error, LN error)} for one float32 input."""
    exact_bn, _ = R.batch_norm(x.astype(np.float64), None, None, training=True)
    exact_ln, _ = R.layer_norm(x.astype(np.float64), x.shape[1])
    out = {"normkit": (np.abs(F.batch_norm(x, None, None, training=True)[0] - exact_bn).max(),
                       np.abs(F.layer_norm(x, x.shape[1])[0] - exact_ln).max())}
    try:
        import torch
    except ImportError:
        return out
    xt = torch.from_numpy(x)
    bn = torch.nn.functional.batch_norm(xt, None, None, training=True).numpy()
    ln = torch.nn.functional.layer_norm(xt, (x.shape[1],)).numpy()
    out["PyTorch"] = (np.abs(bn - exact_bn).max(), np.abs(ln - exact_ln).max())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    base = rng.standard_normal((args.rows, args.cols))
    table = {shift: errors((base + shift).astype(np.float32)) for shift in SHIFTS}
    impls = list(table[SHIFTS[0]])
    print("| input | " + " | ".join(f"{i} BN | {i} LN" for i in impls) + " |")
    print("|---|" + "---:|" * (2 * len(impls)))
    for shift, errs in table.items():
        cells = " | ".join(f"{errs[i][0]:.1e} | {errs[i][1]:.1e}" for i in impls)
        print(f"| randn + {shift:g} | {cells} |")


if __name__ == "__main__":
    main()
