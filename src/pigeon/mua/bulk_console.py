"""The terminal side of a bulk run: a rich progress bar and the SIGINT/SIGTERM handling.

The bar shows done/total, sent, failed, the rate in messages per second and the time
left. The first SIGINT or SIGTERM stops handing out messages; those in flight finish and
are recorded (:meth:`pigeon.mua.bulk.BulkRun.stop`).
"""

from __future__ import annotations

import asyncio
import signal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from pigeon.mua.bulk import BulkOptions, BulkResult, BulkRun, BulkSummary
from pigeon.mua.bulk_render import BulkRenderer, RecipientList
from pigeon.mua.bulk_state import StateLog
from pigeon.mua.send import ServerTarget

__all__ = ["run_with_progress"]


class _RateColumn(ProgressColumn):
    """Messages per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} msg/s" if speed else "- msg/s")


def run_with_progress(
    renderer: BulkRenderer,
    recipients: RecipientList,
    state: StateLog,
    target: ServerTarget,
    options: BulkOptions,
    *,
    show: bool | None = None,
) -> BulkSummary:
    """Run the campaign with a progress bar on stderr; SIGINT/SIGTERM stop it cleanly.

    Args:
        renderer: makes the messages.
        recipients: the recipient list.
        state: the state log.
        target: the submission server.
        options: concurrency and rate.
        show: show the bar; None: when stderr is a terminal.

    Returns:
        The run's summary.
    """
    console = Console(stderr=True)
    show = console.is_terminal if show is None else show
    columns = [
        TextColumn("[bold]bulk"), BarColumn(), MofNCompleteColumn(),
        TextColumn("sent [green]{task.fields[sent]}"),
        TextColumn("failed [red]{task.fields[failed]}"),
        _RateColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=not show, transient=False) as bar:
        counts = {"sent": 0, "failed": 0}

        def progress(result: BulkResult | None) -> None:
            if result is None:
                return
            key = "sent" if result.status == "sent" else "failed"
            counts[key] += 1
            bar.update(task, advance=1, sent=counts["sent"], failed=counts["failed"])

        async def main() -> BulkSummary:
            run = BulkRun(renderer, recipients, state, target, options, progress=progress)
            bar.update(task, total=run.todo)
            loop = asyncio.get_running_loop()

            def interrupt() -> None:
                if not run.summary.interrupted:
                    console.print(f"interrupted: finishing the {run.in_flight} messages in "
                                  "flight; run the same command again to go on")
                run.stop()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, interrupt)
            try:
                return await run.run()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

        task = bar.add_task("bulk", total=None, sent=0, failed=0)
        return asyncio.run(main())
