"""HTTP Message Signatures (RFC 9421) and Content-Digest (RFC 9530) as the gateway uses them: the RFCs'
own examples, a fixed vector of our profile (cross-checked with `openssl pkeyutl -sign -rawin`), and a
table of tampered requests that must each be refused for the right reason."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from services.gateway import httpsig
from services.gateway.httpsig import HttpSignatureError, Message
from services.kernel.keystore import key_id

pytestmark = pytest.mark.unit

# RFC 9421 Appendix B.1.4, "test-key-ed25519" (a published test key: never use it for anything else).
RFC_KEY = Ed25519PrivateKey.from_private_bytes(
    base64.urlsafe_b64decode("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU=")
)
RFC_PUBLIC = RFC_KEY.public_key().public_bytes_raw()
KID = key_id(RFC_PUBLIC)


# --------------------------------------------------------------------------- the RFCs' examples


def test_rfc_9421_b_2_6_ed25519_example_verifies_and_signing_reproduces_it() -> None:
    headers = [
        ("Host", "example.com"),
        ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("Content-Type", "application/json"),
        (
            "Content-Digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        ),
        ("Content-Length", "18"),
        (
            "Signature-Input",
            'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
            ';created=1618884473;keyid="test-key-ed25519"',
        ),
        (
            "Signature",
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
        ),
    ]
    message = Message.of("POST", "https://example.com/foo?param=Value&Pet=dog", headers)
    dictionary = httpsig.parse_dictionary(message.field("signature-input") or "")
    inner = dictionary["sig-b26"]
    assert isinstance(inner, httpsig.InnerList)
    components = [str(i.value) for i in inner.items]
    base = httpsig.signature_base(message, components, inner.params)
    assert base.decode() == (
        '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        '"@method": POST\n'
        '"@path": /foo\n'
        '"@authority": example.com\n'
        '"content-type": application/json\n'
        '"content-length": 18\n'
        '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length")'
        ';created=1618884473;keyid="test-key-ed25519"'
    )
    signature = httpsig.parse_dictionary(message.field("signature") or "")["sig-b26"]
    assert isinstance(signature, httpsig.Item)
    assert RFC_KEY.sign(base) == signature.value  # Ed25519 is deterministic: the RFC's exact bytes
    RFC_KEY.public_key().verify(signature.value, base)  # type: ignore[arg-type]


def test_rfc_9530_content_digest_examples() -> None:
    body = b'{"hello": "world"}'
    assert httpsig.content_digest(body) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    both = (
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFCh"
        "F41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
    )
    httpsig.check_content_digest(both, body)
    with pytest.raises(HttpSignatureError) as e:
        httpsig.check_content_digest(both, b'{"hello": "world!"}')
    assert e.value.problem == "digest_mismatch"


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "digest_missing"),
        ("", "digest_missing"),
        (
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            "digest_missing",
        ),
        ("sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", "digest_mismatch"),
        ('sha-256="X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="', "digest_mismatch"),
        ("sha-256=:AAAA:", "digest_mismatch"),
    ],
    ids=["absent", "empty", "sha-512 only", "not a byte sequence", "a string", "wrong digest"],
)
def test_a_content_digest_that_is_absent_malformed_or_wrong_is_refused(
    header: str | None, problem: str
) -> None:
    with pytest.raises(HttpSignatureError) as e:
        httpsig.check_content_digest(header, b'{"hello": "world"}')
    assert e.value.problem == problem


# --------------------------------------------------------------------------- the Lianfang profile vector

VECTOR_URL = "http://127.0.0.1:8080/v1/events"
VECTOR_BODY = b'{"type":"lead.acknowledged","event":{}}'
VECTOR_CREATED = 1767225600  # 2026-01-01T00:00:00Z
VECTOR_HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "retry-7"}
VECTOR_BASE = (
    '"@method": POST\n'
    '"@target-uri": http://127.0.0.1:8080/v1/events\n'
    '"content-digest": sha-256=:31trwdGimBHeTBPUYTvBR/jjWzN7WPvB8vxy9Hz0+y8=:\n'
    '"content-type": application/json\n'
    '"idempotency-key": retry-7\n'
    '"@signature-params": ("@method" "@target-uri" "content-digest" "content-type" "idempotency-key")'
    ';created=1767225600;keyid="b16c2d1bead12626";alg="ed25519";tag="lianfang"'
)
VECTOR_SIGNATURE = "oRUekzLD0x0I5bCpu6XT92jTUyPruhYmdxe1MtFnYXETF0kcZSkYEV9sHEZMAYxNdxHIZN5Huz3KuaHh8UF/Aw=="


def _vector_headers() -> dict[str, str]:
    return {
        **VECTOR_HEADERS,
        **httpsig.sign_request(
            "POST",
            VECTOR_URL,
            headers=VECTOR_HEADERS,
            body=VECTOR_BODY,
            key=RFC_KEY,
            keyid=KID,
            created=VECTOR_CREATED,
        ),
    }


def test_the_profile_vector_headers_base_and_signature_are_exactly_these_bytes() -> None:
    assert KID == "b16c2d1bead12626"
    headers = _vector_headers()
    assert headers["Content-Digest"] == "sha-256=:31trwdGimBHeTBPUYTvBR/jjWzN7WPvB8vxy9Hz0+y8=:"
    assert headers["Signature-Input"] == (
        'sig1=("@method" "@target-uri" "content-digest" "content-type" "idempotency-key")'
        ';created=1767225600;keyid="b16c2d1bead12626";alg="ed25519";tag="lianfang"'
    )
    assert headers["Signature"] == f"sig1=:{VECTOR_SIGNATURE}:"
    message = Message.of("POST", VECTOR_URL, headers)
    parsed = httpsig.parse_signature(message)
    base = httpsig.verify_signature(
        message,
        parsed,
        RFC_PUBLIC,
        now=VECTOR_CREATED + 10,
        required=httpsig.covered_for(headers, has_body=True),
    )
    assert base.decode() == VECTOR_BASE


# --------------------------------------------------------------------------- tampering, table-driven

REQUIRED = ["@method", "@target-uri", "content-digest", "content-type", "idempotency-key"]


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def _signed(**changes: object) -> Request:
    return Request("POST", VECTOR_URL, _vector_headers(), VECTOR_BODY)


def _check(request: Request, *, now: float = VECTOR_CREATED + 1, public: bytes = RFC_PUBLIC) -> None:
    """What the gateway does: signature over the headers, then the body against its digest."""
    message = Message.of(request.method, request.url, request.headers)
    parsed = httpsig.parse_signature(message)
    httpsig.verify_signature(message, parsed, public, now=now, required=REQUIRED)
    httpsig.check_content_digest(message.field("content-digest"), request.body)


def _with_header(name: str, value: str) -> Callable[[Request], Request]:
    return lambda r: Request(r.method, r.url, {**r.headers, name: value}, r.body)


def _without_header(name: str) -> Callable[[Request], Request]:
    return lambda r: Request(r.method, r.url, {k: v for k, v in r.headers.items() if k != name}, r.body)


def _resigned(**kwargs: object) -> Callable[[Request], Request]:
    """Signed anew by the same key with other parameters (an honest signer's mistakes)."""

    def edit(r: Request) -> Request:
        headers = {
            k: v for k, v in r.headers.items() if k not in ("Signature", "Signature-Input", "Content-Digest")
        }
        options: dict[str, object] = {"created": VECTOR_CREATED, "keyid": KID, **kwargs}
        added = httpsig.sign_request(
            "POST", VECTOR_URL, headers=headers, body=VECTOR_BODY, key=RFC_KEY, **options
        )  # type: ignore[arg-type]
        return Request(r.method, r.url, {**headers, **added}, r.body)

    return edit


_INPUT = (
    'sig1=("@method" "@target-uri" "content-digest" "content-type" "idempotency-key")'
    ';created={created};keyid="{keyid}";alg="{alg}";tag="{tag}"'
)


def _input(
    created: int = VECTOR_CREATED, keyid: str = KID, alg: str = "ed25519", tag: str = "lianfang"
) -> str:
    return _INPUT.format(created=created, keyid=keyid, alg=alg, tag=tag)


TAMPERED: dict[str, tuple[Callable[[Request], Request], str]] = {
    "the method changed to PUT is rejected": (
        lambda r: Request("PUT", r.url, r.headers, r.body),
        "signature_invalid",
    ),
    "another path is rejected": (
        lambda r: Request(r.method, r.url.replace("/v1/events", "/v1/events2"), r.headers, r.body),
        "signature_invalid",
    ),
    "another host is rejected": (
        lambda r: Request(r.method, r.url.replace("127.0.0.1", "localhost"), r.headers, r.body),
        "signature_invalid",
    ),
    "an added query is rejected": (
        lambda r: Request(r.method, r.url + "?x=1", r.headers, r.body),
        "signature_invalid",
    ),
    "another body under the signed digest is rejected": (
        lambda r: Request(r.method, r.url, r.headers, r.body.replace(b"{}", b'{"a":1}')),
        "digest_mismatch",
    ),
    "another body with its own digest is rejected": (
        lambda r: Request(
            r.method,
            r.url,
            {**r.headers, "Content-Digest": httpsig.content_digest(b"{}")},
            b"{}",
        ),
        "signature_invalid",
    ),
    "another idempotency key is rejected": (_with_header("Idempotency-Key", "retry-8"), "signature_invalid"),
    "another content type is rejected": (_with_header("Content-Type", "text/plain"), "signature_invalid"),
    "an earlier created time is rejected": (
        _with_header("Signature-Input", _input(created=VECTOR_CREATED - 1)),
        "signature_invalid",
    ),
    "another keyid is rejected": (
        _with_header("Signature-Input", _input(keyid="0123456789abcdef")),
        "signature_invalid",
    ),
    "another algorithm is rejected": (
        _with_header("Signature-Input", _input(alg="rsa-pss-sha512")),
        "signature_malformed",
    ),
    "another tag is rejected": (_with_header("Signature-Input", _input(tag="other")), "signature_missing"),
    "no signature is rejected": (_without_header("Signature"), "signature_missing"),
    "no signature input is rejected": (_without_header("Signature-Input"), "signature_missing"),
    "a signature under another label is rejected": (
        _with_header("Signature", f"sig2=:{VECTOR_SIGNATURE}:"),
        "signature_missing",
    ),
    "a truncated signature is rejected": (
        _with_header("Signature", "sig1=:" + base64.b64encode(b"\0" * 32).decode() + ":"),
        "signature_malformed",
    ),
    "a flipped signature bit is rejected": (
        _with_header(
            "Signature",
            "sig1=:"
            + base64.b64encode(
                bytes([base64.b64decode(VECTOR_SIGNATURE)[0] ^ 1]) + base64.b64decode(VECTOR_SIGNATURE)[1:]
            ).decode()
            + ":",
        ),
        "signature_invalid",
    ),
    "garbage in Signature-Input is rejected": (
        _with_header("Signature-Input", "sig1=(@method"),
        "signature_malformed",
    ),
    "a signature not covering the digest is rejected": (
        _resigned(components=["@method", "@target-uri", "content-type", "idempotency-key"]),
        "signature_components",
    ),
    "a signature not covering the idempotency key is rejected": (
        _resigned(components=["@method", "@target-uri", "content-digest", "content-type"]),
        "signature_components",
    ),
    "a component covered twice is rejected": (
        _resigned(
            components=[
                "@method",
                "@method",
                "@target-uri",
                "content-digest",
                "content-type",
                "idempotency-key",
            ]
        ),
        "signature_malformed",
    ),
    "a covered header that was not sent is rejected": (
        lambda r: _without_header("X-Missing")(
            _resigned(components=[*REQUIRED, "x-missing"])(_with_header("X-Missing", "1")(r))
        ),
        "signature_components",
    ),
    "a signature created six minutes ago is rejected": (
        _resigned(created=VECTOR_CREATED - 360),
        "signature_stale",
    ),
    "a signature created six minutes ahead is rejected": (
        _resigned(created=VECTOR_CREATED + 360),
        "signature_stale",
    ),
    "an expired signature is rejected": (_resigned(expires=VECTOR_CREATED - 1), "signature_stale"),
}


@pytest.mark.parametrize("case", list(TAMPERED), ids=list(TAMPERED))
def test_a_tampered_request(case: str) -> None:
    edit, problem = TAMPERED[case]
    request = edit(_signed())
    with pytest.raises(HttpSignatureError) as e:
        _check(request)
    assert e.value.problem == problem, str(e.value)
    assert e.value.reason == "bad_signature"


def test_the_untampered_request_passes_the_same_checks() -> None:
    _check(_signed())


def test_a_signature_verified_against_another_participants_key_is_rejected() -> None:
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(HttpSignatureError) as e:
        _check(_signed(), public=other)
    assert e.value.problem == "signature_invalid"


def test_created_within_five_minutes_either_way_is_accepted() -> None:
    _check(_signed(), now=VECTOR_CREATED + 299)
    _check(_signed(), now=VECTOR_CREATED - 299)


def test_extra_covered_components_and_a_nonce_are_allowed() -> None:
    headers = {**VECTOR_HEADERS, "Date": "Thu, 01 Jan 2026 00:00:00 GMT"}
    added = httpsig.sign_request(
        "POST",
        VECTOR_URL,
        headers=headers,
        body=VECTOR_BODY,
        key=RFC_KEY,
        keyid=KID,
        created=VECTOR_CREATED,
        nonce="n-1",
        components=[*REQUIRED, "date", "@authority", "@path", "@query", "@scheme", "@request-target"],
    )
    _check(Request("POST", VECTOR_URL, {**headers, **added}, VECTOR_BODY))


def test_a_webhook_signature_is_not_a_request_signature() -> None:
    """The gateway picks the signature tagged "lianfang"; a webhook's tag cannot stand in for it."""
    r = _resigned(tag=httpsig.WEBHOOK_TAG)(_signed())
    with pytest.raises(HttpSignatureError) as e:
        _check(r)
    assert e.value.problem == "signature_missing"
    message = Message.of(r.method, r.url, r.headers)
    httpsig.verify_signature(
        message,
        httpsig.parse_signature(message, tag=httpsig.WEBHOOK_TAG),
        RFC_PUBLIC,
        now=VECTOR_CREATED,
        required=REQUIRED,
    )


def test_a_second_signature_with_another_tag_is_ignored_and_ours_is_found() -> None:
    request = _signed()
    headers = dict(request.headers)
    headers["Signature-Input"] = (
        'other=("@method");created=1;keyid="x";tag="elsewhere", ' + headers["Signature-Input"]
    )
    headers["Signature"] = "other=:AAAA:, " + headers["Signature"]
    _check(Request(request.method, request.url, headers, request.body))


def test_header_field_lines_are_combined_as_rfc_9421_says() -> None:
    message = Message.of("GET", "https://x.example/", [("X-A", " one "), ("x-a", "two"), ("Other", "z")])
    assert message.field("x-a") == "one, two"
    assert message.field("missing") is None


@pytest.mark.parametrize(
    ("url", "component", "value"),
    [
        ("https://Example.com:443/a/b?x=1&y", "@authority", "example.com"),
        ("http://127.0.0.1:8080/v1/inbox?cursor=abc", "@authority", "127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/inbox?cursor=abc", "@path", "/v1/inbox"),
        ("http://127.0.0.1:8080/v1/inbox?cursor=abc", "@query", "?cursor=abc"),
        ("http://127.0.0.1:8080/v1/inbox", "@query", "?"),
        ("http://127.0.0.1:8080/v1/inbox?cursor=abc", "@request-target", "/v1/inbox?cursor=abc"),
        ("HTTP://127.0.0.1/", "@scheme", "http"),
    ],
)
def test_derived_components(url: str, component: str, value: str) -> None:
    assert httpsig.component_value(Message.of("GET", url, []), component) == value


# --------------------------------------------------------------------------- structured fields


_strings = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
_keys = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
_bare = st.one_of(
    _strings,
    st.integers(min_value=-(10**14), max_value=10**14),
    st.booleans(),
    st.binary(max_size=40),
    st.from_regex(r"[A-Za-z][A-Za-z0-9:/._-]{0,10}", fullmatch=True).map(httpsig.Token),
)


@given(
    names=st.lists(_strings, max_size=6),
    params=st.dictionaries(_keys, _bare, max_size=5),
    label=_keys,
)
def test_an_inner_list_with_parameters_round_trips_through_serialize_and_parse(
    names: list[str], params: dict[str, httpsig.BareItem], label: str
) -> None:
    inner = httpsig.InnerList(tuple(httpsig.Item(n) for n in names), tuple(params.items()))
    parsed = httpsig.parse_dictionary(f"{label}={httpsig.serialize_inner_list(inner)}")
    assert parsed == {label: inner}


@given(st.text(max_size=80))
def test_the_structured_field_parser_never_fails_other_than_with_its_own_error(text: str) -> None:
    with contextlib.suppress(HttpSignatureError):
        httpsig.parse_dictionary(text)


def test_an_oversized_signature_header_is_refused_before_parsing() -> None:
    with pytest.raises(HttpSignatureError, match="over"):
        httpsig.parse_dictionary("a=" + "1" * (httpsig.MAX_FIELD_CHARS + 1))
