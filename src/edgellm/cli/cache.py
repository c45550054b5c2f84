"""cache path, ls, verify, gc, clear: the artifact cache, local or (with --cache URL) remote."""

from __future__ import annotations

import re
import sys
from datetime import timedelta

import click

from edgellm.cli.options import artifact_cache, cache_option, json_option
from edgellm.cli.output import emit_json, print_table

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Age(click.ParamType):
    name = "AGE"

    def convert(self, value, param, ctx) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", value.strip())
        if match is None:
            self.fail(f"{value!r} is not an age; write a number and a unit, e.g. 30m, 12h, 7d", param, ctx)
        return timedelta(**{_UNITS[match[2]]: float(match[1])})


@click.group(epilog="\b\nExamples:\n  edgellm cache ls\n  edgellm cache verify --cache s3://my-bucket/edgellm\n  edgellm cache gc --older-than 30d")
def cache() -> None:
    """Inspect, check or trim the artifact cache: the local one, or the shared tier --cache names."""


@cache.command("path")
def cache_path() -> None:
    """Print the local cache folder."""
    from edgellm.infra.cache import cache_root

    click.echo(cache_root())


@cache.command("ls")
@cache_option
@json_option()
def cache_ls(cache_url, as_json) -> None:
    """Every artifact: stage, key, size and when it was made (of the remote tier with --cache)."""
    from rich.table import Table

    from edgellm.infra.cache_admin import entries

    cache = artifact_cache(cache_url)
    found = entries(cache)
    if as_json:
        emit_json([entry.as_json() for entry in found])
        return
    table = Table("stage", "key", "size", "made", title=cache_url or str(cache.root))
    for entry in found:
        table.add_row(entry.stage, entry.key, f"{entry.size / 1e6:.2f} MB", entry.modified.strftime("%Y-%m-%d %H:%M"))
    print_table(table)


@cache.command("verify")
@cache_option
@json_option()
def cache_verify(cache_url, as_json) -> None:
    """Hash every artifact's files against its manifest; exit 3 if any does not match."""
    from edgellm.errors import VerificationFailed
    from edgellm.infra.cache_admin import verify

    problems = verify(artifact_cache(cache_url))
    if as_json:
        emit_json({"problems": problems})
    else:
        click.echo("\n".join(problems) or "every artifact matches its digests")
    if problems:
        sys.exit(VerificationFailed.exit_code)


@cache.command("gc")
@click.option("--older-than", required=True, type=Age(), help="Delete what was made longer ago than this (30m, 12h, 7d).")
@cache_option
@json_option()
def cache_gc(older_than, cache_url, as_json) -> None:
    """Delete old artifacts, never one that a kept matrix cell's record still names (nor, remotely,
    a blob that a kept manifest names)."""
    from edgellm.infra.cache_admin import gc

    count, freed = gc(artifact_cache(cache_url), older_than)
    if as_json:
        emit_json({"deleted": count, "freed_bytes": freed})
    else:
        click.echo(f"deleted {count} artifacts, freed {freed / 1e6:.1f} MB")


@cache.command("clear")
def cache_clear() -> None:
    """Delete every artifact of the local cache."""
    from edgellm.infra.cache import ArtifactCache

    click.echo(f"freed {ArtifactCache().clear() / 1e6:.1f} MB")
