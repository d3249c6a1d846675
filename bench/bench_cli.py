"""How long `distill --help` takes, against the same with every stage module imported up front:
why distill/pipeline/stages.py imports the stages' `run` functions only when a stage runs.

    python bench/bench_cli.py [--repeat 5]

Prints the median wall time of each over `--repeat` runs and their ratio."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

EAGER = ("import distill.generate.stage, distill.train.stage, distill.export.stage, distill.eval.stage; "
         "import sys; sys.argv = ['distill', '--help']; from distill.cli import main; main()")


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    lazy = [timed([sys.executable, "-m", "distill", "--help"]) for _ in range(args.repeat)]
    eager = [timed([sys.executable, "-c", EAGER]) for _ in range(args.repeat)]
    lazy_s, eager_s = statistics.median(lazy), statistics.median(eager)
    print(f"distill --help: {lazy_s:.2f} s; with the stage modules imported first: {eager_s:.2f} s "
          f"({eager_s / lazy_s:.1f}x)")


if __name__ == "__main__":
    main()
