"""The aliases file: ``name: target, target`` in the classic aliases(5) format.

Format (as sendmail and Postfix read it):

- ``name: target, target, ...``; the name ends at the first ``:``.
- A line that starts with whitespace continues the previous entry.
- Empty lines and lines whose first non-blank character is ``#`` are ignored (also between
  continuation lines).
- A name without a domain (``info``) applies to every local domain; ``info@example.org``
  only to that domain and wins over the bare name there. Names are case-insensitive.
- A target is a mailbox (``bob@example.net``, local or remote) or a bare local part
  (``bob``), which means that local part in the domain of the address being expanded.
  ``<bob@example.net>`` is accepted too.
- Program (``|command``), file (``/path``) and ``:include:`` targets are refused: Pigeon
  delivers only to mailboxes.

Every problem is reported with its line number; a file with any problem is refused as a
whole, so a typo never silently drops an alias.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pigeon.mail.address import AddressError, parse_mailbox
from pigeon.storage.accounts_port import canonical_domain

__all__ = ["AliasEntry", "AliasFileError", "AliasTable", "load_aliases", "parse_aliases"]

_BARE_NAME = re.compile(r"^[^\s@,:\"<>()\[\];\\]+$")


@dataclass(frozen=True, slots=True)
class AliasEntry:
    """One alias.

    Attributes:
        name: the lower-cased name, ``info`` or ``info@example.org``.
        targets: the targets in file order, duplicates removed; mailbox targets in their
            canonical text (domain lower-case A-labels), bare local parts as written.
        line: the line number of the entry's first line (1-based).
    """

    name: str
    targets: tuple[str, ...]
    line: int


@dataclass(slots=True)
class AliasTable:
    """Aliases by lower-cased name; see the module docstring for the lookup rules."""

    entries: dict[str, AliasEntry] = field(default_factory=dict)

    def lookup(self, local_part: str, domain: str) -> AliasEntry | None:
        """Find the alias for ``local_part@domain``.

        Args:
            local_part: the decoded local part (any case).
            domain: the canonical domain (lower-case A-labels).

        Returns:
            The ``local@domain`` entry, else the bare ``local`` entry, else None.
        """
        local = local_part.lower()
        return self.entries.get(f"{local}@{domain}") or self.entries.get(local)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.entries


class AliasFileError(Exception):
    """The aliases file has problems; ``problems`` lists ``(line, message)`` pairs.

    ``str(error)`` gives one ``source:line: message`` per problem.
    """

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}:{line}: {msg}" for line, msg in problems))


def _logical_lines(text: str) -> Iterator[tuple[int, str | None, str]]:
    """Yield (first line number, error or None, joined text) for each entry."""
    start = 0
    parts: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        raw = line.rstrip("\r")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":
            if not parts:
                yield number, "continuation line without an entry before it", raw
                continue
            parts.append(stripped)
            continue
        if parts:
            yield start, None, " ".join(parts)
        start, parts = number, [raw.strip()]
    if parts:
        yield start, None, " ".join(parts)


def _split_targets(text: str) -> list[str]:
    """Split on commas that are not inside a quoted local part."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return items


def _parse_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise ValueError("missing alias name before ':'")
    local, sep, domain = name.rpartition("@")
    if not sep:
        local, domain = name, ""
    if not local or not _BARE_NAME.match(local):
        raise ValueError(f"invalid alias name {name!r}")
    if sep:
        if not domain:
            raise ValueError(f"invalid alias name {name!r}: empty domain")
        domain = canonical_domain(domain)
        return f"{local.lower()}@{domain}"
    return local.lower()


def _parse_target(raw: str) -> str:
    target = raw.strip()
    if target.startswith("<") and target.endswith(">"):
        target = target[1:-1].strip()
    lowered = target.lstrip('"').lower()
    if lowered.startswith("|"):
        raise ValueError(f"program targets are not supported: {raw.strip()!r}")
    if lowered.startswith("/"):
        raise ValueError(f"file targets are not supported: {raw.strip()!r}")
    if lowered.startswith(":include:"):
        raise ValueError(f":include: targets are not supported: {raw.strip()!r}")
    if "@" not in target:
        if not _BARE_NAME.match(target):
            raise ValueError(f"invalid target {raw.strip()!r}")
        return target
    try:
        mailbox = parse_mailbox(target, smtputf8=True)
    except AddressError as exc:
        raise ValueError(f"invalid target {raw.strip()!r}: {exc.reply.text}") from exc
    return str(mailbox)


def parse_aliases(text: str, *, source: str = "aliases") -> AliasTable:
    """Parse an aliases file (format in the module docstring).

    Args:
        text: the file's text.
        source: the name used in error messages (the file path).

    Returns:
        The alias table.

    Raises:
        AliasFileError: one or more lines are invalid (all problems are listed).
    """
    table = AliasTable()
    problems: list[tuple[int, str]] = []
    for line, error, logical in _logical_lines(text):
        if error is not None:
            problems.append((line, error))
            continue
        raw_name, colon, raw_targets = logical.partition(":")
        if not colon:
            problems.append((line, f"missing ':' after the alias name in {logical[:60]!r}"))
            continue
        try:
            name = _parse_name(raw_name)
            targets: list[str] = []
            for item in _split_targets(raw_targets):
                if not item.strip():
                    continue
                target = _parse_target(item)
                if target not in targets:
                    targets.append(target)
            if not targets:
                raise ValueError(f"alias {name!r} has no targets")
        except ValueError as exc:
            problems.append((line, str(exc)))
            continue
        previous = table.entries.get(name)
        if previous is not None:
            problems.append((line, f"duplicate alias {name!r} (first on line {previous.line})"))
            continue
        table.entries[name] = AliasEntry(name, tuple(targets), line)
    if problems:
        raise AliasFileError(source, problems)
    return table


def load_aliases(path: Path) -> AliasTable:
    """Read and parse the aliases file at ``path`` (UTF-8).

    Args:
        path: the file (``settings.aliases.file``).

    Returns:
        The alias table.

    Raises:
        AliasFileError: the file cannot be read or has invalid lines (line 0 for a read
            error).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AliasFileError(str(path), [(0, f"cannot read the aliases file: {exc}")]) from exc
    return parse_aliases(text, source=str(path))
