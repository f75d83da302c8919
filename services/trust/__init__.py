"""A trust domain on disk: root keys, participants' keystores, the trust anchor and the signed registry.

Layout of a domain folder (``.lianfang/`` by default)::

    root.json          the trust anchor: root public keys and threshold (distributed out of band)
    timestamp.key      the timestamp role's online key (signs freshness statements; mode 0600)
    pseudonymizer/key.json the pseudonymizer's VOPRF key (mode 0600; only the pseudonymizer's
                       machine keeps it; the registry names its public half); key.v<N>.json:
                       the keys `lianfang pseudonymizer rotate` made
    registry.json      the registry, signed by k of n root keys
    keys/<id>.key      each participant's keystore (passphrase-encrypted private keys)
    roots/<holder>.key each root holder's keystore (a demo domain keeps them all in one place)
    roots/retired/     root keystores replaced by `lianfang registry rotate-roots`
    trusted/<name>.json each process's record of the newest registry it trusted (trusted.py)
    passphrase         the demo passphrase (only in a demo domain; real deployments set
                       LIANFANG_PASSPHRASE and keep keystores on each agency's own machine)

:func:`build_document` is pure; the rest reads and writes files.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from schemas.registry import (
    DelegatedRole,
    Participant,
    Policy,
    PseudonymizerRole,
    PublicKey,
    RegistryDocument,
    RoleKey,
    RootKey,
    Roots,
    SealedPseudonymKey,
)
from services.kernel import crypto, oprf
from services.kernel.errors import MalformedError, UsageError, validation_summary
from services.kernel.keystore import KdfParams, Keystore
from services.kernel.pseudonym import PseudonymKey, new_pseudonym_key
from services.kernel.registry import Registry, seal_pseudonym_key, sign_document
from services.pseudonymizer.core import PseudonymizerKey
from services.simulator import district
from services.trust.files import DEFAULT_KDF as DEFAULT_KDF
from services.trust.files import load_keystore, save_keystore

DEFAULT_LIFETIME = timedelta(days=90)
ROOT_PREFIX = "root."
PSEUDONYMIZER_KEY = Path("pseudonymizer") / "key.json"
DEFAULT_PSEUDONYMIZER_URL = "http://127.0.0.1:8090"
TIMESTAMP_STORE = "timestamp"
"""The keystore name (and file stem in HOME) of the timestamp role's online key."""


def public_keys(store: Keystore, *, valid_from: datetime) -> list[PublicKey]:
    """Registry entries for every key in a keystore, active from ``valid_from``."""
    entries = [
        PublicKey(kid=kid, use="sign", alg="ed25519", public=crypto.b64e(raw), valid_from=valid_from)
        for kid, raw in store.public_signing_keys().items()
    ]
    entries += [
        PublicKey(kid=kid, use="encrypt", alg="x25519", public=crypto.b64e(raw), valid_from=valid_from)
        for kid, raw in store.public_encryption_keys().items()
    ]
    return entries


def roots_of(root_stores: Iterable[Keystore], threshold: int) -> Roots:
    keys = []
    for store in root_stores:
        ((kid, raw),) = store.public_signing_keys().items()
        keys.append(
            RootKey(kid=kid, holder=store.participant.removeprefix(ROOT_PREFIX), public=crypto.b64e(raw))
        )
    if not 1 <= threshold <= len(keys):
        raise UsageError(f"a threshold of {threshold} cannot be met by {len(keys)} root keys")
    try:
        return Roots(threshold=threshold, keys=keys)
    except ValidationError as e:
        raise UsageError(f"these root keys cannot form a root set: {validation_summary(e, limit=1)}") from e


def timestamp_role(stores: Iterable[Keystore], threshold: int = 1) -> DelegatedRole:
    """The timestamp role delegated to the signing keys of ``stores`` (k of them must sign)."""
    keys = [
        RoleKey(kid=kid, public=crypto.b64e(raw))
        for store in stores
        for kid, raw in store.public_signing_keys().items()
    ]
    return DelegatedRole(threshold=threshold, keys=keys)


def build_document(
    *,
    version: int,
    now: datetime,
    lifetime: timedelta,
    roots: Roots,
    participants: Mapping[str, tuple[str, str, list[str], list[PublicKey]]],
    policy: Policy,
    pseudonym_key: PseudonymKey | None = None,
    pseudonymizer: PseudonymizerRole | None = None,
    timestamp: DelegatedRole | None = None,
) -> RegistryDocument:
    """A registry document; ``participants`` maps id to (中文名, English name, may publish, keys).

    It names ``pseudonymizer``, or else seals ``pseudonym_key`` to every participant (older domains).
    """
    entries = [
        Participant(id=pid, name_zh=zh, name_en=en, may_publish=pub, keys=keys)
        for pid, (zh, en, pub, keys) in participants.items()
    ]
    doc = RegistryDocument(
        version=version,
        issued=now,
        expires=now + lifetime,
        roots=roots,
        participants=entries,
        policy=policy,
        pseudonym_key=None
        if pseudonym_key is None
        else SealedPseudonymKey(version=pseudonym_key.version, sealed=[]),
        pseudonymizer=pseudonymizer,
        timestamp=timestamp,
    )
    return doc if pseudonym_key is None else reseal_pseudonym_key(doc, pseudonym_key, now)


def reseal_pseudonym_key(doc: RegistryDocument, key: PseudonymKey, now: datetime) -> RegistryDocument:
    """Seal the pseudonym key to every participant's current encryption key."""
    registry = Registry(doc)  # unsigned yet: used only to look keys up
    targets = {p.id: registry.encryption_key(p.id, at=now) for p in doc.participants}
    sealed = SealedPseudonymKey(
        version=key.version, sealed=seal_pseudonym_key(key.secret, key.version, targets)
    )
    return doc.model_copy(update={"pseudonym_key": sealed})


@dataclass
class TrustDomain:
    """A domain folder opened with its passphrase."""

    home: Path
    passphrase: str = field(repr=False)

    @property
    def registry_path(self) -> Path:
        return self.home / "registry.json"

    @property
    def anchor_path(self) -> Path:
        return self.home / "root.json"

    def trusted_roots(self) -> Roots:
        try:
            return Roots.model_validate_json(self.anchor_path.read_bytes())
        except FileNotFoundError:
            raise UsageError(f"no trust anchor at {self.anchor_path}; run `lianfang init` first") from None
        except ValidationError as e:
            raise MalformedError(f"{self.anchor_path} is not a valid trust anchor") from e

    def registry(self, now: datetime) -> Registry:
        try:
            data = self.registry_path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"no registry at {self.registry_path}; run `lianfang init` first") from None
        return Registry.from_bytes(data, trusted_roots=self.trusted_roots(), now=now)

    def keystore(self, participant: str) -> Keystore:
        path = self.home / "keys" / f"{participant}.key"
        if not path.exists():
            raise UsageError(f"no keystore for {participant!r} in {self.home / 'keys'}")
        return load_keystore(path, self.passphrase)

    @property
    def timestamp_key_path(self) -> Path:
        return self.home / f"{TIMESTAMP_STORE}.key"

    def timestamp_keystore(self) -> Keystore:
        """The timestamp role's online key (only the timestamp service opens it)."""
        if not self.timestamp_key_path.exists():
            raise UsageError(
                f"no timestamp key at {self.timestamp_key_path}; the timestamp service signs with it "
                "(`lianfang init` creates one)"
            )
        return load_keystore(self.timestamp_key_path, self.passphrase)

    def root_keystores(self, holders: Iterable[str] | None = None) -> list[Keystore]:
        folder = self.home / "roots"
        wanted = set(holders) if holders is not None else None
        stores = []
        for path in sorted(folder.glob("*.key")):
            if wanted is None or path.stem in wanted:
                stores.append(load_keystore(path, self.passphrase))
        if wanted is not None and len(stores) != len(wanted):
            raise UsageError(
                f"root keystores missing for {sorted(wanted - {s.participant[5:] for s in stores})}"
            )
        return stores

    def save_keystore(self, store: Keystore, kdf: KdfParams) -> None:
        folder = self.home / ("roots" if store.participant.startswith(ROOT_PREFIX) else "keys")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = store.participant.removeprefix(ROOT_PREFIX)
        save_keystore(store, folder / f"{name}.key", self.passphrase, kdf=kdf)

    def write_registry(self, doc: RegistryDocument, signers: Iterable[Keystore]) -> bytes:
        keys = {}
        for store in signers:
            ((kid, key),) = store.signing.items()
            keys[kid] = key
        data = sign_document(doc, keys)
        _write_atomic(self.registry_path, data)
        return data


def write_file(path: Path, data: bytes) -> None:
    """Replace a registry file atomically: readers see the old or the new file, never half of one."""
    _write_atomic(path, data)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def passphrase_for(home: Path) -> str:
    """``LIANFANG_PASSPHRASE``, else the demo domain's passphrase file."""
    if env := os.environ.get("LIANFANG_PASSPHRASE"):
        return env
    path = home / "passphrase"
    if path.exists():
        return path.read_text().strip()
    raise UsageError(f"no passphrase: set LIANFANG_PASSPHRASE (or run `lianfang init` for a demo in {home})")


def open_domain(home: Path) -> TrustDomain:
    return TrustDomain(home=home, passphrase=passphrase_for(home))


def create_pseudonymizer_key(home: Path, version: int = 1, *, name: str | None = None) -> PseudonymizerKey:
    """A new random pseudonymizer key in ``home/pseudonymizer/key.json``, or the file ``name`` of that
    folder (a rotation's ``key.v<N>.json``); mode 0600, never replaced."""
    path = home / PSEUDONYMIZER_KEY if name is None else home / PSEUDONYMIZER_KEY.parent / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = PseudonymizerKey.new_json(version, oprf.generate_key_pair().secret)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return PseudonymizerKey.from_json(data)


def init_domain(
    home: Path,
    *,
    now: datetime,
    kdf: KdfParams = DEFAULT_KDF,
    lifetime: timedelta = DEFAULT_LIFETIME,
    participant_ids: Iterable[str] | None = None,
    threshold: int = 2,
    sign_with: int | None = None,
    force: bool = False,
    pseudonymizer_url: str | None = DEFAULT_PSEUDONYMIZER_URL,
) -> TrustDomain:
    """Create a demo trust domain: 3 root keys (2 of 3), keys for every participant, a signed registry.

    The registry is signed by ``sign_with`` roots (default: the threshold), to show k-of-n at work. It
    names the pseudonymizer served at ``pseudonymizer_url``, whose key is generated into
    ``HOME/pseudonymizer/key.json``; ``None`` makes an older kind of domain instead, whose registry
    seals a pseudonym key to every participant.
    """
    if (home / "registry.json").exists() and not force:
        raise UsageError(f"{home} already holds a trust domain; pass --force to replace it")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A new domain is a new trust anchor: the processes' records of the old one's registries go.
    shutil.rmtree(home / "trusted", ignore_errors=True)
    (home / PSEUDONYMIZER_KEY).unlink(missing_ok=True)
    passphrase = os.environ.get("LIANFANG_PASSPHRASE", "")
    if not passphrase:
        passphrase = secrets.token_urlsafe(24)
        _write_atomic(home / "passphrase", (passphrase + "\n").encode(), mode=0o600)
    domain = TrustDomain(home=home, passphrase=passphrase)

    root_stores = []
    for holder in district.ROOT_HOLDERS:
        store = Keystore(ROOT_PREFIX + holder)
        store.add_signing_key()
        root_stores.append(store)
        domain.save_keystore(store, kdf)
    roots = roots_of(root_stores, threshold)
    _write_atomic(domain.anchor_path, roots.model_dump_json(indent=2).encode() + b"\n")
    stamper = Keystore(TIMESTAMP_STORE)
    stamper.add_signing_key()
    save_keystore(stamper, domain.timestamp_key_path, passphrase, kdf=kdf)

    wanted = set(participant_ids) if participant_ids is not None else None
    entries: dict[str, tuple[str, str, list[str], list[PublicKey]]] = {}
    for pid, zh, en in district.participants():
        if wanted is not None and pid not in wanted:
            continue
        store = Keystore.generate(pid)
        domain.save_keystore(store, kdf)
        entries[pid] = (zh, en, district.may_publish(pid), public_keys(store, valid_from=now))
    doc = build_document(
        version=1,
        now=now,
        lifetime=lifetime,
        roots=roots,
        participants=entries,
        policy=district.default_policy(),
        pseudonym_key=new_pseudonym_key(1) if pseudonymizer_url is None else None,
        pseudonymizer=(
            None if pseudonymizer_url is None else create_pseudonymizer_key(home).role(pseudonymizer_url)
        ),
        timestamp=timestamp_role([stamper]),
    )
    domain.write_registry(doc, root_stores[: sign_with or threshold])
    return domain
