"""The ``normkit`` command: ``normkit info``, ``normkit demo``, ``normkit bench``, ``normkit experiment``."""

import argparse
import sys


def _cmd_info(args):
    from ._info import format_info
    print(format_info())
    return 0


def _cmd_demo(args):
    from . import demo
    names = ["breast_cancer", "digits"] if args.dataset == "both" else [args.dataset]
    comm, rank, where = None, 0, "1 process"
    if args.distributed:
        from .distributed import world
        comm = world()
        rank, where = comm.Get_rank(), f"{comm.Get_size()} processes (SyncBatchNorm, data-parallel)"
    if rank == 0:
        print(f"Seed model: 3 x (Linear(256) -> norm -> ReLU -> Dropout(0.3)), Adam lr={args.lr}, "
              f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}, {where}")
    rows = demo.run(names, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, progress=args.progress and rank == 0, comm=comm)
    if rank == 0:
        print(demo.format_table(rows))
    return 0


def _cmd_bench(args):
    from . import benchmark
    cases = benchmark.QUICK_CASES if args.quick else benchmark.CASES
    result = benchmark.run(cases, threads=args.threads, repeats=args.repeats,
                           with_torch=not args.no_torch, startup=not args.quick)
    print(benchmark.format_markdown(result))
    benchmark.save(result, args.json, args.markdown)
    return 0


def _cmd_experiment(args):
    import os

    from . import diagnostics
    if not args.no_plot:  # before the experiment, not after its minutes of training
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as exc:
            print(f"normkit experiment: cannot make the folder --out {args.out}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    result = diagnostics.run(args.name, quick=args.quick, seed=args.seed)
    print(result.table())
    if not args.no_plot:
        try:
            path = diagnostics.plot(result, os.path.join(args.out, f"{args.name}.png"))
            print(f"figure: {path}")
        except ImportError as exc:
            print(f"no figure: {exc}")
    return 0


def _int_at_least(low):
    """An argparse ``type``: an int >= ``low``, so that a bad value is a usage error, not a
    traceback from deep inside the command."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _writable_file(text):
    """An argparse ``type`` for an output file, opened for appending (which changes no file
    that exists) so that a path that cannot be written fails now, not after the run."""
    try:
        with open(text, "a"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {exc.strerror}") from None
    return text


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser():
    """The ``normkit`` command line: ``info``, ``demo``, ``bench`` and ``experiment``."""
    parser = argparse.ArgumentParser(
        prog="normkit", description="BatchNorm and LayerNorm on the CPU (Numba) and GPU (numba.cuda).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, threading layer, thread count, CUDA availability")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="train the seed model with BatchNorm, LayerNorm and none on real data")
    p.add_argument("--dataset", choices=["breast_cancer", "digits", "both"], default="both")
    p.add_argument("--epochs", type=_int_at_least(1), default=20)
    p.add_argument("--batch-size", type=_int_at_least(2), default=32)
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="print one line per epoch")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI: run as mpiexec -n 2 normkit demo --distributed")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("bench", help="time normkit vs NumPy vs PyTorch; GB/s vs a parallel copy")
    p.add_argument("--threads", type=_int_at_least(1), default=2, help="threads for every implementation")
    p.add_argument("--repeats", type=_int_at_least(1), default=10,
                   help="timed rounds per case and pass (calls under ~10 ms get more, up to 10x)")
    p.add_argument("--quick", action="store_true", help="small cases, no start-up measurement")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", type=_writable_file, help="also write the results as JSON here")
    p.add_argument("--markdown", type=_writable_file, help="also write the table as Markdown here")
    p.set_defaults(func=_cmd_bench)
    from .diagnostics.experiments import EXPERIMENTS
    listing = "\n".join(f"  {name:14} {run.__doc__.splitlines()[0].rstrip('.')}"
                        for name, run in sorted(EXPERIMENTS.items()))
    p = sub.add_parser("experiment", help="measure a claim about BatchNorm on real data",
                       epilog=f"experiments:\n{listing}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--quick", action="store_true", help="a small version for tests (< 20 s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="figures", help="folder for the PNG (default: ./figures)")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=_cmd_experiment)
    return parser


def main(argv=None):
    """Run the ``normkit`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
