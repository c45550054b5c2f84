"""cache path, clear: the artifact cache."""

from __future__ import annotations

import click


@click.group()
def cache() -> None:
    """Inspect or clear the artifact cache."""


@cache.command("path")
def cache_path() -> None:
    """Print the cache folder."""
    from edgellm.infra.cache import cache_root

    click.echo(cache_root())


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached artifact."""
    from edgellm.infra.cache import ArtifactCache

    click.echo(f"freed {ArtifactCache().clear() / 1e6:.1f} MB")
