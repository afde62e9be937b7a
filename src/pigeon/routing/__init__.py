"""Routing: where each forward-path goes (local mailbox, alias, remote) or why it is refused.

The router is the one place that decides this (DESIGN.md): the SMTP session asks it at RCPT
time, the queue asks it to expand aliases at enqueue time, the MDA asks it which mailbox an
address is.
"""

from pigeon.routing.aliases import (
    AliasEntry,
    AliasFileError,
    AliasTable,
    load_aliases,
    parse_aliases,
)
from pigeon.routing.router import Destination, Router

__all__ = [
    "AliasEntry",
    "AliasFileError",
    "AliasTable",
    "Destination",
    "Router",
    "load_aliases",
    "parse_aliases",
]
