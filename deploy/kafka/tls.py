"""A local certificate authority and broker certificate for the secured local Kafka, made with ``openssl``.

Standard library only (like :mod:`deploy.kafka.local`): it runs before the project's virtualenv exists.
Everything lands in one folder of the broker's data directory; private keys are mode 0600 and nothing
here prints key material.

    ca.crt        the CA certificate clients trust (LIANFANG_KAFKA_CA_FILE)
    ca.key        the CA's private key (only needed to issue more certificates)
    broker.crt    the broker certificate: SAN IP:127.0.0.1 and DNS:localhost, CN=lianfang-broker
    broker.pem    the broker's PKCS#8 private key followed by its certificate chain (Kafka's PEM keystore)

The broker certificate is also the broker's client certificate on the controller listener (mutual
TLS), where ``ssl.principal.mapping.rules`` maps its subject to the operator principal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BROKER_CN = "lianfang-broker"
CA_CN = "Lianfang local development CA"
DAYS = 825


class TlsError(Exception):
    """The certificates could not be made; the message says the fix."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the local CA and the broker's keystore live."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def broker_cert(self) -> Path:
        return self.folder / "broker.crt"

    @property
    def keystore(self) -> Path:
        return self.folder / "broker.pem"

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.ca_key, self.broker_cert, self.keystore))


def _openssl() -> str:
    if found := shutil.which("openssl"):
        return found
    raise TlsError(
        "`openssl` is needed to make the local CA and broker certificate and was not found.\n"
        "  fix: install it (Debian: `apt-get install openssl`)."
    )


def _run(openssl: str, *args: str) -> None:
    proc = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # openssl's stderr names files and options, never key bytes.
        raise TlsError(f"`openssl {args[0]}` failed:\n{proc.stderr.strip()}")


def _new_key(openssl: str, path: Path) -> None:
    """An RSA key in PKCS#8 PEM, unencrypted (Kafka's PEM keystore reads it without a key password)."""
    _run(openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))


def ensure_certificates(folder: Path, hosts: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    """Make the CA and broker certificate in ``folder`` unless a complete set is already there.

    ``hosts``: the DNS names the brokers answer on (the compose file's ``kafka-1`` … ``kafka-3``); the
    certificate also names ``127.0.0.1``.
    """
    files = TlsFiles(folder)
    if files.complete():
        return files
    openssl = _openssl()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the CA certificate is public; private keys are 0600 below
    with tempfile.TemporaryDirectory(dir=folder) as scratch_name:
        scratch = Path(scratch_name)
        ca_key, ca_crt = scratch / "ca.key", scratch / "ca.crt"
        key, csr, crt = scratch / "broker.key", scratch / "broker.csr", scratch / "broker.crt"
        ext = scratch / "broker.ext"
        old_umask = os.umask(0o077)
        try:
            _new_key(openssl, ca_key)
            _run(
                openssl,
                "req",
                "-x509",
                "-new",
                "-key",
                str(ca_key),
                "-sha256",
                "-days",
                str(DAYS),
                "-subj",
                f"/CN={CA_CN}",
                "-addext",
                "basicConstraints=critical,CA:TRUE,pathlen:0",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                str(ca_crt),
            )
            _new_key(openssl, key)
            _run(openssl, "req", "-new", "-key", str(key), "-subj", f"/CN={BROKER_CN}", "-out", str(csr))
            ext.write_text(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "subjectAltName=IP:127.0.0.1," + ",".join(f"DNS:{h}" for h in hosts) + "\n"
            )
            _run(
                openssl,
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca_crt),
                "-CAkey",
                str(ca_key),
                "-set_serial",
                str(int.from_bytes(os.urandom(8), "big")),
                "-sha256",
                "-days",
                str(DAYS),
                "-extfile",
                str(ext),
                "-out",
                str(crt),
            )
            keystore = scratch / "broker.pem"
            keystore.write_bytes(key.read_bytes() + crt.read_bytes() + ca_crt.read_bytes())
        finally:
            os.umask(old_umask)
        for src, dst in (
            (ca_key, files.ca_key),
            (ca_crt, files.ca_cert),
            (crt, files.broker_cert),
            (keystore, files.keystore),
        ):
            os.replace(src, dst)
    files.ca_cert.chmod(0o644)
    files.broker_cert.chmod(0o644)
    return files


if __name__ == "__main__":  # python -m deploy.kafka.tls FOLDER HOST[,HOST...]
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m deploy.kafka.tls FOLDER HOST[,HOST...]  (e.g. kafka-1,kafka-2,kafka-3)")
    try:
        made = ensure_certificates(Path(sys.argv[1]), tuple(h for h in sys.argv[2].split(",") if h))
    except TlsError as e:
        sys.exit(f"error: {e}")
    print(f"CA {made.ca_cert}; broker keystore {made.keystore} (mode 0600)")
