"""How commands print: one JSON document for `--json`, else rich tables and a line per stage on stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import click


def console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def emit_json(data) -> None:
    """What every command prints for `--json`: one JSON document on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def print_table(table) -> None:
    """A rich table on stdout; into a pipe or a file as wide as it needs (rich would cut it to 80 columns)."""
    import sys

    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 200).print(table)


@contextmanager
def progress_bar(description: str) -> Iterator[None]:
    """A bar on stderr while the block runs: elapsed time always; steps and an estimate of the time
    left when the work reports them (infra/progress.py), a pulse when it does not."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from edgellm.infra.progress import listening

    if not console().is_terminal:  # a log or a pipe: no bar (rich would leave blank lines there)
        yield
        return
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn(), console=console(), transient=True)
    task = bar.add_task(description, total=None)
    with bar, listening(lambda done, total: bar.update(task, completed=done, total=total)):
        yield


class Progress:
    """A progress bar while a stage runs, then its line in the stage table (nothing with --json)."""

    def __init__(self, label: str, quiet: bool, only: str | None = None):
        """`only`: list this stage alone in the table (a command on a model file lists its one stage)."""
        self.label, self.quiet, self.only, self.results, self._bar = label, quiet, only, [], ExitStack()

    def start(self, stage: str) -> None:
        if not self.quiet:  # every stage that runs gets its bar (calibrate before quantize, say), `only` or not
            self._bar.enter_context(progress_bar(f"[bold]{stage}[/] {self.label}"))

    def finish(self, result) -> None:
        self.results.append(result)
        self._bar.close()
        if not self.quiet and self.only in (None, result.stage):
            how = {"ran": "[green]ran[/]    ", "cached": "[dim]cached[/] ", "fetched": "[cyan]fetched[/]"}[result.how]
            console().print(f"  {result.stage:<16} {how} {result.seconds:7.2f}s {result.peak_rss_bytes / 2**30:6.2f} GiB  {result.report.summary()}")


def print_comparisons(comparisons: dict) -> None:
    """A verify report's comparisons as one table."""
    from rich.table import Table

    from edgellm.verify.report import COLUMNS

    table = Table("comparison", *COLUMNS[type(next(iter(comparisons.values())))])
    for name, comparison in comparisons.items():
        table.add_row(name, *comparison.row())
    print_table(table)
