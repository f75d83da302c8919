"""The ``lianfang`` command.

Global options (before or after the subcommand): ``--home DIR`` names the trust domain folder (default
``$LIANFANG_HOME``, else ``.lianfang``).

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered with ``set_defaults(func=...)`` by
an ``_add_<group>(subcommands, common)`` function in :func:`build_parser`. :func:`main` turns every
:class:`LianfangError` into one line on stderr and an exit status (1, or 2 for a usage error); nothing
here prints a private key, a passphrase or the pseudonym key — key ids only.

For tests only, never for real keys:

- ``LIANFANG_INSECURE_FAST_KDF=1``: keystores this command writes use ``KdfParams.for_tests()``
  (Argon2id with 8 MiB and one pass) instead of the defaults, so that test suites stay fast.
- ``--now ISO8601`` (hidden global option): the clock reading to use instead of the system clock, to
  test expiry and revocation times.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.registry import MAX_REGISTRY_BYTES, PublicKey, RegistryDocument, Roots
from services import trust
from services.audit.chain import Action
from services.cli import console as console_command
from services.cli import local_kafka
from services.cli.args import bus_parent
from services.cli.args import home_of as _home
from services.cli.args import positive_int as _positive_int
from services.cli.audit import add_commands as add_audit_commands
from services.cli.audit import record_admin_change
from services.cli.bus import add_bus_commands, cmd_registry_publish
from services.cli.importers import add_commands as add_import_commands
from services.cli.simulate import add_commands as add_simulate_commands
from services.hub.config import HubConfig
from services.kernel import ids
from services.kernel.errors import (
    BadSignatureError,
    LianfangError,
    TransportError,
    UnknownKeyError,
    UntrustedInputError,
    UsageError,
)
from services.kernel.keystore import KdfParams, Keystore
from services.kernel.pseudonym import PseudonymKey
from services.kernel.registry import (
    Registry,
    add_signature,
    check_root_signatures,
    read_unverified,
    sign_document,
)
from services.pseudonymizer.core import PseudonymizerKey, key_file_name, retired_versions
from services.pseudonymizer.keys import KeyFolder, destroy_file
from services.simulator import district
from services.trust import admin
from services.trust.trusted import FOLDER, TrustedRecord

Command = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:  # not subscriptable at run time
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

FAST_KDF_ENV = "LIANFANG_INSECURE_FAST_KDF"


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``lianfang`` parser. Add a subcommand group with an ``_add_<name>(subcommands, common)``."""
    parser = argparse.ArgumentParser(prog="lianfang", description="Lianfang (联防) event bus")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="trust domain folder (default: $LIANFANG_HOME, else .lianfang)",
    )
    parser.add_argument("--now", type=_iso_time, default=None, help=argparse.SUPPRESS)
    # The same options on every subcommand, so that `lianfang registry verify --home X` works too;
    # SUPPRESS keeps a subcommand from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="trust domain folder")
    common.add_argument("--now", type=_iso_time, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_init(subcommands, common)
    _add_registry(subcommands, common)
    _add_keys(subcommands, common)
    _add_pseudonymizer(subcommands, common)
    add_bus_commands(subcommands, common, _command, _group)
    add_import_commands(subcommands, common, _command, _group)
    add_simulate_commands(subcommands, common, _command, _group)
    console_command.add_commands(subcommands, common, _command, _group)
    add_audit_commands(subcommands, common, _command, _group)
    return parser


def _command(
    subcommands: Subcommands, name: str, func: Command, common: argparse.ArgumentParser, help: str
) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(name, help=help, description=help, parents=[common])
    parser.set_defaults(func=func)
    return parser


def _group(subcommands: Subcommands, name: str, help: str) -> Subcommands:
    parser = subcommands.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _add_init(subcommands: Subcommands, common: argparse.ArgumentParser) -> None:
    init = _command(
        subcommands,
        "init",
        _cmd_init,
        common,
        "create a demo trust domain: root and participant keys, a signed registry and policy",
    )
    init.add_argument("--force", action="store_true", help="replace an existing trust domain")
    init.add_argument(
        "--lifetime-days",
        type=_positive_int,
        default=trust.DEFAULT_LIFETIME.days,
        metavar="N",
        help=f"days until the registry expires (default {trust.DEFAULT_LIFETIME.days})",
    )
    init.add_argument(
        "--pseudonymizer-url",
        default=trust.DEFAULT_PSEUDONYMIZER_URL,
        metavar="URL",
        help="where the registry says the pseudonymizer is served; its key is generated into "
        f"HOME/{trust.PSEUDONYMIZER_KEY} (default {trust.DEFAULT_PSEUDONYMIZER_URL})",
    )
    init.add_argument(
        "--sealed-pseudonym-key",
        action="store_true",
        help="an older kind of domain: no pseudonymizer, a pseudonym key sealed to every participant "
        "(any keystore can then compute pseudonyms offline)",
    )


def _add_registry(subcommands: Subcommands, common: argparse.ArgumentParser) -> None:
    registry = _group(subcommands, "registry", "show, verify or sign the trust registry")
    file_help = "registry file (default: HOME/registry.json; roots from HOME/root.json)"
    show = _command(registry, "show", _cmd_registry_show, common, "show the verified registry")
    show.add_argument("--json", action="store_true", help="print the signed document as JSON")
    show.add_argument("file", nargs="?", type=Path, metavar="FILE", help=file_help)
    verify = _command(registry, "verify", _cmd_registry_verify, common, "check root signatures and expiry")
    verify.add_argument("file", nargs="?", type=Path, metavar="FILE", help=file_help)
    sign = _command(registry, "sign", _cmd_registry_sign, common, "add one root holder's signature")
    sign.add_argument(
        "--root", required=True, metavar="HOLDER", help="root holder (keystore HOME/roots/HOLDER.key)"
    )
    sign.add_argument("file", nargs="?", type=Path, metavar="FILE", help=file_help)
    publish = _command(
        registry,
        "publish",
        cmd_registry_publish,
        bus_parent(common),
        "put the registry on the registry topic: every process takes it within seconds",
    )
    publish.add_argument("file", nargs="?", type=Path, metavar="FILE", help=file_help)
    renew = _command(
        registry,
        "renew",
        _cmd_registry_renew,
        common,
        "the next version, nothing changed but its dates, signed by the roots (before or after it expires)",
    )
    renew.add_argument(
        "--lifetime-days",
        type=_positive_int,
        metavar="N",
        help="days until the new version expires (default: the lifetime the registry in force had)",
    )
    rotate = _command(
        registry,
        "rotate-roots",
        _cmd_registry_rotate_roots,
        common,
        "new root keys for these holders, k of n: the next registry, signed by the old and the new roots",
    )
    rotate.add_argument(
        "--holder",
        dest="holders",
        action="append",
        required=True,
        metavar="HOLDER",
        help="a holder of the new root set, with a key generated now (repeat: every holder of the set)",
    )
    rotate.add_argument(
        "--threshold", type=_positive_int, required=True, metavar="K", help="root signatures a registry needs"
    )


def _add_keys(subcommands: Subcommands, common: argparse.ArgumentParser) -> None:
    keys = _group(subcommands, "keys", "add, rotate or revoke participants' keys (a new registry version)")
    new = _command(
        keys, "new", _cmd_keys_new, common, "add a participant, or one more key pair to a participant"
    )
    new.add_argument("--as", dest="participant", required=True, metavar="P", help="participant id")
    new.add_argument("--name-zh", metavar="ZH", help="中文名 (required for a new participant)")
    new.add_argument("--name-en", metavar="EN", help="English name (required for a new participant)")
    rotate = _command(
        keys, "rotate", _cmd_keys_rotate, common, "new keys for a participant; its active keys retire"
    )
    rotate.add_argument("--as", dest="participant", required=True, metavar="P", help="participant id")
    revoke = _command(
        keys, "revoke", _cmd_keys_revoke, common, "revoke a key: what it signs from then on is refused"
    )
    revoke.add_argument("--as", dest="participant", required=True, metavar="P", help="participant id")
    revoke.add_argument("--kid", required=True, help="key id to revoke")
    revoke.add_argument(
        "--at", type=_iso_time, metavar="ISO8601", help="revoked from this time (default: now)"
    )


def _add_pseudonymizer(subcommands: Subcommands, common: argparse.ArgumentParser) -> None:
    group = _group(
        subcommands, "pseudonymizer", "rotate the pseudonymizer's key, or move a sealed-key domain to it"
    )
    days = HubConfig().retention.days + 1
    window = argparse.ArgumentParser(add_help=False, parents=[common])
    window.add_argument(
        "--transition-days",
        type=_positive_int,
        default=days,
        metavar="N",
        help="days the previous key (or sealed key) stays for linking, at least the hub's longest "
        f"look-back (default {days})",
    )
    _command(
        group,
        "rotate",
        _cmd_pseudonymizer_rotate,
        window,
        f"the next key in HOME/{trust.PSEUDONYMIZER_KEY.parent}/key.v<N>.json and a registry naming it, "
        "with the current key as the previous one for the transition",
    )
    migrate = _command(
        group,
        "migrate",
        _cmd_pseudonymizer_migrate,
        window,
        "a domain that seals a pseudonym key names a pseudonymizer; the sealed key stays for the transition",
    )
    migrate.add_argument(
        "--url",
        default=trust.DEFAULT_PSEUDONYMIZER_URL,
        metavar="URL",
        help=f"where the pseudonymizer is served (default {trust.DEFAULT_PSEUDONYMIZER_URL})",
    )
    end = _command(
        group,
        "end-transition",
        _cmd_pseudonymizer_end_transition,
        common,
        "drop the previous key (the service then destroys it) or the sealed pseudonym key",
    )
    end.add_argument(
        "--force", action="store_true", help="end it before the time the registry gives (loses links)"
    )


def _iso_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. 2025-03-01T09:00:00+08:00")
    return value


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage message argparse has already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run a subcommand; an expected error becomes one line on stderr and an exit status."""
    func: Command = args.func
    try:
        args.local_cluster = local_kafka.login(args)
        return func(args)
    except UsageError as e:
        _error(str(e))
        return 2
    except LianfangError as e:
        _error(str(e))
        return 1
    except BrokenPipeError:  # `lianfang registry show | head`: the reader left; say nothing more
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        _error(f"cannot access {e.filename}: {e.strerror}" if e.filename else str(e))
        return 1
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _now(args: argparse.Namespace) -> datetime:
    now: datetime | None = args.now
    return now if now is not None else datetime.now(UTC)


def _kdf() -> KdfParams:
    return KdfParams.for_tests() if os.environ.get(FAST_KDF_ENV) == "1" else trust.DEFAULT_KDF


# --------------------------------------------------------------------------- init


def _cmd_init(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    if os.environ.get("LIANFANG_PASSPHRASE") == "":
        # init_domain would encrypt with a random passphrase and write it nowhere.
        raise UsageError("LIANFANG_PASSPHRASE is set but empty: unset it for a demo passphrase, or set one")
    if os.environ.get(FAST_KDF_ENV) == "1":
        print(f"warning: {FAST_KDF_ENV}=1: keystores use cheap test KDF parameters", file=sys.stderr)
    domain = trust.init_domain(
        home,
        now=now,
        kdf=_kdf(),
        lifetime=timedelta(days=args.lifetime_days),
        force=args.force,
        pseudonymizer_url=None if args.sealed_pseudonym_key else args.pseudonymizer_url,
    )
    registry = domain.registry(now)
    document = registry.document
    print(f"created a demo trust domain in {home}")
    print(f"  registry v{document.version} {_signed_by(registry)}; {_root_holders(document.roots)}")
    print(f"  {len(document.participants)} participants, policy v{document.policy.version}")
    print(f"  expires {_when(document.expires)} ({_relative(document.expires, now)})")
    if document.pseudonymizer is not None:
        print(
            f"  pseudonymizer at {document.pseudonymizer.url}; its key: {home / trust.PSEUDONYMIZER_KEY} "
            "(mode 0600: keep it on the pseudonymizer's machine only)"
        )
    else:
        print(
            "  warning: a sealed pseudonym key: every participant can compute pseudonyms offline",
            file=sys.stderr,
        )
    if "LIANFANG_PASSPHRASE" in os.environ:
        print("  keystores are encrypted with the passphrase in LIANFANG_PASSPHRASE")
    else:
        print(f"  keystores are encrypted with the demo passphrase in {home / 'passphrase'} (keep it secret)")
    return 0


# --------------------------------------------------------------------------- registry


def _cmd_registry_show(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    path: Path = args.file or home / "registry.json"
    registry = Registry.from_bytes(_read_registry(path), trusted_roots=_anchor(home), now=now)
    document = registry.document
    if args.json:
        sys.stdout.write(registry.payload.decode("utf-8"))
        return 0
    print(f"registry v{document.version} ({path})")
    print(f"  issued    {_when(document.issued)}")
    print(f"  expires   {_when(document.expires)} ({_relative(document.expires, now)})")
    print(f"  roots     {_signed_by(registry)}; {_root_holders(document.roots)}")
    print(f"  payload   sha256 {hashlib.sha256(registry.payload).hexdigest()}")
    if document.pseudonymizer is not None:
        role = document.pseudonymizer
        print(f"  pseudonymizer v{role.version} at {role.url} ({role.mode} {role.suite}, key {role.public})")
        if role.previous is not None:
            print(f"    previous key v{role.previous.version} ({role.previous.public}), for linking")
        if document.pseudonym_key is not None:
            print(f"    sealed pseudonym key v{document.pseudonym_key.version} kept as the previous epoch")
        if role.transition_until is not None:
            print(f"    key transition: may end from {_when(role.transition_until)}")
    elif document.pseudonym_key is not None:
        sealed = {w.to for w in document.pseudonym_key.sealed}
        print(
            f"  pseudonym key v{document.pseudonym_key.version}, sealed to {len(sealed)} of "
            f"{len(document.participants)} participants"
        )
    print()
    rows = [("id", "中文名", "English", "signing keys", "encryption keys")]
    rows += [
        (p.id, p.name_zh, p.name_en, _key_counts(p.keys, "sign"), _key_counts(p.keys, "encrypt"))
        for p in document.participants
    ]
    print(f"participants ({len(document.participants)})")
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(_pad(cell, width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print()
    print(f"policy v{document.policy.version} ({len(document.policy.rules)} rules)")
    for rule in document.policy.rules:
        print(f"  {rule.name}")
    return 0


def _cmd_registry_verify(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    path: Path = args.file or home / "registry.json"
    data = _read_registry(path)
    roots = _anchor(home)
    try:
        registry = Registry.from_bytes(data, trusted_roots=roots, now=now)
    except UntrustedInputError as e:
        print(f"FAILED [{e.reason}]: {_failure(e, data, roots)}", file=sys.stderr)
        return 1
    expires = registry.document.expires
    print(
        f"OK: registry v{registry.version}, {_signed_by(registry)}, "
        f"expires {_when(expires)} ({_relative(expires, now)})"
    )
    return 0


def _cmd_registry_sign(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    holder: str = args.root
    roots = _anchor(home)
    by_holder = {k.holder: k.kid for k in roots.keys}
    if holder not in by_holder:
        raise UsageError(
            f"{holder!r} holds no root key of this trust domain (root holders: {_holders(roots)})"
        )
    path: Path = args.file or home / "registry.json"
    data = _read_registry(path)
    payload, _ = read_unverified(data)
    document = admin.read_document(payload)
    (store,) = trust.open_domain(home).root_keystores([holder])
    ((kid, key),) = store.signing.items()
    if kid != by_holder[holder]:
        raise UsageError(
            f"the root keystore of {holder} holds key {kid}, but the trust anchor lists {by_holder[holder]}"
        )
    signed = add_signature(data, kid, key)
    trust.write_file(path, signed)
    record_admin_change(
        trust.open_domain(home),
        holder,
        "registry_change",
        subject=None,
        object=f"registry.v{document.version}.{kid}",
        now=now,
    )
    report = check_root_signatures(roots, payload, read_unverified(signed)[1])
    print(
        f"signed registry v{document.version} ({path}) as {holder}/{kid}; "
        f"payload sha256 {hashlib.sha256(payload).hexdigest()}"
    )
    state = "enough to verify" if report.ok else f"{report.missing} missing"
    print(
        f"  {len(report.valid)} of {report.threshold} required root signatures valid "
        f"({_names(report.valid, roots)}); {state}"
    )
    if now >= document.expires:
        print(
            f"warning: this registry expired at {_when(document.expires)}; it will not verify",
            file=sys.stderr,
        )
    return 0


def _cmd_registry_renew(args: argparse.Namespace) -> int:
    """The registry in force again as its next version, issued now; an expired one too (renewing is how
    a domain whose registry expired starts again), but only one that verifies against HOME's roots."""
    home, now = _home(args), _now(args)
    domain = trust.open_domain(home)
    data = _read_registry(domain.registry_path)
    registry = Registry.from_bytes(data, trusted_roots=domain.trusted_roots(), now=now, allow_expired=True)
    lifetime = (
        timedelta(days=args.lifetime_days) if args.lifetime_days else admin.lifetime_of(registry.document)
    )
    change = admin.renew(registry.document, now=now, lifetime=lifetime)
    return _commit(domain, registry, change, now, changed_store=None, action="registry_change")


def _cmd_registry_rotate_roots(args: argparse.Namespace) -> int:
    """The root ceremony of a domain whose root keystores are all in HOME/roots (the demo's): the
    next registry names the new root set and is signed by a threshold of the old roots and by every
    new root; then the new keys replace the old ones in HOME/roots (the old ones move to
    HOME/roots/retired/) and HOME/root.json names the new set."""
    home, now = _home(args), _now(args)
    holders: list[str] = [admin.check_participant_id(h) for h in args.holders]
    if len(set(holders)) != len(holders):
        raise UsageError(f"a holder is named twice in {', '.join(holders)}: each holds one root key")
    domain = trust.open_domain(home)
    registry = domain.registry(now)
    old_signers = _root_signers(domain)
    new_stores = []
    for holder in holders:
        store = Keystore(trust.ROOT_PREFIX + holder)
        store.add_signing_key()
        new_stores.append(store)
    roots = trust.roots_of(new_stores, args.threshold)
    change = admin.rotate_roots(
        registry.document, roots, now=now, lifetime=admin.lifetime_of(registry.document)
    )
    keys = {kid: key for store in [*old_signers, *new_stores] for kid, key in store.signing.items()}
    data = sign_document(change.document, keys)
    written = Registry.from_bytes(data, trusted_roots=domain.trusted_roots(), now=now)  # old and new
    retired = home / "roots" / "retired"
    retired.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in domain.root_keystores():
        ((kid, _),) = old.signing.items()
        name = old.participant.removeprefix(trust.ROOT_PREFIX)
        (home / "roots" / f"{name}.key").rename(retired / f"{name}.{kid}.key")
    for store in new_stores:
        domain.save_keystore(store, _kdf())
    trust.write_file(domain.registry_path, data)
    trust.write_file(domain.anchor_path, roots.model_dump_json(indent=2).encode() + b"\n")
    print(f"registry v{written.version} written to {domain.registry_path}")
    print(f"  {change.summary}")
    holder = old_signers[0].participant.removeprefix(trust.ROOT_PREFIX)
    record_admin_change(
        domain, holder, "registry_change", subject=None, object=f"registry.v{written.version}.roots", now=now
    )
    print(f"  signed by {len(old_signers)} old roots and {len(new_stores)} new ones")
    print(f"  {domain.anchor_path} names the new roots; the old root keystores are in {retired}")
    print("  publish it on the registry topic: each process takes it only if it trusted the version before")
    return 0


def _read_registry(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(MAX_REGISTRY_BYTES + 1)  # the size check in the kernel sees the excess
    except FileNotFoundError:
        raise UsageError(f"no registry at {path}; run `lianfang init` first, or name the file") from None
    except OSError as e:
        raise TransportError(f"cannot read {path}: {e.strerror}") from e


def _anchor(home: Path) -> Roots:
    # Reading the trust anchor needs no passphrase; an empty one could not open any keystore anyway.
    return trust.TrustDomain(home=home, passphrase="").trusted_roots()


def _failure(error: UntrustedInputError, data: bytes, roots: Roots) -> str:
    """The message of a failed verification, with which root signatures are valid, bad or missing."""
    message = str(error.args[0]) if error.args else error.reason
    if not isinstance(error, BadSignatureError):
        return message
    payload, signatures = read_unverified(data)  # from_bytes got past this, so it parses
    report = check_root_signatures(roots, payload, signatures)
    if report.ok:  # enough trusted signatures: the failure was about the document's own new roots
        return message
    valid = f" ({_names(report.valid, roots)})" if report.valid else ""
    parts = [
        f"{len(report.valid)} of {report.threshold} required root signatures valid{valid}",
        f"{report.missing} missing",
    ]
    if report.invalid:
        parts.append(
            f"{len(report.invalid)} do not match the payload ({_names(report.invalid, roots)}): "
            "the file was changed after it was signed"
        )
    if report.unknown:
        unknown = ", ".join(sorted(report.unknown))
        parts.append(f"{len(report.unknown)} by keys the trust anchor does not list ({unknown})")
    unsigned = [k.holder for k in roots.keys if k.kid not in report.valid | report.invalid]
    if not report.invalid and unsigned:
        parts.append(
            f"not signed by {', '.join(unsigned)} (`lianfang registry sign --root HOLDER` adds a signature)"
        )
    return "; ".join(parts)


# --------------------------------------------------------------------------- keys


def _cmd_keys_new(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    pid = admin.check_participant_id(args.participant)
    name_zh: str | None = args.name_zh
    name_en: str | None = args.name_en
    domain = trust.open_domain(home)
    registry = domain.registry(now)
    document = registry.document
    lifetime = admin.lifetime_of(document)
    if pid in registry.participant_ids():
        current = registry.participant(pid)
        if (name_zh and name_zh != current.name_zh) or (name_en and name_en != current.name_en):
            raise UsageError(f"{pid} is already a participant; `keys new` adds keys and does not rename it")
        store = domain.keystore(pid)
        kids = {store.add_signing_key(), store.add_encryption_key()}
        new_keys = [k for k in trust.public_keys(store, valid_from=now) if k.kid in kids]
        change = admin.add_keys(document, pid, new_keys, now=now, lifetime=lifetime)
    else:
        if not name_zh or not name_en:
            raise UsageError(f"{pid} is not a participant yet: give its names with --name-zh and --name-en")
        if (home / "keys" / f"{pid}.key").exists():
            raise UsageError(
                f"{home / 'keys' / f'{pid}.key'} exists but {pid} is not in the registry; "
                "move the file away first (it is never overwritten)"
            )
        store = Keystore.generate(pid)
        change = admin.add_participant(
            document,
            participant_id=pid,
            name_zh=name_zh,
            name_en=name_en,
            may_publish=district.may_publish(pid),
            keys=trust.public_keys(store, valid_from=now),
            now=now,
            lifetime=lifetime,
        )
    return _commit(domain, registry, change, now, changed_store=store)


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    pid = admin.check_participant_id(args.participant)
    domain = trust.open_domain(home)
    registry = domain.registry(now)
    _require_participant(registry, pid)
    store = domain.keystore(pid)
    # The old private keys stay in the keystore: they still open what was sealed to them.
    kids = {store.add_signing_key(), store.add_encryption_key()}
    new_keys = [k for k in trust.public_keys(store, valid_from=now) if k.kid in kids]
    change = admin.rotate(
        registry.document, pid, new_keys, now=now, lifetime=admin.lifetime_of(registry.document)
    )
    return _commit(domain, registry, change, now, changed_store=store)


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    pid = admin.check_participant_id(args.participant)
    at: datetime = args.at or now
    domain = trust.open_domain(home)
    registry = domain.registry(now)
    _require_participant(registry, pid)
    change = admin.revoke(
        registry.document, pid, args.kid, at=at, now=now, lifetime=admin.lifetime_of(registry.document)
    )
    return _commit(domain, registry, change, now, changed_store=None)


# --------------------------------------------------------------------------- pseudonymizer


def _cmd_pseudonymizer_rotate(args: argparse.Namespace) -> int:
    """The key file first, then the registry, so the registry never names a key no file holds; a key
    file of the next version left by an earlier attempt is used again."""
    home, now = _home(args), _now(args)
    domain = trust.open_domain(home)
    registry = domain.registry(now)
    role = registry.pseudonymizer
    if role is None:
        raise UsageError(
            f"registry v{registry.version} names no pseudonymizer: `lianfang pseudonymizer migrate` first"
        )
    version = role.version + 1
    name = key_file_name(version)
    path = home / trust.PSEUDONYMIZER_KEY.parent / name
    if role.transition_until is not None:
        raise UsageError(
            f"a key transition is under way until {_when(role.transition_until)}: "
            "`lianfang pseudonymizer end-transition` first"
        )
    key = (
        PseudonymizerKey.from_json(path.read_bytes())
        if path.exists()
        else trust.create_pseudonymizer_key(home, version, name=name)
    )
    if key.version != version:
        raise UsageError(f"{path} holds key v{key.version}, not v{version}: move it away and try again")
    change = admin.rotate_pseudonymizer(
        registry.document,
        version=version,
        public=key.role(role.url).public,
        transition_until=now + timedelta(days=args.transition_days),
        now=now,
        lifetime=admin.lifetime_of(registry.document),
    )
    _commit(domain, registry, change, now, changed_store=None)
    print(f"  the new key is {path} (mode 0600): copy it to the pseudonymizer's machine, then publish")
    return 0


def _cmd_pseudonymizer_migrate(args: argparse.Namespace) -> int:
    home, now = _home(args), _now(args)
    domain = trust.open_domain(home)
    registry = domain.registry(now)
    sealed = registry.document.pseudonym_key
    if sealed is None or registry.pseudonymizer is not None:
        raise UsageError(f"registry v{registry.version} already names a pseudonymizer: nothing to migrate")
    version = sealed.version + 1
    name = key_file_name(version)
    path = home / trust.PSEUDONYMIZER_KEY.parent / name
    key = (
        PseudonymizerKey.from_json(path.read_bytes())
        if path.exists()
        else trust.create_pseudonymizer_key(home, version, name=name)
    )
    change = admin.migrate_to_pseudonymizer(
        registry.document,
        key.role(args.url),
        transition_until=now + timedelta(days=args.transition_days),
        now=now,
        lifetime=admin.lifetime_of(registry.document),
    )
    _commit(domain, registry, change, now, changed_store=None)
    print(f"  the pseudonymizer's key is {path} (mode 0600): copy it to its machine, start it, then publish")
    return 0


def _cmd_pseudonymizer_end_transition(args: argparse.Namespace) -> int:
    """End the transition; in HOME, also destroy the retired key files (the service destroys its own
    copy when it takes the registry) and raise the records in HOME/trusted, which hold older registries
    (with a sealed key, after a migration), to the new one."""
    home, now = _home(args), _now(args)
    domain = trust.open_domain(home)
    registry = domain.registry(now)
    change = admin.end_pseudonymizer_transition(
        registry.document, now=now, lifetime=admin.lifetime_of(registry.document), force=args.force
    )
    _commit(domain, registry, change, now, changed_store=None)
    written = domain.registry(now)
    role = written.pseudonymizer
    assert role is not None
    folder = KeyFolder(home / trust.PSEUDONYMIZER_KEY.parent)
    for version in retired_versions(folder.read(), role):
        for path in folder.paths_of(version):
            destroy_file(path)
            print(f"  destroyed pseudonymizer key v{version} ({path}: overwritten, unlinked)")
    raised = [
        path.name
        for path in sorted((home / FOLDER).glob("*.json"))
        if TrustedRecord(home, path.stem).save(written, now)
    ]
    if raised:
        print(f"  {len(raised)} record(s) in {home / FOLDER} now hold registry v{written.version}")
    print("  publish it: each process drops the old key when it takes it")
    return 0


def _require_participant(registry: Registry, pid: str) -> None:
    if pid not in registry.participant_ids():
        raise UsageError(
            f"{pid!r} is not a participant of registry v{registry.version}; "
            "`lianfang keys new --as ID --name-zh ... --name-en ...` adds one"
        )


def _without_encryption_key(document: RegistryDocument, now: datetime) -> list[str]:
    """The participants nothing can be sealed to at ``now`` (their only encryption key was revoked)."""
    registry = Registry(document)  # not signed yet: used only to look keys up
    missing = []
    for participant in document.participants:
        try:
            registry.encryption_key(participant.id, at=now)
        except UnknownKeyError:
            missing.append(participant.id)
    return missing


def _commit(
    domain: trust.TrustDomain,
    registry: Registry,
    change: admin.Change,
    now: datetime,
    *,
    changed_store: Keystore | None,
    action: Action = "key_change",
) -> int:
    """Seal the pseudonym key to the new keys, sign by the roots, save the keystore, write the registry;
    record ``action`` in the admin audit chain (a ``registry_change`` names no participant).

    Everything that can fail (opening keys) happens before the first write. The keystore is saved
    before the registry, so the registry never lists a key that no keystore holds.
    """
    loaded = {change.participant: changed_store} if changed_store is not None else {}
    if change.document.pseudonym_key is not None:  # an older domain: the sealed key follows new keys
        pseudonym_key = _open_pseudonym_key(domain, registry, loaded, prefer=(change.participant, ids.PLC))
        document, unsealed = admin.reseal(change.document, pseudonym_key, now=now)
    else:
        document, unsealed = change.document, _without_encryption_key(change.document, now)
    signers = _root_signers(domain)
    if changed_store is not None:
        domain.save_keystore(changed_store, _kdf())
    written = Registry.from_bytes(
        domain.write_registry(document, signers), trusted_roots=domain.trusted_roots(), now=now
    )
    print(f"registry v{written.version} written to {domain.registry_path}")
    print(f"  {change.summary}")
    holders = {k.kid: k.holder for k in domain.trusted_roots().keys}
    record_admin_change(
        domain,
        holders[next(iter(signers[0].signing))],
        action,
        subject=change.participant if action == "key_change" else None,
        object=f"registry.v{written.version}",
        now=now,
    )
    print(f"  {_signed_by(written)}; expires {_when(written.document.expires)}")
    for pid in unsealed:
        print(
            f"warning: {pid} has no usable encryption key: nothing can be sealed to it; "
            f"`lianfang keys new --as {pid}` issues new keys",
            file=sys.stderr,
        )
    return 0


def _open_pseudonym_key(
    domain: trust.TrustDomain,
    registry: Registry,
    loaded: Mapping[str, Keystore],
    *,
    prefer: Iterable[str],
) -> PseudonymKey:
    """Open the current pseudonym key with the first keystore (preferred ones first) it is sealed to."""
    sealed_key = registry.document.pseudonym_key
    sealed_to = {w.to for w in sealed_key.sealed} if sealed_key is not None else set()
    tried: set[str] = set()
    for pid in [*prefer, *registry.participant_ids()]:
        if pid in tried or pid not in sealed_to:
            continue
        tried.add(pid)
        store = loaded.get(pid)
        if store is None:
            if not (domain.home / "keys" / f"{pid}.key").exists():
                continue
            store = domain.keystore(pid)
        try:
            return registry.pseudonym_key(pid, store.encryption)
        except UsageError:
            continue
    raise UsageError(
        f"cannot open the pseudonym key: no keystore in {domain.home / 'keys'} holds a key it is sealed "
        "to, so the new registry could not carry it; nothing was changed"
    )


def _root_signers(domain: trust.TrustDomain) -> list[Keystore]:
    """A threshold of the root keystores in HOME/roots (a demo domain keeps them together)."""
    roots = domain.trusted_roots()
    folder = domain.home / "roots"
    present = [k.holder for k in roots.keys if (folder / f"{k.holder}.key").exists()]
    if len(present) < roots.threshold:
        raise UsageError(
            f"a registry change needs {roots.threshold} root signatures but {folder} holds "
            f"{len(present)} root keystore(s) ({', '.join(present) or 'none'}); nothing was changed"
        )
    stores = domain.root_keystores(present[: roots.threshold])
    listed = {k.kid for k in roots.keys}
    for store in stores:
        ((kid, _),) = store.signing.items()
        if kid not in listed:
            raise UsageError(f"{store.participant} holds key {kid}, which the trust anchor does not list")
    return stores


# --------------------------------------------------------------------------- text


def _signed_by(registry: Registry) -> str:
    roots = registry.document.roots
    report = registry.report
    valid = report.valid if report is not None else frozenset()
    return (
        f"signed by {len(valid)} of {len(roots.keys)} roots ({_names(valid, roots)}), "
        f"{roots.threshold} needed"
    )


def _root_holders(roots: Roots) -> str:
    return f"root keys held by {_holders(roots)}"


def _holders(roots: Roots) -> str:
    return ", ".join(k.holder for k in roots.keys)


def _names(kids: Iterable[str], roots: Roots) -> str:
    """``holder/kid`` for root key ids, in the anchor's order."""
    wanted = set(kids)
    return ", ".join(f"{k.holder}/{k.kid}" for k in roots.keys if k.kid in wanted) or "none"


def _key_counts(keys: Iterable[PublicKey], use: str) -> str:
    counts = Counter(k.status for k in keys if k.use == use)
    return ", ".join(f"{counts[s]} {s}" for s in ("active", "retired", "revoked") if counts[s]) or "none"


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _relative(moment: datetime, now: datetime) -> str:
    seconds = int((moment - now).total_seconds())
    days, rest = divmod(abs(seconds), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = rest // 60
    if days:
        span = f"{days} d {hours} h"
    elif hours:
        span = f"{hours} h {minutes} min"
    else:
        span = f"{minutes} min"
    return f"in {span}" if seconds >= 0 else f"expired {span} ago"


def _width(text: str) -> int:
    """Terminal columns: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))
