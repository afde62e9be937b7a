"""Benchmarks for Pigeon, run with ``make bench`` (never part of the test suite).

Usage::

    python -m bench                 # every benchmark
    python -m bench accept          # one (or several) by name
    python -m bench --list          # what there is
    python -m bench accept --runs 5 --skip postfix
    python -m bench accept --scale 0.1   # a quick try with a tenth of the messages
    python -m bench accept --ext4-image 4G   # on a fresh ext4 (root: loop mount)

Each benchmark prints the machine, a table per metric (every run, the median, the ratio
to Pigeon) and the ratios it is judged by, and writes the same as JSON to
``bench/results/<name>-<timestamp>.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.common import (
    BenchContext,
    BenchError,
    ext4_image,
    machine_info,
    print_machine,
    workdir,
)

#: Benchmark name -> module. A module defines NAME, SUMMARY and
#: ``run(ctx: BenchContext, machine: dict | None) -> Report``.
BENCHMARKS: dict[str, str] = {
    "accept": "bench.accept",
    "bulk": "bench.bulk",
    "delivery": "bench.delivery",
}


def _load(name: str) -> Any:
    return importlib.import_module(BENCHMARKS[name])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run Pigeon's benchmarks (see bench/README.md)."
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--runs", type=int, default=3,
                        help="measurements of each server; the median is reported (default 3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the message counts (default 1.0; e.g. 0.1 to try)")
    parser.add_argument("--skip", action="append", default=[], metavar="SERVER",
                        help="leave a server out, e.g. --skip postfix (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent of the temporary data directories (default: system temp)")
    parser.add_argument("--ext4-image", metavar="SIZE", default=None,
                        help="run on a fresh ext4 (mkfs defaults) in a loop-mounted image of "
                             "SIZE, e.g. 4G, made in --workdir (needs root)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data directories and server logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks named on the command line; return the exit status."""
    args = _parser().parse_args(argv)
    console = Console(log_path=False)
    if not console.is_terminal:
        console.width = max(console.width, 110)
    if args.list:
        for name in BENCHMARKS:
            console.print(f"[bold]{name}[/bold]  {_load(name).SUMMARY}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        console.print(f"[red]unknown benchmark: {', '.join(unknown)}[/red] "
                      f"(known: {', '.join(BENCHMARKS)})")
        return 2
    if args.runs < 1 or args.scale <= 0:
        console.print("[red]--runs must be at least 1 and --scale above 0[/red]")
        return 2
    if args.ext4_image is not None and args.keep:
        console.print("[red]--keep cannot keep a loop-mounted image; leave one out[/red]")
        return 2
    with contextlib.ExitStack() as stack:
        parent = args.workdir
        if args.ext4_image is not None:
            try:
                parent = stack.enter_context(ext4_image(args.workdir, args.ext4_image))
            except BenchError as exc:
                console.print(f"[red]{exc}[/red]")
                return 2
        return _run_all(args, console, parent)


def _run_all(args: argparse.Namespace, console: Console, parent: Path | None) -> int:
    status = 0
    machine: dict[str, Any] | None = None
    for name in args.names or list(BENCHMARKS):
        module = _load(name)
        with workdir(parent, name, args.keep) as path:
            if machine is None:
                machine = machine_info(path)
                print_machine(console, machine)
            ctx = BenchContext(runs=args.runs, scale=args.scale, workdir=path,
                               console=console, keep=args.keep, skip=frozenset(args.skip))
            try:
                report = module.run(ctx, machine)
            except BenchError as exc:
                console.print(f"[red]{name}: {exc}[/red]")
                status = 1
                continue
            report.print(console, args.runs)
            console.print(f"results: {report.write_json()}")
            if args.keep:
                console.print(f"data and logs kept in {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
