"""Every client transcript in tests/cases/transcripts is played against a running Pigeon.

A server is started per distinct deployment config (the transcripts' ``config`` field) and
shared by the transcripts that use the same one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import DEFAULT_MAILBOXES, PigeonServer

from .runner import TRANSCRIPTS, load, run

# What each transcript needs beyond an inbound MTA listener; cases whose needs are not yet
# served are skipped with the reason.
_NEEDS_SUBMISSION = "needs the submission listener with STARTTLS and AUTH"
_NEEDS_STARTTLS = "needs STARTTLS on the MTA listener"
_NEEDS_PROXY = "needs PROXY protocol support on the listener"


def _skip_reason(case: dict[str, Any]) -> str | None:
    if case["port"] == "submission":
        return _NEEDS_SUBMISSION
    if any(step.get("action") == "starttls" for step in case["steps"]):
        return _NEEDS_STARTTLS
    return None


def _sections(config: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    sections: dict[str, dict[str, Any]] = {}
    mailboxes = list(DEFAULT_MAILBOXES)
    for key, value in config.items():
        if key == "max_message_size":
            sections.setdefault("limits", {})["max_message_size"] = value
        elif key == "max_received_headers":
            sections.setdefault("limits", {})["max_hops"] = value
        elif key == "idle_timeout_seconds":
            sections.setdefault("timeouts", {}).update(command=value, data=value)
        elif key == "mailboxes_extra":
            mailboxes += value
        # Keys about a PROXY front end only matter to steps marked only_if; without the
        # flag those steps are not played.
    return sections, mailboxes


_CASES = sorted(TRANSCRIPTS.glob("*.json"))
_servers: dict[str, PigeonServer] = {}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PigeonServer]]:
    yield _servers
    for srv in _servers.values():
        srv.stop()
    _servers.clear()


def _server_for(config: dict[str, Any], servers: dict[str, PigeonServer], root: Path
                ) -> PigeonServer:
    key = json.dumps(config, sort_keys=True)
    if key not in servers:
        sections, mailboxes = _sections(config)
        srv = PigeonServer(root / f"srv{len(servers)}", sections=sections, mailboxes=mailboxes)
        servers[key] = srv.start()
    return servers[key]


@pytest.mark.parametrize("path", _CASES, ids=[p.stem for p in _CASES])
def test_transcript(path: Path, servers: dict[str, PigeonServer],
                    tmp_path_factory: pytest.TempPathFactory) -> None:
    case = load(path)
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.getbasetemp() / "transcripts"
    srv = _server_for(case.get("config", {}), servers, root)
    failures = run(case, "127.0.0.1", srv.port)
    assert not failures, f"{case['id']} {case['title']}:\n" + "\n".join(failures)
