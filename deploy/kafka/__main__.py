"""Command line of the local Kafka: ``python -m deploy.kafka fetch|up|down|status``.

``up --secure`` starts it with TLS, SASL/SCRAM-SHA-512 and the StandardAuthorizer; SCRAM users are the
operator, the router and every participant of the default district (``--users a,b,c`` instead).
"""

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
            p.add_argument(
                "--secure",
                action="store_true",
                help="TLS + SASL/SCRAM-SHA-512 listeners, ACLs enforced (make kafka-up SECURE=1)",
            )
            p.add_argument(
                "--users",
                default=None,
                help="comma-separated SCRAM users besides the operator (default: router, hub and every "
                "participant of the default district)",
            )
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
        users = _users(args.users) if args.secure else []
        cluster = LocalKafka.plan(data, nodes=args.nodes, port=args.port, secure=args.secure, users=users)
        timeout = float(os.environ.get("KAFKA_READY_TIMEOUT", READY_TIMEOUT_S))
        cluster.start(timeout=timeout)
        (data / "bootstrap").write_text(cluster.bootstrap + "\n")
        print(cluster.bootstrap)
        if cluster.secure:
            print(
                f"secure: SASL_SSL with SCRAM-SHA-512; super user: operator\n"
                f"  LIANFANG_KAFKA_SECURITY_PROTOCOL=SASL_SSL LIANFANG_KAFKA_CA_FILE={cluster.ca_file}\n"
                f"  passwords of the {len(cluster.credentials())} SCRAM users: {cluster.credentials_file} "
                "(mode 0600; never printed)",
                file=sys.stderr,
            )
        return 0
    except LocalKafkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _users(given: str | None) -> list[str]:
    if given is not None:
        return [u.strip() for u in given.split(",") if u.strip()]
    try:
        from services.simulator.district import participants
    except ImportError as e:  # run before the virtualenv exists
        raise LocalKafkaError(
            f"cannot list the district's participants ({e}).\n"
            "  fix: run with the project's virtualenv (make kafka-up SECURE=1), or pass --users a,b,c."
        ) from e
    return ["router", *(pid for pid, _zh, _en in participants())]


if __name__ == "__main__":
    sys.exit(main())
