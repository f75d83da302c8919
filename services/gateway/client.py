"""Sign requests to the gateway from Python, or print the curl command that sends one.

    python -m services.gateway.client --as police lead.json             # POST /v1/events, print the answer
    python -m services.gateway.client --as police --curl lead.json      # print a curl command instead
    python -m services.gateway.client --as police --inbox [--cursor C]  # GET /v1/inbox

``lead.json`` is a request body (``{"type": "lead.reported", "event": {...}}``). The keystore comes
from the trust domain (``--home``, default ``$LIANFANG_HOME`` or ``.lianfang``) with its passphrase
(``LIANFANG_PASSPHRASE`` or the demo domain's file). The printed curl command is valid for 300 s.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from services import trust
from services.cli.settings import HomeSettings
from services.gateway import httpsig
from services.gateway.webhooks import signing_kid
from services.kernel.keystore import Keystore


def signed_headers(
    keystore: Keystore,
    kid: str,
    method: str,
    url: str,
    body: bytes | None = None,
    *,
    idempotency_key: str | None = None,
    created: int | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """Every header a request needs: Content-Type, Idempotency-Key (if given) and the signature."""
    headers: dict[str, str] = {}
    if body is not None:
        headers["Content-Type"] = content_type
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    headers.update(
        httpsig.sign_request(
            method,
            url,
            headers=headers,
            body=body,
            key=keystore.signing_key(kid),
            keyid=kid,
            created=int(time.time()) if created is None else created,
        )
    )
    return headers


def curl_command(method: str, url: str, headers: dict[str, str], body_file: str | None) -> str:
    # --fail-with-body: a 4xx or 5xx still prints the problem document, and the script exits non-zero.
    parts = ["curl", "-sS", "--fail-with-body", "-X", method, url]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    if body_file is not None:
        parts += ["--data-binary", f"@{body_file}"]
    return " ".join(shlex.quote(p) for p in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.gateway.client", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--as", dest="participant", required=True, help="the participant whose key signs")
    parser.add_argument("--home", type=Path, default=None, help="trust domain folder")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    parser.add_argument("--idempotency-key", default=None, help="make retries of this request safe")
    parser.add_argument("--curl", action="store_true", help="print a curl command instead of sending")
    parser.add_argument("--inbox", action="store_true", help="GET /v1/inbox instead of publishing")
    parser.add_argument("--cursor", default=None, help="with --inbox: read on from this cursor")
    parser.add_argument("--limit", type=int, default=None, help="with --inbox: at most this many events")
    parser.add_argument("body", nargs="?", help="request body file (a JSON object)")
    args = parser.parse_args(argv)

    domain = trust.open_domain(args.home or HomeSettings().home)
    keystore = domain.keystore(args.participant)
    kid = signing_kid(keystore, domain.registry(datetime.now(UTC)), datetime.now(UTC))
    base = args.url.rstrip("/")
    if args.inbox:
        query = "&".join(
            f"{k}={v}" for k, v in (("cursor", args.cursor), ("limit", args.limit)) if v is not None
        )
        method, url, body = "GET", f"{base}/v1/inbox" + (f"?{query}" if query else ""), None
    else:
        if not args.body:
            parser.error("give the request body file (or --inbox)")
        method, url, body = "POST", f"{base}/v1/events", Path(args.body).read_bytes()
    headers = signed_headers(keystore, kid, method, url, body, idempotency_key=args.idempotency_key)
    if args.curl:
        print(curl_command(method, url, headers, args.body if body is not None else None))
        return 0
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, text = response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8")
    print(status, file=sys.stderr)
    print(json.dumps(json.loads(text), ensure_ascii=False, indent=2) if text else "")
    return 0 if status < 400 else 1


if __name__ == "__main__":
    sys.exit(main())
