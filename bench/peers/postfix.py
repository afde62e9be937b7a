"""A private Postfix instance on 127.0.0.1, with its own configuration and queue.

The Debian ``postfix`` package is installed for its tools only (the system instance is not
configured and not running). This module runs a second, private instance: its own
``config_directory``, ``queue_directory`` and ``data_directory`` under a temporary
directory, an SMTP listener on ``127.0.0.1:<port>`` (never port 25), its log in a file
(``maillog_file`` through ``postlogd``; there is no syslog), and local mailboxes delivered
by ``virtual(8)`` into Maildirs. It is started with ``postfix -c DIR start`` and stopped
with ``postfix -c DIR stop``; this needs root (Postfix drops to its ``postfix`` user).

The rest of the configuration is Postfix's defaults, as an administrator would run it
(including ``in_flow_delay``). ``main_cf`` adds or overrides parameters, e.g. a
``relayhost`` or ``default_transport`` for a delivery benchmark.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["POSTFIX", "PrivatePostfix", "unavailable_reason"]

POSTFIX = "/usr/sbin/postfix"
# The owner of delivered Maildir files (virtual(8) refuses uids below virtual_minimum_uid).
_MAILBOX_USER = "nobody"

# master.cf without the system services Postfix does not need here (no chroot: the queue
# directory is private anyway). "{listen}" is replaced by the SMTP listener.
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
virtual    unix  - n n -     - virtual
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def unavailable_reason() -> str | None:
    """Say why a private Postfix cannot run here, or None when it can.

    Returns:
        A short reason (not installed, not root, missing user or group), or None.
    """
    if not Path(POSTFIX).exists():
        return f"{POSTFIX} is not installed (Debian package postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (postfix -c DIR start)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
        pwd.getpwnam(_MAILBOX_USER)
    except KeyError as exc:
        return f"missing user or group {exc}"
    return None


class PrivatePostfix:
    """One private Postfix instance.

    Args:
        root: an empty directory, world-traversable (mode 0755 on it and its parents).
        port: the SMTP port on 127.0.0.1.
        mailboxes: addresses delivered into Maildirs under ``root/mail`` by virtual(8).
        hostname: ``myhostname``.
        main_cf: more ``main.cf`` parameters (override the ones written here).
    """

    def __init__(
        self,
        root: Path,
        *,
        port: int,
        mailboxes: Sequence[str] = ("bob@example.com",),
        hostname: str = "postfix.example.net",
        main_cf: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.port = port
        self.mailboxes = list(mailboxes)
        self.hostname = hostname
        self.extra = dict(main_cf or {})
        self.config_dir = root / "etc"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.mail_dir = root / "mail"
        self.maillog = root / "maillog"
        self.started = False

    # -- configuration -----------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The ``main.cf`` parameters written for this instance."""
        domains = sorted({address.rpartition("@")[2] for address in self.mailboxes})
        user = pwd.getpwnam(_MAILBOX_USER)
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": self.hostname.partition(".")[2] or self.hostname,
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "virtual_mailbox_domains": " ".join(domains),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
            "virtual_uid_maps": f"static:{user.pw_uid}",
            "virtual_gid_maps": f"static:{user.pw_gid}",
        }
        params.update(self.extra)
        return params

    def write_config(self) -> None:
        """Write ``main.cf``, ``master.cf`` and the mailbox map; set owners."""
        for path in (self.config_dir, self.queue_dir, self.data_dir, self.mail_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(main, encoding="ascii")
        master = _MASTER_CF.format(listen=f"127.0.0.1:{self.port}")
        (self.config_dir / "master.cf").write_text(master, encoding="ascii")
        vmailbox = "".join(
            f"{address} {address.rpartition('@')[2]}/{address.rpartition('@')[0]}/\n"
            for address in self.mailboxes
        )
        (self.config_dir / "vmailbox").write_text(vmailbox, encoding="utf-8")
        postfix = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix.pw_uid, postfix.pw_gid)
        user = pwd.getpwnam(_MAILBOX_USER)
        os.chown(self.mail_dir, user.pw_uid, user.pw_gid)

    # -- life cycle --------------------------------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 60.0) -> PrivatePostfix:
        """Write the config, check it, start Postfix and wait until SMTP answers.

        Raises:
            RuntimeError: ``postfix check`` or ``start`` failed, or nothing listened in
                time; the message has the end of the log.
        """
        self.write_config()
        for step in ("check", "start"):
            done = self._postfix(step)
            if done.returncode != 0:
                raise RuntimeError(f"postfix {step} failed (exit {done.returncode}): "
                                   f"{done.stderr.strip()}\n{self.log_tail()}")
            if step == "start":
                self.started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    if sock.recv(512).startswith(b"220"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not answer on 127.0.0.1:{self.port}\n"
                           f"{self.log_tail()}")

    def master_pid(self) -> int | None:
        """The pid of this instance's master(8), from its pid file."""
        try:
            text = (self.queue_dir / "pid" / "master.pid").read_text()
        except OSError:
            return None
        text = text.strip()
        return int(text) if text.isdigit() else None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop this instance (``postfix stop``; SIGKILL its master after ``timeout``)."""
        if not self.started:
            return
        pid = self.master_pid()
        try:
            self._postfix("stop", timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid is not None and _alive(pid):
            os.kill(pid, 9)
        self.started = False

    def log_tail(self, lines: int = 15) -> str:
        """The end of this instance's log."""
        try:
            text = self.maillog.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def maildir(self, address: str) -> Path:
        """The Maildir virtual(8) delivers ``address`` into."""
        local, _, domain = address.rpartition("@")
        return self.mail_dir / domain / local

    def maildir_count(self, address: str) -> int:
        """Messages delivered into ``address`` (files in ``new/`` and ``cur/``)."""
        total = 0
        for sub in ("new", "cur"):
            try:
                with os.scandir(self.maildir(address) / sub) as entries:
                    total += sum(1 for _ in entries)
            except FileNotFoundError:
                pass
        return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
