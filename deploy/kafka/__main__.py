"""Command line of the local Kafka: ``python -m deploy.kafka fetch|up|down|status``.

``up --secure`` starts it with TLS, SASL/SCRAM-SHA-512 and the StandardAuthorizer; SCRAM users are the
operator, the router, every participant of the default district and the demo's shared principals
(``--users a,b,c`` instead). Without ``--secure`` anyone on this machine can read and write every topic,
and ``up`` says so.

Each layout has its own folder unless ``--data`` names one: ``.run/kafka-1node-secure``,
``.run/kafka-3node-plain``, ... ; ``down`` and ``status`` without ``--data`` act on every cluster under
``.run/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deploy.kafka.local import (
    READY_TIMEOUT_S,
    RUN_DIR,
    STATE_FILE,
    Layout,
    LocalKafka,
    LocalKafkaError,
    default_data_dir,
    fetch_jars,
)

PLAINTEXT_WARNING = (
    "warning: this Kafka runs in PLAINTEXT: no TLS, no login, no ACLs; anyone on this machine can read "
    "and write every topic. Without PLAINTEXT=1 (make) or with --secure it is secured."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.kafka", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the broker jars from Maven Central (once)")
    for name, text in (("up", "start a local cluster"), ("down", "stop it"), ("status", "show it")):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--data",
            type=Path,
            default=None,
            help="data folder (default: .run/kafka-<N>node-<secure|plain>; for down and status: every "
            "cluster under .run/)",
        )
        if name == "up":
            p.add_argument("--nodes", type=int, choices=(1, 3), default=1)
            port = os.environ.get("KAFKA_PORT")
            p.add_argument("--port", type=int, default=int(port) if port else None)
            p.add_argument(
                "--secure",
                action="store_true",
                help="TLS + SASL/SCRAM-SHA-512 listeners, ACLs enforced (make kafka-up without PLAINTEXT=1)",
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
        if args.command in ("status", "down"):
            return _status_or_down(args.command, args.data)
        wanted = Layout(args.nodes, args.secure)
        data = (args.data or default_data_dir(args.nodes, secure=args.secure)).resolve()
        existing = LocalKafka.load(data)
        if existing is not None:
            if existing.layout != wanted:
                raise LocalKafkaError(
                    f"a {existing.layout.describe()} Kafka is running from {data}, not the "
                    f"{wanted.describe()} one asked for; fix: `make kafka-down` first, or use its own "
                    f"folder ({default_data_dir(args.nodes, secure=args.secure)})"
                )
            print(existing.bootstrap)
            print(f"(already running from {data}; `make kafka-down` stops it)", file=sys.stderr)
            return 0
        users = _users(args.users) if args.secure else []
        cluster = LocalKafka.plan(data, nodes=args.nodes, port=args.port, secure=args.secure, users=users)
        timeout = float(os.environ.get("KAFKA_READY_TIMEOUT", READY_TIMEOUT_S))
        cluster.start(timeout=timeout)
        (data / "bootstrap").write_text(cluster.bootstrap + "\n")
        print(cluster.bootstrap)
        if not cluster.secure:
            print(PLAINTEXT_WARNING, file=sys.stderr)
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


def _status_or_down(command: str, data: Path | None) -> int:
    folders = (
        [data.resolve()]
        if data is not None
        else sorted(p.parent.resolve() for p in RUN_DIR.glob(f"kafka*/{STATE_FILE}"))
    )
    running = [(folder, cluster) for folder in folders if (cluster := LocalKafka.load(folder)) is not None]
    if command == "status":
        for folder, cluster in running:
            print(
                cluster.bootstrap
                if data is not None
                else f"{cluster.bootstrap}  {cluster.layout.describe()}  {folder}"
            )
        if not running:
            print("not running")
        return 0 if running else 1
    if not running:
        where = folders[0] if data is not None else RUN_DIR / "kafka-*"
        print(f"no local Kafka is running from {where}", file=sys.stderr)
    for folder, cluster in running:
        cluster.stop()
        print(f"stopped the local Kafka at {cluster.bootstrap} ({folder})", file=sys.stderr)
    return 0


def _users(given: str | None) -> list[str]:
    if given is not None:
        return [u.strip() for u in given.split(",") if u.strip()]
    try:
        from services.kernel.principals import SHARED
        from services.simulator.district import participants
    except ImportError as e:  # run before the virtualenv exists
        raise LocalKafkaError(
            f"cannot list the district's participants ({e}).\n"
            "  fix: run with the project's virtualenv (make kafka-up), or pass --users a,b,c."
        ) from e
    return ["router", "timestamp", *(pid for pid, _zh, _en in participants()), *SHARED]


if __name__ == "__main__":
    sys.exit(main())
