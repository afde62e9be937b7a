"""The Received header (RFC 5321 §4.4) and its date (RFC 5322 §3.3)."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.mail.address import parse_forward_path, parse_reverse_path
from pigeon.mail.envelope import Envelope, Recipient
from pigeon.queue.trace import local_date, received_header

# 2026-01-02T03:04:05Z
T0 = 1767323045


def _envelope(client_name: str = "client.example.org") -> Envelope:
    env = Envelope(
        reverse_path=parse_reverse_path("<alice@example.org>"),
        client_address="192.0.2.1",
        client_name=client_name,
        protocol="ESMTPS",
    )
    env.recipients.append(Recipient(forward_path=parse_forward_path("<bob@example.com>")))
    return env


@pytest.mark.parametrize(
    "timestamp",
    [T0, T0 + 0.5, T0 + 0.999998, T0 + 0.9999994, T0 + 0.9999996, T0 + 0.99999999,
     T0 + 1, T0 + 1.000001, 0.0, 0.9999997],
)
def test_local_date_is_formatdate(timestamp: float) -> None:
    # Twice: the first call may make the text, the second may reuse it.
    expected = email.utils.formatdate(timestamp, localtime=True)
    assert local_date(timestamp) == expected
    assert local_date(timestamp) == expected


@given(st.lists(st.floats(min_value=T0 - 3, max_value=T0 + 3), min_size=1, max_size=20))
def test_local_date_in_any_order(timestamps: list[float]) -> None:
    assert [local_date(t) for t in timestamps] == [
        email.utils.formatdate(t, localtime=True) for t in timestamps
    ]


def test_local_date_defaults_to_now() -> None:
    before = email.utils.formatdate(localtime=True)
    now = local_date()
    after = email.utils.formatdate(localtime=True)
    assert now in {before, after}


def test_received_header() -> None:
    date = email.utils.formatdate(T0 + 0.25, localtime=True)
    header = received_header(_envelope(), "1M8KGES2S6H8", "mx.example.com",
                             tls_info="TLSv1.3 TLS_AES_256_GCM_SHA384", timestamp=T0 + 0.25)
    assert header == (
        "Received: from client.example.org ([192.0.2.1])\r\n"
        "\tby mx.example.com (Pigeon) with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n"
        "\tid 1M8KGES2S6H8\r\n"
        "\tfor <bob@example.com>;\r\n"
        f"\t{date}\r\n"
    ).encode()


def test_received_header_never_carries_a_bare_cr_or_lf() -> None:
    date = email.utils.formatdate(T0, localtime=True)
    header = received_header(_envelope("bad\rname\nhere"), "1M8KGES2S6H8", "mx\nexample\r.com",
                             timestamp=T0)
    assert header == (
        "Received: from [192.0.2.1] (helo=bad?name?here)\r\n"
        "\tby mx?example?.com (Pigeon) with ESMTPS\r\n"
        "\tid 1M8KGES2S6H8\r\n"
        "\tfor <bob@example.com>;\r\n"
        f"\t{date}\r\n"
    ).encode()
