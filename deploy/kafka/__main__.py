"""Command line of the local Kafka: ``python -m deploy.kafka fetch|up|down|status``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deploy.kafka.local import READY_TIMEOUT_S, LocalKafka, LocalKafkaError, fetch_jars


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit per command
    parser = argparse.ArgumentParser(prog="python -m deploy.kafka", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the broker jars from Maven Central (once)")
    for name, text in (("up", "start a local cluster"), ("down", "stop it"), ("status", "show it")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", type=Path, default=Path(".run/kafka"), help="data folder")
        if name == "up":
            p.add_argument("--nodes", type=int, choices=(1, 3), default=1)
            port = os.environ.get("KAFKA_PORT")
            p.add_argument("--port", type=int, default=int(port) if port else None)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch_jars())
            return 0
        data = args.data.resolve()
        existing = LocalKafka.load(data)
        if args.command == "status":
            print(existing.bootstrap if existing else "not running")
            return 0 if existing else 1
        if args.command == "down":
            if existing is None:
                print(f"no local Kafka is running from {data}", file=sys.stderr)
                return 0
            existing.stop()
            print(f"stopped the local Kafka at {existing.bootstrap}", file=sys.stderr)
            return 0
        if existing is not None:
            print(existing.bootstrap)
            print("(already running; `make kafka-down` stops it)", file=sys.stderr)
            return 0
        cluster = LocalKafka.plan(data, nodes=args.nodes, port=args.port)
        timeout = float(os.environ.get("KAFKA_READY_TIMEOUT", READY_TIMEOUT_S))
        cluster.start(timeout=timeout)
        (data / "bootstrap").write_text(cluster.bootstrap + "\n")
        print(cluster.bootstrap)
        return 0
    except LocalKafkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
