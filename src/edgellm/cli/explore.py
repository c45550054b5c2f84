"""explore: a model in Model Explorer, with edgellm's overlays on its graph."""

from __future__ import annotations

from pathlib import Path

import click

from edgellm.cli.options import tokenizer_option
from edgellm.cli.output import emit_json

OVERLAY_NAMES = ("bytes", "sensitivity", "error")


@click.command(epilog="\b\nExamples:\n  edgellm explore build/stories260k/model.tflite\n"
               "  edgellm explore model-int4.tflite --overlay error --reference model.tflite\n"
               "  edgellm explore model-search.tflite --overlay sensitivity --export overlays/   # JSON for Model Explorer elsewhere")
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--overlay", "overlays", multiple=True, type=click.Choice(OVERLAY_NAMES),
              help="bytes: constant bytes each op reads; sensitivity: the int4 cost `quantize --search` measured per layer group; "
                   "error: each op's output against the float model's (relative RMS). Repeatable (default: bytes, and error when "
                   "--reference or a model.tflite beside MODEL is there).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="The float model MODEL was quantized from, for the error overlay (default: model.tflite beside MODEL).")
@click.option("--sensitivity", type=click.Path(dir_okay=False, path_type=Path),
              help="For the sensitivity overlay (default: MODEL's .sensitivity.json, written by `quantize --search`).")
@tokenizer_option("For the error overlay's calibration text (default: the one named by edgellm.json beside MODEL).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path), help="Write the overlays' JSON here and exit.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Model Explorer's port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Model Explorer's address.")
@click.option("--no-browser", is_flag=True, help="Start the server without opening a browser (print its URL).")
def explore(model, overlays, reference, sensitivity, tokenizer, export_dir, port, host, no_browser) -> None:
    """Open MODEL in Model Explorer (the [explore] extra) with edgellm's overlays as node data:
    pick one in the viewer's node data panel to colour the graph by it."""
    from edgellm.errors import EdgeLLMError
    from edgellm.quantize.overlays import overlays_for
    from edgellm.tflite.file import read_signatures

    read_signatures(model)  # a non-model is one line, before anything starts
    beside = model.with_name("model.tflite")
    reference = reference or (beside if beside.is_file() and beside.resolve() != model.resolve() else None)
    names = overlays or (("bytes", "error") if reference is not None else ("bytes",))
    data = overlays_for(model, names, reference, sensitivity or model.with_suffix(".sensitivity.json"), tokenizer)
    folder = export_dir or _scratch(model)
    folder.mkdir(parents=True, exist_ok=True)
    files = [_write(folder / f"{model.stem}.{name}.json", node_data) for name, node_data in data.items()]
    if export_dir is not None:
        emit_json({"overlays": [str(f) for f in files]})
        return
    try:
        import model_explorer
    except ImportError:
        raise EdgeLLMError("explore needs Model Explorer: pip install 'edgellm[explore]'") from None
    config = model_explorer.config().add_model_from_path(str(model.resolve()))
    for file in files:
        config.add_node_data_from_path(str(file))
    click.echo(f"Model Explorer: http://{host}:{port}/?data={config.to_url_param_value()}", err=True)
    model_explorer.visualize_from_config(config, host=host, port=port, no_open_in_browser=no_browser)


def _scratch(model: Path) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"edgellm-explore-{model.stem}-"))


def _write(path: Path, node_data: dict) -> Path:
    import json

    from edgellm.infra.files import write_bytes_atomically

    write_bytes_atomically(path, json.dumps(node_data).encode())
    return path
