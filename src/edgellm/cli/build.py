"""build, fetch, verify, convert: stages of a spec's build, run through the pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from edgellm.cli.options import BundleFormat, artifact_cache, calibration_option, spec_options, with_lora_inputs
from edgellm.cli.output import Progress, emit_json, print_comparisons


def load_spec(path: str):
    from edgellm.spec.load import load_spec

    return load_spec(path)


def pipeline(progress: Progress, cache_url: str | None = None, **kwargs):
    from edgellm.pipeline.stages import Pipeline

    return Pipeline(on_start=progress.start, on_finish=progress.finish, cache=artifact_cache(cache_url), **kwargs)


def run_spec_stages(spec_path, stages: list[str] | None, as_json: bool, lora_rank=None, lora_targets=None, **kwargs) -> None:
    """Run `stages` of a spec's build (None: the whole build), printing the stage table or JSON."""
    spec = with_lora_inputs(load_spec(spec_path), lora_rank, lora_targets)
    progress = Progress(spec.name, as_json)
    build = pipeline(progress, spec=spec, **kwargs)
    build.run(stages or build.build_stages())
    outputs = progress.results[-1].report.outputs if progress.results and progress.results[-1].stage == "export" else []
    if as_json:
        emit_json({"spec": spec.name, "stages": [r.as_json() for r in progress.results], "outputs": outputs})
        return
    for result in progress.results:
        if comparisons := getattr(result.report, "comparisons", None):
            print_comparisons(comparisons)
    for path in outputs:
        click.echo(path)


output_option = click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
                             help="Write model.tflite, tokenizer and edgellm.json here (default: build/<spec name>).")


@click.command(epilog="\b\nExamples:\n  edgellm build --spec stories260k -o build/stories260k\n"
               "  edgellm build --spec smollm2-135m --checkpoint ./SmolLM2-135M-Instruct --recipe int4 --bundle litertlm --json\n"
               "  edgellm build --spec smollm2-135m --checkpoint ./SmolLM2-135M-Instruct --adapter ./my-lora      # merged\n"
               "  edgellm build --spec smollm2-135m --checkpoint ./SmolLM2-135M-Instruct --lora-rank 16 --bundle litertlm  # swappable")
@spec_options
@output_option
@click.option("--recipe", help="Then quantize with this recipe (a name from `edgellm recipes list`, or a YAML file).")
@click.option("--bundle", "bundle_formats", multiple=True, type=BundleFormat(), help="Then bundle the output for this runtime (repeatable).")
@calibration_option
def build(spec_path, checkpoint, token, offline, as_json, cache_url, adapters, lora_rank, lora_targets, output, recipe, bundle_formats, calibration) -> None:
    """Run fetch -> verify -> convert -> verify-tflite (-> quantize -> bundle), skipping stages already cached."""
    from edgellm.quantize.recipes import load_recipe

    output = output or Path("build") / load_spec(spec_path).name
    loaded = load_recipe(recipe) if recipe is not None else None
    run_spec_stages(spec_path, None, as_json, lora_rank, lora_targets, checkpoint=checkpoint, token=token, offline=offline, recipe=loaded,
                    formats=bundle_formats, output=output, calibration=calibration, cache_url=cache_url, adapters=adapters)


@click.command(epilog="\b\nExample:\n  HF_HUB_OFFLINE=1 edgellm fetch --spec qwen2.5-0.5b --checkpoint ./Qwen2.5-0.5B-Instruct")
@spec_options
def fetch(spec_path, checkpoint, token, offline, as_json, cache_url, adapters, lora_rank, lora_targets) -> None:
    """Locate or download the checkpoint and check its tensors against the spec."""
    run_spec_stages(spec_path, ["fetch"], as_json, lora_rank, lora_targets, checkpoint=checkpoint, token=token, offline=offline, cache_url=cache_url,
                    adapters=adapters)


@click.command(epilog="\b\nExample:\n  edgellm verify --spec stories260k --tflite --json")
@spec_options
@click.option("--tflite", "with_tflite", is_flag=True, help="Also convert and verify the .tflite.")
def verify(spec_path, checkpoint, token, offline, as_json, cache_url, adapters, lora_rank, lora_targets, with_tflite) -> None:
    """Compare the re-authored model's logits with transformers (and the .tflite's with --tflite)."""
    stages = ["verify", "verify-tflite"] if with_tflite else ["verify"]
    run_spec_stages(spec_path, stages, as_json, lora_rank, lora_targets, checkpoint=checkpoint, token=token, offline=offline, cache_url=cache_url,
                    adapters=adapters)


@click.command(epilog="\b\nExample:\n  edgellm convert --spec stories260k -o out/")
@spec_options
@output_option
def convert(spec_path, checkpoint, token, offline, as_json, cache_url, adapters, lora_rank, lora_targets, output) -> None:
    """Convert to one .tflite with prefill_N and decode signatures (no verification)."""
    output = output or Path("build") / load_spec(spec_path).name
    run_spec_stages(spec_path, ["convert", "export"], as_json, lora_rank, lora_targets, checkpoint=checkpoint, token=token, offline=offline,
                    output=output, cache_url=cache_url, adapters=adapters)
