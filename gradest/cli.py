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
    c = sub.add_parser("compare", help="run estimators on the built-in problems and print a table")
    c.add_argument("--problems", nargs="+", metavar="NAME", help="problem names (default: all; see 'gradest problems')")
    c.add_argument("--estimators", nargs="+", metavar="NAME", help="estimator names (default: all)")
    c.add_argument("--samples", type=int, default=4, metavar="N", help="samples per estimate (default 4)")
    c.add_argument("--trials", type=int, default=2000, metavar="R", help="independent estimates (default 2000)")
    c.add_argument("--seed", type=int, default=0, metavar="S")
    c.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    c.add_argument("--quick", action="store_true", help="few trials, for a smoke run")
    sub.add_parser("problems", help="list the built-in problems and estimators")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from gradest.diagnostics import ESTIMATORS, PROBLEMS, compare

    args = _parser().parse_args(argv)
    if args.command == "problems":
        print("problems:  " + "  ".join(PROBLEMS))
        print("estimators: " + "  ".join(ESTIMATORS))
        return 0
    for kind, names, known in (("problem", args.problems, PROBLEMS), ("estimator", args.estimators, ESTIMATORS)):
        bad = [x for x in names or () if x not in known]
        if bad:
            print(f"gradest compare: unknown {kind} {bad[0]!r}; choose from: {', '.join(known)}", file=sys.stderr)
            return 2
    if args.samples < 1 or args.trials < 2:
        print(f"gradest compare: --samples={args.samples} must be >= 1 and --trials={args.trials} >= 2.",
              file=sys.stderr)
        return 2
    report = compare(
        args.problems or tuple(PROBLEMS),
        args.estimators or tuple(ESTIMATORS),
        n=args.samples,
        trials=100 if args.quick else args.trials,
        seed=args.seed,
        timing_repeats=5 if args.quick else 30,
    )
    report.print()
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(report.to_json())
    return 0
