"""``gradest`` command line: argparse front end, no logic. ``main(argv) -> exit code``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gradest import __version__

__all__ = ["main"]

EPILOG = """examples:
  gradest compare                                     # every estimator on the built-in problems
  gradest compare --problem my_problem.py:make_problem --estimators disarm,rebar:temperature=0.5
  gradest compare --problems bernoulli-0.499 --sweeps n,temperature --json report.json
  gradest compare --quick --json - > report.json      # JSON on stdout, the table on stderr
  gradest estimators                                  # every estimator name and its options"""


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradest", description="Gradients of expectations: compare estimators.",
                                formatter_class=_Help, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"gradest {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{compare,problems,estimators}")
    c = sub.add_parser("compare", formatter_class=_Help, epilog=EPILOG,
                       help="run estimators on your problem or the built-in ones: a table, a recommendation, a PNG",
                       description="Measure bias, variance, SNR and time of gradient estimators on the same "
                                   "objective, recommend one, and draw the decision.")
    c.add_argument("--problem", action="append", metavar="FILE.py:FUNCTION",
                   help="your problem: FUNCTION() returns a gradest.problems.Problem or (f, dist_builder, params); "
                        "MODULE:FUNCTION works too; repeat for several")
    c.add_argument("--problems", nargs="+", metavar="NAME",
                   help="built-in problems, space- or comma-separated (default: all of them unless --problem "
                        "is given; see 'gradest problems')")
    c.add_argument("--estimators", nargs="+", metavar="SPEC",
                   help="NAME[:KEY=VALUE...] joined by commas, e.g. disarm,rebar:temperature=0.5,score:baseline=loo "
                        "(default: every estimator; see 'gradest estimators')")
    c.add_argument("--sweeps", nargs="+", metavar="SWEEP",
                   help="also run sweeps: n[=PROBLEM], temperature[=PROBLEM], lambda, or all (default: none)")
    c.add_argument("--samples", type=int, default=4, metavar="N", help="samples per estimate")
    c.add_argument("--trials", type=int, metavar="R",
                   help="independent estimates per row (default: 2000, or 200 with --quick)")
    c.add_argument("--train-steps", type=int, default=100, metavar="K",
                   help="Adam steps on an estimator's own parameters (RELAX's control, REBAR:learn=true) first")
    c.add_argument("--false-alarm", type=float, default=1e-3, metavar="A",
                   help="chance that any unbiased row of the report is flagged biased")
    c.add_argument("--seed", type=int, default=0, metavar="S")
    c.add_argument("--json", metavar="PATH", help="also write the report as JSON ('-': to stdout, tables to stderr)")
    c.add_argument("--plot", metavar="PATH",
                   help="PNG of the decision (default: gradest-compare.png when matplotlib is installed; '' for "
                        "none); sweeps go to PATH's name with -sweeps")
    c.add_argument("--quick", action="store_true", help="200 trials and short timings: a smoke run in seconds")
    sub.add_parser("problems", help="list the built-in problems", formatter_class=_Help)
    sub.add_parser("estimators", help="list the estimator names and their options", formatter_class=_Help)
    return p


def _fail(message: str) -> int:
    print(f"gradest compare: {message}", file=sys.stderr)
    return 2


def _split(values: Sequence[str] | None) -> list[str]:
    return [v.strip() for chunk in values or () for v in chunk.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gradest`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Example:
        >>> from gradest.cli import main
        >>> main(["problems"])  # doctest: +ELLIPSIS
        gaussian-square ...
        0
    """
    args = _parser().parse_args(argv)
    from gradest.diagnostics import (
        ESTIMATORS,
        PROBLEM_SUMMARIES,
        PROBLEMS,
        compare,
        describe_estimators,
        parse_estimators,
        recommend,
        run_sweeps,
    )

    if args.command == "problems":
        print("\n".join(f"{name:<26}{text}" for name, text in PROBLEM_SUMMARIES.items()))
        return 0
    if args.command == "estimators":
        print(describe_estimators())
        return 0

    import torch

    from gradest.problems import load_problem

    out = sys.stderr if args.json == "-" else sys.stdout
    try:
        names = _split(args.problems)
        for name in names:
            if name not in PROBLEMS:
                return _fail(f"unknown problem {name!r}; choose from: {', '.join(PROBLEMS)} "
                             "(or --problem FILE.py:FUNCTION for your own)")
        specs = _split(args.estimators) or None
        if specs:
            parse_estimators(specs, where="--estimators")  # a typo fails before any work
        torch.set_num_threads(1)  # small problems: threads only contend on a shared CPU
        problems = {name: PROBLEMS[name]() for name in names or ([] if args.problem else list(PROBLEMS))}
        for spec in args.problem or ():
            problem = load_problem(spec)
            problems[problem.name if problem.name not in problems else spec] = problem
        plot = args.plot
        if plot is None or plot:
            from gradest.diagnostics.plots import require_matplotlib

            try:
                require_matplotlib()
            except ImportError as e:
                if plot:  # asked for: say what to install, before any work
                    return _fail(f"--plot {plot}: {e} (or pass --plot '')")
                print(f"gradest compare: no figure: {e}", file=sys.stderr)
                plot = ""
            else:
                plot = plot or "gradest-compare.png"
        trials = args.trials if args.trials is not None else 200 if args.quick else 2000
        repeats = 5 if args.quick else 30
        train = min(args.train_steps, 20) if args.quick else args.train_steps
        kwargs = {"n": args.samples, "trials": trials, "seed": args.seed, "timing_repeats": repeats,
                  "train_steps": train, "false_alarm": args.false_alarm}
        report = compare(problems, specs or tuple(ESTIMATORS), progress=sys.stderr.isatty(),
                         **kwargs)  # type: ignore[arg-type]
        if args.sweeps:
            report = report + run_sweeps(_split(args.sweeps), problems, specs or ("pathwise", "score+leave-one-out"),
                                         trials=trials, seed=args.seed, timing_repeats=min(repeats, 10),
                                         false_alarm=args.false_alarm)
    except (ValueError, TypeError, ImportError) as e:
        return _fail(str(e).splitlines()[0] if isinstance(e, ImportError) else str(e))
    report.print(file=out)
    for rec in recommend(report):
        print("• " + rec.text, file=out)
    try:
        if args.json == "-":
            print(report.to_json())
        elif args.json:
            Path(args.json).write_text(report.to_json())
            print(f"wrote {args.json}", file=out)
        if plot:
            from gradest.diagnostics.plots import plot_report, plot_sweeps

            if any(r.kind == "compare" for r in report.rows):
                print(f"wrote {plot_report(report, plot)}", file=out)
            if any(r.kind != "compare" and r.status == "ok" for r in report.rows):
                path = Path(plot)
                print(f"wrote {plot_sweeps(report, path.with_name(path.stem + '-sweeps' + path.suffix))}", file=out)
    except OSError as e:  # a folder that does not exist, no permission
        return _fail(f"cannot write {e.filename!r}: {e.strerror}")
    return 0
