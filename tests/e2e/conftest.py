"""Fixtures: a running Pigeon server on loopback, shared by the tests of a module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import PigeonServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PigeonServer]:
    """A Pigeon with the default test deployment (example.com, alice/bob/carol/postmaster)."""
    srv = PigeonServer(tmp_path_factory.mktemp("pigeon"))
    srv.start()
    yield srv
    srv.stop()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value (bounded); return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def delivered(srv: PigeonServer, address: str, count: int, timeout: float = 20.0) -> list[Path]:
    """Wait until ``address`` has exactly ``count`` Maildir files (or fail); return them."""
    files = wait_for(lambda: len(srv.maildir_files(address)) >= count and
                     srv.maildir_files(address), timeout)
    assert len(files) == count, [f.name for f in files]
    return files
