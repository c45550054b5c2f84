"""The `edgellm` command line: parses arguments, calls a stage, prints the result.

Heavy modules (torch, litert_torch, transformers) are imported inside the commands, so
`edgellm --help` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgellm_cli import __version__

EXAMPLES = """
\b
Examples:
  edgellm build --spec model_specs/stories260k.yaml        # fetch, verify, convert, verify .tflite
  edgellm run build/stories260k/model.tflite --max-tokens 200
  edgellm build --spec model_specs/llama-3.2-1b.yaml --checkpoint ./Llama-3.2-1B --json
"""


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _load_spec(path: str):
    from edgellm_cli.spec import load_spec

    return load_spec(path)


def pipeline_options(func):
    """Options shared by every command that works from a spec."""
    decorators = [
        click.option("--spec", "spec_path", required=True, type=click.Path(dir_okay=False), help="YAML model spec (see model_specs/)."),
        click.option("--checkpoint", type=click.Path(path_type=Path), help="Use this local checkpoint folder instead of the spec's source."),
        click.option("--token", envvar="HF_TOKEN", help="Hugging Face token for gated or private repos (default: $HF_TOKEN)."),
        click.option("--offline", is_flag=True, default=None, help="Use only the local Hugging Face cache (also: HF_HUB_OFFLINE=1)."),
        click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report on stdout."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _run_stages(stages, spec_path, checkpoint, token, offline, as_json, output: Path | None = None) -> None:
    from edgellm_cli.pipeline import Pipeline

    spec = _load_spec(spec_path)
    pipeline = Pipeline(spec, checkpoint=checkpoint, token=token, offline=offline)
    console = _console()
    results = []
    for stage in stages:
        with console.status(f"[bold]{stage}[/] {spec.name}…", spinner="dots"):
            result = pipeline.stage(stage)
        results.append(result)
        if not as_json:
            how = "[dim]cached[/]" if result.cached else "[green]ran[/]"
            console.print(f"  {stage:<14} {how} {result.seconds:7.2f}s  {_summary(result)}")
    copied = pipeline.export_outputs(output) if output is not None else []
    if as_json:
        _emit_json({"spec": spec.name, "stages": [r.as_json() for r in results], "outputs": [str(p) for p in copied]})
        return
    for result in results:
        if "comparisons" in result.report:
            _print_comparisons(result.report["comparisons"])
    for path in copied:
        click.echo(path)


def _summary(result) -> str:
    report = result.report
    if result.stage == "fetch":
        arch = report["architecture"]
        return f"{Path(report['checkpoint_dir']).name}: {arch['num_layers']} layers, hidden {arch['hidden_size']}, vocab {arch['vocab_size']}"
    if result.stage == "convert":
        return f"{report['size_bytes'] / 1e6:.2f} MB, signatures " + ", ".join([*(f"prefill_{n}" for n in report["prefill_lengths"]), "decode"])
    worst = max(report["comparisons"].values(), key=lambda m: m["max_abs_logit_diff"])
    return f"max |Δlogit| {worst['max_abs_logit_diff']:.2e}, top-1 {worst['top1_agreement']:.1%}"


def _print_comparisons(comparisons: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("comparison", "max |Δlogit|", "top-1 agreement", "positions")
    for name, m in comparisons.items():
        table.add_row(name, f"{m['max_abs_logit_diff']:.3e}", f"{m['top1_agreement']:.1%}", str(m["positions"]))
    Console().print(table)


@click.group(epilog=EXAMPLES)
@click.version_option(__version__, prog_name="edgellm")
def cli() -> None:
    """Take a Hugging Face LLM to a verified LiteRT .tflite with prefill_N and decode signatures.

    Every stage's output is a content-addressed artifact in ~/.cache/edgellm (or
    $EDGELLM_CACHE_DIR), so re-running skips finished work. Exit codes: 0 success,
    2 bad input, 3 verification beyond tolerance, 1 internal error.
    """


@cli.command(epilog="\b\nExample:\n  edgellm build --spec model_specs/stories260k.yaml -o build/stories260k")
@pipeline_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Copy model.tflite, tokenizer and edgellm.json here (default: build/<spec name>).")
def build(spec_path, checkpoint, token, offline, as_json, output) -> None:
    """Run fetch -> verify -> convert -> verify-tflite, skipping stages already cached."""
    from edgellm_cli.pipeline import STAGES

    output = output or Path("build") / _load_spec(spec_path).name
    _run_stages(STAGES, spec_path, checkpoint, token, offline, as_json, output)


@cli.command(epilog="\b\nExample:\n  HF_HUB_OFFLINE=1 edgellm fetch --spec model_specs/smollm2-135m.yaml")
@pipeline_options
def fetch(spec_path, checkpoint, token, offline, as_json) -> None:
    """Locate or download the checkpoint and check its tensors against the spec."""
    _run_stages(["fetch"], spec_path, checkpoint, token, offline, as_json)


@cli.command(epilog="\b\nExample:\n  edgellm verify --spec model_specs/stories260k.yaml --tflite --json")
@pipeline_options
@click.option("--tflite", "with_tflite", is_flag=True, help="Also convert and verify the .tflite.")
def verify(spec_path, checkpoint, token, offline, as_json, with_tflite) -> None:
    """Compare the re-authored model's logits with transformers (and the .tflite's with --tflite)."""
    stages = ["verify", "verify-tflite"] if with_tflite else ["verify"]
    _run_stages(stages, spec_path, checkpoint, token, offline, as_json)


@cli.command(epilog="\b\nExample:\n  edgellm convert --spec model_specs/stories260k.yaml -o out/")
@pipeline_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Copy model.tflite, tokenizer and edgellm.json here.")
def convert(spec_path, checkpoint, token, offline, as_json, output) -> None:
    """Convert to one .tflite with prefill_N and decode signatures (no verification)."""
    _run_stages(["convert"], spec_path, checkpoint, token, offline, as_json, output)


@cli.command(epilog="\b\nExamples:\n  edgellm run build/stories260k/model.tflite --max-tokens 200\n  edgellm run model.tflite --tokenizer tokenizer.model --prompt 'Once' --temperature 0.8 --seed 1")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="tokenizer.model or tokenizer.json (default: the one beside MODEL).")
@click.option("--prompt", default="", help="Text to continue (BOS is added when the model uses it).")
@click.option("--max-tokens", default=128, show_default=True, type=click.IntRange(min=1), help="New tokens to generate at most.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0 is greedy.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="Keep the k most likely tokens (0: all).")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Keep the smallest set with this probability mass.")
@click.option("--seed", type=int, help="Seed for sampling, for reproducible output.")
@click.option("--stop-id", "stop_ids", multiple=True, type=int, help="Stop at this token id (repeatable; default: the model's stop tokens).")
@click.option("--threads", type=click.IntRange(min=1), help="Interpreter threads (default: LiteRT's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print the text, token ids and tokens/s as JSON instead of streaming.")
def run(model, tokenizer, prompt, max_tokens, temperature, top_k, top_p, seed, stop_ids, threads, as_json) -> None:
    """Generate text from MODEL (.tflite) on the LiteRT interpreter, streaming it as it comes."""
    import time

    from edgellm_cli.runtime import LiteRTModel, Sampler, generate, read_metadata
    from edgellm_cli.tokenizer import StreamDecoder, load_tokenizer

    litert = LiteRTModel(model, num_threads=threads)
    metadata = read_metadata(model)
    if tokenizer is None:
        if "tokenizer" not in metadata:
            raise click.UsageError("no edgellm.json beside the model names its tokenizer; pass --tokenizer")
        tokenizer = model.parent / metadata["tokenizer"]
    tok = load_tokenizer(tokenizer)
    prompt_ids = ([metadata["bos_id"]] if metadata.get("add_bos", True) and metadata.get("bos_id") is not None else []) + tok.encode(prompt)
    stops = list(stop_ids) or metadata.get("stop_ids", [])
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    stream = StreamDecoder(tok)
    started = time.perf_counter()
    generated = []
    for token in generate(litert, prompt_ids, max_tokens, sampler, stops):
        generated.append(token)
        piece = stream.push(token)
        if piece and not as_json:
            click.echo(piece, nl=False)
    seconds = time.perf_counter() - started
    if as_json:
        _emit_json({"text": tok.decode(generated), "tokens": generated, "seconds": round(seconds, 4), "tokens_per_second": round(len(generated) / seconds, 2)})
    else:
        click.echo()
        _console().print(f"[dim]{len(generated)} tokens in {seconds:.2f}s ({len(generated) / seconds:.1f} tokens/s)[/]")


@cli.group()
def spec() -> None:
    """Check model specs."""


@spec.command("check", epilog="\b\nExample:\n  edgellm spec check model_specs/*.yaml")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def spec_check(paths) -> None:
    """Validate YAML specs without reading any checkpoint."""
    for path in paths:
        click.echo(f"ok  {path}  ({_load_spec(path).name})")


@cli.group()
def cache() -> None:
    """Inspect or clear the artifact cache."""


@cache.command("path")
def cache_path() -> None:
    """Print the cache folder."""
    from edgellm_cli.cache import cache_root

    click.echo(cache_root())


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached artifact."""
    from edgellm_cli.cache import ArtifactCache

    click.echo(f"freed {ArtifactCache().clear() / 1e6:.1f} MB")


def main() -> None:
    from edgellm_cli.errors import EdgeLLMError
    from edgellm_cli.quiet import quiet_libraries

    quiet_libraries()
    try:
        cli.main(standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except EdgeLLMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("EDGELLM_DEBUG"):
            raise
        first_line = (str(exc).splitlines() or [""])[0]
        click.echo(f"error: internal error ({type(exc).__name__}: {first_line}); rerun with EDGELLM_DEBUG=1 for the traceback and report it", err=True)
        sys.exit(1)
