"""The gateway's baseline: an aiohttp handler that only checks a request's signature.

``python -m tests.bench.gateway_baseline --home H --port P`` serves ``POST /v1/events`` on loopback with
what the gateway does before it touches the lead: parse the RFC 9421 ``Signature-Input``, find the
signing key in the registry, verify the Ed25519 signature over the same covered components, read the
body and check its ``Content-Digest``; then it answers 202 with a fresh event id, as the gateway does.
No pseudonyms, sealing, fsyncs or Kafka. ``GET /v1/openapi.json`` answers ``{}`` (the load generator
connects with it before its clock starts). :mod:`tests.bench.bench_adapters` drives it with the same
load generator as the gateway, so the two figures differ by the gateway's own work only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from services import trust
from services.gateway import httpsig
from services.kernel import envelope

PARTICIPANT = "police"


def application(home: Path) -> web.Application:
    registry = trust.open_domain(home).registry(datetime.now(UTC))

    async def post_event(request: web.Request) -> web.Response:
        now = datetime.now(UTC)
        message = httpsig.Message(
            request.method, f"http://{request.host}{request.raw_path}", tuple(request.headers.items())
        )
        try:
            signature = httpsig.parse_signature(message, tag=httpsig.REQUEST_TAG)
            public = registry.signing_key(PARTICIPANT, signature.keyid, at=now)
            httpsig.verify_signature(
                message,
                signature,
                public,
                now=now.timestamp(),
                required=["@method", "@target-uri", "content-digest", "content-type"],
                max_skew_s=httpsig.MAX_SKEW_S,
            )
            body = await request.read()
            httpsig.check_content_digest(request.headers.get("Content-Digest"), body)
        except httpsig.HttpSignatureError as e:
            return web.json_response({"type": e.problem}, status=401)
        return web.json_response({"event_id": envelope.new_event_id()}, status=202)

    async def get_openapi(_request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(client_max_size=256 * 1024)
    app.router.add_post("/v1/events", post_event)
    app.router.add_get("/v1/openapi.json", get_openapi)
    return app


async def serve(home: Path, port: int) -> None:
    runner = web.AppRunner(application(home), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.gateway_baseline")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.home, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
