"""HTTP Message Signatures (RFC 9421) with Ed25519, and Content-Digest (RFC 9530): pure functions.

Bytes and strings in, results or :class:`HttpSignatureError` out; no clock, no keys on disk, no I/O.
The gateway (and any client written in another language) uses this profile of RFC 9421:

**Headers of a signed request** (``POST /v1/events``)::

    Content-Type: application/json
    Content-Digest: sha-256=:<base64 of SHA-256 of the exact body bytes>:
    Idempotency-Key: <optional, chosen by the client>
    Signature-Input: sig1=("@method" "@target-uri" "content-digest" "content-type" "idempotency-key")\
;created=1767254400;keyid="<16 hex>";alg="ed25519";tag="lianfang"
    Signature: sig1=:<base64 of the 64-byte Ed25519 signature>:

(one line each; ``\\`` marks where the Signature-Input line is folded here). ``keyid`` is the key id the
trust registry lists for the agency's Ed25519 signing key (16 hex characters of the SHA-256 of the raw
public key); it names the agency, so no other credential is sent. ``created`` is Unix seconds and must
be within 300 s of the gateway's clock. ``"idempotency-key"`` is covered when that header is sent. A
request without a body (``GET /v1/inbox``) covers ``"@method" "@target-uri"`` only. The label
(``sig1``) is free; the gateway picks the signature whose ``tag`` is ``"lianfang"`` (webhooks it sends
use ``"lianfang-webhook"``, so neither can be replayed as the other).

**Signature base** (RFC 9421 §2.5): one line per covered component, in the order of Signature-Input,
``"<name>": <value>``, then the ``"@signature-params"`` line, joined by LF with no final LF. For
``POST http://127.0.0.1:8080/v1/events`` it reads::

    "@method": POST
    "@target-uri": http://127.0.0.1:8080/v1/events
    "content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:
    "content-type": application/json
    "@signature-params": ("@method" "@target-uri" "content-digest" "content-type");created=1767254400\
;keyid="0123456789abcdef";alg="ed25519";tag="lianfang"

and the signature is Ed25519 (RFC 8032, pure, no pre-hash) over those UTF-8 bytes. A header's value is
its field lines, each stripped of surrounding spaces, joined with ``", "``. ``@target-uri`` is the URI
the client sent the request to (scheme, host and port as in its ``Host`` header, path and query as
sent); behind a proxy the gateway is told its public base URL. ``tests/unit/test_httpsig.py`` checks
this module against RFC 9421's own Ed25519 example (Appendix B.2.6) and a fixed vector of this profile.

Structured fields (RFC 8941) are parsed and serialized by the small implementation below, which covers
what these three headers use: dictionaries, inner lists, strings, tokens, integers, decimals, booleans
and byte sequences, with parameters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.kernel import crypto
from services.kernel.errors import BadSignatureError

__all__ = [
    "DEFAULT_LABEL",
    "MAX_SKEW_S",
    "REQUEST_TAG",
    "WEBHOOK_TAG",
    "HttpSignatureError",
    "Message",
    "SignatureInput",
    "SignatureProblem",
    "check_content_digest",
    "content_digest",
    "covered_for",
    "parse_signature",
    "sign_request",
    "signature_base",
    "verify_signature",
]

REQUEST_TAG: Final = "lianfang"
WEBHOOK_TAG: Final = "lianfang-webhook"
DEFAULT_LABEL: Final = "sig1"
MAX_SKEW_S: Final = 300
ALG: Final = "ed25519"
MAX_FIELD_CHARS: Final = 8192
"""Signature-Input, Signature and Content-Digest longer than this are refused before parsing."""

SignatureProblem = Literal[
    "signature_missing",
    "signature_malformed",
    "signature_components",
    "signature_stale",
    "signature_invalid",
    "digest_missing",
    "digest_mismatch",
]
"""Which check a request failed: a closed set, used as a metric label and a problem type."""

DERIVED: Final = frozenset(
    {"@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path", "@query"}
)
_PARAMS: Final = frozenset({"created", "expires", "keyid", "alg", "tag", "nonce"})


class HttpSignatureError(BadSignatureError):
    """A request's signature or digest failed a check; ``problem`` says which (a closed set)."""

    def __init__(self, problem: SignatureProblem, message: str) -> None:
        super().__init__(message)
        self.problem: SignatureProblem = problem


# --------------------------------------------------------------------------- structured fields (RFC 8941)


class Token(str):
    """An sf-token, kept apart from an sf-string so that serialization round-trips."""

    __slots__ = ()


BareItem = bool | int | float | str | bytes
Params = tuple[tuple[str, BareItem], ...]


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: Params = ()


@dataclass(frozen=True, slots=True)
class InnerList:
    items: tuple[Item, ...]
    params: Params = ()


_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, what: str) -> HttpSignatureError:
        return HttpSignatureError("signature_malformed", f"not a structured field: {what} at {self.i}")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def dictionary(self) -> dict[str, Item | InnerList]:
        out: dict[str, Item | InnerList] = {}
        self.skip(" ")
        while self.peek():
            key = self.key()
            member: Item | InnerList
            if self.peek() == "=":
                self.i += 1
                member = self.inner_list() if self.peek() == "(" else self.item()
            else:
                member = Item(True, self.params())
            out[key] = member  # RFC 8941: a repeated key takes the last value
            self.skip(" \t")
            if not self.peek():
                break
            if self.peek() != ",":
                raise self.fail("expected ','")
            self.i += 1
            self.skip(" \t")
            if not self.peek():
                raise self.fail("trailing ','")
        return out

    def key(self) -> str:
        match = _KEY.match(self.s, self.i)
        if not match:
            raise self.fail("expected a key")
        self.i = match.end()
        return match.group()

    def inner_list(self) -> InnerList:
        self.i += 1  # "("
        items: list[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return InnerList(tuple(items), self.params())
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise self.fail("expected ' ' or ')' in an inner list")

    def item(self) -> Item:
        value = self.bare_item()
        return Item(value, self.params())

    def params(self) -> Params:
        out: dict[str, BareItem] = {}
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            out[key] = value
        return tuple(out.items())

    def bare_item(self) -> BareItem:
        c = self.peek()
        if c == '"':
            return self.string()
        if c == ":":
            return self.byte_sequence()
        if c == "?":
            flag = self.s[self.i : self.i + 2]
            if flag not in ("?0", "?1"):
                raise self.fail("expected a boolean")
            self.i += 2
            return flag == "?1"
        if c == "-" or c.isdigit():
            match = _NUMBER.match(self.s, self.i)
            if not match:
                raise self.fail("expected a number")
            self.i = match.end()
            text = match.group()
            return float(text) if "." in text else int(text)
        match = _TOKEN.match(self.s, self.i)
        if not match:
            raise self.fail("expected an item")
        self.i = match.end()
        return Token(match.group())

    def string(self) -> str:
        self.i += 1
        out = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "\\":
                if self.peek() not in ('"', "\\"):
                    raise self.fail("bad escape in a string")
                out.append(self.s[self.i])
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise self.fail("a string holds a character outside printable ASCII")
            else:
                out.append(c)
        raise self.fail("unterminated string")

    def byte_sequence(self) -> bytes:
        end = self.s.find(":", self.i + 1)
        if end < 0:
            raise self.fail("unterminated byte sequence")
        text = self.s[self.i + 1 : end]
        self.i = end + 1
        if not _BASE64.fullmatch(text):
            raise self.fail("a byte sequence is not base64")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise self.fail("a byte sequence is not base64") from e


def parse_dictionary(text: str) -> dict[str, Item | InnerList]:
    """An RFC 8941 dictionary (the combined value of all field lines of one header)."""
    if len(text) > MAX_FIELD_CHARS:
        raise HttpSignatureError("signature_malformed", f"a signature header is over {MAX_FIELD_CHARS} chars")
    parser = _Parser(text.strip(" \t"))
    return parser.dictionary()


def serialize_bare(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    if isinstance(value, Token):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_params(params: Params) -> str:
    return "".join(f";{k}" if v is True else f";{k}={serialize_bare(v)}" for k, v in params)


def serialize_inner_list(inner: InnerList) -> str:
    items = " ".join(serialize_bare(i.value) + serialize_params(i.params) for i in inner.items)
    return f"({items}){serialize_params(inner.params)}"


# --------------------------------------------------------------------------- messages and the base


@dataclass(frozen=True, slots=True)
class Message:
    """What a signature covers of an HTTP request: method, target URI and header field lines."""

    method: str
    target_uri: str
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def of(
        cls, method: str, target_uri: str, headers: Iterable[tuple[str, str]] | Mapping[str, str]
    ) -> Message:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        return cls(method, target_uri, tuple((k, v) for k, v in pairs))

    def field(self, name: str) -> str | None:
        """A header's value for signing (RFC 9421 §2.1): field lines stripped and joined by ", "."""
        lines = [v.strip(" \t") for k, v in self.headers if k.lower() == name]
        return ", ".join(lines) if lines else None


def _authority(scheme: str, host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}.get(scheme)
    return host if port in (None, default) else f"{host}:{port}"


def _derived(message: Message, name: str) -> str:
    url = urlsplit(message.target_uri)
    if not url.scheme or not url.netloc:
        raise HttpSignatureError("signature_malformed", "the target URI is not absolute")
    path = url.path or "/"
    values = {
        "@method": message.method,
        "@target-uri": message.target_uri,
        "@scheme": url.scheme.lower(),
        "@authority": _authority(url.scheme.lower(), (url.hostname or "").lower(), url.port),
        "@path": path,
        "@query": "?" + url.query,
        "@request-target": path + ("?" + url.query if url.query else ""),
    }
    if name not in values:
        raise HttpSignatureError("signature_malformed", f"derived component {name} is not supported")
    return values[name]


def component_value(message: Message, name: str) -> str:
    if name.startswith("@"):
        return _derived(message, name)
    if name != name.lower() or not _KEY.fullmatch(name.replace("@", "")):
        raise HttpSignatureError("signature_malformed", "header component names are lower case")
    value = message.field(name)
    if value is None:
        raise HttpSignatureError("signature_components", f"the signature covers {name!r}, which is not sent")
    return value


def signature_base(message: Message, components: Sequence[str], params: Params) -> bytes:
    """The bytes that are signed (RFC 9421 §2.5), for these covered components and parameters."""
    lines = []
    for name in components:
        value = component_value(message, name)
        if "\n" in value or "\r" in value:
            raise HttpSignatureError("signature_malformed", f"component {name} holds a line break")
        lines.append(f"{serialize_bare(name)}: {value}")
    inner = InnerList(tuple(Item(n) for n in components), params)
    lines.append(f'"@signature-params": {serialize_inner_list(inner)}')
    return "\n".join(lines).encode("utf-8")


# --------------------------------------------------------------------------- content digest (RFC 9530)


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` value of ``body``: ``sha-256=:<base64>:``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


_DIGESTS: Final = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}


def check_content_digest(header: str | None, body: bytes) -> None:
    """``header`` must carry a sha-256 digest of ``body``; a sha-512 one, if also present, must match.

    Algorithms this module does not know are ignored, as RFC 9530 allows.
    """
    if header is None or not header.strip():
        raise HttpSignatureError("digest_missing", "Content-Digest is required: sha-256=:<base64>:")
    try:
        members = parse_dictionary(header)
    except HttpSignatureError as e:
        raise HttpSignatureError("digest_mismatch", "Content-Digest is not a structured dictionary") from e
    if "sha-256" not in members:
        raise HttpSignatureError("digest_missing", "Content-Digest has no sha-256 member")
    for alg, member in members.items():
        if alg not in _DIGESTS:
            continue
        if not isinstance(member, Item) or not isinstance(member.value, bytes):
            raise HttpSignatureError("digest_mismatch", f"Content-Digest {alg} is not a byte sequence")
        if not hmac.compare_digest(member.value, _DIGESTS[alg](body).digest()):
            raise HttpSignatureError("digest_mismatch", f"Content-Digest {alg} does not match the body")


# --------------------------------------------------------------------------- signing


def covered_for(headers: Mapping[str, str], *, has_body: bool) -> list[str]:
    """The components this profile covers: the method and URI; with a body its digest and type; and
    the Idempotency-Key when one is sent."""
    names = {k.lower() for k in headers}
    covered = ["@method", "@target-uri"]
    if has_body:
        covered += ["content-digest", "content-type"]
    if "idempotency-key" in names:
        covered.append("idempotency-key")
    return covered


def sign_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: bytes | None,
    key: Ed25519PrivateKey,
    keyid: str,
    created: int,
    tag: str = REQUEST_TAG,
    label: str = DEFAULT_LABEL,
    expires: int | None = None,
    nonce: str | None = None,
    components: Sequence[str] | None = None,
) -> dict[str, str]:
    """The headers to add to a request so that the gateway accepts it as signed by ``keyid``.

    Returns ``Content-Digest`` (when there is a body), ``Signature-Input`` and ``Signature``; the
    caller sends them with ``headers`` and exactly ``body``.
    """
    added: dict[str, str] = {}
    if body is not None:
        added["Content-Digest"] = content_digest(body)
    all_headers = {**headers, **added}
    covered = (
        list(components) if components is not None else covered_for(all_headers, has_body=body is not None)
    )
    params: list[tuple[str, BareItem]] = [("created", created)]
    if expires is not None:
        params.append(("expires", expires))
    if nonce is not None:
        params.append(("nonce", nonce))
    params += [("keyid", keyid), ("alg", ALG), ("tag", tag)]
    message = Message.of(method, url, all_headers)
    base = signature_base(message, covered, tuple(params))
    inner = InnerList(tuple(Item(n) for n in covered), tuple(params))
    added["Signature-Input"] = f"{label}={serialize_inner_list(inner)}"
    added["Signature"] = f"{label}={serialize_bare(key.sign(base))}"
    return added


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True, slots=True)
class SignatureInput:
    """One signature of a message, parsed and checked for shape but not yet verified."""

    label: str
    components: tuple[str, ...]
    params: Params
    keyid: str
    created: int
    expires: int | None
    signature: bytes


def _one_field(message: Message, name: str) -> str:
    value = message.field(name)
    if value is None:
        raise HttpSignatureError(
            "signature_missing", "the request is not signed: Signature-Input and Signature are required"
        )
    return value


def _check_params(params: Params) -> tuple[str, int, int | None]:
    """keyid, created and expires of a signature whose parameters this profile accepts."""
    given = dict(params)
    unknown = set(given) - _PARAMS
    if unknown:
        raise HttpSignatureError("signature_malformed", f"unknown signature parameters {sorted(unknown)}")
    alg, keyid, created, expires = (given.get(k) for k in ("alg", "keyid", "created", "expires"))
    if alg != ALG or isinstance(alg, Token):
        raise HttpSignatureError("signature_malformed", 'the signature must say alg="ed25519"')
    if not isinstance(keyid, str) or isinstance(keyid, Token) or not keyid:
        raise HttpSignatureError("signature_malformed", 'keyid="<your registry signing key id>" is required')
    if not isinstance(created, int) or isinstance(created, bool):
        raise HttpSignatureError("signature_malformed", "created=<Unix seconds> is required")
    if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
        raise HttpSignatureError("signature_malformed", "expires must be an integer")
    return keyid, created, expires


def parse_signature(message: Message, *, tag: str = REQUEST_TAG) -> SignatureInput:
    """Find the one signature of ``message`` whose ``tag`` is ``tag`` and check its shape.

    Only Ed25519 (``alg="ed25519"``) is accepted; ``created`` and ``keyid`` are required; components
    carry no parameters and name no component twice.
    """
    inputs = parse_dictionary(_one_field(message, "signature-input"))
    values = parse_dictionary(_one_field(message, "signature"))
    tagged = [
        label
        for label, member in inputs.items()
        if isinstance(member, InnerList) and dict(member.params).get("tag") == tag
    ]
    if not tagged:
        raise HttpSignatureError("signature_missing", f'no signature has tag="{tag}"')
    if len(tagged) > 1:
        raise HttpSignatureError("signature_malformed", f'more than one signature has tag="{tag}"')
    label = tagged[0]
    inner = inputs[label]
    assert isinstance(inner, InnerList)
    components = []
    for item in inner.items:
        if not isinstance(item.value, str) or isinstance(item.value, Token) or item.params:
            raise HttpSignatureError(
                "signature_malformed", "each covered component is a plain quoted name, without parameters"
            )
        components.append(item.value)
    if len(set(components)) != len(components):
        raise HttpSignatureError("signature_malformed", "a component is covered twice")
    if "@signature-params" in components:
        raise HttpSignatureError("signature_malformed", '"@signature-params" cannot be covered')
    keyid, created, expires = _check_params(inner.params)
    value = values.get(label)
    if not isinstance(value, Item) or not isinstance(value.value, bytes):
        raise HttpSignatureError("signature_missing", f"Signature has no byte sequence for label {label!r}")
    if len(value.value) != 64:
        raise HttpSignatureError("signature_malformed", "an Ed25519 signature is 64 bytes")
    return SignatureInput(
        label=label,
        components=tuple(components),
        params=inner.params,
        keyid=keyid,
        created=created,
        expires=expires,
        signature=value.value,
    )


def verify_signature(
    message: Message,
    signature: SignatureInput,
    public_key: bytes,
    *,
    now: float,
    required: Collection[str],
    max_skew_s: float = MAX_SKEW_S,
) -> bytes:
    """Check coverage, freshness and the Ed25519 signature; return the verified signature base.

    ``required`` components must all be covered (more may be). ``created`` must lie within
    ``max_skew_s`` of ``now`` either way, and ``expires``, when given, must not have passed.
    """
    missing = [c for c in required if c not in signature.components]
    if missing:
        raise HttpSignatureError(
            "signature_components", f"the signature must cover {', '.join(repr(c) for c in missing)}"
        )
    if abs(now - signature.created) > max_skew_s:
        raise HttpSignatureError(
            "signature_stale",
            f"created is {now - signature.created:+.0f} s from the gateway's clock; at most "
            f"{max_skew_s:.0f} s either way (check the client's clock and sign each request anew)",
        )
    if signature.expires is not None and now > signature.expires:
        raise HttpSignatureError("signature_stale", "the signature has expired")
    base = signature_base(message, signature.components, signature.params)
    if not crypto.ed25519_verifies(public_key, signature.signature, base):
        raise HttpSignatureError("signature_invalid", "the signature does not verify over the signature base")
    return base
