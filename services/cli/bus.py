"""The ``lianfang`` subcommands that talk to Kafka: ``topics``, ``acls``, ``serve``, ``deadletter``,
``publish``, ``inbox`` and ``run``.

Each reads the broker address from ``--bootstrap`` or ``LIANFANG_BOOTSTRAP``, and how to log in to it
from ``LIANFANG_KAFKA_*`` (:mod:`services.bus.security`), read once when the command starts;
the services it starts read the same environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from schemas.events import EVENT_MODELS, parse_event
from services import trust
from services.bus import cluster, strimzi
from services.bus.cluster import DURABLE_PRODUCER
from services.bus.security import KafkaSecuritySettings, kafka_python_kwargs, load_security
from services.cli import local_kafka
from services.cli.args import bootstrap_of as _bootstrap
from services.cli.args import home_of as _home
from services.cli.console import demo_login
from services.console.app import run as run_console
from services.console.settings import ConsoleSettings
from services.gateway.app import GatewaySettings
from services.gateway.app import serve as serve_gateway
from services.hub.app import HubSettings
from services.hub.app import run_worker as run_hub
from services.kernel import acls, allocator, envelope, heapwatch, ids, principals, topics
from services.kernel.errors import LianfangError, TransportError, UsageError
from services.kernel.registry import Registry
from services.pseudonymizer.app import PseudonymizerSettings
from services.pseudonymizer.app import serve as serve_pseudonymizer
from services.router.app import RouterSettings
from services.router.app import serve as serve_router
from services.sdk.client import CaseContext, Client
from services.timestamp.app import TimestampSettings
from services.timestamp.app import serve as serve_timestamp

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

# What `serve all` runs: every service that exists, each in its own process.
SERVICES: dict[str, str] = {
    "timestamp": "services.timestamp",  # first: the others pause until its first statement
    "router": "services.router",
    "hub": "services.hub",
    "gateway": "services.gateway",
    "console": "services.console",
    "pseudonymizer": "services.pseudonymizer",
}
REPO = Path(__file__).resolve().parents[1]


def add_bus_commands(
    subcommands: Subcommands,
    common: argparse.ArgumentParser,
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., Subcommands],
) -> None:
    bus = argparse.ArgumentParser(add_help=False, parents=[common])
    bus.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: $LIANFANG_BOOTSTRAP)"
    )
    bus.add_argument("--topic-prefix", default="", help=argparse.SUPPRESS)
    local_kafka.add_option(bus)

    topics_group = group(subcommands, "topics", "create the bus's topics from deploy/topics.toml")
    command(topics_group, "apply", _cmd_topics_apply, bus, "create every topic that does not exist yet")

    acls_group = group(subcommands, "acls", "Kafka ACLs for the registry's participants (secured broker)")
    acls_apply = command(
        acls_group,
        "apply",
        _cmd_acls_apply,
        bus,
        "create the ACLs the registry implies, logged in as the operator (LIANFANG_KAFKA_*)",
    )
    acls_apply.add_argument(
        "--dry-run", action="store_true", help="print the rules, one a line, and touch no broker"
    )
    acls_apply.add_argument(
        "--shared",
        action="append",
        default=[],
        metavar="PRINCIPAL=P1,P2",
        help="a principal that acts for several participants (a gateway serving them): it gets exactly "
        "the union of their rules; repeat for more",
    )

    k8s = group(subcommands, "k8s", "the bus's topics and ACLs as Strimzi resources (deploy/k8s)")
    k8s_topics = command(
        k8s, "topics", _cmd_k8s_topics, bus, "print a KafkaTopic per topic of deploy/topics.toml"
    )
    k8s_users = command(
        k8s,
        "users",
        _cmd_k8s_users,
        bus,
        "print a KafkaUser per principal, with the ACLs the registry implies",
    )
    for parser in (k8s_topics, k8s_users):
        parser.add_argument(
            "--cluster", default="lianfang", help="the Kafka resource's name (default lianfang)"
        )
        parser.add_argument("--namespace", default=None, help="metadata.namespace (default: none)")
    k8s_topics.add_argument(
        "--brokers", type=int, default=3, help="brokers of the cluster: sets the replication (default 3)"
    )
    k8s_users.add_argument(
        "--shared",
        action="append",
        default=[],
        metavar="PRINCIPAL=P1,P2",
        help="a principal that acts for several participants, as for `acls apply`",
    )

    serve = command(subcommands, "serve", _cmd_serve, bus, "run a service in the foreground")
    serve.add_argument("service", choices=["all", *SERVICES], help="which service ('all': every one)")

    dead = group(subcommands, "deadletter", "inspect refused records (nothing is decrypted)")
    listing = command(dead, "list", _cmd_deadletter_list, bus, "list dead letters, newest last")
    listing.add_argument("--limit", type=int, default=50, help="show at most the last N (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    publish = command(subcommands, "publish", _cmd_publish, bus, "publish an event from a JSON file")
    publish.add_argument(
        "--as", dest="participant", required=True, metavar="P", help="publishing participant"
    )
    publish.add_argument("file", type=Path, metavar="FILE", help='JSON: {"type": ..., "event": {...}, ...}')
    publish.add_argument("--wait", type=float, default=30.0, help="seconds to wait for Kafka (default 30)")
    publish.add_argument(
        "--occurred-at",
        type=_aware_time,
        metavar="TIME",
        help="when the incident happened, ISO 8601 with an offset (the event's occurred_at; the envelope "
        "is still signed now)",
    )

    inbox = command(subcommands, "inbox", _cmd_inbox, bus, "read this participant's inbox (verified, opened)")
    inbox.add_argument("--as", dest="participant", required=True, metavar="P", help="reading participant")
    inbox.add_argument("--follow", action="store_true", help="keep reading as events arrive")
    inbox.add_argument(
        "--details", action="store_true", help="also print the details section (personal data)"
    )
    inbox.add_argument("--limit", type=int, default=None, help="stop after N events")
    inbox.add_argument(
        "--group",
        default="cli",
        metavar="NAME",
        help="this reader's name: it reads in the group lianfang-inbox-<P>.<NAME> (default cli), apart "
        "from the console, webhooks and other readers, which each still get every event",
    )

    run = command(
        subcommands,
        "run",
        _cmd_run,
        bus,
        "the whole pipeline on one machine: trust domain, topics, registry, every service, demo leads",
    )
    run.add_argument(
        "--time-scale",
        type=float,
        default=DEMO_TIME_SCALE,
        metavar="X",
        help=f"the demo district's clock runs X times faster (default {DEMO_TIME_SCALE:g}: an hour every "
        "10 s); 1 publishes three days at once, as fast as possible, on real deadlines",
    )


def _registry(args: argparse.Namespace) -> Registry:
    """The verified registry of HOME (no private key is opened)."""
    now: datetime = getattr(args, "now", None) or datetime.now(UTC)
    return trust.TrustDomain(home=_home(args), passphrase="").registry(now)


def cmd_registry_publish(args: argparse.Namespace) -> int:
    """``lianfang registry publish [FILE]``: put a verified registry on the registry topic, where every
    process takes it within seconds (after ``keys rotate|revoke|new``, ``registry sign`` or
    ``registry rotate-roots``). A registry that does not verify against HOME's roots is not published."""
    home = _home(args)
    now: datetime = getattr(args, "now", None) or datetime.now(UTC)
    path: Path = args.file or home / "registry.json"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the registry {path}: {e.strerror or e}") from None
    domain = trust.TrustDomain(home=home, passphrase="")
    registry = Registry.from_bytes(data, trusted_roots=domain.trusted_roots(), now=now)
    bootstrap, security = _bootstrap(args), load_security()
    topic = topics.TopicNames(args.topic_prefix).registry
    producer = KafkaProducer(bootstrap_servers=bootstrap, **DURABLE_PRODUCER, **kafka_python_kwargs(security))
    try:
        producer.send(topic, key=b"registry", value=data).get(timeout=30)
    except KafkaError as e:
        raise TransportError(f"publishing the registry on {topic} failed: {e}") from e
    finally:
        producer.close()
    print(
        f"registry v{registry.version} published on {topic} at {bootstrap}: "
        "every process takes it within seconds"
    )
    return 0


def _participants(home: Path) -> list[str]:
    domain = trust.TrustDomain(home=home, passphrase="")
    return domain.registry(datetime.now(UTC)).participant_ids()


# --------------------------------------------------------------------------- topics and ACLs


def _cmd_topics_apply(args: argparse.Namespace) -> int:
    bootstrap, security = _bootstrap(args), load_security()
    specs = cluster.apply_topics(
        bootstrap, _participants(_home(args)), prefix=args.topic_prefix, security=security
    )
    print(f"{len(specs)} topics in place on {bootstrap} (from {cluster.TOPICS_FILE.name})")
    return 0


def acl_line(rule: acls.AclRule) -> str:
    """One rule as ``principal operation resource pattern name``, in aligned columns."""
    return f"{rule.principal:<30} {rule.operation:<16} {rule.resource:<16} {rule.pattern:<8} {rule.name}"


def _cmd_acls_apply(args: argparse.Namespace) -> int:
    """The registry's ACLs: printed (``--dry-run``) or created on the broker as the operator."""
    registry = _registry(args)
    rules = _acl_rules(registry, shared_principals(args.shared), args.topic_prefix)
    count = len({r.principal for r in rules})
    if args.dry_run:
        for rule in rules:
            print(acl_line(rule))
        print(f"{len(rules)} ACL rules for {count} principals (dry run: nothing applied)", file=sys.stderr)
        return 0
    bootstrap, security = _bootstrap(args), load_security()
    _require_login(security)
    applied = cluster.apply_acls(bootstrap, rules, security)
    print(f"{applied} ACL rules for {count} principals in place on {bootstrap} (as {security.principal})")
    return 0


def shared_principals(given: list[str]) -> dict[str, list[str]]:
    """``--shared gateway=police,court`` → ``{"gateway": ["police", "court"]}``."""
    shared: dict[str, list[str]] = {}
    for item in given:
        name, sep, served = item.partition("=")
        participants = [p.strip() for p in served.split(",") if p.strip()]
        if not sep or not name or not participants:
            raise UsageError(f"--shared {item!r}: write PRINCIPAL=P1,P2 (the participants it acts for)")
        shared.setdefault(name, []).extend(participants)
    return shared


def _acl_rules(registry: Registry, shared: dict[str, list[str]], prefix: str) -> list[acls.AclRule]:
    try:
        return principals.deployment_rules(registry.participant_ids(), shared, topics.TopicNames(prefix))
    except ValueError as e:
        raise UsageError(str(e)) from e


def _cmd_k8s_topics(args: argparse.Namespace) -> int:
    specs = cluster.load_specs(
        _registry(args).participant_ids(), brokers=args.brokers, prefix=args.topic_prefix
    )
    _print_documents(strimzi.kafka_topics(specs, cluster=args.cluster, namespace=args.namespace))
    return 0


def _cmd_k8s_users(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rules = _acl_rules(registry, shared_principals(args.shared), args.topic_prefix)
    users = strimzi.kafka_users(
        rules, cluster=args.cluster, namespace=args.namespace, principals=[principals.OPERATOR]
    )
    _print_documents(users)
    return 0


def _print_documents(documents: list[dict[str, Any]]) -> None:
    """A YAML stream of the documents, each written in JSON (which YAML reads as it is)."""
    for document in documents:
        print("---")
        print(json.dumps(document, indent=2, ensure_ascii=False))


def _require_login(security: KafkaSecuritySettings) -> None:
    if not security.sasl:
        raise UsageError(
            "creating ACLs needs a super user's login: set LIANFANG_KAFKA_SECURITY_PROTOCOL=SASL_SSL, "
            "LIANFANG_KAFKA_SASL_USERNAME=operator, LIANFANG_KAFKA_SASL_PASSWORD and LIANFANG_KAFKA_CA_FILE"
        )


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
    load_security()  # an incomplete Kafka login stops here, before any service starts
    env = _service_env(args)
    if args.service == "all":
        local: local_kafka.LocalCluster | None = args.local_cluster
        envs = {name: _login_env(local, name) for name in SERVICES} if local else {}
        return supervise(env, list(SERVICES), envs=envs)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.update(env)
    memory = allocator.configure()  # as each service's __main__ does: before its threads start
    heapwatch.start()  # off unless LIANFANG_TRACEMALLOC_EVERY_S is set
    if args.service == "router":
        asyncio.run(serve_router(RouterSettings()))
    elif args.service == "hub":
        run_hub(HubSettings(), memory=memory)
    elif args.service == "gateway":
        asyncio.run(serve_gateway(GatewaySettings()))
    elif args.service == "console":
        run_console(ConsoleSettings())
    elif args.service == "pseudonymizer":
        asyncio.run(serve_pseudonymizer(PseudonymizerSettings.from_env()))
    elif args.service == "timestamp":
        serve_timestamp(TimestampSettings())
    return 0


def _login_env(local: local_kafka.LocalCluster, service: str) -> dict[str, str]:
    return local.env(local_kafka.principal_for("serve", service=service))


def _service_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"LIANFANG_BOOTSTRAP": _bootstrap(args), "LIANFANG_HOME": str(_home(args).resolve())}
    if args.topic_prefix:
        env["LIANFANG_ROUTER_TOPIC_PREFIX"] = args.topic_prefix
        env["LIANFANG_HUB_TOPIC_PREFIX"] = args.topic_prefix
        env["LIANFANG_GATEWAY_TOPIC_PREFIX"] = args.topic_prefix
        env["LIANFANG_CONSOLE_TOPIC_PREFIX"] = args.topic_prefix
        env["LIANFANG_PSEUDONYMIZER_TOPIC_PREFIX"] = args.topic_prefix
        env["LIANFANG_TIMESTAMP_TOPIC_PREFIX"] = args.topic_prefix
    return env


def supervise(
    env: dict[str, str],
    services: list[str],
    oneshot: list[str] | None = None,
    *,
    envs: Mapping[str, Mapping[str, str]] | None = None,
) -> int:
    """Run each service in its own process until Ctrl-C / SIGTERM, or until one of them exits.

    ``oneshot`` is a ``lianfang`` command run once beside them (the demo's simulator); its end,
    whatever its status, is reported and stops nothing. ``envs`` adds to ``env`` per process (by
    service name, or ``oneshot``'s command name): each logs in as its own principal. Every line a
    process writes is printed with its name in front and without terminal escape codes
    (:mod:`services.cli.service_process` sets up the services' logging).
    """
    envs = envs or {}
    base = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    base |= allocator.preload_env(env=base)  # jemalloc where the system has it
    width = max(len(name) for name in [*services, *(oneshot[:1] if oneshot else [])])
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name in services:
        cmd = [sys.executable, "-m", "services.cli.service_process", SERVICES[name]]
        children[name] = _start(cmd, {**base, **envs.get(name, {})}, name, width)
    print(f"serving {', '.join(services)} (Ctrl-C stops them)", file=sys.stderr)
    extra = None
    if oneshot:
        cmd = [sys.executable, "-m", "services", *oneshot]
        extra = _start(cmd, {**base, **envs.get(oneshot[0], {})}, oneshot[0], width)
    stop = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exited: dict[str, int] = {}
    while not stop and not exited:
        exited = {name: code for name, p in children.items() if (code := p.poll()) is not None}
        if extra is not None and extra.poll() is not None:
            print(f"{oneshot[0] if oneshot else ''} finished with status {extra.returncode}", file=sys.stderr)
            extra = None
        time.sleep(0.2)  # supervision loop
    if extra is not None and extra.poll() is None:
        extra.send_signal(signal.SIGTERM)
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in children.items():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"{name} did not stop within 30 s and was killed", file=sys.stderr)
    for name, code in exited.items():
        print(f"{name} exited with status {code}", file=sys.stderr)
    return 1 if any(exited.values()) else 0


_ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f]")
"""ANSI escape sequences (colours, cursor moves: faust's spinner) and other control characters."""


def clean_line(raw: bytes) -> str:
    """One line of a child's output as plain text: no escape codes, no carriage returns."""
    return _ESCAPES.sub(b"", raw.rstrip(b"\r\n")).decode("utf-8", "replace")


def _start(cmd: list[str], env: dict[str, str], name: str, width: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module names
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    threading.Thread(target=_relay, args=(proc, f"{name:<{width}} | "), daemon=True).start()
    return proc


def _relay(proc: subprocess.Popen[bytes], prefix: str) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = clean_line(raw)
        # faust's start-up spinner ends in "OK ^" even when it cannot spin (no terminal): not news.
        if line.strip() and line.strip() != "OK ^":
            print(prefix + line, flush=True)


# --------------------------------------------------------------------------- dead letters


def deadletter_rows(
    bootstrap: str, topic: str, security: KafkaSecuritySettings | None = None
) -> list[dict[str, Any]]:
    """Every dead letter (committed records only), oldest first, described from clear data only.

    ``security``: the Kafka login (``None``: the ``LIANFANG_KAFKA_*`` environment).
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_python_kwargs(security if security is not None else load_security()),
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not tps:
            raise UsageError(f"no topic {topic} on {bootstrap} (run `lianfang topics apply`)")
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    rows = [_describe(r) for r in records]
    return sorted(rows, key=lambda row: str(row["at"]))


def _size(declared: str | None, value: bytes | None) -> int:
    """A dead letter's size: what its header says of bytes it left out, else its own value's (a
    problem record comes from any participant: a header that is not a number is not believed)."""
    return int(declared) if declared is not None and declared.isdigit() else len(value or b"")


def _describe(record: Any) -> dict[str, Any]:
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or []}
    row: dict[str, Any] = {
        "at": headers.get("lianfang_deadlettered_at", ""),
        "reason": headers.get("lianfang_reason", "?"),
        "source": "{}[{}]@{}".format(
            headers.get("lianfang_source_topic", "?"),
            headers.get("lianfang_source_partition", "?"),
            headers.get("lianfang_source_offset", "?"),
        ),
        "bytes": _size(headers.get("lianfang_value_bytes"), record.value),
        "detail": headers.get("lianfang_detail", ""),
    }
    if "lianfang_reader" in headers:  # an inbox reader's problem record: headers only, no value
        row.update(reader=headers["lianfang_reader"])
        row.update(
            {k: headers[f"lianfang_{k}"] for k in ("event_id", "sender") if f"lianfang_{k}" in headers}
        )
        return row
    try:  # the clear header only, if the record has one: never the sealed sections
        _dsse, _body, _hb, _sb, header = envelope.parse(record.value or b"")
        row.update(event_id=header.id, type=header.type, sender=header.sender)
    except LianfangError:
        pass
    return row


def _cmd_deadletter_list(args: argparse.Namespace) -> int:
    rows = deadletter_rows(_bootstrap(args), topics.TopicNames(args.topic_prefix).deadletter, load_security())
    shown = rows[-args.limit :] if args.limit > 0 else rows
    for row in shown:
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            what = f"{row.get('type', '-')} {row.get('event_id', '-')} from {row.get('sender', '-')}"
            if "reader" in row:
                what += f", unreadable to {row['reader']}"
            print(f"{row['at']}  {row['reason']:<16} {row['source']}  {what}")
    if not args.json:
        counts = Counter(row["reason"] for row in rows)
        summary = ", ".join(f"{reason} {n}" for reason, n in counts.most_common()) or "none"
        print(f"{len(rows)} dead letter(s): {summary}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- publish and inbox


def _client(args: argparse.Namespace, *, reader: str | None = None) -> Client:
    home = _home(args)
    return Client.open(
        participant=args.participant,
        home=home,
        bootstrap=_bootstrap(args),
        topic_prefix=args.topic_prefix,
        security=load_security(),
        reader=reader,
    )


def _cmd_publish(args: argparse.Namespace) -> int:
    """Publish ``{"type", "event", "urgency"?, "context"?}``: a lead's pseudonyms are computed here."""
    try:
        body = json.loads(args.file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {args.file} as JSON: {e}") from e
    if not isinstance(body, dict) or "type" not in body or not isinstance(body.get("event"), dict):
        raise UsageError('the file must hold {"type": "<event type>", "event": {...}}')
    if args.occurred_at is not None:
        body["event"] = with_occurred_at(str(body["type"]), body["event"], args.occurred_at)
    with _client(args) as client:
        if body["type"] == "lead.reported":
            event_id = client.publish_lead(body["event"], urgency=body.get("urgency"))
        else:
            if not isinstance(body.get("context"), dict):
                raise UsageError(
                    f'a {body["type"]} event needs "context": the case it follows (subject, ...)'
                )
            try:
                event = parse_event(body["type"], json.dumps(body["event"]).encode())
                context = CaseContext(**{k: body["context"].get(k) for k in CaseContext.__slots__})
            except (KeyError, TypeError, ValidationError) as e:
                raise UsageError(f"the event or its context is not valid: {e}") from e
            event_id = client.publish(event, context=context, urgency=body.get("urgency", "routine"))
        sent = client.flush(args.wait)
    print(event_id)
    if not sent:
        print("accepted into the outbox; it will be sent when Kafka is reachable", file=sys.stderr)
    return 0


def _aware_time(text: str) -> datetime:
    """An ISO 8601 time with its UTC offset (argparse type)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from e
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (add +08:00 or Z)")
    return at


def with_occurred_at(event_type: str, event: dict[str, Any], at: datetime) -> dict[str, Any]:
    """``event`` with ``occurred_at`` set to ``at``, for a type that carries when its incident happened.
    The envelope's ``time`` stays when it is signed: the router refuses one far from the broker's time."""
    model = EVENT_MODELS.get(event_type)
    if model is None:
        raise UsageError(f"{event_type!r} is not an event type of the catalogue")
    if "occurred_at" not in model.model_fields:
        raise UsageError(f"a {event_type} event has no occurred_at: --occurred-at does not apply to it")
    return {**event, "occurred_at": at.isoformat()}


def _cmd_inbox(args: argparse.Namespace) -> int:
    with _client(args, reader=args.group) as client:
        for opened in client.inbox(follow=args.follow, max_records=args.limit):
            h = opened.header
            triage = opened.sections.get("triage", {})
            print(
                f"{h.time:%Y-%m-%d %H:%M:%S}  {h.type:<26} {h.id}  from {h.sender:<18} "
                f"{h.urgency:<9} {h.category or '-'} {h.town or '-'}"
            )
            print("  triage: " + json.dumps(triage, ensure_ascii=False, sort_keys=True))
            if args.details and "details" in opened.sections:
                print(
                    "  details: " + json.dumps(opened.sections["details"], ensure_ascii=False, sort_keys=True)
                )
    return 0


# --------------------------------------------------------------------------- run


DEMO_GATEWAY_SERVES: tuple[str, ...] = ("police", "womens_federation")
"""The participants the demo's gateway serves (the README's HTTP examples): it opens only their keystores
and logs in as ``gateway``, a principal allowed exactly their rules. A deployment runs one gateway per
agency, on the agency's machine, logged in as the agency's own id (``docs/operations.md``)."""


def _cmd_run(args: argparse.Namespace) -> int:
    """`make run`: a demo trust domain if none, the topics, the ACLs, the registry on its topic, then
    every service, with the simulator playing a few days of the district so the pipeline has work.

    With ``--local-kafka`` (what ``make run`` passes) the topics, ACLs and registry are written as the
    operator and every process logs in as its own principal; on a plain cluster it says what that means.
    """
    local: local_kafka.LocalCluster | None = args.local_cluster
    bootstrap, home, security = _bootstrap(args), _home(args), load_security()
    if security.security_protocol == "PLAINTEXT":
        print(
            "warning: Kafka in PLAINTEXT: no TLS, no login, no ACLs; every process here could read every "
            "inbox's ciphertext and write any topic (make run without PLAINTEXT=1 is secured)",
            file=sys.stderr,
        )
    simulate, demo_env = demo_simulation(args.time_scale, bootstrap, home)
    if not (home / "registry.json").exists():
        domain = trust.init_domain(home, now=datetime.now(UTC))
        print(f"created a demo trust domain in {home} (keys generated now; passphrase in {home}/passphrase)")
    else:
        domain = trust.open_domain(home)
    registry = domain.registry(datetime.now(UTC))
    names = topics.TopicNames(args.topic_prefix)
    participant_ids = registry.participant_ids()
    specs = cluster.apply_topics(bootstrap, participant_ids, prefix=args.topic_prefix, security=security)
    secured = local is not None and local.secure
    shared = {
        principals.GATEWAY: list(DEMO_GATEWAY_SERVES),
        principals.SIMULATOR: [p for p in participant_ids if p != ids.ROUTER],
    }
    rules = _acl_rules(registry, shared, args.topic_prefix) if secured else []
    if rules:
        cluster.apply_acls(bootstrap, rules, security)
    producer = KafkaProducer(bootstrap_servers=bootstrap, **DURABLE_PRODUCER, **kafka_python_kwargs(security))
    producer.send(names.registry, key=b"registry", value=domain.registry_path.read_bytes())
    producer.flush()
    producer.close()
    login = demo_login(home)
    env = {
        **_service_env(args),
        "LIANFANG_GATEWAY_PARTICIPANTS": ",".join(DEMO_GATEWAY_SERVES),
        # make run serves plain http on loopback: the console's cookies cannot require https there.
        "LIANFANG_CONSOLE_COOKIE_SECURE": "false",
        **demo_env,
    }
    envs: dict[str, dict[str, str]] = {}
    if local is not None:
        envs = {name: _login_env(local, name) for name in SERVICES}
        envs["simulate"] = local.env(principals.SIMULATOR)
    print(
        run_banner(
            local,
            bootstrap,
            len(specs),
            registry,
            rules,
            home=args.home,
            console=login,
            scale=args.time_scale,
        )
    )
    return supervise(env, list(SERVICES), oneshot=simulate, envs=envs)


def run_banner(
    local: local_kafka.LocalCluster | None,
    bootstrap: str,
    topic_count: int,
    registry: Registry,
    rules: list[acls.AclRule],
    *,
    home: Path | None,
    console: Any,
    scale: float = 1.0,
) -> str:
    """What ``lianfang run`` prints before the services start: where everything is, and commands that
    work when pasted as printed (from the folder ``make run`` was started in)."""
    if local is not None and local.secure:
        kafka = (
            f"{bootstrap}, TLS + SCRAM-SHA-512, {len(rules)} ACL rules; every service logs in as its own "
            "principal (timestamp, router, hub, coordinators, gateway, plc for the pseudonymizer, simulator)"
        )
    elif local is not None:
        kafka = f"{bootstrap}, PLAINTEXT (no TLS, no login, no ACLs)"
    else:
        kafka = f"{bootstrap}, as {load_security().principal or 'nobody (PLAINTEXT)'}"
    cli = ".venv/bin/lianfang"
    where = f" --local-kafka {_shown(local.folder)}" if local is not None else f" --bootstrap {bootstrap}"
    if home is not None:
        where += f" --home {home}"
    lines = [
        f"Kafka        {kafka}",
        f"topics       {topic_count}; registry v{registry.version}, "
        f"expires {registry.document.expires:%Y-%m-%d}",
        "timestamp    a freshness statement every minute, valid 10 minutes "
        f"(metrics :{_port('TIMESTAMP_METRICS', 9105)})",
        f"router       metrics at http://127.0.0.1:{_port('ROUTER_METRICS', 9102)}/metrics",
        f"hub          metrics at http://127.0.0.1:{_port('HUB_METRICS', 9103)}/metrics "
        "(alerts go to the coordinators' inbox)",
        f"gateway      http://127.0.0.1:{_port('GATEWAY', 8080)}/v1/openapi.json for "
        f"{', '.join(DEMO_GATEWAY_SERVES)} (POST /v1/events, GET /v1/inbox, /metrics)",
        f"pseudonymizer http://127.0.0.1:{_port('PSEUDONYMIZER', 8090)}  (POST /v1/evaluate: signed, "
        "rate-limited, audited; /metrics)",
        f"console      {ConsoleSettings().url()}  sign in as {console.name} / {console.password}",
        "prometheus   make prometheus  → http://127.0.0.1:9090 (rules and dashboard in deploy/)",
        demo_line(scale),
        f"               {cli} inbox{where} --as coordinators     (its own consumer group)",
        f"               {cli} simulate{where} --days 1          (one more day)",
        f"               {cli} deadletter list{where}",
        "logs         each line below starts with the process that wrote it; Ctrl-C stops them all",
    ]
    return "\n".join(lines)


def _port(service: str, default: int) -> str:
    """The port a service was told to use (``LIANFANG_<SERVICE>_PORT``), else its default."""
    return os.environ.get(f"LIANFANG_{service}_PORT") or str(default)


def _shown(folder: Path) -> str:
    """A folder as a path relative to the working directory when it lies below it."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def demo_line(scale: float) -> str:
    """The banner's line on what the simulator plays at the demo's time ``scale``."""
    if scale == 1:
        return "demo         the simulator now plays 3 days of the district; in another terminal:"
    return (
        f"demo         the district's clock runs {scale:g}x (an hour every {3600 / scale:g} s): a week as it "
        "happens, with its deadlines and breaches (the console's 工作督查 page); in another terminal:"
    )


DEMO_TIME_SCALE: Final = 360.0
"""``make run``'s district clock: 360 times the wall clock, so an hour passes in 10 s, an urgent lead's
4-hour acknowledgement is due in 40 s, a day in 4 minutes; a week is played in 28 minutes."""

SIMULATOR_STATE: Final = Path(".run/simulator/state.json")


def demo_simulation(scale: float, bootstrap: str, home: Path) -> tuple[list[str], dict[str, str]]:
    """``make run``'s simulator command and the services' environment for the demo's time scale.

    At a scale above 1 the simulator plays a week at that speed (each event when its simulated time
    comes, signed now, its times mapped onto the wall clock) and the hub and console divide their
    deadlines by it; the hub ticks every 5 s and reports every minute, so the supervision page has
    rates and a trend within a minute or two. Each run takes the next seed (``SIMULATOR_STATE``): a
    second ``make run`` continues the district with new people. A variable already set wins.
    """
    if not scale > 0:
        raise UsageError(f"--time-scale must be greater than 0, not {scale:g}")
    simulate = ["simulate", "--rate", "12", "--bootstrap", bootstrap, "--home", str(home.resolve())]
    simulate += ["--state", str(SIMULATOR_STATE.resolve())]
    if scale == 1:
        return [*simulate, "--days", "3"], {}
    env = {
        "LIANFANG_HUB_TIME_SCALE": f"{scale:g}",
        "LIANFANG_CONSOLE_TIME_SCALE": f"{scale:g}",
        "LIANFANG_HUB_TICK_INTERVAL_S": "5",
        "LIANFANG_HUB_REPORT_EVERY_S": "60",
    }
    env = {name: os.environ.get(name, value) for name, value in env.items()}
    return [*simulate, "--days", "7", "--speed", f"{scale:g}"], env
