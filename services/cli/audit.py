"""``lianfang audit verify [FILE | --bootstrap B]``: check the audit hash chains and their signed heads.

Reads an audit file (JSON lines) or the whole ``lianfang.audit.v1`` topic, splits it by actor, and
verifies each chain (:func:`services.audit.chain.verify_lines`) with the signing keys of the registry
in HOME. Prints one line per chain and one per line set aside, and exits with the worst state found
(:data:`EXIT_CODES`): 0 ok, 3 a chain is broken, 4 forged, unsigned or unreadable lines were set aside
(every genuine chain holds), 5 unproven (``--require-checkpoint`` and a tail no signed checkpoint
covers, or no registry to check signatures with). 1 and 2 are the CLI's own: the trail could not be
read, or the command was misused.

:func:`record_admin_change` is how the key and registry commands add to the trail.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from services.audit.chain import Action, AuditEntry, AuditReport, KeyLookup, Status, verify_lines
from services.audit.kafka import KafkaSink, read_topic
from services.audit.trail import participant_trail, read_file
from services.bus.security import load_security
from services.cli import local_kafka
from services.cli.settings import HomeSettings, KafkaSettings
from services.kernel import topics
from services.kernel.errors import LianfangError, UsageError
from services.trust import TrustDomain

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_CODES: Final[dict[Status, int]] = {"ok": 0, "broken": 3, "forged": 4, "unproven": 5}
"""``lianfang audit verify``'s exit status for each :data:`~services.audit.chain.Status` of a trail."""


def add_commands(
    subcommands: Subcommands,
    common: argparse.ArgumentParser,
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., Subcommands],
) -> None:
    """Register ``lianfang audit verify`` (the CLI passes its ``_command`` and ``_group`` helpers)."""
    options = argparse.ArgumentParser(add_help=False, parents=[common])
    options.add_argument(
        "--bootstrap", default=None, help="read the audit topic from Kafka (default: $LIANFANG_BOOTSTRAP)"
    )
    options.add_argument("--topic-prefix", default="", help=argparse.SUPPRESS)
    local_kafka.add_option(options)  # the audit topic of a secured local cluster, read as the operator
    audit_group = group(subcommands, "audit", "check the tamper-evident audit trail")
    verify = command(
        audit_group,
        "verify",
        _cmd_verify,
        options,
        "verify the audit hash chains (a file, or the audit topic) and their signed checkpoints",
    )
    verify.add_argument("file", nargs="?", type=Path, metavar="FILE", help="audit file (JSON lines)")
    verify.add_argument(
        "--require-checkpoint",
        action="store_true",
        help="fail (exit 5) when a chain ends in entries no signed checkpoint covers: a tail cut off "
        "after them could not be detected",
    )


def _keys(args: argparse.Namespace) -> KeyLookup | None:
    home: Path = getattr(args, "home", None) or HomeSettings().home
    now: datetime = getattr(args, "now", None) or datetime.now(UTC)
    try:
        registry = TrustDomain(home=home, passphrase="").registry(now)
    except LianfangError as e:
        print(
            f"note: no signature checked, no usable registry in {home} ({e}); only the links are",
            file=sys.stderr,
        )
        return None

    def lookup(actor: str, kid: str, at: datetime) -> bytes:
        return registry.signing_key(actor, kid, at=at)

    return lookup


def _lines(args: argparse.Namespace) -> tuple[str, list[bytes]]:
    if args.file is not None:
        if args.bootstrap:
            raise UsageError("give an audit FILE or --bootstrap, not both")
        return str(args.file), read_file(args.file)
    bootstrap: str = args.bootstrap or KafkaSettings().bootstrap
    if not bootstrap:
        raise UsageError("nothing to verify: give an audit FILE, or --bootstrap (or LIANFANG_BOOTSTRAP)")
    topic = topics.TopicNames(args.topic_prefix).audit
    return topic, read_topic(bootstrap, topic, load_security())


def record_admin_change(
    domain: TrustDomain,
    holder: str,
    action: Action,
    *,
    subject: str | None,
    object: str,
    now: datetime,
) -> AuditEntry:
    """Append a key or registry change, made by root holder ``holder``, to its ``admin`` chain in
    HOME/audit and sign its head. With ``LIANFANG_BOOTSTRAP`` set the chain's unshipped lines go to the
    audit topic; lines a broker did not take wait in the file for the next command."""
    registry = domain.registry(now)
    keystore = domain.keystore(holder)
    bootstrap = KafkaSettings().bootstrap
    sink = None
    if bootstrap:
        sink = KafkaSink(bootstrap, topics.TopicNames().audit, load_security(), timeout_s=10)
    trail = participant_trail(
        domain.home / "audit", keystore, registry, "admin", ship=sink, clock=lambda: now
    )
    try:
        entry = trail.append(action, subject=subject, object=object)
    finally:
        trail.close(timeout=15)
    shipper = trail.shipper
    where = f"audit: {action} recorded as {trail.actor} seq {entry.seq}"
    if shipper is not None and shipper.pending_bytes:
        where += f" (not yet on the audit topic: {bootstrap} did not take it; the next command retries)"
    print(where)
    return entry


def _cmd_verify(args: argparse.Namespace) -> int:
    source, lines = _lines(args)
    report = verify_lines(lines, keys=_keys(args), require_checkpoint=args.require_checkpoint)
    if not report.chains and not report.unreadable:
        print(f"{source}: no audit entries")
        return 0
    for result in report.chains:
        print(result, file=sys.stdout if result.ok else sys.stderr)
    for line in report.set_aside:
        print(line, file=sys.stderr)
    for message in _summary(report, source):
        print(message, file=sys.stderr)
    return EXIT_CODES[report.status]


def _summary(report: AuditReport, source: str) -> list[str]:
    """What is wrong with the trail as a whole, worst first; nothing when it is ok."""
    messages = []
    broken = [r for r in report.chains if not r.ok]
    if broken:
        messages.append(
            f"error: the audit trail in {source} is broken; first bad entry: seq {broken[0].bad_seq} "
            f"of {broken[0].actor or 'an unknown actor'}"
        )
    if report.set_aside:
        messages.append(
            f"error: {len(report.set_aside)} line(s) in {source} were set aside as forged, unsigned or "
            "unreadable (listed above); they take no part in any chain"
        )
    if any(not r.signatures_checked for r in report.chains):
        messages.append("error: unproven: without a registry no entry's signature could be checked")
    elif report.require_checkpoint and (tails := [r for r in report.chains if r.unproven]):
        messages.append(
            f"error: unproven: {len(tails)} chain(s) end in entries no signed checkpoint covers, so "
            "entries cut off after them could not be detected (--require-checkpoint)"
        )
    return messages
