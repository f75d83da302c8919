"""The fuzz targets and their one contract: no input, however malformed, stops a processor.

Each target takes bytes and feeds them to the code a processor runs on a record or a file it was given.
It may end cleanly or raise a :class:`~services.kernel.errors.LianfangError` (the project's own, with a
reason code where the input is to blame); any other exception escapes as a finding. The targets are
built once per process (a demo trust domain at a fixed clock) and then called for each input.

- ``router_raw``: raw bytes as a record's value, as the router's :func:`~services.router.core.decide`
  gets them. Almost all fail before the signature; this target fuzzes the size check, the DSSE frame,
  base64, strict JSON and the header schema.
- ``router_signed``: the bytes are an envelope *body* (header line, LF, sections), signed with a real
  registered key and framed, so the checks after the signature see fuzzed input too: sender, key,
  permission, the sections' schema and the policy; what passes is then opened by each recipient
  (:func:`~services.kernel.envelope.open_sections`, as the hub and the SDK do).
- ``importer``: the first byte picks an import format, the second an encoding, the rest is the
  export file, read and imported in a dry run (reader, mapping of each row, ledger).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from schemas.envelope import ENVELOPE_PAYLOAD_TYPE, PAYLOAD_TYPES
from services.importers.engine import DryRun, run_import
from services.importers.ledger import Ledger
from services.importers.reader import ENCODINGS, ExportFile
from services.importers.spec import format_names, load_format
from services.kernel import crypto, envelope, jsonx
from services.kernel.envelope import ReplayWindow
from services.kernel.errors import REASON_CODES, LianfangError, UntrustedInputError
from services.kernel.topics import partition_for
from services.router.core import decide
from tests.kit import CONTENT, NOW, DemoDomain, header

OneInput = Callable[[bytes], None]
_SUBJECT = header().subject.encode()
PARTITIONS = 12  # as deploy/topics.toml gives the events topic


@dataclass(frozen=True)
class Target:
    """A named fuzz target: ``one`` runs a single input; ``seeds`` start the corpus; ``tokens`` are
    words of the input's language (JSON keys, column names) the fuzzer splices in."""

    name: str
    one: OneInput
    seeds: tuple[bytes, ...]
    tokens: tuple[bytes, ...] = ()


def keeps_contract(error: BaseException) -> bool:
    """True for the errors a target may raise: the project's own, with a reason code when the input
    is to blame."""
    if isinstance(error, UntrustedInputError):
        return error.reason in REASON_CODES
    return isinstance(error, LianfangError)


def run_one(target: Target, data: bytes) -> None:
    """Run one input; swallow what the contract allows, let anything else propagate."""
    try:
        target.one(data)
    except Exception as e:
        if keeps_contract(e):
            return
        raise


# --------------------------------------------------------------------------- the envelope


@dataclass
class _Envelopes:
    domain: DemoDomain

    def raw(self, data: bytes) -> None:
        decide(
            data,
            _SUBJECT,
            partition=partition_for(_SUBJECT, PARTITIONS),
            partitions=PARTITIONS,
            registry=self.domain.registry,
            now=NOW,
            replay=ReplayWindow(),
        )

    def signed(self, body: bytes) -> None:
        sender = _claimed_sender(body, self.domain.registry.participant_ids())
        keys = self.domain.keys(sender)
        kid = sorted(keys.signing)[-1]
        # The payload type of the version the header claims, so v2 bodies reach v2's checks too.
        payload_type = PAYLOAD_TYPES[2] if _claimed_version(body) == 2 else ENVELOPE_PAYLOAD_TYPE
        signature = crypto.sign(keys.signing_key(kid), payload_type, body)
        value = jsonx.compact_json(
            {
                "payloadType": payload_type,
                "payload": crypto.b64e(body),
                "signatures": [{"keyid": kid, "sig": crypto.b64e(signature)}],
            }
        )
        key = _claimed(body, "subject").encode("utf-8", "surrogatepass")
        # On the partition its key maps to, so that every later check sees the fuzzed body.
        route = decide(
            value,
            key,
            partition=partition_for(key, PARTITIONS),
            partitions=PARTITIONS,
            registry=self.domain.registry,
            now=NOW,
            replay=ReplayWindow(),
        )
        verified = envelope.verify(value, registry=self.domain.registry, now=NOW)
        for participant in route.recipients:
            if participant in self.domain.registry.participant_ids():
                try:
                    envelope.open_sections(verified, self.domain.keys(participant))
                except UntrustedInputError as e:
                    if not keeps_contract(e):
                        raise


def _claimed(body: bytes, field: str) -> str:
    """A field of the header line, if it parses as a JSON object holding a string there."""
    try:
        data = json.loads(body.partition(b"\n")[0])
    except ValueError:
        return ""
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""


def _claimed_version(body: bytes) -> object:
    try:
        data = json.loads(body.partition(b"\n")[0])
    except ValueError:
        return None
    return data.get("v") if isinstance(data, dict) else None


def _claimed_sender(body: bytes, participants: list[str]) -> str:
    """The participant the header names as its source when it is registered, else police: the signer
    a sender who holds a valid key would use, so the fuzzed header reaches the checks after the
    signature."""
    source = _claimed(body, "source").removeprefix("urn:lianfang:")
    return source if source in participants else "police"


def _envelope_seeds(domain: DemoDomain) -> tuple[bytes, ...]:
    """Bodies of valid envelopes, v1 and v2: a lead, a minor's, a routine one, one dated a few minutes
    ahead."""
    bodies = []
    cases: list[dict[str, Any]] = [
        {},
        {"minor": True},
        {"urgency": "routine"},
        {"time": (NOW + timedelta(minutes=3)).isoformat()},
    ]
    for fields in [*cases, *({**c, "v": 2} for c in cases)]:
        h = header(**fields)
        value = envelope.seal(h, CONTENT, registry=domain.registry, signer=domain.keys("police")).value
        bodies.append(crypto.b64d(json.loads(value)["payload"], what="payload"))
    return tuple(bodies)


# --------------------------------------------------------------------------- the importers


@dataclass
class _Importer:
    folder: Path
    formats: tuple[str, ...] = tuple(format_names())

    def one(self, data: bytes) -> None:
        formats = self.formats
        if len(data) < 2:
            return
        fmt = formats[data[0] % len(formats)]
        encoding = ENCODINGS[data[1] % len(ENCODINGS)]
        spec = load_format(fmt)
        path = self.folder / f"export.{spec.file}"
        path.write_bytes(data[2:])
        participant = sorted(spec.participants)[0] if spec.participants else "police"
        with ExportFile.open(path, spec, encoding) as export:
            run_import(
                export,
                participant=participant,
                publisher=DryRun(),
                ledger=Ledger(None, participant=participant),
                now=NOW,
                report=lambda _line: None,
            )


def _importer_seeds() -> tuple[bytes, ...]:
    from tests import samples

    folder = Path(samples.__file__).resolve().parent
    formats = format_names()
    seeds = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".csv", ".jsonl"):
            continue
        fmt = next(f for f in formats if path.name.startswith(f))
        encoding = "gb18030" if "gb18030" in path.name else "utf-8"
        head = bytes([formats.index(fmt), ENCODINGS.index(encoding)])
        seeds.append(head + path.read_bytes()[:4096])
    return tuple(seeds)


# --------------------------------------------------------------------------- building them


def _json_tokens(documents: list[Any]) -> tuple[bytes, ...]:
    """The keys and short string values of JSON documents, quoted as they appear on the wire."""
    out: list[bytes] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                out.append(json.dumps(key).encode())
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str) and len(node) <= 40:
            out.append(json.dumps(node).encode())

    for document in documents:
        walk(document)
    return tuple(dict.fromkeys(out))


def scratch_folder() -> Path:
    """A new folder for :func:`build`, in memory where the system offers it (the importer target
    writes a file per input). The caller removes it."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="lianfang-fuzz-", dir=shm if shm.is_dir() else None))


def build(folder: Path, names: tuple[str, ...] | None = None) -> dict[str, Target]:
    """The named targets (all when ``None``), over a demo domain made in ``folder``."""
    wanted = set(TARGETS if names is None else names)
    unknown = wanted - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown fuzz targets {sorted(unknown)}; the targets are {', '.join(TARGETS)}")
    out: dict[str, Target] = {}
    if wanted & {"router_raw", "router_signed"}:
        domain = DemoDomain.create(folder / ".lianfang")
        envelopes = _Envelopes(domain)
        bodies = _envelope_seeds(domain)
        value = envelope.seal(header(), CONTENT, registry=domain.registry, signer=domain.keys("police")).value
        tokens = _json_tokens([json.loads(value)])
        for body in bodies:
            head, _, sections = body.partition(b"\n")
            tokens += _json_tokens([json.loads(head), json.loads(sections)])
        tokens = tuple(dict.fromkeys(tokens))
        out["router_raw"] = Target("router_raw", envelopes.raw, (value, *bodies), tokens)
        out["router_signed"] = Target("router_signed", envelopes.signed, bodies, tokens)
    if "importer" in wanted:
        imports = folder / "imports"
        imports.mkdir()
        columns = {c for name in format_names() for c in load_format(name).columns()}
        words = tuple(c.encode() for c in sorted(columns)) + tuple(
            c.encode("gb18030") for c in sorted(columns) if not c.isascii()
        )
        out["importer"] = Target("importer", _Importer(imports).one, _importer_seeds(), words)
    return {name: out[name] for name in TARGETS if name in wanted}


TARGETS = ("router_raw", "router_signed", "importer")
