"""An aiosmtpd server that makes every message durable on its own before answering 250.

This is the straightforward way to write a durable SMTP receiver with aiosmtpd: the
``handle_DATA`` hook writes the message to a new file, fsyncs the file, fsyncs the
directory, and only then answers ``250``. Each message pays for its own fsyncs (there is no
group commit).

The benchmark starts it as a subprocess through :class:`AiosmtpdFsync`; by hand::

    python -m bench.peers.aiosmtpd_fsync --port 0 --directory DIR [--fsync inline|thread]

It prints ``listening 127.0.0.1:PORT`` once it accepts connections and runs until SIGTERM.

``--fsync inline`` (the default) does the write and the fsyncs in the event loop, as a
plain handler does; ``--fsync thread`` moves them to a worker thread with
``asyncio.to_thread`` so several sessions can wait for their fsyncs at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.common import REPO, ManagedProcess, count_files

__all__ = ["AiosmtpdFsync", "FsyncHandler", "serve", "write_durably"]

_LISTENING = re.compile(r"listening (\S+):(\d+)")


def write_durably(directory: Path, name: str, content: bytes) -> None:
    """Write ``content`` to ``directory/name``, fsync the file, then fsync the directory.

    Args:
        directory: an existing directory.
        name: a file name not used yet.
        content: the message bytes.

    Raises:
        OSError: the file could not be written or synced.
    """
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FsyncHandler:
    """aiosmtpd handler: one durable file per message.

    Args:
        directory: where messages are written.
        in_thread: run the write and fsyncs in a worker thread instead of the event loop.
    """

    def __init__(self, directory: Path, *, in_thread: bool) -> None:
        self.directory = directory
        self.in_thread = in_thread
        self._names = itertools.count(1)
        self.messages = 0

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Store the message durably, then accept it."""
        content = envelope.original_content or b""
        name = f"{os.getpid()}.{next(self._names)}"
        try:
            if self.in_thread:
                await asyncio.to_thread(write_durably, self.directory, name, content)
            else:
                write_durably(self.directory, name, content)
        except OSError as exc:
            print(f"aiosmtpd_fsync: write failed: {exc}", file=sys.stderr)
            return "451 4.3.0 Requested action aborted: local error in processing"
        self.messages += 1
        return "250 2.0.0 Ok: queued"


async def serve(host: str, port: int, directory: Path, *, in_thread: bool) -> None:
    """Serve until SIGTERM or SIGINT.

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one.
        directory: where messages are written.
        in_thread: see :class:`FsyncHandler`.
    """
    handler = FsyncHandler(directory, in_thread=in_thread)
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        return SMTP(handler, hostname="aiosmtpd.example.net", data_size_limit=None)

    server = await loop.create_server(factory, host=host, port=port)
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()
    print(f"stored {handler.messages}", flush=True)


class AiosmtpdFsync:
    """This server as a subprocess on 127.0.0.1, writing into ``root/messages``.

    Args:
        root: a fresh directory for the messages and the logs.
        fsync: ``"inline"`` or ``"thread"`` (see the module docstring).
        uvloop: run on uvloop when it is installed (as Pigeon does).
    """

    def __init__(
        self, root: Path, *, fsync: Literal["inline", "thread"] = "inline", uvloop: bool = True
    ) -> None:
        self.root = root
        self.directory = root / "messages"
        argv = [sys.executable, "-m", "bench.peers.aiosmtpd_fsync", "--port", "0",
                "--directory", str(self.directory), "--fsync", fsync]
        if uvloop:
            argv.append("--uvloop")
        self.process = ManagedProcess(argv, root, env={"PYTHONPATH": str(REPO)})
        self.port = 0

    def start(self, timeout: float = 60.0) -> AiosmtpdFsync:
        """Start it; return once it listens."""
        self.process.start()
        match = self.process.wait_for_output(_LISTENING, timeout)
        self.port = int(match.group(2))
        return self

    def stored(self) -> int:
        """Messages written so far."""
        return count_files(self.directory)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop it (SIGTERM, bounded wait)."""
        self.process.stop(timeout)


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--fsync", choices=("inline", "thread"), default="inline")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop when installed")
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.host, args.port, args.directory, in_thread=args.fsync == "thread"))


if __name__ == "__main__":
    main()
