"""Argument helpers every ``lianfang`` command module shares: where HOME and Kafka are, and counts."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli import local_kafka
from services.cli.settings import HomeSettings, KafkaSettings
from services.kernel.errors import UsageError


def home_of(args: argparse.Namespace) -> Path:
    """``--home``, else ``LIANFANG_HOME``, else ``.lianfang``."""
    home: Path | None = getattr(args, "home", None)
    return home if home is not None else HomeSettings().home


def bootstrap_of(args: argparse.Namespace) -> str:
    """``--bootstrap``, else ``LIANFANG_BOOTSTRAP``; neither is a :class:`UsageError` saying so."""
    bootstrap: str = args.bootstrap or KafkaSettings().bootstrap
    if not bootstrap:
        raise UsageError(
            "no Kafka bootstrap: pass --bootstrap or set LIANFANG_BOOTSTRAP (make kafka-up prints one)"
        )
    return bootstrap


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def bus_parent(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of a command that talks to the bus: ``--bootstrap`` and the tests' hidden
    ``--topic-prefix``, on top of ``common``."""
    bus = argparse.ArgumentParser(add_help=False, parents=[common])
    bus.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: $LIANFANG_BOOTSTRAP)"
    )
    bus.add_argument("--topic-prefix", default="", help=argparse.SUPPRESS)
    local_kafka.add_option(bus)
    return bus
