"""spec list, check, init: the shipped specs, a spec validated, a spec drafted from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from edgellm.cli.options import json_option
from edgellm.cli.output import emit_json


@click.group()
def spec() -> None:
    """Check model specs."""


@spec.command("list", epilog="\b\nExample:\n  edgellm spec list --json")
@json_option("Print the specs as JSON.")
def spec_list(as_json) -> None:
    """The shipped specs: name, and the checkpoint each one builds (--spec takes the name)."""
    from edgellm.spec.load import BUILTIN_SPECS, is_family_file, load_spec

    rows = {}
    for path in sorted(BUILTIN_SPECS.glob("*.yaml")):
        if not is_family_file(path):
            source = load_spec(path).source
            rows[path.stem] = source.hub.repo_id if source.hub else f"embedded: {Path(source.path).name}"
    if as_json:
        emit_json([{"name": name, "source": source} for name, source in rows.items()])
        return
    for name, source in rows.items():
        click.echo(f"{name:<20} {source}")


@spec.command("check", epilog="\b\nExample:\n  edgellm spec check my-model.yaml")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def spec_check(paths) -> None:
    """Validate YAML specs without reading any checkpoint: every field's type and bounds,
    architecture overrides, cross-field rules. Family files (`_hf-*.yaml`) are checked as fragments."""
    from edgellm.spec.load import is_family_file, load_spec

    for path in paths:
        family = is_family_file(path)
        spec = load_spec(path, family=family)
        click.echo(f"ok  {path}  ({'family file' if family else spec.name})")


@spec.command("init", epilog="\b\nExample:\n  edgellm spec init --from ./my-checkpoint -o my-model.yaml")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path), help="Checkpoint folder or its config.json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Spec file to write (default: <folder name>.yaml).")
def spec_init(source, output) -> None:
    """Draft a spec from a checkpoint's config.json (its `architectures` class picks the family)."""
    from edgellm.spec.draft import draft_specs

    for path in draft_specs(source, output or Path(f"{source.resolve().name if source.is_dir() else source.resolve().parent.name}.yaml")):
        click.echo(f"wrote {path}")
