"""Strimzi's CRDs from Maven Central, for validating ``deploy/k8s`` (``python -m deploy.k8s.crds``).

Strimzi publishes its API model (``io.strimzi:api``) and the generator that produces the CRDs it
installs (``io.strimzi:crd-generator``), not the CRD YAML. This fetches both with Maven (as
:mod:`deploy.kafka.local` fetches the broker) and runs the generator once; the CRDs land in
``deploy/k8s/.crds/<digest of schemas/pom.xml>/``, with a ``COMPLETE`` marker written last, so a
cut-short run is never taken for a complete one. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from deploy.kafka.local import LocalKafkaError, find_java, find_maven

HERE = Path(__file__).resolve().parent
POM = HERE / "schemas" / "pom.xml"
ROOT = HERE / ".crds"
GENERATOR = "io.strimzi.crdgenerator.CrdGenerator"
API_VERSION = "v1beta2"
KINDS = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
    "KafkaUser": "io.strimzi.api.kafka.model.user.KafkaUser",
}


def crds_dir() -> Path:
    return ROOT / hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def fetch_crds() -> Path:
    """The folder of ``<Kind>.yaml`` CRDs for every kind in :data:`KINDS` (made once)."""
    target = crds_dir()
    if (target / "COMPLETE").is_file():
        return target
    mvn, java = find_maven(), find_java()
    ROOT.mkdir(parents=True, exist_ok=True)
    scratch = ROOT / f".partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    jars = scratch / "jars"
    fetch = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={jars}"]
    fetch.append("-DincludeScope=runtime")
    generate = [java, "-cp", f"{jars}/*", GENERATOR, "--yaml", "--crd-api-version", "v1"]
    generate += ["--api-versions", API_VERSION, "--storage-version", API_VERSION]
    generate += [f"{cls}={scratch / kind}.yaml" for kind, cls in KINDS.items()]
    for step, cmd in (
        ("fetching Strimzi's api and crd-generator with Maven", fetch),
        ("generating", generate),
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise LocalKafkaError(
                f"{step} Strimzi's CRDs failed (nothing was kept):\n{tail}\n"
                "  fix: check that Maven Central is reachable (proxy settings in ~/.m2/settings.xml)."
            )
    shutil.rmtree(jars)
    (scratch / "COMPLETE").write_text(POM.name + "\n")
    try:
        scratch.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


if __name__ == "__main__":
    try:
        print(fetch_crds())
    except LocalKafkaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
