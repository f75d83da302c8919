"""The freshness statement (version 1): a short-lived signed claim of which registry is the newest.

The timestamp role the registry delegates to (``RegistryDocument.timestamp``) signs one every minute,
valid for ten minutes by default: a process whose newest statement has expired, or names a newer
registry than the one it holds, knows its view of trust may be frozen. See
:mod:`services.kernel.freshness` for the exact bytes and the checks.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import AwareDatetime, Field

from schemas.common import WireModel

FRESHNESS_PAYLOAD_TYPE: Final = "application/vnd.lianfang.freshness.v1"
MAX_STATEMENT_BYTES: Final = 4096
TIMESTAMP_RECORD_KEY: Final = b"timestamp"
"""The Kafka key of statements on the registry topic (registry files are keyed ``registry``)."""


class FreshnessStatement(WireModel):
    """What the timestamp role signs."""

    v: Literal[1] = 1
    registry_version: int = Field(ge=1, description="the newest registry the signer knows of")
    registry_digest: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$", description="SHA-256 of that registry's signed payload"
    )
    issued: AwareDatetime
    expires: AwareDatetime = Field(description="no process relies on this statement from this time on")
