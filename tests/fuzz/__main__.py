"""``python -m tests.fuzz``: the long fuzz run (``make fuzz``). See :mod:`tests.fuzz.run`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.fuzz.run import fuzz_all, fuzz_the_gateway
from tests.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs in all, split by target")
    parser.add_argument("--max-seconds", type=float, default=600, help="time cap of each target")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's seed (the same for each target)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument(
        "--gateway-examples",
        type=int,
        default=300,
        help="gateway requests an operation and generation mode (0: leave the gateway out)",
    )
    parser.add_argument("--artifacts", type=Path, default=Path(".run/fuzz"), help="crashing inputs go here")
    args = parser.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    started = time.monotonic()
    outcomes = fuzz_all(
        inputs=args.inputs,
        max_seconds=args.max_seconds,
        seed=args.seed,
        artifacts=args.artifacts,
        targets=targets,
    )
    if args.gateway_examples > 0:
        outcomes.append(fuzz_the_gateway(examples=args.gateway_examples, seed=args.seed))
    for outcome in outcomes:
        print(outcome.line(), flush=True)
        if outcome.target == "gateway":
            print(f"{'':<14} {outcome.log.splitlines()[0]}")
        if outcome.crashes:
            print(outcome.log[-4000:], file=sys.stderr)
    inputs = sum(o.inputs for o in outcomes)
    crashes = sum(o.crashes for o in outcomes)
    print(f"{'all':<14} inputs {inputs:>9,}  seconds {time.monotonic() - started:7.1f}  crashes {crashes}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
