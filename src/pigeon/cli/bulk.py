"""``pigeon bulk``: personalised messages to every row of a CSV file, resumable.

Exit status: 0 when every valid recipient is sent (now or by an earlier run), 1 when some
failed, were deferred or are unknown, 2 for bad options or files, 130 when interrupted
(run the same command again to go on: recipients already done are skipped).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pigeon.cli.send import fail, load_profile, server_options, target_from_options
from pigeon.mua.addresses import AddressListError, HeaderAddress, parse_one_address
from pigeon.mua.compose import ComposeError, parse_header_option

if TYPE_CHECKING:
    from pigeon.mua.bulk import BulkSummary
    from pigeon.mua.bulk_render import RecipientList

__all__ = ["bulk", "state_path_for"]

INTERRUPTED_EXIT = 130


def state_path_for(recipients: Path, report: Path | None) -> Path:
    """The default state file: beside the report when there is one, else beside the CSV.

    Args:
        recipients: the recipient list.
        report: the report file, or None.

    Returns:
        ``<report>.state`` or ``<recipients>.state``.
    """
    base = report if report is not None else recipients
    return base.with_name(base.name + ".state")


def _read(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{option} {path}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        fail(f"{option} {path}: not UTF-8 text (byte {exc.start})")


def _address(value: str | None, option: str) -> HeaderAddress | None:
    if value is None:
        return None
    try:
        return parse_one_address(value)
    except AddressListError as exc:
        fail(f"{option}: {exc}")


@click.command("bulk")
@click.option("--recipients", "recipients_path", required=True, metavar="FILE.csv",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="CSV with a header row and an 'email' column; columns are variables.")
@click.option("--template", "template_path", metavar="FILE.j2",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A jinja2 template of the whole message (header, empty line, body).")
@click.option("--subject", metavar="TEMPLATE", help="Subject template (with --text/--html).")
@click.option("--text", "text_path", metavar="FILE.j2",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Plain text body template.")
@click.option("--html", "html_path", metavar="FILE.j2",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="HTML body template (autoescaped; multipart/alternative with --text).")
@click.option("--from", "author", metavar="ADDRESS", help="The From address.")
@click.option("--envelope-from", metavar="ADDRESS",
              help="The reverse-path for bounces (default: the From address).")
@click.option("--list-unsubscribe", multiple=True, metavar="URI",
              help="A List-Unsubscribe URI template, mailto: or https: (RFC 2369; repeatable).")
@click.option("--one-click", is_flag=True,
              help="Add List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058).")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="An extra header field; the value is a template (repeatable).")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False),
              metavar="FILE.csv", help="Write recipient, status, queue id or reply per row.")
@click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False),
              metavar="FILE",
              help="The resume log (default: beside the report, else beside the CSV).")
@click.option("--connections", type=click.IntRange(1, 100), default=4, show_default=True,
              help="SMTP connections at the same time.")
@click.option("--per-domain", type=click.IntRange(1, 100), default=4, show_default=True,
              help="Messages in flight per recipient domain.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="MSGS/S",
              help="Send at most this many messages per second.")
@click.option("--per-connection", type=click.IntRange(1), default=100, show_default=True,
              help="Messages on one connection before a new one is opened.")
@click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Extra attempts in this run after a temporary failure.")
@server_options
@click.option("--dry-run", is_flag=True, help="Print the first recipient's message; send nothing.")
@click.option("--progress/--no-progress", default=None,
              help="Show the progress bar (default: when stderr is a terminal).")
def bulk(recipients_path: Path, template_path: Path | None, subject: str | None,
         text_path: Path | None, html_path: Path | None, author: str | None,
         envelope_from: str | None, list_unsubscribe: tuple[str, ...], one_click: bool,
         headers: tuple[str, ...], report_path: Path | None, state_path: Path | None,
         connections: int, per_domain: int, rate: float | None, per_connection: int,
         retries: int, dry_run: bool, progress: bool | None, **server: Any) -> None:
    """Send a personalised message to every recipient of a CSV file.

    Each row's columns fill the templates. Recipients already done by an earlier run of
    the same campaign are skipped, so the same command can be run again after an
    interruption. Invalid and duplicate addresses are reported and skipped.
    """
    # Imported here: jinja2 and rich are only needed by this command.
    from pigeon.mua.bulk import BulkOptions, write_report
    from pigeon.mua.bulk_console import run_with_progress
    from pigeon.mua.bulk_render import (
        BulkError,
        BulkRenderer,
        BulkTemplates,
        RenderError,
        load_recipients,
    )
    from pigeon.mua.bulk_state import StateError, StateLog

    _, profile = load_profile(server.get("profile"))
    try:
        extra = tuple(parse_header_option(h) for h in headers)
    except ComposeError as exc:
        fail(str(exc))
    author_text = author or (profile.author if profile else None)
    templates = BulkTemplates(
        message=_read(template_path, "--template"),
        subject=subject,
        text=_read(text_path, "--text"),
        html=_read(html_path, "--html"),
        author=_address(author_text, "--from"),
        envelope_from=_address(envelope_from, "--envelope-from"),
        list_unsubscribe=list_unsubscribe,
        one_click=one_click,
        headers=extra,
    )
    try:
        renderer = BulkRenderer(templates)
        recipients = load_recipients(recipients_path)
        options = BulkOptions(connections=connections, per_domain=per_domain, rate=rate,
                              per_connection=per_connection, retries=retries)
    except (BulkError, ValueError) as exc:
        fail(str(exc))
    for skipped in recipients.skipped:
        click.echo(f"pigeon bulk: row {skipped.row}: {skipped.email!r} skipped "
                   f"({skipped.status}: {skipped.reason})", err=True)
    if recipients.recipients:
        # A template that fails for the first row fails for every row: stop before sending.
        try:
            first = renderer.render(recipients.recipients[0])
        except RenderError as exc:
            fail(f"row {recipients.recipients[0].row}: {exc}")
        if dry_run:
            click.echo(f"MAIL FROM:<{first.reverse_path}>")
            click.echo(f"RCPT TO:<{first.recipients[0]}>")
            click.echo("")
            click.echo(first.content.decode("utf-8", "replace").replace("\r\n", "\n"),
                       nl=False)
            return
    elif dry_run:
        fail("the recipient list has no valid recipient")
    target = target_from_options(profile, server)
    if target is None:
        fail("say where to send: --server HOST[:PORT] or --profile NAME")
    state_file = state_path or state_path_for(recipients_path, report_path)
    try:
        state = StateLog(state_file, renderer.fingerprint())
    except StateError as exc:
        fail(str(exc))
    try:
        summary = run_with_progress(renderer, recipients, state, target, options,
                                    show=progress)
        if report_path is not None:
            write_report(report_path, recipients, state.done, summary)
    except OSError as exc:
        fail(f"cannot write {exc.filename or state_file}: {exc.strerror or exc}; stopped "
             "(recipients sent since the last record may be sent again by the next run)", 1)
    finally:
        state.close()
    sys.exit(_print_summary(summary, recipients, state_file, report_path))


def _print_summary(summary: BulkSummary, recipients: RecipientList, state_file: Path,
                   report_path: Path | None) -> int:
    sent = summary.count("sent")
    problems = {s: summary.count(s) for s in ("failed", "deferred", "unknown", "error")}
    parts = [f"sent {sent}"] + [f"{name} {n}" for name, n in problems.items() if n]
    if summary.already_done:
        parts.append(f"done before {summary.already_done}")
    if recipients.skipped:
        parts.append(f"skipped {len(recipients.skipped)}")
    if summary.not_attempted:
        parts.append(f"not attempted {summary.not_attempted}")
    click.echo(f"pigeon bulk: {', '.join(parts)} in {summary.elapsed:.1f} s "
               f"({summary.rate:.1f} msg/s); state in {state_file}"
               + (f"; report in {report_path}" if report_path else ""), err=True)
    for result in summary.results.values():
        if result.status != "sent":
            click.echo(f"pigeon bulk: {result.recipient.email}: {result.status}: "
                       f"{result.detail}", err=True)
    if summary.gave_up:
        click.echo(f"pigeon bulk: gave up: {summary.gave_up}", err=True)
    if summary.interrupted and not summary.gave_up:
        return INTERRUPTED_EXIT
    if any(problems.values()) or summary.not_attempted:
        return 1
    return 0
