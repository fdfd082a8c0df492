"""The ``optuna-dashboard`` command binds 127.0.0.1 unless given ``--host`` (README's promise)."""

from __future__ import annotations

from pathlib import Path
import socket

import optuna
import pytest

from tests.dashboard_tests.conftest import free_port
from tests.dashboard_tests.conftest import start_dashboard


LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port``, read from /proc/net/tcp{,6}."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != LISTEN:
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_dashboard_listens_on_loopback_unless_given_host(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    optuna.create_study(storage=url, study_name="loopback")
    port = free_port()
    server = start_dashboard([url], port, tmp_path / "dashboard.log")  # no --host
    try:
        assert _listening_addresses(port) == {"127.0.0.1"}
        assert f"Listening on http://127.0.0.1:{port}/" in server.log.read_text()
    finally:
        server.stop()
    assert server.process.returncode is not None


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_listening_addresses_reads_ipv4_and_ipv6_loopback() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert _listening_addresses(s.getsockname()[1]) == set()  # bound, not listening
        s.listen()
        assert _listening_addresses(s.getsockname()[1]) == {"127.0.0.1"}
    if not socket.has_ipv6 or not Path("/proc/net/tcp6").exists():
        return
    try:
        s6 = socket.socket(socket.AF_INET6)
        s6.bind(("::1", 0))
    except OSError:  # no IPv6 loopback here
        return
    with s6:
        s6.listen()
        assert _listening_addresses(s6.getsockname()[1]) == {"::1"}
