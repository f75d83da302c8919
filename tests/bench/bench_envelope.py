"""Seal+sign and verify+open throughput of a 1 KiB lead for 1, 4 and 8 recipients, beside the raw primitives.

The envelope cases go through :mod:`services.kernel.envelope` exactly as a producer and a consumer do:
``seal`` (both sections sealed, their data keys wrapped for every recipient, then Ed25519 over the body)
and ``verify`` followed by ``open_sections`` as one recipient. "N recipients" means that each of the two
sections (triage, about 200 B of JSON; details, 1 KiB of JSON narrative and identity text with Chinese
characters) is sealed to exactly N participants. Envelope v2 (the cases without a version) gives each
recipient one stanza wrapping both data keys under a key derived from a pair key cached per epoch;
the "v1" cases, for comparison, wrap each data key with HPKE per recipient, 2N HPKE seals a seal and 2
HPKE opens an open. Under the cases at N=4 a note names the top costs of one profiled run.

The default district policy cannot give that: every lead rule sends the triage section to the hub as
well as to the readers of the details, so triage always has one recipient more than details. The
benchmark therefore keeps the demo domain's participants and keys and swaps in a small policy of three
rules (one category each) with exactly 1, 4 and 8 readers of both sections; that registry is built with
``Registry(document)``, which skips the root signatures (they are checked once, when a registry is
loaded, never per event). The default policy's counts for some typical leads are printed in a note.

Baselines, measured in the same run with the calls the envelope makes: Ed25519 sign (OpenSSL) and
verify (libsodium, :func:`services.kernel.crypto.ed25519_verifies`) over a 2.5 KiB message (about a
sealed record), and OpenSSL's verify of the same for comparison, HPKE base-mode seal and open of a
32-byte data key (``crypto.HPKE_SUITE``, X25519), one X25519 Diffie-Hellman, and AES-256-GCM
encryption of 1 KiB.
"""

from __future__ import annotations

import base64
import cProfile
import datetime as dt
import os
import pstats
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.envelope import ENVELOPE_PAYLOAD_TYPE, SECTION_NAMES, EnvelopeHeader, SectionName
from schemas.registry import Match, Policy, Rule
from services import trust
from services.kernel import crypto, envelope, jsonx, policy
from services.kernel.keystore import KdfParams, Keystore
from services.kernel.registry import Registry
from tests.bench.harness import BenchContext, BenchError, Result, per_second

EVENTS_FULL = 800  # 2,000 would take ~2 min on 2 CPUs: seal at N=8 alone is ~3.4 ms an event
EVENTS_QUICK = 200
PRIMITIVE_OPS_FULL = 1_000
PRIMITIVE_OPS_QUICK = 200
AES_OPS_FACTOR = 10  # AES-GCM of 1 KiB takes microseconds: more of them per run for a readable timing
RECIPIENT_COUNTS = (1, 4, 8)
V1_RECIPIENT_COUNTS = (4,)  # envelope v1, still read and still sealed by old senders: the comparison
CURRENT_VERSION = 2
VERIFY_ONLY_AT = 4
DETAILS_BYTES = 1024
TRIAGE_BYTES = 200
SIGNED_MESSAGE_BYTES = 2560
EVENT_TYPE = "lead.reported"
SENDER = "police"
READER = "womens_federation"  # opens every event: a recipient under each of the three rules
# The readers of the benchmark's rules, READER first; N recipients are the first N.
READERS = (
    READER,
    "police",
    "procuratorate",
    "civil_affairs",
    "health",
    "education",
    "court",
    "justice",
)
CATEGORY_FOR = {1: "other", 4: "domestic_violence", 8: "trafficking"}
TOWN = "renhe"
US = 1_000_000

# The leads whose recipients the default district policy is shown for.
DEFAULT_POLICY_SAMPLES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("other", {"category": "other"}),
    ("domestic_violence, town", {"category": "domestic_violence", "town": TOWN}),
    ("sexual_assault, minor", {"category": "sexual_assault", "minor": True}),
    (
        "sexual_assault, minor, school-related",
        {"category": "sexual_assault", "minor": True, "school_related": True},
    ),
)


# --------------------------------------------------------------------------- the workload


def _pad(text: str, wanted: int, build: Callable[[str], bytes]) -> str:
    """Lengthen ``text`` until ``build(text)`` is exactly ``wanted`` bytes (3-byte 字 first, then ASCII)."""
    filler = "受害人陈述家中多次发生殴打并有邻居证实"
    i = 0
    while wanted - len(build(text)) >= 3:
        text += filler[i % len(filler)]
        i += 1
    text += "." * (wanted - len(build(text)))
    if len(build(text)) != wanted:
        raise BenchError(f"could not pad a section to {wanted} bytes")
    return text


def _details() -> dict[str, Any]:
    """1 KiB (compact JSON, as sealed) of narrative and identity: the personal data of a lead."""
    base: dict[str, Any] = {
        "victim": {
            "name": "王秀兰",
            "id_number": "110113198803150026",
            "phone": "13800138000",
            "birth_date": "1988-03-15",
            "address": "北京市顺义区仁和镇某小区3号楼2单元501室",
        },
        "suspect": {"name": "李建国", "relation": "配偶", "phone": "13900139000"},
        "reporter": {"name": "张敏", "role": "社区网格员", "phone": "13700137000"},
        "narrative": "2024年5月12日晚, 受害人拨打12338热线称其丈夫酒后对其实施殴打, 致面部及手臂多处淤伤。",
    }

    def build(narrative: str) -> bytes:
        return jsonx.compact_json({**base, "narrative": narrative})

    return {**base, "narrative": _pad(base["narrative"], DETAILS_BYTES, build)}


def _triage() -> dict[str, Any]:
    """About 200 bytes: what the hub and a desk officer see first."""
    base: dict[str, Any] = {"risk": "high", "channel": "hotline_12338", "repeat": True, "summary": "家暴"}

    def build(summary: str) -> bytes:
        return jsonx.compact_json({**base, "summary": summary})

    return {**base, "summary": _pad(base["summary"], TRIAGE_BYTES, build)}


def _bench_policy(version: int) -> Policy:
    rules = [
        Rule(
            name=f"bench_{n}_recipient{'s' if n > 1 else ''}",
            description=f"benchmark: both sections to exactly {n} participant(s)",
            when=Match(type=[EVENT_TYPE], category=[CATEGORY_FOR[n]]),
            triage=list(READERS[:n]),
            details=list(READERS[:n]),
        )
        for n in RECIPIENT_COUNTS
    ]
    return Policy(version=version, rules=rules)


def _subject() -> str:
    """A pseudonym-shaped subject (``p1.`` and 43 base64url characters of 32 bytes)."""
    return "p1." + base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")


def _header(registry: Registry, at: dt.datetime, version: int = 2, **fields: Any) -> EnvelopeHeader:
    return EnvelopeHeader.model_validate(
        {
            "v": version,
            "specversion": "1.0",
            "id": envelope.new_event_id(int(at.timestamp() * 1000)),
            "source": f"urn:lianfang:{SENDER}",
            "type": EVENT_TYPE,
            "time": at,
            "subject": _subject(),
            "schema": f"{EVENT_TYPE}/1",
            "urgency": "urgent",
            "policy": registry.policy_version,
            "registry": registry.version,
            **fields,
        }
    )


@dataclass
class Domain:
    registry: Registry  # the benchmark policy, same participants and keys as the demo domain
    default_registry: Registry  # the demo domain's own, root-signed
    sender: Keystore
    reader: Keystore
    sealed_at: dt.datetime
    verified_at: dt.datetime


def _domain(home: Path) -> Domain:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    domain = trust.init_domain(home, now=now, kdf=KdfParams.for_tests())
    default_registry = domain.registry(now)
    doc = default_registry.document
    bench_doc = doc.model_copy(update={"policy": _bench_policy(doc.policy.version)})
    return Domain(
        registry=Registry(bench_doc),
        default_registry=default_registry,
        sender=domain.keystore(SENDER),
        reader=domain.keystore(READER),
        sealed_at=now + dt.timedelta(seconds=1),
        verified_at=now + dt.timedelta(seconds=2),
    )


def _default_policy_note(d: Domain) -> str:
    parts = []
    for label, fields in DEFAULT_POLICY_SAMPLES:
        header = _header(d.default_registry, d.sealed_at, **fields)
        got = policy.recipients(d.default_registry.document.policy, header)
        parts.append(f"{label}: triage {len(got['triage'])}, details {len(got['details'])}")
    return (
        "default district policy, recipients per section: "
        + "; ".join(parts)
        + ". Every lead rule adds the hub to triage only, so triage = details + 1 and no lead gets the "
        "same N in both sections: the benchmark uses its own 3-rule policy (category other -> 1, "
        "domestic_violence -> 4, trafficking -> 8 readers of both sections) over the demo domain's "
        "participants and keys, as Registry(document) without root signatures"
    )


# --------------------------------------------------------------------------- envelope cases


def _bench_envelopes(ctx: BenchContext, d: Domain, events: int) -> tuple[list[Result], dict[str, float]]:
    content: dict[SectionName, dict[str, Any]] = {"triage": _triage(), "details": _details()}
    sizes: list[str] = []
    per_event_us: dict[str, float] = {}
    seal_results: list[Result] = []
    open_results: list[Result] = []
    verify_results: list[Result] = []
    plan = [(2, n) for n in RECIPIENT_COUNTS] + [(1, n) for n in V1_RECIPIENT_COUNTS]
    for version, n in plan:
        v = "" if version == CURRENT_VERSION else f"v{version} "
        headers = [
            _header(d.registry, d.sealed_at, version, category=CATEGORY_FOR[n], town=TOWN)
            for _ in range(events)
        ]
        wanted = policy.recipients(d.registry.document.policy, headers[0])
        if any(len(wanted[name]) != n for name in SECTION_NAMES):
            raise BenchError(f"the benchmark policy gives {wanted} for {CATEGORY_FOR[n]}, not {n} each")

        records: list[bytes] = []

        def seal_all(headers: list[EnvelopeHeader] = headers, records: list[bytes] = records) -> None:
            records.clear()
            for header in headers:
                records.append(envelope.seal(header, content, registry=d.registry, signer=d.sender).value)

        case = f"{v}seal+sign ({n} recipient{'s' if n > 1 else ''})"
        seconds = ctx.measure(case, seal_all)
        seal_results.append(ctx.result(case, "events/s", per_second(seconds, events)))
        per_event_us[f"{v}seal{n}"] = US / seal_results[-1].median

        # Check once, untimed, that what was sealed verifies, names N per section and opens back.
        opened = envelope.verify_and_open(
            records[0], registry=d.registry, now=d.verified_at, keystore=d.reader
        )
        if {k: len(v) for k, v in opened.verified.recipients().items()} != dict.fromkeys(SECTION_NAMES, n):
            raise BenchError(f"{case}: sealed to {opened.verified.recipients()}")
        if opened.sections != content:
            raise BenchError(f"{case}: the opened sections differ from what was sealed")
        lengths = sorted(len(r) for r in records)
        sizes.append(f"{v}{n}: {lengths[len(lengths) // 2]:,} B")

        def verify_open_all(records: list[bytes] = records) -> None:
            for value in records:
                verified = envelope.verify(value, registry=d.registry, now=d.verified_at)
                envelope.open_sections(verified, d.reader)

        case = f"{v}verify+open ({n} recipient{'s' if n > 1 else ''})"
        seconds = ctx.measure(case, verify_open_all)
        open_results.append(ctx.result(case, "events/s", per_second(seconds, events)))
        per_event_us[f"{v}open{n}"] = US / open_results[-1].median
        if n == VERIFY_ONLY_AT:
            ctx.note(
                f"top costs, {v or f'v{version} '}seal+sign ({n} recipients): " + _top_costs(seal_all, events)
            )
            ctx.note(
                f"top costs, {v or f'v{version} '}verify+open ({n} recipients): "
                + _top_costs(verify_open_all, events)
            )

        if n == VERIFY_ONLY_AT and version == CURRENT_VERSION:

            def verify_all(records: list[bytes] = records) -> None:
                for value in records:
                    envelope.verify(value, registry=d.registry, now=d.verified_at)

            case = f"verify only ({n} recipients)"
            seconds = ctx.measure(case, verify_all)
            verify_results.append(ctx.result(case, "events/s", per_second(seconds, events)))
            per_event_us["verify"] = US / verify_results[-1].median

    detail_len = len(jsonx.compact_json(content["details"]))
    triage_len = len(jsonx.compact_json(content["triage"]))
    ctx.note(
        f"{events:,} events per run, {ctx.warmup} warm-up + {ctx.runs} timed runs; a lead.reported with "
        f"details {detail_len:,} B and triage {triage_len} B of compact JSON, both sealed; headers (each a "
        f"new UUIDv7) built before the timing; verify+open = envelope.verify then open_sections as "
        f"{READER}, over the records of the last seal run. Cases without a version are envelope "
        f"v{CURRENT_VERSION} (what build_header writes): its sender's epoch key and the reader's pair key "
        "are agreed once and then cached, as in a running service; 'v1' cases seal and read v1"
    )
    ctx.note("sealed record size (median) by recipients per section: " + ", ".join(sizes))
    return [*seal_results, *open_results, *verify_results], per_event_us


def _top_costs(fn: Callable[[], None], events: int, top: int = 6) -> str:
    """One profiled run of ``fn``: the functions with the most time of their own, in µs per event."""
    profile = cProfile.Profile()
    profile.enable()
    fn()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted(((tt, f) for f, (_, _, tt, _, _) in stats.items()), reverse=True)[:top]
    total = sum(tt for _, (_, _, tt, _, _) in stats.items())

    def label(f: tuple[str, int, str]) -> str:
        path, _, name = f
        return name if path == "~" else f"{Path(path).stem}.{name}"

    parts = [f"{label(f)} {US * tt / events:.0f} µs" for tt, f in rows]
    return (
        ", ".join(parts) + f" (of {US * total / events:.0f} µs an event under cProfile, which slows Python "
        "calls more than native ones)"
    )


# --------------------------------------------------------------------------- baselines


def _bench_primitives(ctx: BenchContext, d: Domain, ops: int) -> tuple[list[Result], dict[str, float]]:
    results: list[Result] = []
    per_op_us: dict[str, float] = {}

    def rate(key: str, case: str, fn: Callable[[], None], count: int, notes: str) -> None:
        seconds = ctx.measure(case, fn)
        result = ctx.result(case, "ops/s", per_second(seconds, count), baseline=True, notes=notes)
        results.append(result)
        per_op_us[key] = US / result.median

    # Ed25519 over DSSE's PAE of a 2.5 KiB body, as crypto.sign / crypto.verify_signature do.
    (kid, signing_key) = sorted(d.sender.signing.items())[-1]
    public_raw = d.sender.public_signing_keys()[kid]
    message = crypto.pae(ENVELOPE_PAYLOAD_TYPE, os.urandom(SIGNED_MESSAGE_BYTES))
    signature = signing_key.sign(message)

    def sign_all() -> None:
        for _ in range(ops):
            signing_key.sign(message)

    def verify_all() -> None:
        for _ in range(ops):
            crypto.ed25519_verifies(public_raw, signature, message)

    def openssl_verify_all() -> None:
        for _ in range(ops):
            Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)

    rate("sign", "Ed25519 sign", sign_all, ops, f"PAE of {SIGNED_MESSAGE_BYTES:,} B ({len(message):,} B)")
    rate(
        "verify",
        "Ed25519 verify",
        verify_all,
        ops,
        f"PAE of {SIGNED_MESSAGE_BYTES:,} B, with libsodium as crypto.ed25519_verifies checks every "
        "signature",
    )
    rate(
        "openssl_verify",
        "Ed25519 verify, OpenSSL",
        openssl_verify_all,
        ops,
        f"PAE of {SIGNED_MESSAGE_BYTES:,} B, the public key loaded from raw bytes each time: how the "
        "envelope verified before it used libsodium",
    )

    # HPKE base mode, DHKEM(X25519), HKDF-SHA256, AES-256-GCM: wrap and unwrap a data key.
    ((ekid, private),) = d.reader.encryption.items()
    public = private.public_key()
    data_key = crypto.new_data_key()
    info = envelope.wrap_info(envelope.new_event_id(), "details", READER, ekid)
    sealed = crypto.HPKE_SUITE.encrypt(data_key, public, info=info)

    def hpke_seal_all() -> None:
        for _ in range(ops):
            crypto.HPKE_SUITE.encrypt(data_key, public, info=info)

    def hpke_open_all() -> None:
        for _ in range(ops):
            crypto.HPKE_SUITE.decrypt(sealed, private, info=info)

    rate("hpke_seal", "HPKE seal", hpke_seal_all, ops, "32-byte data key to an X25519 key")
    rate("hpke_open", "HPKE open", hpke_open_all, ops, "32-byte data key with an X25519 key")

    # One X25519 Diffie-Hellman: the floor of any per-recipient key agreement done per event.
    other = X25519PrivateKey.generate()

    def dh_all() -> None:
        for _ in range(ops):
            other.exchange(public)

    rate("dh", "X25519 DH", dh_all, ops, "one exchange with a loaded public key")

    # AES-256-GCM of 1 KiB, a fresh nonce each time, as crypto.aead_seal does.
    aes_ops = ops * AES_OPS_FACTOR
    plaintext = os.urandom(1024)
    aad = envelope.section_aad("details", b"{}")

    def aes_all() -> None:
        for _ in range(aes_ops):
            AESGCM(data_key).encrypt(os.urandom(crypto.NONCE_BYTES), plaintext, aad)

    rate("aes", "AES-256-GCM encrypt 1 KiB", aes_all, aes_ops, "AESGCM(key) and a random nonce per call")
    return results, per_op_us


# --------------------------------------------------------------------------- where the time goes


def _breakdown(ctx: BenchContext, ev: dict[str, float], prim: dict[str, float]) -> None:
    """Notes comparing the envelope figures with what their primitives alone would cost."""

    def share(part: float, whole: float) -> str:
        return f"{part:.0f} µs ({100 * part / whole:.0f} %)"

    hpke_s, hpke_o = prim["hpke_seal"], prim["hpke_open"]
    ctx.note(
        f"per operation: Ed25519 sign {prim['sign']:.0f} µs, verify {prim['verify']:.0f} µs (OpenSSL's "
        f"{prim['openssl_verify']:.0f} µs); HPKE seal "
        f"{hpke_s:.0f} µs, open {hpke_o:.0f} µs; X25519 DH {prim['dh']:.0f} µs; AES-GCM 1 KiB "
        f"{prim['aes']:.1f} µs"
    )
    parts = []
    for n in RECIPIENT_COUNTS:
        total = ev[f"seal{n}"]
        other = total - prim["sign"] - 2 * prim["aes"]
        parts.append(f"N={n}: {total:.0f} µs; sign {share(prim['sign'], total)}, rest {share(other, total)}")
    ctx.note(
        "v2 seal+sign per event, with the primitives at their baseline rates (the rest: per recipient an "
        "HKDF-Expand and an AES-GCM wrap of the data keys, then JSON, base64, registry look-ups): "
        + "; ".join(parts)
    )
    first, last = RECIPIENT_COUNTS[0], RECIPIENT_COUNTS[-1]
    step = (ev[f"seal{last}"] - ev[f"seal{first}"]) / (last - first)
    ctx.note(
        f"v2: each recipient more adds {step:.0f} µs to a seal (one stanza: HKDF-Expand, AES-GCM of the "
        f"data keys, a registry key look-up); v1 paid 2 HPKE seals ({2 * hpke_s:.0f} µs at the baseline "
        f"rate) and more. v2's Diffie-Hellman ({prim['dh']:.0f} µs) is paid once per recipient key and "
        "epoch (10 minutes), not per event"
    )
    for v in ("", "v1 "):
        n = VERIFY_ONLY_AT
        seal, opened = ev[f"{v}seal{n}"], ev[f"{v}open{n}"]
        ctx.note(
            f"{v or 'v2 '}at N={n}: seal+sign {seal:.0f} µs, verify+open {opened:.0f} µs, of which the "
            f"Ed25519 verify {share(prim['verify'], opened)}"
            + (f" and 2 HPKE opens {share(2 * hpke_o, opened)}" if v else "")
        )
    ctx.note(
        f"verify alone (v2, N={VERIFY_ONLY_AT}): {ev['verify']:.0f} µs, the Ed25519 verify "
        + share(prim["verify"], ev["verify"])
        + " of it (the rest: one strict JSON parse and one model validation per part, base64, registry "
        "and policy checks)"
    )


def run(ctx: BenchContext) -> list[Result]:
    events = ctx.scale(EVENTS_FULL, EVENTS_QUICK)
    ops = ctx.scale(PRIMITIVE_OPS_FULL, PRIMITIVE_OPS_QUICK)
    tmp = Path(tempfile.mkdtemp(prefix="lianfang-bench-envelope-"))
    try:
        d = _domain(tmp / "home")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # keystores are loaded: the folder is no longer needed
    ctx.note(_default_policy_note(d))
    envelope_results, per_event = _bench_envelopes(ctx, d, events)
    primitive_results, per_op = _bench_primitives(ctx, d, ops)
    _breakdown(ctx, per_event, per_op)
    return [*envelope_results, *primitive_results]
