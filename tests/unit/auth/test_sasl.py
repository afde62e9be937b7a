"""SASL PLAIN (RFC 4616) and LOGIN exchanges, sans-I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.auth.sasl import MECHANISMS, Credentials, SaslError, SaslExchange, SaslStep
from pigeon.mail.reply import Reply

MALFORMED = Reply(501, "5.5.2", "Error: malformed authentication response")


def test_mechanisms() -> None:
    assert MECHANISMS == ("PLAIN", "LOGIN")
    with pytest.raises(ValueError):
        SaslExchange("CRAM-MD5")
    assert SaslExchange("plain").mechanism == "PLAIN"


def test_plain_initial_response() -> None:
    step = SaslExchange("PLAIN").start(b"\x00alice@example.com\x00s3cret")
    assert step == SaslStep(credentials=Credentials("alice@example.com", "s3cret", ""))


def test_plain_with_authzid_and_utf8() -> None:
    step = SaslExchange("PLAIN").start("boss\x00bob\x00pässwörd".encode())
    assert step.credentials == Credentials("bob", "pässwörd", "boss")


def test_plain_challenge_then_response() -> None:
    x = SaslExchange("PLAIN")
    assert x.start(None) == SaslStep(challenge=b"")
    assert not x.done
    assert x.respond(b"\x00u\x00p").credentials == Credentials("u", "p")
    assert x.done
    with pytest.raises(SaslError):
        x.respond(b"\x00u\x00p")


@pytest.mark.parametrize("message", [
    b"",  # "=" (RFC 4954 §4 empty response)
    b"alice\x00secret",
    b"\x00\x00secret",
    b"\x00alice\x00",
    b"\x00a\x00b\x00c",
    b"\x00\xff\xfe\x00pw",
    b"\x00" + b"a" * 256 + b"\x00pw",
    b"\x00alice\x00" + b"p" * 256,
])
def test_plain_malformed(message: bytes) -> None:
    assert SaslExchange("PLAIN").start(message) == SaslStep(error=MALFORMED)


def test_plain_field_limit_is_255_octets() -> None:
    step = SaslExchange("PLAIN").start(b"\x00" + b"a" * 255 + b"\x00" + b"p" * 255)
    assert step.credentials == Credentials("a" * 255, "p" * 255)


def test_login_two_challenges() -> None:
    x = SaslExchange("LOGIN")
    assert x.start(None) == SaslStep(challenge=b"Username:")
    assert x.respond(b"alice@example.com") == SaslStep(challenge=b"Password:")
    assert x.respond(b"pw").credentials == Credentials("alice@example.com", "pw")


def test_login_username_as_initial_response_asks_only_for_password() -> None:
    x = SaslExchange("LOGIN")
    assert x.start(b"alice@example.com") == SaslStep(challenge=b"Password:")
    assert x.respond(b"pw").credentials == Credentials("alice@example.com", "pw")


@pytest.mark.parametrize("username,password", [(b"", b"pw"), (b"a\x00b", b"pw"),
                                               (b"alice", b""), (b"\xc3", b"pw")])
def test_login_malformed(username: bytes, password: bytes) -> None:
    x = SaslExchange("LOGIN")
    x.start(None)
    step = x.respond(username)
    if step.error is None:
        step = x.respond(password)
    assert step == SaslStep(error=MALFORMED)
    assert x.done


def test_start_twice_is_a_programming_error() -> None:
    x = SaslExchange("LOGIN")
    x.start(None)
    with pytest.raises(SaslError):
        x.start(None)
    with pytest.raises(SaslError):
        SaslExchange("PLAIN").respond(b"x")


def test_step_has_exactly_one_outcome() -> None:
    with pytest.raises(ValueError):
        SaslStep()
    with pytest.raises(ValueError):
        SaslStep(challenge=b"", error=MALFORMED)


def test_credentials_repr_hides_password() -> None:
    assert "hunter2" not in repr(Credentials("alice", "hunter2"))


@given(st.sampled_from(MECHANISMS), st.one_of(st.none(), st.binary(max_size=600)),
       st.lists(st.binary(max_size=300), max_size=4))
def test_any_input_gives_exactly_one_outcome_and_no_exception(
    mechanism: str, initial: bytes | None, responses: list[bytes]
) -> None:
    x = SaslExchange(mechanism)
    step = x.start(initial)
    for data in responses:
        if step.challenge is None:
            break
        step = x.respond(data)
    outcomes = [step.challenge, step.credentials, step.error]
    assert sum(o is not None for o in outcomes) == 1
    if step.credentials is not None:
        assert step.credentials.authcid and step.credentials.password
        assert "\x00" not in step.credentials.authcid + step.credentials.password
        assert len(step.credentials.password.encode()) <= 255
    if step.error is not None:
        assert step.error == MALFORMED
