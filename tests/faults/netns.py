"""Hosts on one machine: each Kafka node and each service in its own Linux network namespace.

A :class:`Lab` makes one namespace per host and joins them with veth links to a bridge in the root
namespace, on a /24 of 198.18.0.0/15 (RFC 2544's range for benchmark tests, routed nowhere). The
bridge has the subnet's ``.1``, so the test process reaches every host; the hosts have ``.2`` and up
and no default route, and the root namespace does not forward (``net.ipv4.ip_forward``), so no packet
leaves the machine. Faults act on one host's link:

- :meth:`Lab.cut` / :meth:`Lab.heal`: its bridge port down / up, a partition (packets vanish, no
  connection is reset, as with a pulled cable or a dead switch port);
- :meth:`Lab.impair`: a slow and lossy link, a token bucket (``tc tbf``) each way and a random
  drop (``nft ... numgen random``); this kernel has no ``netem``, so there is no fixed added delay:
  the delay is the bucket's queue.

Everything is removed when the ``with`` block ends, whatever ends it; the processes started in a host
(:meth:`Host.command`) belong to the caller, which stops them first. Needs root and ``ip``; ``nft``
only for :meth:`Lab.impair`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

RANGE = ipaddress.ip_network("198.18.0.0/15")
"""Addresses reserved for network benchmark tests (RFC 2544): never routed on the internet."""

_CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    """The lab cannot be built here; the message says why and what to do."""


@dataclass(frozen=True)
class Host:
    """One host of the lab: a network namespace with one interface, ``eth0``, at ``address``."""

    name: str
    netns: str
    address: str
    link: str
    """Its veth end on the bridge, in the root namespace."""

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host (``ip netns exec`` ends in an exec: the pid is the command's)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside this host's namespace: sockets it opens are the host's (e.g.
        to scrape a service's /metrics on the host's 127.0.0.1)."""
        result: list[T] = []
        error: list[BaseException] = []

        def inside() -> None:
            try:
                _enter(self.netns)  # a namespace is per thread: this thread's alone
                result.append(fn())
            except BaseException as e:
                error.append(e)

        thread = threading.Thread(target=inside, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def check_available() -> None:
    """Raise :class:`NetnsError`, saying what is missing, unless this process can build a lab."""
    if os.geteuid() != 0:
        raise NetnsError(
            "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); this process runs as uid "
            f"{os.geteuid()}.\n  fix: run the fault tests as root (sudo make faults)."
        )
    if shutil.which("ip") is None:
        raise NetnsError("`ip` (iproute2) is not installed.\n  fix: apt-get install iproute2")
    probe = f"lfprobe{secrets.token_hex(3)}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        raise NetnsError(
            f"`ip netns add` failed: {made.stderr.strip()}.\n"
            "  fix: run on a kernel with network namespaces (CONFIG_NET_NS) and with CAP_SYS_ADMIN "
            "(a container needs --privileged)."
        )
    _run("ip", "netns", "del", probe, check=False)


def _free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A /24 of :data:`RANGE` that no interface of the root namespace uses (several labs may run)."""
    used = _run("ip", "-4", "-o", "addr", "show").stdout
    subnets = list(RANGE.subnets(new_prefix=24))
    rng.shuffle(subnets)
    for subnet in subnets:
        if f" {subnet.network_address + 1}/" not in used:
            return subnet
    raise NetnsError(f"every /24 of {RANGE} is in use on this machine")


class Lab:
    """Hosts in network namespaces on one bridge; use as a context manager."""

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be distinct and at least one: {names}")
        if len(names) > 250:
            raise ValueError("a lab has at most 250 hosts (one /24)")
        self.tag = secrets.token_hex(3)  # interface names must fit 15 characters
        self.bridge = f"lf{self.tag}br"
        self.subnet = _free_subnet(random.Random(self.tag))
        self.gateway_address = str(self.subnet.network_address + 1)
        self.hosts: dict[str, Host] = {
            name: Host(
                name=name,
                netns=f"lf-{self.tag}-{name}",
                address=str(self.subnet.network_address + 2 + i),
                link=f"lf{self.tag}h{i}",
            )
            for i, name in enumerate(names)
        }
        self._made: list[Callable[[], object]] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Lab:
        check_available()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made.append(functools.partial(_run, "ip", "link", "del", self.bridge, check=False))
        _run("ip", "addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for host in self.hosts.values():
            _run("ip", "netns", "add", host.netns)
            self._made.append(functools.partial(_run, "ip", "netns", "del", host.netns, check=False))
            _run("ip", "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            self._made.append(functools.partial(_run, "ip", "link", "del", host.link, check=False))
            _run("ip", "link", "set", host.link, "master", self.bridge)
            _run("ip", "link", "set", host.link, "up")
            inside = ("ip", "netns", "exec", host.netns)
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
            _run(*inside, "ip", "link", "set", "eth0", "up")

    def close(self) -> None:
        """Remove every namespace, link and the bridge this lab made (what is gone already is skipped)."""
        while self._made:
            undo = self._made.pop()
            with contextlib.suppress(NetnsError, subprocess.SubprocessError, OSError):
                undo()

    def exists(self) -> bool:
        """Whether any of this lab's namespaces or its bridge is still there."""
        names = _run("ip", "netns", "list").stdout
        bridge = _run("ip", "link", "show", self.bridge, check=False).returncode == 0
        return bridge or any(h.netns in names for h in self.hosts.values())

    # ------------------------------------------------------------------ faults

    def cut(self, name: str) -> None:
        """Partition a host: its bridge port goes down, its packets vanish (no reset, no error)."""
        _run("ip", "link", "set", self.hosts[name].link, "down")

    def heal(self, name: str) -> None:
        _run("ip", "link", "set", self.hosts[name].link, "up")

    def impair(self, name: str, *, rate_kbit: int, loss_percent: int) -> None:
        """A slow, lossy link for a host, both ways: a token bucket of ``rate_kbit`` on each end of
        its veth and ``loss_percent`` of its packets dropped at random, in and out."""
        if shutil.which("nft") is None:
            raise NetnsError("`nft` (nftables) is needed for a lossy link.\n  fix: apt-get install nftables")
        host = self.hosts[name]
        tbf = ("tbf", "rate", f"{rate_kbit}kbit", "burst", "16kb", "latency", "2s")
        _run("tc", "qdisc", "replace", "dev", host.link, "root", *tbf)
        _run("ip", "netns", "exec", host.netns, "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf)
        rules = (
            "table inet lianfang_loss {\n"
            f"  chain in {{ type filter hook input priority 0; numgen random mod 100 < {loss_percent} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; numgen random mod 100 < {loss_percent} drop; }}\n"
            "}\n"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", host.netns, "nft", "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode != 0:
            raise NetnsError(f"nft refused the loss rules: {proc.stderr.strip()}")

    def restore(self, name: str) -> None:
        """Undo :meth:`impair`."""
        host = self.hosts[name]
        _run("tc", "qdisc", "del", "dev", host.link, "root", check=False)
        _run("ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        _run(
            "ip", "netns", "exec", host.netns, "nft", "delete", "table", "inet", "lianfang_loss", check=False
        )


@contextlib.contextmanager
def lab(names: Sequence[str]) -> Iterator[Lab]:
    with Lab(names) as built:
        yield built
