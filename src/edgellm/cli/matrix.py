"""matrix run, plan: a models x recipes matrix built here, on Ray, or one cell per CI job."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from edgellm.cli.options import artifact_cache, cache_option, json_option
from edgellm.cli.output import console, emit_json, print_table

CELLS_FAILED = 4  # the exit status of a run in which some cell failed (the others still ran)

matrix_argument = click.argument("matrix_file", metavar="MATRIX.yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.group(epilog="\b\nA matrix file:\n  models:\n    - spec: smollm2-135m\n      checkpoint: ./ckpt/smollm2   # optional\n"
             "  recipes: [int8-dynamic, int4]\n  bundles: [litertlm]            # optional")
def matrix() -> None:
    """Build every model x recipe of a matrix file, sharing one cache (see `--cache`)."""


@matrix.command("run", epilog="\b\nExamples:\n  edgellm matrix run fleet.yaml --cache s3://my-bucket/edgellm --json\n"
                "  edgellm matrix run fleet.yaml --executor ray --address auto\n  edgellm matrix run fleet.yaml --cell smollm2-135m/int4")
@matrix_argument
@click.option("--cell", "cell_id", help="Build this one cell (as `matrix plan` names it) in this process.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: cells as processes on this machine, within its memory; ray: cells as Ray tasks.")
@click.option("--address", help="With --executor ray: the cluster to join (default: start Ray on this machine).")
@click.option("--jobs", type=click.IntRange(min=1), help="Cells at most at once (default: the number of cores).")
@cache_option
@json_option('Print {"cells": [{"id", "model", "recipe", "status", "error", "stages", "outputs"}]}.')
def matrix_run(matrix_file, cell_id, executor, address, jobs, cache_url, as_json) -> None:
    """Build each cell (model x recipe, with the matrix's bundles); a failed cell does not stop the
    others. Status per cell: built, cached (all local), fetched (from --cache) or failed.
    Exit status 4 when any cell failed."""
    from edgellm.pipeline.fleet import cell_command, run_here, run_on_ray
    from edgellm.pipeline.matrix import load_matrix, pick, run_cell

    cells = load_matrix(matrix_file)
    cache = artifact_cache(cache_url)
    if cell_id is not None:
        reports = [run_cell(pick(cells, cell_id), cache)]
    else:
        estimates = {cell.id: _estimate(cell, cache) for cell in cells}
        commands = {cell.id: cell_command(matrix_file, cell, cache_url) for cell in cells}
        done = (lambda report: None) if as_json else _print_cell
        jobs = jobs or len(os.sched_getaffinity(0))
        reports = run_on_ray(commands, estimates, address, jobs, done) if executor == "ray" else run_here(commands, estimates, jobs, done)
    if as_json:
        emit_json({"cells": reports})
    elif cell_id is not None:
        _print_cell(reports[0])
    if any(report["status"] == "failed" for report in reports):
        sys.exit(CELLS_FAILED)


def _estimate(cell, cache) -> int:
    """A cell's memory estimate; 0 for one whose checkpoint fails its check (its own process reports why)."""
    from edgellm.errors import EdgeLLMError
    from edgellm.pipeline.matrix import memory_estimate

    try:
        return memory_estimate(cell, cache)
    except EdgeLLMError:
        return 0


def _print_cell(report: dict) -> None:
    style = {"built": "green", "cached": "dim", "fetched": "cyan", "failed": "red"}[report["status"]]
    ran = ", ".join(s["stage"] for s in report["stages"] if s["how"] == "ran") or "nothing"
    detail = report["error"] if report["status"] == "failed" else f"ran {ran}"
    console().print(f"  {report['id']:<32} [{style}]{report['status']:<8}[/] {detail}")


@matrix.command("plan", epilog="\b\nExamples:\n  edgellm matrix plan fleet.yaml --cache s3://my-bucket/edgellm\n"
                "  edgellm matrix plan fleet.yaml --cache s3://my-bucket/edgellm --emit github > .github/matrix-jobs.yml")
@matrix_argument
@click.option("--emit", type=click.Choice(["github", "gitlab"]), help="Print a CI job matrix: one job per cell not yet in the cache.")
@cache_option
@json_option('Print [{"id", "model", "recipe", "where": "local"|"remote"|"missing"}].')
def matrix_plan(matrix_file, emit, cache_url, as_json) -> None:
    """The matrix's cells and which are already built, in the local cache or the remote one (only
    the checkpoints are read, to find the keys)."""
    from rich.table import Table

    from edgellm.pipeline.matrix import load_matrix, where_cached

    cells = load_matrix(matrix_file)
    cache = artifact_cache(cache_url)
    rows = [{"id": cell.id, "model": cell.spec.name, "recipe": cell.recipe_name, "where": where_cached(cell, cache)} for cell in cells]
    missing = [row["id"] for row in rows if row["where"] == "missing"]
    if emit is not None:
        click.echo(_ci_matrix(emit, matrix_file, missing, cache_url), nl=False)
    elif as_json:
        emit_json(rows)
    else:
        table = Table("cell", "model", "recipe", "built")
        for row in rows:
            table.add_row(row["id"], row["model"], row["recipe"], row["where"])
        print_table(table)


def _ci_matrix(ci: str, matrix_file: Path, cells: list[str], cache_url: str | None) -> str:
    """A CI configuration with one job per cell, each running `edgellm matrix run MATRIX --cell ID`."""
    import yaml

    cache = " --cache $EDGELLM_CACHE_URL" if cache_url else ""
    if ci == "github":
        command = f"edgellm matrix run {matrix_file} --cell ${{{{ matrix.cell }}}}{cache}"
        job = {"runs-on": "ubuntu-latest", "strategy": {"fail-fast": False, "matrix": {"cell": cells}},
               "steps": [{"uses": "actions/checkout@v4"}, {"run": "pip install edgellm"}, {"run": command}]}
        config = {"jobs": {"edgellm-cells": job}}
        if not cells:
            job["if"] = "false"  # GitHub refuses an empty matrix: every cell is built
            job["strategy"]["matrix"]["cell"] = ["none"]
    else:
        command = f'edgellm matrix run {matrix_file} --cell "$CELL"{cache}'
        job = {"script": ["pip install edgellm", command], "parallel": {"matrix": [{"CELL": cells}]}}
        config = {"edgellm-cells": job} if cells else {}
    return yaml.safe_dump(config, sort_keys=False, width=200)
