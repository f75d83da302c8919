"""An agency's system under steady load, for the fault tests and the soak: police publish leads through
the SDK (durable outbox) and the women's federation through the HTTP gateway, in turn, at a fixed rate.

    python -m tests.faults.agency --home H --bootstrap B --prefix P --gateway URL --out FILE [--rate R]

Every lead is about a victim of its own who asks for a joint meeting, so the hub must raise exactly
one alert per accepted lead. A lead is *accepted* when ``publish_lead`` returned (it is in the outbox)
or the gateway answered 202; each accepted lead is one line of ``--out`` (JSON: event id, how, time).
A gateway that does not answer is asked again with the same ``Idempotency-Key`` until it does. On
SIGTERM the agency stops offering, waits for its outbox to drain, and writes a last line with the
counts it offered and had accepted.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services import trust
from services.gateway.client import signed_headers
from services.gateway.webhooks import signing_kid
from services.sdk.client import Client


def lead(n: int, seed: int) -> dict[str, Any]:
    """Lead ``n`` of a run: synthetic victim (a phone number of its own), asking for a joint meeting."""
    return {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "mapo",
        "victim": {
            "name": "测试",
            "phone": f"139{(seed * 1_000_003 + n) % 100_000_000:08d}",
            "is_minor": False,
        },
        "minor": False,
        "risk_indicators": [],
        "narrative": "测试",
        "requests_joint_meeting": True,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.agency")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--gateway", required=True, help="the gateway's base URL")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--outbox", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=4.0, help="leads a second, both channels together")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    domain = trust.open_domain(args.home)
    federation = domain.keystore("womens_federation")
    kid = signing_kid(federation, domain.registry(datetime.now(UTC)), datetime.now(UTC))
    police = Client.open(
        participant="police",
        home=args.home,
        bootstrap=args.bootstrap,
        outbox_path=args.outbox,
        topic_prefix=args.prefix,
    )
    offered = accepted = 0
    with args.out.open("a", buffering=1) as out:
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            offered += 1
            if n % 2 == 0:
                event_id, how = police.publish_lead(lead(n, args.seed)), "sdk"
            else:
                how = "gateway"
                event_id = _post(args.gateway, federation, kid, lead(n, args.seed), f"k{args.seed}-{n}", stop)
            if event_id is not None:
                accepted += 1
                out.write(json.dumps({"id": event_id, "via": how, "t": time.time()}) + "\n")
            n += 1
            next_at += 1 / args.rate
            stop.wait(max(0.0, next_at - time.monotonic()))
        drained = police.flush(timeout=300)
        police.close()
        out.write(json.dumps({"offered": offered, "accepted": accepted, "drained": drained}) + "\n")
    return 0


def _post(
    base: str, keystore: Any, kid: str, data: dict[str, Any], key: str, stop: threading.Event
) -> str | None:
    """POST one lead until the gateway answers; its event id on 202 (None if stopped first)."""
    body = json.dumps({"type": "lead.reported", "event": data}, ensure_ascii=False).encode()
    url = f"{base}/v1/events"
    while True:
        headers = signed_headers(keystore, kid, "POST", url, body, idempotency_key=key)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 202:
                    return str(json.loads(response.read())["event_id"])
        except (urllib.error.URLError, OSError, TimeoutError):
            pass  # the gateway is down or cut off: ask again with the same key
        if stop.wait(0.5):
            return None


if __name__ == "__main__":
    raise SystemExit(main())
