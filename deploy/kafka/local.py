"""A local Apache Kafka for development and CI: fetch the jars, format storage, start, wait, stop.

Standard library only, so it runs before the project's virtualenv exists. One node is a combined
broker and controller (KRaft, ``--standalone``); three nodes are three such processes forming a
static controller quorum, with replication factor 3 and ``min.insync.replicas=2``.

    python -m deploy.kafka fetch          # jars into deploy/kafka/.jars (once)
    python -m deploy.kafka up --secure    # TLS + SASL/SCRAM-SHA-512 + ACLs (see below); prints 127.0.0.1:PORT
    python -m deploy.kafka down           # stops every local cluster under .run/; no Java process is left

Layouts never share a folder: by default a cluster lives in ``.run/kafka-<N>node-<secure|plain>``
(:func:`default_data_dir`), and a folder formatted for one layout (node count, security) refuses to
start as another with one line naming the fix (:func:`check_layout`): KRaft data of a single node
cannot join a three-node quorum, and a plain cluster has no SCRAM users.

Secure mode (``LocalKafka.plan(..., secure=True)``): clients connect over ``SASL_SSL`` with
SCRAM-SHA-512; a local CA and the broker certificate are made in ``<data>/tls`` (:mod:`deploy.kafka.tls`);
one SCRAM credential per user (the operator and each participant) is created at format time with
``--add-scram`` and kept in ``<data>/credentials.json`` (mode 0600). The StandardAuthorizer denies what
no ACL allows; ``User:operator`` is the only super user. The controller listener is mutual TLS on
loopback, where the broker's certificate maps to the operator principal (SCRAM cannot serve the
controller listener: controllers need credentials before they have read the metadata log).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.kafka.tls import BROKER_CN, TlsError, TlsFiles, ensure_certificates

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
JARS_ROOT = HERE / ".jars"
STATE_FILE = "cluster.json"
LAYOUT_FILE = "layout.json"
RUN_DIR = Path(".run")
HEAP = "512m"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
CREDENTIALS_FILE = "credentials.json"
OPERATOR = "operator"
SCRAM_MECHANISM = "SCRAM-SHA-512"
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class LocalKafkaError(Exception):
    """Anything that keeps the local broker from starting or stopping; the message says the fix."""


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True, slots=True)
class Layout:
    """What a data folder was formatted for: how many nodes, and whether TLS + SCRAM + ACLs are on."""

    nodes: int
    secure: bool

    @property
    def name(self) -> str:
        return f"{self.nodes}node-{'secure' if self.secure else 'plain'}"

    def describe(self) -> str:
        size = "single-node" if self.nodes == 1 else f"{self.nodes}-node"
        return f"{size} {'secured' if self.secure else 'plaintext'}"


def default_data_dir(nodes: int = 1, *, secure: bool) -> Path:
    """The folder a layout uses unless told otherwise: ``.run/kafka-1node-secure`` and so on."""
    return RUN_DIR / f"kafka-{Layout(nodes, secure).name}"


def formatted_layout(data_dir: Path) -> Layout | None:
    """The layout ``data_dir`` holds, or ``None`` if nothing was formatted there yet.

    Folders formatted before the layout file existed are read from their nodes' storage.
    """
    recorded = data_dir / LAYOUT_FILE
    if recorded.is_file():
        state = json.loads(recorded.read_text())
        return Layout(int(state["nodes"]), bool(state["secure"]))
    formatted = sorted(p.parents[1] for p in data_dir.glob("node-*/data/meta.properties"))
    if not formatted:
        return None
    markers = [(d / "security").read_text().strip() for d in formatted if (d / "security").exists()]
    return Layout(len(formatted), bool(markers) and all(m == "secure" for m in markers))


def check_layout(data_dir: Path, wanted: Layout) -> None:
    """Refuse, in one line that names the fix, to start ``wanted`` on data of another layout."""
    found = formatted_layout(data_dir)
    if found is None or found == wanted:
        return
    raise LocalKafkaError(
        f"{data_dir} holds a {found.describe()} cluster, not the {wanted.describe()} one asked for; "
        f"fix: start it from its own folder ({default_data_dir(wanted.nodes, secure=wanted.secure)}, "
        f"the default for this layout: KAFKA_DATA / --data) or remove {data_dir} (its topics are lost)"
    )


# --------------------------------------------------------------------------- prerequisites


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise LocalKafkaError(f"could not read the Java version from `{java} -version`")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """Return a Java 17+ executable (``JAVA_HOME`` first, then ``PATH``) or say how to get one."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if found := shutil.which("java"):
        candidates.append(found)
    for java in candidates:
        if Path(java).exists() and _java_major(java) >= 17:
            return java
    raise LocalKafkaError(
        "Java 17 or newer is needed to run the local Kafka broker and none was found.\n"
        "  fix: install it (Debian: `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
    )


def find_maven() -> str:
    if found := shutil.which("mvn"):
        return found
    raise LocalKafkaError(
        "Maven (`mvn`) is needed once, to fetch the Kafka jars from Maven Central, and was not found.\n"
        "  fix: install it (Debian: `apt-get install maven`)."
    )


# --------------------------------------------------------------------------- jars


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def jars_dir() -> Path:
    """Where the jars of the current pom.xml live once fetched (a new pom means a new folder)."""
    return JARS_ROOT / _pom_digest()


def fetch_jars(*, quiet: bool = False) -> Path:
    """Fetch the broker jars once; later calls reuse them.

    Maven copies into a scratch folder that is renamed into place only after it succeeded, with a
    ``COMPLETE`` marker, so a download that was cut short is never taken for a complete one.
    """
    target = jars_dir()
    if (target / "COMPLETE").is_file():
        return target
    mvn = find_maven()
    JARS_ROOT.mkdir(parents=True, exist_ok=True)
    scratch = JARS_ROOT / f".partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={scratch}",
        "-DincludeScope=runtime",
    ]
    if not quiet:
        print("fetching the Kafka jars from Maven Central (once) ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    jars = list(scratch.glob("*.jar")) if scratch.is_dir() else []
    if proc.returncode != 0 or not any(j.name.startswith("kafka_2.13-") for j in jars):
        shutil.rmtree(scratch, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise LocalKafkaError(
            "fetching the Kafka jars with Maven failed (nothing was kept; the next run tries again).\n"
            f"  command: {' '.join(cmd)}\n  Maven said:\n{tail}\n"
            "  fix: check that Maven Central is reachable (proxy settings in ~/.m2/settings.xml)."
        )
    (scratch / "COMPLETE").write_text(_pom_digest() + "\n")
    try:
        scratch.rename(target)
    except OSError:  # another process finished first: theirs is as good as ours
        shutil.rmtree(scratch, ignore_errors=True)
        if not (target / "COMPLETE").is_file():
            raise
    return target


# --------------------------------------------------------------------------- ports and readiness


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise LocalKafkaError(
                f"port 127.0.0.1:{port} is already taken, so the broker cannot listen there.\n"
                "  fix: stop whatever holds it (`make kafka-down`, or `ss -ltnp` to find it), "
                "or choose another port (KAFKA_PORT=...)."
            ) from e


def _metadata_request(correlation_id: int) -> bytes:
    # Metadata v4 (a version Kafka 4 still serves), request header v1, all topics (null array).
    client_id = b"lianfang-probe"
    body = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body += struct.pack(">ib", -1, 0)
    return struct.pack(">i", len(body)) + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


@dataclass(frozen=True)
class ProbeAuth:
    """How the readiness probe logs in to a secured listener: TLS with ``ca_file``, then SCRAM-SHA-512."""

    username: str
    password: str = field(repr=False)
    ca_file: Path


class ProbeAuthError(ConnectionError):
    """The broker refused the probe's SASL login (wrong user or password)."""


def metadata_broker_count(host: str, port: int, timeout: float = 2.0, auth: ProbeAuth | None = None) -> int:
    """Ask one broker for cluster metadata; return how many brokers it lists."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        sock: socket.socket = raw
        if auth is not None:
            context = ssl.create_default_context(cafile=str(auth.ca_file))
            sock = context.wrap_socket(raw, server_hostname=host)
            _scram_login(sock, auth)
        sock.sendall(_metadata_request(7))
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        resp = _read_exact(sock, size)
    correlation_id, _throttle, n_brokers = struct.unpack(">iii", resp[:12])
    if correlation_id != 7:
        raise ConnectionError("unexpected correlation id in metadata response")
    return int(n_brokers)


def _roundtrip(sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"lianfang-probe"
    message = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    (size,) = struct.unpack(">i", _read_exact(sock, 4))
    resp = _read_exact(sock, size)
    if struct.unpack(">i", resp[:4])[0] != correlation_id:
        raise ConnectionError("unexpected correlation id in a SASL response")
    return resp[4:]


def _sasl_authenticate(sock: socket.socket, correlation_id: int, token: bytes) -> bytes:
    # SaslAuthenticate v1: auth_bytes -> error_code, error_message, auth_bytes, session_lifetime_ms.
    resp = _roundtrip(sock, 36, 1, correlation_id, struct.pack(">i", len(token)) + token)
    (error_code, msg_len) = struct.unpack(">hh", resp[:4])
    pos = 4 + max(msg_len, 0)
    if error_code != 0:
        message = resp[4:pos].decode(errors="replace") if msg_len > 0 else ""
        raise ProbeAuthError(f"SASL authentication failed (error {error_code}): {message}")
    (n,) = struct.unpack(">i", resp[pos : pos + 4])
    return resp[pos + 4 : pos + 4 + max(n, 0)]


def _scram_login(sock: socket.socket, auth: ProbeAuth) -> None:
    """SCRAM-SHA-512 (RFC 5802) over Kafka's SaslHandshake v1 and SaslAuthenticate v1."""
    mechanism = SCRAM_MECHANISM.encode()
    resp = _roundtrip(sock, 17, 1, 1, struct.pack(">h", len(mechanism)) + mechanism)
    if struct.unpack(">h", resp[:2])[0] != 0:
        raise ProbeAuthError(f"the broker does not offer {SCRAM_MECHANISM}")
    name = auth.username.replace("=", "=3D").replace(",", "=2C")
    client_nonce = secrets.token_urlsafe(24)
    first_bare = f"n={name},r={client_nonce}"
    server_first = _sasl_authenticate(sock, 2, f"n,,{first_bare}".encode()).decode()
    fields = dict(part.split("=", 1) for part in server_first.split(","))
    nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
    if not nonce.startswith(client_nonce):
        raise ProbeAuthError("the broker's SCRAM nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac("sha512", auth.password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha512")
    without_proof = f"c=biws,r={nonce}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha512(client_key).digest(), auth_message, "sha512")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    server_final = _sasl_authenticate(sock, 3, f"{without_proof},p={proof}".encode()).decode()
    expected = hmac.digest(hmac.digest(salted, b"Server Key", "sha512"), auth_message, "sha512")
    if not hmac.compare_digest(server_final, "v=" + base64.b64encode(expected).decode()):
        raise ProbeAuthError("the broker's SCRAM signature does not verify")


# --------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    pid: int | None = None
    host: str = "127.0.0.1"
    """The address it listens on and advertises."""
    netns: str | None = None
    """The Linux network namespace it runs in (``ip netns exec``), or None for this one."""

    def as_dict(self) -> dict[str, int | str | None]:
        return {
            "node_id": self.node_id,
            "port": self.port,
            "controller_port": self.controller_port,
            "pid": self.pid,
            "host": self.host,
            "netns": self.netns,
        }


@dataclass
class LocalKafka:
    """A local cluster of one or three combined broker+controller nodes, data under ``data_dir``."""

    data_dir: Path
    nodes: list[Node] = field(default_factory=list)
    secure: bool = False
    users: tuple[str, ...] = ()
    """SCRAM users made at format time besides the operator (secure mode only)."""

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    # -- secure mode: certificates and credentials

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.data_dir / "tls")

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients trust (secure mode)."""
        return self.tls.ca_cert

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

    def credentials(self) -> dict[str, str]:
        """Every SCRAM user's password (secure mode). Secrets: never print them."""
        try:
            data = json.loads(self.credentials_file.read_text())
        except (OSError, ValueError) as e:
            raise LocalKafkaError(
                f"no readable SCRAM credentials at {self.credentials_file} ({type(e).__name__}).\n"
                "  fix: start the broker with `python -m deploy.kafka up --secure` first."
            ) from e
        return {str(k): str(v) for k, v in data.items()}

    def password(self, user: str) -> str:
        try:
            return self.credentials()[user]
        except KeyError:
            raise LocalKafkaError(f"{user!r} has no SCRAM credential on this broker") from None

    def client_env(self, user: str) -> dict[str, str]:
        """The ``LIANFANG_KAFKA_*`` settings of a client logging in as ``user`` (password included)."""
        if not self.secure:
            return {"LIANFANG_BOOTSTRAP": self.bootstrap}
        return {
            "LIANFANG_BOOTSTRAP": self.bootstrap,
            "LIANFANG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LIANFANG_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "LIANFANG_KAFKA_SASL_USERNAME": user,
            "LIANFANG_KAFKA_SASL_PASSWORD": self.password(user),
            "LIANFANG_KAFKA_CA_FILE": str(self.ca_file),
        }

    def _ensure_credentials(self) -> dict[str, str]:
        """Load the credentials file, adding a fresh random password for each user that lacks one."""
        existing = self.credentials() if self.credentials_file.exists() else {}
        wanted = [OPERATOR, *self.users]
        for user in wanted:
            if not _USER_NAME.fullmatch(user):
                raise LocalKafkaError(f"{user!r} cannot be a SCRAM user name (letters, digits, _ . -)")
            existing.setdefault(user, secrets.token_urlsafe(24))
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(existing, out, indent=2, sort_keys=True)
            out.write("\n")
        self.credentials_file.chmod(0o600)
        return existing

    def _secure_properties(self, node: Node) -> list[str]:
        operator_password = self.password(OPERATOR)
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{OPERATOR}" password="{operator_password}";'
        )
        return [
            f"listeners=SASL_SSL://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.tls.keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.tls.ca_cert}",
            "ssl.endpoint.identification.algorithm=https",
            "listener.name.controller.ssl.client.auth=required",
            # The broker's own certificate (controller listener, mutual TLS) is the operator; any other
            # certificate keeps its full subject as principal, which no ACL names.
            f"ssl.principal.mapping.rules=RULE:^CN={BROKER_CN}$/{OPERATOR}/,DEFAULT",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{OPERATOR}",
            "allow.everyone.if.no.acl.found=false",
        ]

    # -- configuration

    def _properties(self, node: Node) -> str:
        n = len(self.nodes)
        rf = 3 if n >= 3 else 1
        isr = 2 if n >= 3 else 1
        voters = ",".join(f"{m.node_id}@{m.host}:{m.controller_port}" for m in self.nodes)
        quorum = (
            f"controller.quorum.voters={voters}"
            if n > 1
            else f"controller.quorum.bootstrap.servers={node.host}:{node.controller_port}"
        )
        listeners = (
            self._secure_properties(node)
            if self.secure
            else [
                f"listeners=PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
                f"advertised.listeners=PLAINTEXT://{node.host}:{node.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ]
        )
        lines = [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            quorum,
            *listeners,
            f"log.dirs={self.data_dir / f'node-{node.node_id}' / 'data'}",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            # How often the broker aborts transactions open past their timeout (10 s by default): a
            # router worker that died mid-batch holds back the inboxes' readers that long at most.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            "num.partitions=1",
            "offsets.topic.num.partitions=6",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.segment.bytes=67108864",
            "log.retention.check.interval.ms=60000",
        ]
        return "\n".join(lines) + "\n"

    def _node_dir(self, node: Node) -> Path:
        return self.data_dir / f"node-{node.node_id}"

    @property
    def layout(self) -> Layout:
        return Layout(len(self.nodes), self.secure)

    def _java_cmd(self, java: str, jars: Path, node: Node, *main: str) -> list[str]:
        heap = [f"-Xms{HEAP}", f"-Xmx{HEAP}"] if main[0] == "kafka.Kafka" else ["-Xmx256m"]
        return [
            java,
            *heap,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self._node_dir(node) / 'logs'}",
            f"-Dlianfang.data={self.data_dir}",
            "-cp",
            f"{jars}/*",
            *main,
        ]

    # -- lifecycle

    def start(self, *, timeout: float = READY_TIMEOUT_S) -> None:
        """Format storage (first time only), start every node and wait for metadata to list them all.

        On any failure the nodes already started are stopped before the error is raised.
        """
        check_layout(self.data_dir, self.layout)
        java = find_java()
        jars = fetch_jars()
        for node in self.nodes:
            if node.netns is None:  # a namespace of its own has every port free
                ensure_port_free(node.port)
                ensure_port_free(node.controller_port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            try:
                ensure_certificates(self.tls.folder)
            except TlsError as e:
                raise LocalKafkaError(str(e)) from e
            self._ensure_credentials()
        try:
            self._format(java, jars)
            for node in self.nodes:
                self._spawn(java, jars, node)
            self._save_state()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _format(self, java: str, jars: Path) -> None:
        cluster_id_file = self.data_dir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id() + "\n")
        cluster_id = cluster_id_file.read_text().strip()
        scram: list[str] = []
        if self.secure:
            for user, password in sorted(self.credentials().items()):
                scram += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        for node in self.nodes:
            ndir = self._node_dir(node)
            (ndir / "logs").mkdir(parents=True, exist_ok=True)
            props = ndir / "server.properties"
            fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a password
            with os.fdopen(fd, "w") as out:
                out.write(self._properties(node))
            if (ndir / "data" / "meta.properties").exists():
                self._check_same_mode(ndir)
                continue
            args = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(props)]
            args += scram
            if len(self.nodes) == 1:
                args.append("--standalone")
            proc = subprocess.run(
                self._java_cmd(java, jars, node, *args), capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                output = proc.stdout + proc.stderr
                for _user, password in self.credentials().items() if self.secure else ():
                    output = output.replace(password, "***")
                raise LocalKafkaError(
                    f"formatting the storage of node {node.node_id} failed:\n{output}"
                    f"  fix: remove {self.data_dir} if it holds an old cluster, then try again."
                )
            (ndir / "security").write_text("secure\n" if self.secure else "plaintext\n")
        layout = {"nodes": self.layout.nodes, "secure": self.layout.secure}
        (self.data_dir / LAYOUT_FILE).write_text(json.dumps(layout) + "\n")

    def _check_same_mode(self, ndir: Path) -> None:
        """A storage formatted plain cannot be started secure (it has no SCRAM users), nor back."""
        marker = ndir / "security"
        formatted_secure = marker.exists() and marker.read_text().strip() == "secure"
        if formatted_secure != self.secure:
            raise LocalKafkaError(
                f"{ndir} was formatted {'with' if formatted_secure else 'without'} security, and this start "
                f"is {'secure' if self.secure else 'plain'}.\n"
                f"  fix: use another --data folder, or remove {self.data_dir} (its topics are lost)."
            )

    def _spawn(self, java: str, jars: Path, node: Node) -> None:
        ndir = self._node_dir(node)
        out = (ndir / "logs" / "stdout.log").open("ab")
        cmd = self._java_cmd(java, jars, node, "kafka.Kafka", str(ndir / "server.properties"))
        if node.netns is not None:  # ip execs the command after entering the namespace: same pid
            cmd = ["ip", "netns", "exec", node.netns, *cmd]
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        out.close()
        node.pid = proc.pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = len(self.nodes)
        auth = ProbeAuth(OPERATOR, self.password(OPERATOR), self.ca_file) if self.secure else None
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.pid is not None and not _alive(node.pid):
                    raise LocalKafkaError(
                        f"Kafka node {node.node_id} exited during start-up.\n{self._log_tail(node)}"
                    )
            try:
                if all(metadata_broker_count(n.host, n.port, auth=auth) >= want for n in self.nodes):
                    return
                last_error = "not every broker is registered yet"
            except (OSError, ConnectionError, struct.error, KeyError, ValueError) as e:
                last_error = str(e) or type(e).__name__
            time.sleep(0.2)  # poll interval of a deadline loop, not a wait for a guess
        raise LocalKafkaError(
            f"the broker did not answer a metadata request within {timeout:.0f} s ({last_error}).\n"
            f"{self._log_tail(self.nodes[0])}\n"
            "  fix: look at the log above; a slow machine can take longer (KAFKA_READY_TIMEOUT=...)."
        )

    def _log_tail(self, node: Node, lines: int = 25) -> str:
        log = self._node_dir(node) / "logs" / "stdout.log"
        if not log.exists():
            return "(no log)"
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        return f"  last lines of {log}:\n" + "\n".join("    " + t for t in tail)

    def stop(self, *, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every node: SIGTERM (controlled shutdown), then SIGKILL after the deadline."""
        pids = [n.pid for n in self.nodes if n.pid is not None and _is_our_kafka(n.pid, self.data_dir)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for pid in pids:
            _reap(pid, deadline=time.monotonic() + 5)
        for node in self.nodes:
            node.pid = None
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node (for outage tests); ``restart_node`` brings it back on the same ports."""
        node = next(n for n in self.nodes if n.node_id == node_id)
        if node.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            _reap(node.pid, deadline=time.monotonic() + 10)
            node.pid = None
            self._save_state()

    def node_data_dir(self, node_id: int) -> Path:
        """The log directory of one node (``log.dirs``: its partitions and the metadata log)."""
        node = next(n for n in self.nodes if n.node_id == node_id)
        return self._node_dir(node) / "data"

    def node_alive(self, node_id: int) -> bool:
        """Whether the node's process runs (it may have halted by itself, e.g. on a failed log dir)."""
        node = next(n for n in self.nodes if n.node_id == node_id)
        return node.pid is not None and _alive(node.pid)

    def node_log(self, node_id: int) -> Path:
        """The node's own log (stdout and stderr of the broker)."""
        node = next(n for n in self.nodes if n.node_id == node_id)
        return self._node_dir(node) / "logs" / "stdout.log"

    def quorum_leader(self) -> int | None:
        """The node id of the active controller (the KRaft quorum's leader) as the nodes last wrote it
        to disk (``quorum-state``; the newest epoch wins), or None before any election."""
        best: tuple[int, int] | None = None
        for node in self.nodes:
            path = self._node_dir(node) / "data" / "__cluster_metadata-0" / "quorum-state"
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = json.loads(path.read_text())
                epoch, leader = int(state["leaderEpoch"]), int(state["leaderId"])
                if leader >= 0 and (best is None or epoch > best[0]):
                    best = (epoch, leader)
        return best[1] if best is not None else None

    def restart_node(self, node_id: int, *, timeout: float = READY_TIMEOUT_S) -> None:
        node = next(n for n in self.nodes if n.node_id == node_id)
        self._spawn(find_java(), fetch_jars(), node)
        self._save_state()
        self._wait_ready(timeout)

    # -- state shared between `up` and `down`

    def _save_state(self) -> None:
        state = {
            "bootstrap": self.bootstrap,
            "nodes": [n.as_dict() for n in self.nodes],
            "secure": self.secure,
            "users": list(self.users),
        }
        (self.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, data_dir: Path) -> LocalKafka | None:
        path = data_dir / STATE_FILE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        nodes = [Node(**n) for n in state["nodes"]]
        secure = bool(state.get("secure", False))
        return cls(data_dir=data_dir, nodes=nodes, secure=secure, users=tuple(state.get("users", ())))

    @classmethod
    def plan(
        cls,
        data_dir: Path,
        *,
        nodes: int = 1,
        port: int | None = None,
        secure: bool = False,
        users: Iterable[str] = (),
        hosts: Sequence[tuple[str, str]] = (),
    ) -> LocalKafka:
        """Choose ports for a new cluster (``port`` fixes the first node's client port).

        ``secure``: TLS + SASL/SCRAM-SHA-512 listeners, the StandardAuthorizer, ``User:operator`` as
        the only super user, and a SCRAM credential for the operator and each of ``users``.

        ``hosts``: one (address, network namespace) per node: each node runs in its namespace and
        listens on its address, ports 9092 (clients) and 9093 (controllers) (plaintext only).
        """
        if nodes not in (1, 3):
            raise LocalKafkaError(f"a local cluster has 1 or 3 nodes, not {nodes}")
        wanted = tuple(dict.fromkeys(u for u in users if u != OPERATOR))
        if wanted and not secure:
            raise LocalKafkaError("SCRAM users only exist on a secure cluster (secure=True)")
        if hosts:
            if len(hosts) != nodes or secure:
                raise LocalKafkaError(f"{nodes} nodes need {nodes} hosts, and hosts are plaintext only")
            planned = [
                Node(node_id=i + 1, port=9092, controller_port=9093, host=address, netns=netns)
                for i, (address, netns) in enumerate(hosts)
            ]
            return cls(data_dir=data_dir.resolve(), nodes=planned)
        planned = []
        for i in range(nodes):
            client = port + i if port is not None else free_port()
            planned.append(Node(node_id=i + 1, port=client, controller_port=free_port()))
        return cls(data_dir=data_dir.resolve(), nodes=planned, secure=secure, users=wanted)


def new_cluster_id() -> str:
    """A Kafka cluster id (16 random bytes, URL-safe base64), never starting with "-": the storage tool's
    argument parser would read such an id as an option (as Kafka's own ``random-uuid`` avoids)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that is not our child still answers kill(0); /proc tells the truth.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _reap(pid: int, *, deadline: float) -> None:
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _is_our_kafka(pid: int, data_dir: Path) -> bool:
    """Only signal a pid that is still a Kafka node of this data folder (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and f"-Dlianfang.data={data_dir}".encode() in cmdline


@contextlib.contextmanager
def running(
    data_dir: Path,
    *,
    nodes: int = 1,
    secure: bool = False,
    users: Iterable[str] = (),
    discard: bool = False,
) -> Iterator[LocalKafka]:
    """Start a local cluster for the duration of a ``with`` block. ``discard``: its data is thrown away
    afterwards (a test's), so the nodes are killed at the end rather than shut down in a controlled way,
    which takes a few seconds a node."""
    cluster = LocalKafka.plan(data_dir, nodes=nodes, secure=secure, users=users)
    cluster.start(timeout=float(os.environ.get("KAFKA_READY_TIMEOUT", READY_TIMEOUT_S)))
    try:
        yield cluster
    finally:
        cluster.stop(timeout=0 if discard else STOP_TIMEOUT_S)
