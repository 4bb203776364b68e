"""The local stack's ports: a listener started on a port from ``free_port`` must be able
to bind it, also while other processes (pytest-xdist workers, ``frontforce up``) pick
ports and clients open connections."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from frontforce.localstack import free_port

PICK = ("from frontforce.localstack import free_port;"
        "print(' '.join(str(free_port()) for _ in range(200)))")


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_come_from_outside_the_range_the_kernel_gives_outgoing_connections() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(100)]
    assert not [p for p in ports if low <= p <= high]
    # and a client connection opened now cannot be on any of them
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        assert client.getsockname()[1] not in ports


def test_processes_picking_side_by_side_never_get_the_same_port() -> None:
    procs = [subprocess.Popen([sys.executable, "-c", PICK], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    picked = [int(p) for proc in procs for p in proc.communicate(timeout=60)[0].split()]
    picked += [free_port() for _ in range(200)]
    assert len(picked) == 800
    assert len(set(picked)) == len(picked)

