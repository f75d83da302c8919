"""The ``lianfang simulate`` subcommand: plays a district's days through the SDK.

``services/cli/main.py`` registers it with :func:`add_commands`; the handler returns the exit status.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.cli.args import bootstrap_of as _bootstrap
from services.cli.args import bus_parent
from services.cli.args import home_of as _home
from services.cli.args import positive_int as _positive_int
from services.simulator.driver import simulate_command

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

SIMULATE_EXIT = """\
The simulated district plays leads from every channel and town, follow-ups, risk assessments,
protection orders, and at least one case for each joint-meeting rule. Event envelopes carry the time
of publishing; the simulated times are in the events (occurred_at, acknowledged_at, ...): with
--as-fast-as-possible (the default) the simulated days end now; with --speed X they start now and run
X times faster than the clock, each event published when its simulated time comes and every time in it
mapped onto the wall clock (run the hub and console with LIANFANG_*_TIME_SCALE=X to match: make run
plays at 360)."""


def add_commands(
    subcommands: Subcommands,
    common: argparse.ArgumentParser,
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., Subcommands],
) -> None:
    """Register ``simulate``. ``group`` is unused: it is a single command."""
    del group
    bus = bus_parent(common)
    sim = command(
        subcommands,
        "simulate",
        cmd_simulate,
        bus,
        "play a district's days on the bus: leads, follow-ups, risk assessments, protection orders",
    )
    sim.formatter_class = argparse.RawDescriptionHelpFormatter
    sim.epilog = SIMULATE_EXIT
    sim.add_argument(
        "--days", type=_positive_int, default=7, metavar="N", help="days to simulate (default 7)"
    )
    sim.add_argument(
        "--seed", type=int, default=None, metavar="S", help="random seed (default 1, or the next of --state)"
    )
    sim.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help="remember the seed between runs: without --seed each run takes the next one, so it plays "
        "new people (make run keeps it in .run/simulator/state.json)",
    )
    sim.add_argument(
        "--rate",
        type=float,
        default=20.0,
        metavar="LEADS_PER_DAY",
        help="background leads per day across the district (default 20), besides the rule cases",
    )
    pace = sim.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, default=None, metavar="X", help="play in real time sped up X times"
    )
    pace.add_argument(
        "--as-fast-as-possible",
        action="store_true",
        help="publish without waiting (the default): the simulated days end now",
    )
    sim.add_argument(
        "--dry-run", action="store_true", help="generate the days and print the summary; publish nothing"
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    return simulate_command(
        home=_home(args),
        bootstrap=None if args.dry_run else _bootstrap(args),
        topic_prefix=args.topic_prefix,
        days=args.days,
        seed=args.seed,
        rate=args.rate,
        speed=args.speed,
        dry_run=args.dry_run,
        state=args.state,
    )
