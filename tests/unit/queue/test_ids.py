"""Queue ids: 12 characters of [0-9A-Z], unique, sortable by time."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.queue import ids as ids_module
from pigeon.queue.ids import QUEUE_ID_LENGTH, is_queue_id, new_queue_id

_SHAPE = re.compile(r"^[0-9A-Z]{12}$")
# Up to 2**45 ms after the epoch, the time range a queue id encodes.
_TIMES = st.floats(min_value=0, max_value=(2**45 - 1) / 1000, allow_nan=False)


@pytest.fixture(autouse=True)
def _fresh_sequence(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts as a new process would (no id made yet)."""
    monkeypatch.setattr(ids_module, "_last", 0)
    yield


def test_shape_and_uniqueness() -> None:
    ids = [new_queue_id() for _ in range(10_000)]
    assert QUEUE_ID_LENGTH == 12
    assert all(_SHAPE.match(i) and is_queue_id(i) for i in ids)
    assert len(set(ids)) == 10_000
    assert ids == sorted(ids)


def test_time_order_across_milliseconds() -> None:
    first = new_queue_id(4_000_000_000.0)
    second = new_queue_id(4_000_000_000.002)
    assert first < second
    assert first[:9] < second[:9]


def test_later_time_gives_later_id() -> None:
    a = new_queue_id(5_000_000_000.0)
    b = new_queue_id(5_000_000_001.0)
    assert a[:9] != b[:9]
    assert a < b


@given(st.lists(_TIMES, min_size=1, max_size=20))
def test_ids_are_queue_ids_and_increase_in_call_order(times: list[float]) -> None:
    # Other tests make ids for times near the end of the 45-bit range; start from a clean
    # process state so the monotonic counter cannot wrap inside this example.
    ids_module._last = 0
    ids = [new_queue_id(t) for t in times]
    assert all(is_queue_id(i) for i in ids)
    assert all(a < b for a, b in itertools.pairwise(ids))


@given(st.text(max_size=20))
def test_is_queue_id_accepts_only_the_alphabet(text: str) -> None:
    expected = len(text) == 12 and all(c in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" for c in text)
    assert is_queue_id(text) is expected


def test_is_queue_id_rejects_path_tricks() -> None:
    for bad in ("../../etc/pa", "0123456789AB/", "0123456789ab", "0123456789AI", ""):
        assert not is_queue_id(bad)
