"""``gradest`` command line: argparse front end, no logic. ``main(argv) -> exit code``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gradest import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradest", description="Gradients of expectations: compare estimators.")
    p.add_argument("--version", action="version", version=f"gradest {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="run estimators on the built-in problems, print a table, write a PNG")
    c.add_argument("--problems", nargs="+", metavar="NAME", help="problem names (default: all; see 'gradest problems')")
    c.add_argument("--estimators", nargs="+", metavar="NAME", help="estimator names (default: all)")
    c.add_argument("--samples", type=int, default=4, metavar="N", help="samples per estimate (default 4)")
    c.add_argument("--trials", type=int, default=2000, metavar="R", help="independent estimates (default 2000)")
    c.add_argument("--seed", type=int, default=0, metavar="S")
    c.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    c.add_argument("--plot", metavar="PATH", default="gradest-compare.png", help="PNG to write ('' for none)")
    c.add_argument("--quick", action="store_true", help="few trials and no sweeps, for a smoke run")
    sub.add_parser("problems", help="list the built-in problems and estimators")
    return p


def _fail(message: str) -> int:
    print(f"gradest compare: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from gradest.diagnostics import (
        ESTIMATORS,
        PROBLEMS,
        compare,
        recommend,
        sweep_gae_lambda,
        sweep_samples,
        sweep_temperature,
    )

    args = _parser().parse_args(argv)
    if args.command == "problems":
        print("problems:   " + "  ".join(PROBLEMS))
        print("estimators: " + "  ".join(ESTIMATORS))
        return 0
    for kind, names, known in (("problem", args.problems, PROBLEMS), ("estimator", args.estimators, ESTIMATORS)):
        bad = [x for x in names or () if x not in known]
        if bad:
            return _fail(f"unknown {kind} {bad[0]!r}; choose from: {', '.join(known)}")
    if args.samples < 1:
        return _fail(f"--samples={args.samples} must be >= 1.")
    if args.trials < 20:
        return _fail(f"--trials={args.trials} must be >= 20.")
    torch.set_num_threads(1)  # small problems: threads only contend on a shared CPU
    trials = 200 if args.quick else args.trials
    repeats = 5 if args.quick else 30
    report = compare(args.problems or tuple(PROBLEMS), args.estimators or tuple(ESTIMATORS), n=args.samples,
                     trials=trials, seed=args.seed, timing_repeats=repeats, progress=sys.stderr.isatty())
    report.print()
    for rec in recommend(report):
        print("• " + rec.text)
    if not args.quick:
        sweep = sweep_samples("gaussian-square", trials=trials // 2, seed=args.seed)
        sweep.print("variance against samples n: unbiased estimators fall as 1/n")
        report = report + sweep
        temp = sweep_temperature("categorical-10", trials=4 * trials, seed=args.seed)
        temp.print("Gumbel-Softmax temperature: bias falls, variance grows")
        lam = sweep_gae_lambda(seed=args.seed)
        lam.print("GAE λ: one-step TD (λ = 0) inherits the critic's bias, λ = 1 pays in variance")
        report = report + temp + lam
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(report.to_json())
    if args.plot:
        try:
            from gradest.diagnostics.plots import plot_report
        except ImportError:
            return _fail("--plot needs matplotlib; pip install 'gradest[cli]' or pass --plot ''.")
        print(f"wrote {plot_report(report, args.plot)}")
    return 0
