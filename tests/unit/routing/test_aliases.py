"""The aliases(5) file parser: entries, continuations, comments, errors with line numbers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeon.routing.aliases import AliasEntry, AliasFileError, load_aliases, parse_aliases

SAMPLE = """\
# Pigeon aliases
postmaster: root@example.net

info:   bob,
        alice@example.com
# a comment between continuation lines
        , Carol@Example.ORG
sales@Example.org: <carol@example.org>, partner@remote.example
quoted: "odd, user"@example.com, bob
dup: bob, bob, BOB@example.com
"""


def test_parses_entries_with_continuations_and_comments() -> None:
    table = parse_aliases(SAMPLE)
    assert table.entries == {
        "postmaster": AliasEntry("postmaster", ("root@example.net",), 2),
        "info": AliasEntry("info", ("bob", "alice@example.com", "Carol@example.org"), 4),
        "sales@example.org": AliasEntry(
            "sales@example.org", ("carol@example.org", "partner@remote.example"), 8
        ),
        "quoted": AliasEntry("quoted", ('"odd, user"@example.com', "bob"), 9),
        "dup": AliasEntry("dup", ("bob", "BOB@example.com"), 10),
    }
    assert len(table) == 5


def test_lookup_prefers_the_domain_specific_name_and_ignores_case() -> None:
    table = parse_aliases("sales: bob\nsales@example.org: carol\n")
    assert table.lookup("SALES", "example.org") == AliasEntry("sales@example.org", ("carol",), 2)
    assert table.lookup("Sales", "example.com") == AliasEntry("sales", ("bob",), 1)
    assert table.lookup("other", "example.com") is None
    assert "SALES" in table
    assert "other" not in table


def test_crlf_line_endings_and_tabs() -> None:
    table = parse_aliases("a: b,\r\n\tc\r\n")
    assert table.entries["a"].targets == ("b", "c")


def test_u_label_domain_in_name_becomes_a_label() -> None:
    table = parse_aliases("info@bücher.example: bob\n")
    assert list(table.entries) == ["info@xn--bcher-kva.example"]


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("  bob\n", [(1, "continuation line without an entry before it")]),
        ("a: b\nno colon here\n", [(2, "missing ':' after the alias name in 'no colon here'")]),
        ("a: |/usr/bin/true\n", [(1, "program targets are not supported: '|/usr/bin/true'")]),
        ('a: "|/usr/bin/true"\n', [(1, "program targets are not supported: '\"|/usr/bin/true\"'")]),
        ("a: /var/mail/a\n", [(1, "file targets are not supported: '/var/mail/a'")]),
        ("a: :include:/etc/list\n",
         [(1, ":include: targets are not supported: ':include:/etc/list'")]),
        ("a:\n", [(1, "alias 'a' has no targets")]),
        ("a: , ,\n", [(1, "alias 'a' has no targets")]),
        (": bob\n", [(1, "missing alias name before ':'")]),
        ("two words: bob\n", [(1, "invalid alias name 'two words'")]),
        ("a@: bob\n", [(1, "invalid alias name 'a@': empty domain")]),
        ("a: b c\n", [(1, "invalid target 'b c'")]),
        ("a: b\n\n# c\nA: c\n", [(4, "duplicate alias 'a' (first on line 1)")]),
    ],
)
def test_errors_name_their_line(text: str, problems: list[tuple[int, str]]) -> None:
    with pytest.raises(AliasFileError) as info:
        parse_aliases(text, source="/etc/pigeon/aliases")
    assert info.value.problems == problems
    assert str(info.value) == "\n".join(
        f"/etc/pigeon/aliases:{line}: {msg}" for line, msg in problems
    )


def test_invalid_mailbox_target_is_reported() -> None:
    with pytest.raises(AliasFileError) as info:
        parse_aliases("a: bob@exa mple.com\n")
    assert [line for line, _ in info.value.problems] == [1]
    assert info.value.problems[0][1].startswith("invalid target 'bob@exa mple.com'")


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(AliasFileError) as info:
        parse_aliases("ok: bob\nbad line\nalso: |cmd\nfine: carol\n")
    assert [line for line, _ in info.value.problems] == [2, 3]


def test_load_aliases_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("info: bob\n", encoding="utf-8")
    assert load_aliases(path).entries == {"info": AliasEntry("info", ("bob",), 1)}


def test_load_aliases_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(AliasFileError) as info:
        load_aliases(path)
    assert info.value.problems[0][0] == 0
    assert str(info.value).startswith(f"{path}:0: cannot read the aliases file:")


# -- properties ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_alias_file_error(text: str) -> None:
    try:
        table = parse_aliases(text)
    except AliasFileError as exc:
        assert exc.problems
        assert all(line >= 1 for line, _ in exc.problems)
    else:
        for name, entry in table.entries.items():
            assert name == entry.name == name.lower()
            assert entry.targets


_LOWER = "abcdefghijklmnopqrstuvwxyz"
_names = st.builds(str.__add__, st.sampled_from(_LOWER),
                   st.text(alphabet=_LOWER + "0123456789_-", max_size=10))
_targets = st.one_of(
    _names,
    st.builds(lambda local, dom: f"{local}@{dom}.example", _names,
              st.text(alphabet=_LOWER, min_size=1, max_size=8)),
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(_names, st.lists(_targets, min_size=1, max_size=5, unique=True),
                    min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_round_trip_with_random_continuations(
    aliases: dict[str, list[str]], rnd: random.Random
) -> None:
    lines: list[str] = []
    for name, targets in aliases.items():
        if rnd.random() < 0.3:
            lines.append("# comment")
        first, *rest = targets
        lines.append(f"{name}: {first}" + ("," if rest else ""))
        for i, target in enumerate(rest):
            sep = "," if i < len(rest) - 1 else ""
            if rnd.random() < 0.5:
                indent = rnd.choice([" ", "\t", "    "])
                lines.append(f"{indent}{target}{sep}")
            else:
                lines[-1] += f" {target}{sep}"
        if rnd.random() < 0.3:
            lines.append("")
    table = parse_aliases("\n".join(lines) + "\n")
    assert {name: list(e.targets) for name, e in table.entries.items()} == aliases
