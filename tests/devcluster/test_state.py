"""Ports for the processes a devcluster and the tests start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devcluster import state
from devcluster.state import ephemeral_ports, free_port


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    ephemeral = ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if p in ephemeral]
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", port))


def test_a_host_whose_ports_are_all_ephemeral_still_gets_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = tmp_path / "ip_local_port_range"
    wide.write_text("1024\t65535\n")
    monkeypatch.setattr(state, "EPHEMERAL_RANGE_FILE", wide)
    assert ephemeral_ports() == range(1024, 65536)
    assert 0 < free_port() < 65536
