"""What every command prints for `--json`: one JSON document on stdout."""

import json

import click


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
