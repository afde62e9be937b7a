"""The POP3 server state machine, fed bytes: events, exact responses, states, limits."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest

from pigeon.mail.reply import Reply
from pigeon.protocol.pop3 import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthCancelled,
    AuthResponse,
    Capa,
    Challenge,
    CommandError,
    ConnectionClosed,
    Dele,
    List,
    LocalProtocolError,
    Noop,
    Pass,
    Quit,
    Response,
    Retr,
    Rset,
    ServerConnection,
    Stat,
    State,
    Stls,
    Top,
    Uidl,
    User,
    refusal_response,
)
from pigeon.protocol.pop3._events import Event

BODY = b"Subject: hi\r\n\r\n.leading dot\r\nline two\r\n"


@dataclass
class Driver:
    """Answers every event the way a simple application would; records what it sent.

    Mailbox: two messages (sizes 120 and 200); password "secret"; user any.
    """

    tls: bool = False
    plaintext: bool = True
    conn: ServerConnection = field(init=False)
    out: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    responses: list[bool] = field(default_factory=list)  # True when multi-line

    def __post_init__(self) -> None:
        self.conn = ServerConnection()
        self.conn.offer_stls = True
        self.conn.sasl_mechanisms = ("PLAIN",)
        self.conn.allow_plaintext_login = self.plaintext
        self.conn.tls = self.tls
        self._send(self.conn.greeting("ready"))
        self.deleted: set[int] = set()

    @property
    def state(self) -> State:
        return self.conn.state

    def _send(self, response: Response | Challenge) -> None:
        self.out += self.conn.send(response)
        self.responses.append(isinstance(response, Response) and response.multiline)

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            assert not isinstance(event, type(NEED_DATA))
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                continue
            self.answer(event)

    def _index(self, n: int) -> Response | None:
        if not 1 <= n <= 2:
            return Response(False, "no such message")
        if n in self.deleted:
            return Response(False, f"message {n} already deleted")
        return None

    def answer(self, event: Event) -> None:
        c = self.conn
        if isinstance(event, CommandError):
            self._send(event.response)
        elif isinstance(event, User):
            self._send(Response(True, "send PASS"))
        elif isinstance(event, Pass):
            ok = event.password == "secret"
            self._send(Response(ok, "welcome" if ok else "bad", code=None if ok else "AUTH"))
        elif isinstance(event, Auth):
            if event.initial_response is None:
                self._send(Challenge(b""))
            else:
                self._send(Response(event.initial_response == b"\0u\0secret", "auth done"))
        elif isinstance(event, AuthResponse):
            self._send(Response(event.data == b"\0u\0secret", "auth done"))
        elif isinstance(event, AuthCancelled):
            self._send(Response(False, "cancelled"))
        elif isinstance(event, Capa):
            self._send(c.capa_response())
        elif isinstance(event, Stls):
            self._send(Response(True, "Begin TLS"))
        elif isinstance(event, Stat):
            self._send(Response(True, "2 320"))
        elif isinstance(event, (List, Uidl)):
            if event.message is None:
                self._send(Response(True, "list", lines=("1 120", "2 200")))
            else:
                self._send(self._index(event.message) or Response(True, f"{event.message} x"))
        elif isinstance(event, (Retr, Top)):
            refusal = self._index(event.message)
            if refusal is not None:
                self._send(refusal)
            else:
                self._send(Response(True, "follows", body=True))
                self.out += c.send_body(BODY[:5])
                self.out += c.send_body(BODY[5:])
                self.out += c.end_body()
        elif isinstance(event, Dele):
            refusal = self._index(event.message)
            if refusal is None:
                self.deleted.add(event.message)
            self._send(refusal or Response(True, "deleted"))
        elif isinstance(event, Rset):
            self.deleted.clear()
            self._send(Response(True, "reset"))
        elif isinstance(event, Noop):
            self._send(Response(True))
        elif isinstance(event, Quit):
            self._send(Response(True, "bye"))
        else:  # pragma: no cover
            raise AssertionError(event)

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


def split_responses(data: bytes, multiline: list[bool]) -> list[bytes]:
    """Cut the wire output into responses, knowing which ones are multi-line."""
    out: list[bytes] = []
    pos = 0
    for multi in multiline:
        end = data.index(b"\r\n", pos) + 2
        if multi:
            end = data.index(b"\r\n.\r\n", end - 2) + 5
        out.append(data[pos:end])
        pos = end
    assert pos == len(data), data[pos:]
    return out


def logged_in() -> Driver:
    d = Driver()
    d.feed(b"USER u\r\nPASS secret\r\n")
    assert d.state is State.TRANSACTION
    d.take()
    return d


# ---------------------------------------------------------------------------- greeting, CAPA


def test_greeting_then_authorization() -> None:
    d = Driver()
    assert d.take() == b"+OK ready\r\n"
    assert d.state is State.AUTHORIZATION
    assert d.conn.next_event() is NEED_DATA


def test_capa_before_tls_hides_logins_and_offers_stls() -> None:
    d = Driver(plaintext=False)
    d.take()
    d.feed(b"CAPA\r\n")
    assert d.take() == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"PIPELINING\r\nSTLS\r\nIMPLEMENTATION Pigeon\r\n.\r\n"
    )


def test_capa_over_tls_lists_user_and_sasl_not_stls() -> None:
    d = Driver(tls=True, plaintext=False)
    d.take()
    d.feed(b"capa\r\n")
    assert d.take() == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\n"
        b"AUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION Pigeon\r\n.\r\n"
    )


def test_capa_in_transaction() -> None:
    d = logged_in()
    d.feed(b"CAPA\r\n")
    assert b"\r\nTOP\r\nUIDL\r\nUSER\r\n" in d.take()


# ---------------------------------------------------------------------------- USER / PASS


def test_user_pass_enters_transaction() -> None:
    d = Driver()
    d.take()
    d.feed(b"USER alice@example.com\r\nPASS secret\r\n")
    assert d.take() == b"+OK send PASS\r\n+OK welcome\r\n"
    assert d.events == [User("alice@example.com"), Pass("alice@example.com", "secret")]
    assert d.state is State.TRANSACTION


def test_password_keeps_spaces_and_is_not_in_repr() -> None:
    d = Driver()
    d.feed(b"USER u\r\nPASS  two words \r\n")
    assert d.events[1] == Pass("u", " two words ")
    assert "two" not in repr(d.events[1])
    assert d.take().endswith(b"-ERR [AUTH] bad\r\n")
    assert d.state is State.AUTHORIZATION


def test_pass_without_user_refused() -> None:
    d = Driver()
    d.take()
    d.feed(b"PASS secret\r\n")
    assert d.take() == b"-ERR PASS must follow a successful USER\r\n"
    assert d.state is State.AUTHORIZATION


def test_any_line_between_user_and_pass_forgets_the_user() -> None:
    d = Driver()
    d.take()
    d.feed(b"USER u\r\nCAPA\r\nPASS secret\r\n")
    assert d.take().endswith(b"-ERR PASS must follow a successful USER\r\n")
    d.feed(b"USER u\r\nBOGUS\r\nPASS secret\r\n")
    assert d.take().endswith(b"-ERR PASS must follow a successful USER\r\n")


def test_failed_pass_needs_a_new_user() -> None:
    d = Driver()
    d.take()
    d.feed(b"USER u\r\nPASS wrong\r\nPASS secret\r\n")
    assert d.take() == (
        b"+OK send PASS\r\n-ERR [AUTH] bad\r\n-ERR PASS must follow a successful USER\r\n"
    )


def test_refused_user_does_not_arm_pass() -> None:
    conn = ServerConnection()
    conn.allow_plaintext_login = True
    conn.send(conn.greeting("hi"))
    conn.receive_data(b"USER u\r\nPASS p\r\n")
    assert conn.next_event() == User("u")
    assert conn.send(Response(False, "no")) == b"-ERR no\r\n"
    event = conn.next_event()
    assert isinstance(event, CommandError)
    assert event.response.text == "PASS must follow a successful USER"


@pytest.mark.parametrize("line", [b"USER u", b"PASS p", b"AUTH PLAIN"])
def test_plaintext_login_refused_without_tls(line: bytes) -> None:
    d = Driver(plaintext=False)
    d.take()
    d.feed(line + b"\r\n")
    assert d.take() == (
        b"-ERR [AUTH] plaintext authentication not allowed without TLS; use STLS first\r\n"
    )


@pytest.mark.parametrize("line", [b"USER", b"USER a b", b"PASS"])
def test_user_pass_syntax(line: bytes) -> None:
    d = Driver()
    if line == b"PASS":
        d.feed(b"USER u\r\n")
    d.take()
    d.feed(line + b"\r\n")
    assert d.take().startswith(b"-ERR syntax: ")


def test_user_name_may_be_longer_than_40() -> None:
    d = Driver()
    d.take()
    name = "a" * 60 + "@example.com"
    d.feed(f"USER {name}\r\n".encode())
    assert d.events == [User(name)]


def test_apop_not_supported() -> None:
    d = Driver()
    d.take()
    d.feed(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")
    assert d.take() == b"-ERR APOP not supported; use USER/PASS or AUTH\r\n"


# ---------------------------------------------------------------------------- AUTH (RFC 5034)


def test_auth_plain_with_challenge() -> None:
    d = Driver()
    d.take()
    d.feed(b"AUTH PLAIN\r\n")
    assert d.take() == b"+ \r\n"
    assert d.state is State.SASL
    d.feed(base64.b64encode(b"\0u\0secret") + b"\r\n")
    assert d.take() == b"+OK auth done\r\n"
    assert d.state is State.TRANSACTION
    assert d.events == [Auth("PLAIN", None), AuthResponse(b"\0u\0secret")]


def test_auth_plain_initial_response() -> None:
    d = Driver()
    d.take()
    d.feed(b"auth plain " + base64.b64encode(b"\0u\0secret") + b"\r\n")
    assert d.events == [Auth("PLAIN", b"\0u\0secret")]
    assert d.state is State.TRANSACTION


def test_auth_empty_initial_response() -> None:
    d = Driver()
    d.feed(b"AUTH PLAIN =\r\n")
    assert d.events == [Auth("PLAIN", b"")]
    assert d.state is State.AUTHORIZATION


def test_auth_cancel_and_bad_base64_end_the_exchange() -> None:
    d = Driver()
    d.take()
    d.feed(b"AUTH PLAIN\r\n*\r\n")
    assert d.take() == b"+ \r\n-ERR cancelled\r\n"
    assert d.state is State.AUTHORIZATION
    d.feed(b"AUTH PLAIN\r\n%%%\r\n")
    assert d.take() == b"+ \r\n-ERR invalid base64 in authentication response\r\n"
    assert d.state is State.AUTHORIZATION
    assert isinstance(d.events[-1], CommandError)


def test_sasl_line_does_not_run_commands() -> None:
    d = Driver()
    d.take()
    d.feed(b"AUTH PLAIN\r\nQUIT\r\n")  # "QUIT" is valid base64: a response, not a command
    assert d.take() == b"+ \r\n-ERR auth done\r\n"
    assert d.events[-1] == AuthResponse(base64.b64decode(b"QUIT"))
    assert d.state is State.AUTHORIZATION


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"AUTH", b"-ERR syntax: AUTH mechanism [initial-response]"),
        (b"AUTH PLAIN a b", b"-ERR syntax: AUTH mechanism [initial-response]"),
        (b"AUTH CRAM-MD5", b"-ERR unsupported authentication mechanism"),
        (b"AUTH PLAIN ***", b"-ERR invalid base64 in initial response"),
    ],
)
def test_auth_refusals(line: bytes, text: bytes) -> None:
    d = Driver()
    d.take()
    d.feed(line + b"\r\n")
    assert d.take() == text + b"\r\n"
    assert d.state is State.AUTHORIZATION


def test_sasl_response_may_be_long() -> None:
    d = Driver()
    d.feed(b"AUTH PLAIN\r\n")
    d.take()
    d.feed(base64.b64encode(b"\0u\0" + b"p" * 3000) + b"\r\n")
    assert isinstance(d.events[-1], AuthResponse)
    assert d.take() == b"-ERR auth done\r\n"


# ---------------------------------------------------------------------------- STLS


def test_stls_discards_pipelined_plaintext() -> None:
    d = Driver(plaintext=False)
    d.take()
    d.feed(b"STLS\r\nUSER evil\r\nPASS secret\r\n")
    assert d.take() == b"+OK Begin TLS\r\n"
    assert d.state is State.TLS
    assert d.conn.next_event() is PAUSED
    d.conn.tls_started()
    d.pump()
    assert d.take() == b""
    assert d.events == [Stls()]
    assert d.state is State.AUTHORIZATION and d.conn.tls
    d.feed(b"STLS\r\n")
    assert d.take() == b"-ERR STLS not available (already in TLS)\r\n"


def test_stls_refused_when_not_offered_and_in_transaction() -> None:
    conn = ServerConnection()
    conn.send(conn.greeting("hi"))
    conn.receive_data(b"STLS\r\n")
    event = conn.next_event()
    assert isinstance(event, CommandError)
    assert event.response == Response(False, "STLS not available")
    d = logged_in()
    d.feed(b"STLS\r\n")
    assert d.take() == b"-ERR STLS only in the AUTHORIZATION state\r\n"


def test_tls_started_without_stls_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Driver().conn.tls_started()


# ---------------------------------------------------------------------------- TRANSACTION


def test_transaction_commands_before_login_refused() -> None:
    d = Driver()
    d.take()
    d.feed(b"STAT\r\nRETR 1\r\nNOOP\r\n")
    assert d.take() == (
        b"-ERR STAT not valid before authentication\r\n"
        b"-ERR RETR not valid before authentication\r\n"
        b"-ERR NOOP not valid before authentication\r\n"
    )


def test_authorization_commands_after_login_refused() -> None:
    d = logged_in()
    d.feed(b"USER u\r\nAUTH PLAIN\r\n")
    assert d.take() == b"-ERR already authenticated\r\n-ERR already authenticated\r\n"


def test_transaction_events() -> None:
    d = logged_in()
    d.feed(
        b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 1\r\nRETR 1\r\nTOP 2 0\r\nDELE 1\r\n"
        b"NOOP\r\nRSET\r\n"
    )
    assert d.events[2:] == [
        Stat(), List(None), List(2), Uidl(None), Uidl(1), Retr(1), Top(2, 0), Dele(1),
        Noop(), Rset(),
    ]
    assert d.state is State.TRANSACTION


def test_multiline_responses_are_stuffed_and_terminated() -> None:
    d = logged_in()
    d.feed(b"LIST\r\nRETR 1\r\n")
    assert d.take() == (
        b"+OK list\r\n1 120\r\n2 200\r\n.\r\n"
        b"+OK follows\r\nSubject: hi\r\n\r\n..leading dot\r\nline two\r\n.\r\n"
    )


@pytest.mark.parametrize(
    ("line", "response"),
    [
        (b"LIST x", b"-ERR invalid message number"),
        (b"LIST -1", b"-ERR invalid message number"),
        (b"LIST 1 2", b"-ERR syntax: LIST [msg]"),
        (b"RETR", b"-ERR syntax: RETR msg"),
        (b"RETR 1 2", b"-ERR syntax: RETR msg"),
        (b"RETR +1", b"-ERR invalid message number"),
        (b"DELE", b"-ERR syntax: DELE msg"),
        (b"TOP 1", b"-ERR syntax: TOP msg n"),
        (b"TOP 1 x", b"-ERR invalid number of lines"),
        (b"TOP x 1", b"-ERR invalid message number"),
        (b"STAT 1", b"-ERR syntax: STAT"),
        (b"NOOP x", b"-ERR syntax: NOOP"),
        (b"RSET x", b"-ERR syntax: RSET"),
        (b"QUIT now", b"-ERR syntax: QUIT"),
        (b"CAPA x", b"-ERR syntax: CAPA"),
        (b"RETR " + b"1" * 41, b"-ERR argument longer than 40 characters"),
        (b"XTND XMIT", b"-ERR unknown command"),
        (b"", b"-ERR empty command"),
        (b"NOOP\x00", b"-ERR control characters in command"),
        (b"NOOP \xff", b"-ERR command is not valid UTF-8"),
        (b"RETR 3", b"-ERR no such message"),
    ],
)
def test_bad_arguments(line: bytes, response: bytes) -> None:
    d = logged_in()
    d.feed(line + b"\r\n")
    assert d.take() == response + b"\r\n"
    assert d.state is State.TRANSACTION


def test_forty_digit_message_number_is_accepted() -> None:
    d = logged_in()
    d.feed(b"RETR " + b"0" * 39 + b"1\r\n")
    assert d.events[-1] == Retr(1)


def test_lenient_spacing_between_arguments() -> None:
    d = logged_in()
    d.feed(b"TOP  1   5 \r\n")
    assert d.events[-1] == Top(1, 5)


def test_pipelined_commands_answered_in_order_across_splits() -> None:
    d = logged_in()
    stream = b"STAT\r\nDELE 1\r\nDELE 1\r\nRSET\r\nDELE 1\r\n"
    for i in range(len(stream)):
        d.feed(stream[i : i + 1])
    assert d.take() == (
        b"+OK 2 320\r\n+OK deleted\r\n-ERR message 1 already deleted\r\n+OK reset\r\n"
        b"+OK deleted\r\n"
    )


# ---------------------------------------------------------------------------- QUIT / UPDATE


def test_quit_in_transaction_enters_update_then_closes() -> None:
    d = logged_in()
    d.conn.receive_data(b"QUIT\r\nNOOP\r\n")
    event = d.conn.next_event()
    assert event == Quit(update=True)
    assert d.state is State.UPDATE
    assert d.conn.next_event() is PAUSED
    assert d.conn.send(Response(True, "bye")) == b"+OK bye\r\n"
    assert d.state is State.CLOSED
    assert d.conn.next_event() is PAUSED


def test_quit_in_authorization_does_not_update() -> None:
    d = Driver()
    d.take()
    d.feed(b"QUIT\r\nUSER u\r\n")
    assert d.events == [Quit(update=False)]
    assert d.take() == b"+OK bye\r\n"
    assert d.state is State.CLOSED


def test_end_of_input_is_reported_once() -> None:
    d = logged_in()
    d.conn.receive_data(b"NOOP\r\nSTAT")
    d.conn.receive_data(b"")
    d.conn.receive_data(b"")
    d.pump()
    assert d.events[-2:] == [Noop(), ConnectionClosed()]
    assert d.conn.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        d.conn.receive_data(b"more")


def test_close_sends_an_unsolicited_err_and_stops() -> None:
    d = logged_in()
    assert d.conn.close(Response(False, "shutting down", code="SYS/TEMP")) == (
        b"-ERR [SYS/TEMP] shutting down\r\n"
    )
    assert d.state is State.CLOSED
    assert d.conn.close() == b""


# ---------------------------------------------------------------------------- limits


def test_255_octet_line_accepted_256_refused() -> None:
    d = logged_in()
    d.feed(b"NOOP" + b" " * 249 + b"\r\n")  # 255 octets with CRLF
    assert d.take() == b"+OK\r\n"
    d.feed(b"NOOP" + b" " * 250 + b"\r\n")
    assert d.take() == b"-ERR line too long\r\n"


def test_huge_line_is_discarded_as_it_arrives_and_answered_once() -> None:
    d = logged_in()
    for _ in range(100):
        d.feed(b"x" * 10_000)
        assert len(d.conn._buf) <= 10_000
    d.feed(b"\r\nNOOP\r\n")
    assert d.take() == b"-ERR line too long\r\n+OK\r\n"


def test_bare_lf_refused() -> None:
    d = logged_in()
    d.feed(b"NOOP\nSTAT\r\n")
    assert d.take() == b"-ERR commands end with CRLF\r\n+OK 2 320\r\n"


# ---------------------------------------------------------------------------- misuse


def test_send_without_owed_response_is_a_local_error() -> None:
    d = logged_in()
    with pytest.raises(LocalProtocolError):
        d.conn.send(Response(True))


@pytest.mark.parametrize(
    ("line", "response"),
    [
        (b"RETR 1", Response(True, "x")),
        (b"LIST", Response(True, "x")),
        (b"LIST 1", Response(True, "x", lines=())),
        (b"CAPA", Response(True, "x", body=True)),
        (b"NOOP", Challenge(b"")),
        (b"BOGUS", Response(True)),
    ],
)
def test_response_must_fit_the_command(line: bytes, response: Response | Challenge) -> None:
    conn = ServerConnection()
    conn.allow_plaintext_login = True
    conn.send(conn.greeting("hi"))
    conn.receive_data(b"USER u\r\nPASS p\r\n" + line + b"\r\n")
    conn.next_event()
    conn.send(Response(True))
    conn.next_event()
    conn.send(Response(True))
    assert conn.next_event() is not NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.send(response)


def test_body_calls_need_an_open_body() -> None:
    d = logged_in()
    with pytest.raises(LocalProtocolError):
        d.conn.send_body(b"x")
    with pytest.raises(LocalProtocolError):
        d.conn.end_body()


def test_body_without_final_crlf_gets_one_before_the_terminator() -> None:
    d = logged_in()
    d.conn.receive_data(b"RETR 1\r\n")
    d.conn.next_event()
    out = d.conn.send(Response(True, "follows", body=True))
    assert d.conn.sending_body and d.conn.next_event() is PAUSED
    out += d.conn.send_body(b".a\r\n.") + d.conn.send_body(b"b") + d.conn.end_body()
    assert out == b"+OK follows\r\n..a\r\n..b\r\n.\r\n"
    assert d.conn.next_event() is NEED_DATA


# ---------------------------------------------------------------------------- responses


def test_response_wire_forms() -> None:
    assert Response(True).to_bytes() == b"+OK\r\n"
    assert Response(False, "locked", code="IN-USE").to_bytes() == b"-ERR [IN-USE] locked\r\n"
    assert Response(True, "x", lines=(".", "..a", "b")).to_bytes() == (
        b"+OK x\r\n..\r\n...a\r\nb\r\n.\r\n"
    )
    assert Challenge(b"abc").to_bytes() == b"+ YWJj\r\n"
    assert str(Response(False, "no", code="SYS/TEMP")) == "-ERR [SYS/TEMP] no"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ok": True, "text": "a\r\nb"},
        {"ok": True, "lines": ("a\nb",)},
        {"ok": False, "lines": ()},
        {"ok": False, "body": True},
        {"ok": True, "lines": (), "body": True},
        {"ok": False, "code": "IN USE"},
        {"ok": False, "code": "A]"},
        {"ok": False, "code": "/A"},
    ],
)
def test_invalid_responses(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Response(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(535, "5.7.8", "bad credentials"), b"-ERR [AUTH] bad credentials\r\n"),
        (Reply(454, "4.7.0", "account locked"), b"-ERR [SYS/TEMP] account locked\r\n"),
        (Reply(421, "4.7.0", "blocked"), b"-ERR [SYS/TEMP] blocked\r\n"),
        (Reply(501, "5.5.2", "malformed"), b"-ERR malformed\r\n"),
    ],
)
def test_refusal_response_codes(reply: Reply, expected: bytes) -> None:
    assert refusal_response(reply).to_bytes() == expected
