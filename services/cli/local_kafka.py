"""Logging in to a local development Kafka (``python -m deploy.kafka up``) as one of its SCRAM users.

``--local-kafka DIR`` (or ``LIANFANG_LOCAL_KAFKA``) on any ``lianfang`` command that talks to Kafka reads
the cluster's address, whether it is secured, its CA and the users' passwords from the folder the
launcher keeps them in, and logs the command in as the principal it acts for: ``publish`` and
``inbox --as P`` as ``P``, ``simulate`` as the simulator, ``serve S`` as service ``S``, and the
operator's commands (``topics``, ``acls``, ``deadletter``) as the operator. So a command printed by
``make run`` works when pasted, with no password on the command line or in the shell's history.

The folder's files (written by ``deploy/kafka``): ``bootstrap``, ``cluster.json`` (``"secure"``),
``tls/ca.crt`` and ``credentials.json`` (user → password, mode 0600).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.kernel import acls, ids
from services.kernel.errors import UsageError
from services.kernel.principals import GATEWAY, OPERATOR, SIMULATOR

ENV = "LIANFANG_LOCAL_KAFKA"

SERVICE_PRINCIPALS: Mapping[str, str] = {
    "timestamp": acls.TIMESTAMP_PRINCIPAL,  # the only writer of freshness statements
    "router": ids.ROUTER,
    "hub": ids.HUB,
    "console": ids.COORDINATORS,
    "gateway": GATEWAY,
    "pseudonymizer": ids.PLC,  # its operating participant, which signs its audit trail
}
"""The principal each service of ``lianfang serve`` logs in as on a local cluster."""


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster's address and, when secured, its CA and its users' passwords."""

    folder: Path
    bootstrap: str
    secure: bool
    passwords: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def ca_file(self) -> Path:
        return self.folder / "tls" / "ca.crt"

    @classmethod
    def open(cls, folder: Path) -> LocalCluster:
        """Read a running cluster's folder; a folder with no running cluster is a :class:`UsageError`."""
        folder = folder.resolve()
        try:
            state = json.loads((folder / "cluster.json").read_text())
            bootstrap = (folder / "bootstrap").read_text().strip()
        except (OSError, ValueError):
            raise UsageError(
                f"no local Kafka is running from {folder}; fix: `make kafka-up` (or `make run`) starts it"
            ) from None
        secure = bool(state.get("secure", False))
        passwords: dict[str, str] = {}
        if secure:
            try:
                passwords = json.loads((folder / "credentials.json").read_text())
            except (OSError, ValueError) as e:
                raise UsageError(f"cannot read the local Kafka's credentials in {folder}: {e}") from None
        return cls(folder=folder, bootstrap=bootstrap, secure=secure, passwords=passwords)

    def env(self, principal: str) -> dict[str, str]:
        """``LIANFANG_BOOTSTRAP`` and ``LIANFANG_KAFKA_*`` that log in as ``principal`` (secured), or
        that connect in plaintext (a plain cluster knows no principals)."""
        env = {"LIANFANG_BOOTSTRAP": self.bootstrap}
        if not self.secure:
            return {**env, "LIANFANG_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
        if principal not in self.passwords:
            raise UsageError(
                f"the local Kafka in {self.folder} has no SCRAM user {principal!r}; fix: a participant added "
                f"after the cluster was made needs a new cluster (`make kafka-down`, remove {self.folder})"
            )
        return {
            **env,
            "LIANFANG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LIANFANG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "LIANFANG_KAFKA_SASL_USERNAME": principal,
            "LIANFANG_KAFKA_SASL_PASSWORD": self.passwords[principal],
            "LIANFANG_KAFKA_CA_FILE": str(self.ca_file),
        }


def principal_for(command: str, *, participant: str | None = None, service: str | None = None) -> str:
    """Whom a ``lianfang`` command logs in as on a local cluster."""
    if command in ("publish", "inbox", "import") and participant:
        return participant
    if command == "simulate":
        return SIMULATOR
    if command == "serve" and service is not None and service in SERVICE_PRINCIPALS:
        return SERVICE_PRINCIPALS[service]
    return OPERATOR


def add_option(parser: argparse.ArgumentParser) -> None:
    """``--local-kafka DIR`` on a command that talks to Kafka."""
    parser.add_argument(
        "--local-kafka",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"log in to the local Kafka kept in DIR (make kafka-up/run) as the principal this command acts "
        f"for (default: ${ENV}; overrides LIANFANG_BOOTSTRAP and LIANFANG_KAFKA_*)",
    )


def login(args: argparse.Namespace) -> LocalCluster | None:
    """With ``--local-kafka`` (or ``LIANFANG_LOCAL_KAFKA``): set this process's ``LIANFANG_BOOTSTRAP`` and
    ``LIANFANG_KAFKA_*`` to log in as the principal the command acts for, and return the cluster."""
    folder: Path | None = getattr(args, "local_kafka", None)
    if folder is None and "local_kafka" in vars(args) and os.environ.get(ENV):
        folder = Path(os.environ[ENV])
    if folder is None:
        return None
    cluster = LocalCluster.open(folder)
    principal = principal_for(
        str(getattr(args, "command", "")),
        participant=getattr(args, "participant", None),
        service=getattr(args, "service", None),
    )
    os.environ.update(cluster.env(principal))
    return cluster
