"""What `make run` prints: commands that work when pasted, and service lines without escape codes."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.cli import bus, service_process
from services.cli.local_kafka import LocalCluster
from services.cli.main import build_parser

pytestmark = pytest.mark.unit


def _registry() -> SimpleNamespace:
    return SimpleNamespace(version=3, document=SimpleNamespace(expires=datetime(2027, 1, 1, tzinfo=UTC)))


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / ".run" / "kafka-1node-secure"
    folder.mkdir(parents=True)
    (folder / "cluster.json").write_text(json.dumps({"secure": True}))
    (folder / "bootstrap").write_text("127.0.0.1:9999\n")
    (folder / "credentials.json").write_text(json.dumps({"operator": "x"}))
    return LocalCluster.open(folder)


def _commands(banner: str) -> Iterator[list[str]]:
    for line in banner.splitlines():
        if ".venv/bin/lianfang " in line:
            text = line[line.index(".venv/bin/lianfang ") :].split("  (")[0]
            yield shlex.split(text)


def test_every_command_the_banner_prints_parses_as_printed_and_names_the_local_cluster(
    local: LocalCluster,
) -> None:
    banner = bus.run_banner(
        local,
        local.bootstrap,
        48,
        _registry(),
        [],
        home=None,
        console=SimpleNamespace(name="demo", password="pw"),
    )
    commands = list(_commands(banner))
    assert len(commands) == 3
    for argv in commands:
        assert argv[0] == ".venv/bin/lianfang"
        args = build_parser().parse_args(argv[1:])
        assert args.local_kafka == Path(".run/kafka-1node-secure")
    assert "TLS + SCRAM-SHA-512" in banner


def _leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield " ".join(path), parser
    for action in subcommands:
        for name, sub in action.choices.items():
            yield from _leaf_commands(sub, (*path, name))


def test_every_command_that_talks_to_kafka_takes_the_local_cluster_option() -> None:
    kafka = {
        name: {o for a in sub._actions for o in a.option_strings}
        for name, sub in _leaf_commands(build_parser())
        if any("--bootstrap" in a.option_strings for a in sub._actions)
    }
    assert {"registry publish", "audit verify", "inbox", "serve"} <= set(kafka)
    assert [name for name, options in kafka.items() if "--local-kafka" not in options] == []


def test_a_plain_cluster_is_named_plaintext_in_the_banner(local: LocalCluster) -> None:
    plain = LocalCluster(folder=local.folder, bootstrap=local.bootstrap, secure=False)
    banner = bus.run_banner(
        plain,
        plain.bootstrap,
        48,
        _registry(),
        [],
        home=None,
        console=SimpleNamespace(name="demo", password="pw"),
    )
    assert "PLAINTEXT (no TLS, no login, no ACLs)" in banner


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"\x1b[?25lconsole      http://127.0.0.1:8088/\n", "console      http://127.0.0.1:8088/"),
        (b"\x1b[32mINFO\x1b[0m started\r\n", "INFO started"),
        (b"\x08\x08\x08 OK ^\x1b[?25h\n", " OK ^"),
        ("联防 lead\n".encode(), "联防 lead"),
    ],
    ids=["a cursor code", "colours and a carriage return", "backspaces of a spinner", "Chinese text"],
)
def test_a_service_line_is_printed_without_escape_codes(raw: bytes, clean: str) -> None:
    assert bus.clean_line(raw) == clean


def test_a_service_logs_its_own_info_lines_but_only_warnings_of_the_kafka_clients() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers.clear()
    try:
        with warnings.catch_warnings():
            service_process.configure_logging()
        assert logging.getLogger("lianfang.router").isEnabledFor(logging.INFO)
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.INFO)
        assert not logging.getLogger("kafka.cluster").isEnabledFor(logging.INFO)
        assert logging.getLogger("aiokafka.producer.sender").isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:], root.level = saved
        for name in service_process.QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize(
    ("choice", "preloaded"),
    [
        ("/opt/malloc/libjemalloc.so.2", "/opt/malloc/libjemalloc.so.2 libearlier.so"),
        ("none", "libearlier.so"),
    ],
)
def test_every_service_lianfang_run_starts_gets_the_allocator_the_settings_choose_in_front_of_what_was_preloaded(
    choice: str, preloaded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIANFANG_MALLOC_PRELOAD", choice)
    monkeypatch.setenv("LD_PRELOAD", "libearlier.so")
    environments: dict[str, dict[str, str]] = {}

    def start(cmd: list[str], env: dict[str, str], name: str, width: int) -> subprocess.Popen[bytes]:
        environments[name] = env
        return subprocess.Popen([sys.executable, "-c", "pass"])  # exits at once: supervise returns

    monkeypatch.setattr(bus, "_start", start)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert bus.supervise({}, list(bus.SERVICES)) == 0
    finally:  # supervise takes SIGTERM and SIGINT for itself: give them back to pytest
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert {name: env["LD_PRELOAD"] for name, env in environments.items()} == dict.fromkeys(
        bus.SERVICES, preloaded
    )


def test_a_dead_letter_s_size_is_its_left_out_bytes_and_a_header_that_is_no_number_is_not_believed() -> None:
    def letter(value: bytes, headers: list[tuple[str, bytes]]) -> SimpleNamespace:
        return SimpleNamespace(value=value, headers=headers)

    assert bus._describe(letter(b"", [("lianfang_value_bytes", b"4194304")]))["bytes"] == 4194304
    assert bus._describe(letter(b"abc", []))["bytes"] == 3
    hostile = letter(b"", [("lianfang_value_bytes", b"lots"), ("lianfang_reader", b"police/sdk")])
    assert bus._describe(hostile)["bytes"] == 0, "a problem record's header does not break the listing"
