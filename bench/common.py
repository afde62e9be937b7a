"""What every benchmark needs: servers on loopback, the load generator, timing, output.

A benchmark module (see ``bench/accept.py``) builds on these pieces:

- :class:`BenchContext`: the options of this invocation (runs, scale, work directory) and
  the console;
- :class:`PigeonServer`: a ``pigeon serve`` subprocess with its own data directory and a
  generated TOML config, listening on 127.0.0.1;
- :class:`ManagedProcess`: any other server subprocess that prints a "listening" line;
- :func:`run_smtp_source`: Postfix's ``smtp-source`` load generator, timed;
- :func:`wait_until`, :func:`count_files`: bounded polling (end-to-end delivery);
- :class:`Report`: rich tables of msgs/s per server with the median of the runs and the
  ratios, and the JSON file in ``bench/results/``;
- :func:`machine_info`: cores, Python, uvloop, kernel, filesystem, its fsync latency and
  the cost of a file creation;
- :func:`ext4_image`: a fresh journaled ext4 in a loop-mounted image, for ``--ext4-image``.

Everything listens on 127.0.0.1, every count is bounded and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "REPO",
    "RESULTS_DIR",
    "SMTP_SINK",
    "SMTP_SOURCE",
    "BenchContext",
    "BenchError",
    "ManagedProcess",
    "PigeonServer",
    "Report",
    "Series",
    "SourceRun",
    "count_files",
    "create_latency",
    "ext4_image",
    "free_port",
    "fsync_latency",
    "machine_info",
    "median",
    "print_machine",
    "quiet_disk",
    "run_smtp_source",
    "toml_value",
    "wait_until",
    "workdir",
]

#: The repository root (the parent of ``bench/``).
REPO = Path(__file__).resolve().parent.parent
#: Where each benchmark writes ``<name>-<timestamp>.json`` (gitignored).
RESULTS_DIR = REPO / "bench" / "results"
#: Postfix's load generator and sink (Debian package ``postfix``).
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"

_LISTEN_RE = re.compile(r"listening\s+(\S+)\s+(\S+):(\d+)")


class BenchError(Exception):
    """A benchmark could not be run as asked (a server did not start, a run failed)."""


# --------------------------------------------------------------------------- context


@dataclass
class BenchContext:
    """One invocation of ``python -m bench``.

    Attributes:
        runs: how many times each server is measured (the table shows the median).
        scale: multiplies the message counts of every benchmark (1.0 = as specified;
            0.1 for a quick try that measures little).
        workdir: a fresh directory for this benchmark's servers and data.
        console: where tables and progress go.
        keep: keep ``workdir`` afterwards (for looking at logs).
        skip: server names not to run (``--skip postfix``).
    """

    runs: int
    scale: float
    workdir: Path
    console: Console
    keep: bool = False
    skip: frozenset[str] = frozenset()

    def count(self, n: int) -> int:
        """Scale a message count (at least 1)."""
        return max(1, round(n * self.scale))

    def run_dir(self, label: str) -> Path:
        """Make and return a new directory under :attr:`workdir` for one server run."""
        path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.workdir))
        path.chmod(0o755)
        return path

    def log(self, message: str) -> None:
        """Print a progress line."""
        self.console.log(message, highlight=False)


# --------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago on ``host``.

    For servers that cannot bind port 0 and report it (Postfix); a race with another
    program taking the port is possible but harmless (the server then fails to start).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _file_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A server subprocess whose stdout and stderr go to files in its directory.

    Args:
        argv: the command.
        directory: where ``stdout.log`` and ``stderr.log`` are written.
        env: extra environment variables.
    """

    def __init__(
        self, argv: Sequence[str], directory: Path, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.directory = directory
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        self._env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process (returns at once)."""
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self._env,
                cwd=self.directory,
            )
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        if self.proc is None:
            raise BenchError("process not started")
        return self.proc.pid

    def wait_for_output(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait (bounded) until a line of stdout matches ``pattern``; return the match.

        Raises:
            BenchError: the process exited or the deadline passed first.
        """
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(_file_text(self.stdout_path))
            if match:
                return match
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"{self.argv[0]} exited early:\n{self.output_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.argv[0]} did not start in {timeout:g} s:\n"
                                 f"{self.output_tail()}")
            time.sleep(0.05)

    def output_tail(self) -> str:
        """The last lines of stdout and stderr, for error messages."""
        return _tail(_file_text(self.stdout_path)) + "\n" + _tail(_file_text(self.stderr_path))

    def cpu_seconds(self) -> tuple[float, float] | None:
        """User and system CPU seconds used so far (Linux ``/proc``), or None."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL; return the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode


def toml_value(value: Any) -> str:
    """Format a Python value as a TOML value (str, int, float, bool, list)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@dataclass
class PigeonServer:
    """``pigeon serve`` with a generated config, an SMTP listener on 127.0.0.1 port 0.

    Args:
        root: a fresh directory for the config, the data directory and the logs.
        mailboxes: mailbox addresses to create.
        local_domains: the local domains.
        hostname: the server's name.
        sections: extra config tables, e.g. ``{"limits": {"max_connections_per_ip": 100}}``.
        listeners: listener kinds to bind on 127.0.0.1 port 0.
    """

    root: Path
    mailboxes: list[str] = field(default_factory=lambda: ["bob@example.com"])
    local_domains: list[str] = field(default_factory=lambda: ["example.com"])
    hostname: str = "mx.example.com"
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    listeners: list[str] = field(default_factory=lambda: ["smtp"])
    ports: dict[str, int] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def data_dir(self) -> Path:
        """The server's ``server.data_dir``."""
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        """The generated config file."""
        return self.root / "pigeon.toml"

    @property
    def port(self) -> int:
        """The port of the ``smtp`` listener."""
        return self.ports["smtp"]

    def write_config(self) -> Path:
        """Write the TOML config and return its path."""
        lines = [
            "[server]",
            f"hostname = {toml_value(self.hostname)}",
            f"data_dir = {toml_value(str(self.data_dir))}",
            "",
            "[domains]",
            f"local = {toml_value(self.local_domains)}",
            "",
        ]
        for kind in self.listeners:
            lines += ["[[listener]]", f"kind = {toml_value(kind)}",
                      'address = "127.0.0.1:0"', ""]
        for address in self.mailboxes:
            lines += ["[[mailbox]]", f"address = {toml_value(address)}", ""]
        for name, values in self.sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
            lines.append("")
        self.config_path.write_text("\n".join(lines), encoding="utf-8")
        return self.config_path

    def start(self, timeout: float = 60.0) -> PigeonServer:
        """Start the server; return once it printed its listeners.

        Raises:
            BenchError: it exited or did not start in time.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.process = ManagedProcess(
            [sys.executable, "-m", "pigeon", "serve", "-c", str(self.config_path)], self.root
        ).start()
        self.process.wait_for_output(re.compile(r"local domains:"), timeout)
        text = _file_text(self.process.stdout_path)
        self.ports = {m.group(1): int(m.group(3)) for m in _LISTEN_RE.finditer(text)}
        if "smtp" in self.listeners and "smtp" not in self.ports:
            raise BenchError(f"pigeon serve printed no smtp listener:\n{text}")
        return self

    def maildir(self, address: str) -> Path:
        """The Maildir of a local mailbox."""
        local, _, domain = address.partition("@")
        return self.data_dir / "mail" / domain / local

    def maildir_count(self, address: str) -> int:
        """Messages delivered into ``address`` (files in ``new/`` and ``cur/``)."""
        base = self.maildir(address)
        return count_files(base / "new") + count_files(base / "cur")

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop the server (SIGTERM, bounded wait); return its exit status."""
        if self.process is None:
            return None
        rc = self.process.stop(timeout)
        return rc


# --------------------------------------------------------------------------- load, timing


@dataclass(frozen=True)
class SourceRun:
    """One completed ``smtp-source`` run.

    Attributes:
        messages: messages sent (each answered 250; smtp-source stops at any other reply).
        sessions: parallel SMTP sessions.
        started: ``time.monotonic()`` at the start, seconds.
        elapsed: wall-clock seconds until smtp-source exited.
        argv: the command line.
    """

    messages: int
    sessions: int
    started: float
    elapsed: float
    argv: tuple[str, ...]

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.elapsed


def run_smtp_source(
    host: str,
    port: int,
    *,
    messages: int,
    sessions: int,
    size: int,
    sender: str,
    recipient: str,
    reuse: bool = True,
    timeout: float = 600.0,
    extra: Sequence[str] = (),
) -> SourceRun:
    """Send ``messages`` messages with Postfix's ``smtp-source`` and time it.

    Args:
        host: the server address (127.0.0.1).
        port: the server port.
        messages: messages in total, over all sessions (``-m``).
        sessions: parallel sessions (``-s``).
        size: payload bytes of each message, headers not counted (``-l``).
        sender: the reverse-path (``-f``).
        recipient: the forward-path (``-t``); it must exist on the server.
        reuse: send the next message over the same connection (``-d``).
        timeout: seconds before the run is killed.
        extra: more smtp-source options.

    Returns:
        The run. smtp-source exits non-zero at the first reply that is not the expected
        2xx/3xx, so a returned run means every message was accepted.

    Raises:
        BenchError: smtp-source is missing, failed or timed out.
    """
    if not Path(SMTP_SOURCE).exists():
        raise BenchError(f"{SMTP_SOURCE} not found (Debian package postfix; `make deps`)")
    argv = [SMTP_SOURCE, *(["-d"] if reuse else []), "-l", str(size), "-m", str(messages),
            "-s", str(sessions), "-f", sender, "-t", recipient, *extra, f"{host}:{port}"]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"smtp-source did not finish in {timeout:g} s") from exc
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"smtp-source failed (exit {done.returncode}): "
                         f"{_tail(done.stderr + done.stdout, 5)}")
    return SourceRun(messages, sessions, started, elapsed, tuple(argv))


def quiet_disk(directory: Path) -> float:
    """Flush every dirty page to disk (``sync``), then measure the fsync latency there.

    Called before each server run, so that a run does not pay for the writeback of the
    previous one.

    Returns:
        The median fsync latency afterwards, seconds (see :func:`fsync_latency`).
    """
    os.sync()
    return fsync_latency(directory, samples=20)


def count_files(directory: Path) -> int:
    """Entries in ``directory`` (0 when it does not exist)."""
    try:
        with os.scandir(directory) as entries:
            return sum(1 for _ in entries)
    except FileNotFoundError:
        return 0


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05
) -> float | None:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass.

    Returns:
        ``time.monotonic()`` when the predicate was first seen true, or None on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- machine


def fsync_latency(directory: Path, samples: int = 50) -> float:
    """Median seconds to create a 4 KiB file, fsync it and fsync its directory.

    Args:
        directory: where the probe files are made (in a ``fsync-probe`` subdirectory; they
            are left there, since deleting files makes the next creations slower on some
            filesystems).
        samples: files to time.

    Returns:
        The median, in seconds.
    """
    probe = Path(tempfile.mkdtemp(prefix="fsync-probe-", dir=directory))
    data = b"x" * 4096
    times = []
    for i in range(samples):
        start = time.perf_counter()
        fd = os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def create_latency(directory: Path, samples: int = 200) -> float:
    """Median seconds to create an empty file (open with O_CREAT|O_EXCL, then close).

    Every queued message costs a server at least one file creation. On ext4 without a
    journal the kernel checks each free inode it considers against recent deletions, and
    after many deletions a creation can cost a millisecond of CPU: this shows it.

    Args:
        directory: where the probe files are made (in a ``create-probe`` subdirectory,
            left there like the fsync probe's).
        samples: files to create.

    Returns:
        The median, in seconds.
    """
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=directory))
    times = []
    for i in range(samples):
        start = time.perf_counter()
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def ext4_image(parent: Path | None, size: str) -> Iterator[Path]:
    """A fresh ext4 file system (mkfs defaults, with its journal) in a loop-mounted image.

    The benchmarks then measure every server on the file system a Debian install gets by
    default, whatever the work directory's own file system is (see bench/README.md).
    Needs root, ``mkfs.ext4`` and a free loop device. The image is unmounted and removed
    afterwards.

    Args:
        parent: where the image file goes (default: the system temp directory).
        size: the image size for ``truncate -s``, e.g. ``"4G"`` (sparse).

    Yields:
        The mount point.

    Raises:
        BenchError: not root, or making or mounting the file system failed.
    """
    if os.geteuid() != 0:
        raise BenchError("--ext4-image needs root (it mounts a loop device)")
    scratch = Path(tempfile.mkdtemp(prefix="pigeon-bench-ext4-", dir=parent))
    scratch.chmod(0o755)  # Postfix's daemons, running as other users, go through it
    image, mount_point = scratch / "fs.img", scratch / "mnt"
    mount_point.mkdir()
    mounted = False
    try:
        for argv in (["truncate", "-s", size, str(image)],
                     ["mkfs.ext4", "-q", "-F", str(image)],
                     ["mount", "-o", "loop", str(image), str(mount_point)]):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
        mounted = True
        mount_point.chmod(0o755)
        yield mount_point
    finally:
        if mounted:
            subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def _mount_of(path: Path) -> str:
    """``device fstype options`` of the filesystem holding ``path``, from /proc/mounts."""
    best = ("", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 4:
            continue
        point = parts[1]
        if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) and len(
            point
        ) >= len(best[0]):
            best = (point, f"{parts[0]} {parts[2]} ({parts[3]})")
    return best[1] or "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _command_output(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info(workdir: Path) -> dict[str, Any]:
    """Describe the machine the numbers come from.

    Args:
        workdir: a directory on the filesystem the servers write to (the fsync latency
            is measured there).

    Returns:
        JSON-ready facts: cores, CPU, memory, kernel, Python, uvloop, the versions of the
        peers, the filesystem and its fsync latency, the Pigeon commit.
    """
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    commit = _command_output(["git", "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cores": cores,
        "usable_cores": usable,
        "cpu": _cpu_model(),
        "memory_bytes": memory,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "uvloop": _version("uvloop"),
        "aiosmtpd": _version("aiosmtpd"),
        "postfix": _command_output(["/usr/sbin/postconf", "-h", "mail_version"]),
        "pigeon_commit": None if commit is None else commit + ("+changes" if dirty else ""),
        "filesystem": _mount_of(workdir),
        "fsync_latency_seconds": fsync_latency(workdir),
        "create_latency_seconds": create_latency(workdir),
    }


def print_machine(console: Console, info: dict[str, Any]) -> None:
    """Print :func:`machine_info` as a short table."""
    table = Table(title="machine", show_header=False, title_justify="left")
    table.add_column("fact", style="bold")
    table.add_column("value")
    memory = info.get("memory_bytes")
    rows = [
        ("cores", f"{info['usable_cores']} usable of {info['cores']} ({info['cpu']})"),
        ("memory", f"{memory / 2**30:.1f} GiB" if memory else "unknown"),
        ("load average", " ".join(f"{v:.2f}" for v in info["load_average"] or [])),
        ("kernel", info["kernel"]),
        ("python", f"{info['python_implementation']} {info['python']}"),
        ("uvloop", info["uvloop"] or "not installed (asyncio's own loop)"),
        ("aiosmtpd", info["aiosmtpd"] or "not installed"),
        ("postfix", info["postfix"] or "not installed"),
        ("pigeon", info["pigeon_commit"] or "unknown"),
        ("filesystem", info["filesystem"]),
        ("fsync", f"{info['fsync_latency_seconds'] * 1000:.2f} ms median "
                  "(write 4 KiB + fsync file + fsync directory)"),
        ("file creation", f"{info['create_latency_seconds'] * 1e6:.0f} µs median "
                          "(empty file, no fsync)"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    load = (info["load_average"] or [0.0])[0]
    if load > max(1, info["usable_cores"]) / 2:
        console.print(f"[yellow]warning: the machine is busy (load {load:.1f} on "
                      f"{info['usable_cores']} cores); the numbers will be noisy[/yellow]")


# --------------------------------------------------------------------------- output


@dataclass
class Series:
    """One server's measurements of one quantity over the runs.

    Attributes:
        label: the server as shown, e.g. ``"Pigeon"``.
        values: one value per run (msgs/s); a run without a value is left out.
        notes: remarks shown under the table (a failed run, a timeout).
    """

    label: str
    values: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        """The median of :attr:`values`."""
        return median(self.values)


@dataclass
class Report:
    """The result of one benchmark: tables of msgs/s, ratios, and the JSON record.

    Attributes:
        name: the benchmark's name (file name of the JSON result).
        title: one line saying what was measured.
        params: the workload (counts, sizes, concurrency, the load generator command).
        machine: :func:`machine_info`.
        tables: metric title -> the series of that metric, first one is the reference
            ("vs first" column).
        ratios: ``(label, numerator series label, denominator series label, metric,
            target or None)``; printed and stored.
        notes: free remarks printed at the end.
        details: more measurements kept in the JSON only (e.g. server CPU per message).
    """

    name: str
    title: str
    params: dict[str, Any]
    machine: dict[str, Any]
    tables: dict[str, list[Series]] = field(default_factory=dict)
    ratios: list[tuple[str, str, str, str, float | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def series(self, metric: str, label: str) -> Series:
        """The series of ``label`` under ``metric``, created on first use (keeps order)."""
        rows = self.tables.setdefault(metric, [])
        for row in rows:
            if row.label == label:
                return row
        row = Series(label)
        rows.append(row)
        return row

    def ratio_value(self, numerator: str, denominator: str, metric: str) -> float | None:
        """Median of ``numerator`` divided by median of ``denominator`` under ``metric``."""
        top = self.series(metric, numerator).median
        bottom = self.series(metric, denominator).median
        if top is None or not bottom:
            return None
        return top / bottom

    def print(self, console: Console, runs: int) -> None:
        """Print one table per metric, then the ratios and the notes."""
        console.rule(f"[bold]{self.name}[/bold]: {self.title}")
        for metric, rows in self.tables.items():
            table = Table(title=metric, title_justify="left")
            table.add_column("server")
            for i in range(runs):
                table.add_column(f"run {i + 1}", justify="right")
            table.add_column("median", justify="right", style="bold")
            reference = rows[0].median if rows else None
            table.add_column(f"{rows[0].label} ÷ server" if rows else "", justify="right")
            for row in rows:
                cells = [f"{v:,.0f}" for v in row.values]
                cells += ["-"] * (runs - len(cells))
                med = row.median
                ratio = f"{reference / med:.2f}x" if reference and med else "-"
                table.add_row(row.label, *cells, "-" if med is None else f"{med:,.0f}", ratio)
            console.print(table)
            for row in rows:
                for note in row.notes:
                    console.print(f"  [dim]{row.label}: {note}[/dim]")
        for label, top, bottom, metric, target in self.ratios:
            value = self.ratio_value(top, bottom, metric)
            if value is None:
                console.print(f"{label}: not measured")
                continue
            verdict = ""
            if target is not None:
                met = "met" if value >= target else "NOT met"
                verdict = f"  (target >= {target:g}x: {met})"
            console.print(f"[bold]{label}: {value:.2f}x[/bold]{verdict}")
        for note in self.notes:
            console.print(f"[dim]{note}[/dim]")

    def to_json(self) -> dict[str, Any]:
        """The JSON record: params, machine, every run's value, medians and ratios."""
        return {
            "benchmark": self.name,
            "title": self.title,
            "started": self.started.isoformat(timespec="seconds"),
            "command": [sys.executable, "-m", "bench", *sys.argv[1:]],
            "params": self.params,
            "machine": self.machine,
            "metrics": {
                metric: {
                    row.label: {"runs": row.values, "median": row.median, "notes": row.notes}
                    for row in rows
                }
                for metric, rows in self.tables.items()
            },
            "ratios": [
                {"label": label, "numerator": top, "denominator": bottom, "metric": metric,
                 "value": self.ratio_value(top, bottom, metric), "target": target}
                for label, top, bottom, metric, target in self.ratios
            ],
            "notes": self.notes,
            "details": self.details,
        }

    def write_json(self, directory: Path = RESULTS_DIR) -> Path:
        """Write ``<name>-<timestamp>.json`` into ``directory``; return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        path = directory / f"{self.name}-{stamp}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


@contextlib.contextmanager
def workdir(parent: Path | None, name: str, keep: bool) -> Iterator[Path]:
    """A fresh directory for one benchmark, removed afterwards unless ``keep``.

    The directory is world-traversable (mode 0755): Postfix's delivery agents run as
    other users.
    """
    path = Path(tempfile.mkdtemp(prefix=f"pigeon-bench-{name}-", dir=parent))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
