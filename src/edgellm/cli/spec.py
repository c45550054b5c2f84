"""spec list, check, init: the shipped specs, a spec validated, a spec drafted from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def spec() -> None:
    """Check model specs."""


@spec.command("list")
def spec_list() -> None:
    """The shipped specs: name, and the checkpoint each one builds."""
    from edgellm.spec.load import BUILTIN_SPECS, is_family_file, load_spec

    for path in sorted(BUILTIN_SPECS.glob("*.yaml")):
        if not is_family_file(path):
            source = load_spec(path).source
            click.echo(f"{path.stem:<20} {source.hub.repo_id if source.hub else 'embedded: ' + Path(source.path).name}")


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
