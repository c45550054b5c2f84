"""The `edgellm` command line: parses arguments, calls the pipeline or the runtime, prints the result.

Heavy modules (torch, litert_torch, transformers) are imported inside the commands, so
`edgellm --help` stays instant.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import click

from edgellm_cli import __version__


class BundleFormat(click.Choice):
    """A name from bundle.FORMATS, the registry, read only when a value or --help needs it (the
    registry's imports would slow every command's start)."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from edgellm_cli.bundle import FORMATS

        return tuple(FORMATS)

    @choices.setter
    def choices(self, _) -> None:
        pass



EXAMPLES = """
\b
Examples:
  edgellm build --spec model_specs/stories260k.yaml        # fetch, verify, convert, verify .tflite
  edgellm run build/stories260k/model.tflite --max-tokens 200
  edgellm build --spec MODEL_NAME --checkpoint ./local-checkpoint --json   # a shipped spec, local weights
"""


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def emit_json(data) -> None:
    """What every command prints for `--json`: one JSON document on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def _load_spec(path: str):
    from edgellm_cli.spec import load_spec

    return load_spec(path)


calibration_option = click.option(
    "--calibration", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Text that calibrates a recipe's gptq rules (default: the shipped recipes/calibration.txt; held-out windows of it score the result).")


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


class _Progress:
    """A spinner while a stage runs, then its line in the stage table (nothing with --json)."""

    def __init__(self, label: str, quiet: bool, only: str | None = None):
        """`only`: show this stage alone (a command on a model file shows its one stage)."""
        self.label, self.quiet, self.only, self.results, self._status = label, quiet, only, [], None

    def start(self, stage: str) -> None:
        if not self.quiet and self.only in (None, stage):
            self._status = _console().status(f"[bold]{stage}[/] {self.label}…", spinner="dots")
            self._status.start()

    def finish(self, result) -> None:
        self.results.append(result)
        if self._status is not None:
            self._status.stop()
            self._status = None
        if not self.quiet and self.only in (None, result.stage):
            _print_stage(_console(), result)


def _pipeline(progress: _Progress, **kwargs):
    from edgellm_cli.pipeline import Pipeline

    return Pipeline(on_start=progress.start, on_finish=progress.finish, **kwargs)


def _run_spec_stages(spec_path, stages: list[str] | None, as_json: bool, **kwargs) -> None:
    """Run `stages` of a spec's build (None: the whole build), printing the stage table or JSON."""
    spec = _load_spec(spec_path)
    progress = _Progress(spec.name, as_json)
    pipeline = _pipeline(progress, spec=spec, **kwargs)
    pipeline.run(stages or pipeline.build_stages())
    outputs = progress.results[-1].report.get("outputs", []) if progress.results and progress.results[-1].stage == "export" else []
    if as_json:
        emit_json({"spec": spec.name, "stages": [r.as_json() for r in progress.results], "outputs": outputs})
        return
    for result in progress.results:
        if "comparisons" in result.report:
            _print_comparisons(result.report["comparisons"])
    for path in outputs:
        click.echo(path)


def _print_stage(console, result) -> None:
    how = "[dim]cached[/]" if result.cached else "[green]ran[/]   "
    console.print(f"  {result.stage:<16} {how} {result.seconds:7.2f}s {result.peak_rss_bytes / 2**30:6.2f} GiB  {_summary(result)}")


def _summary(result) -> str:
    report = result.report
    if result.stage == "fetch":
        arch = report["architecture"]
        return f"{Path(report['checkpoint_dir']).name}: {arch['num_layers']} layers, hidden {arch['hidden_size']}, vocab {arch['vocab_size']}"
    if result.stage == "convert" and "signatures" in report:  # encoders and encoder-decoders
        return f"{report['size_bytes'] / 1e6:.2f} MB, signatures " + ", ".join(report["signatures"])
    if result.stage == "convert":
        return f"{report['size_bytes'] / 1e6:.2f} MB, signatures " + ", ".join([*(f"prefill_{n}" for n in report["prefill_lengths"]), "decode"])
    if result.stage == "quantize":
        fallback = f", {len(report['block_fallbacks'])} weights per channel (not divisible into blocks)" if report["block_fallbacks"] else ""
        agreement = f", top-1 {report['top1_agreement_with_float']:.0%} of float's" if "top1_agreement_with_float" in report else ""
        gptq = f", GPTQ on {report['gptq_weights']} weights" if report.get("gptq_weights") else ""
        if "held_out_ppl_ratio" in report:
            gptq += f", perplexity ratio {report['held_out_ppl_ratio']:.4f} (KL {report['held_out_mean_kl']:.4f}) on held-out calibration text"
        return f"{report['recipe']}: {report['size_before'] / 1e6:.2f} MB -> {report['size_after'] / 1e6:.2f} MB ({report['ratio']:.1%}){agreement}{gptq}{fallback}"
    if result.stage == "sensitivity":
        costs = report["int4_costs"].values()
        return f"{len(report['groups'])} layer groups, int4 costs KL {min(costs):.4f}..{max(costs):.4f} per token"
    if result.stage == "search":
        chosen = report["chosen"]
        return (f"{len(chosen['int4_groups'])} of {len(report['frontier']) - 1} groups int4, exp(KL) {chosen['measured_kl_bound']:.4f} "
                f"(weights only, budget {report['max_ppl_ratio']:g})")
    if result.stage == "calibrate":
        return f"{report['windows']} windows, {report['tokens']} tokens, Hessians of {report['weights']} weights"
    if result.stage.startswith("bundle-"):
        return f"{report['size_bytes'] / 1e6:.2f} MB, start {report['start_token']!r}, stop {report['stop_tokens']}"
    if result.stage == "export":
        return f"{len(report['outputs'])} files in {result.path}"
    if result.stage == "model-file":
        return f"{result.file} ({report['size_bytes'] / 1e6:.2f} MB)"
    if "comparisons" not in report:
        return ""  # a stage this table has no words for yet: its report is in --json
    if "min_cosine" in next(iter(report["comparisons"].values())):  # an encoder's pooled embeddings
        worst = min(report["comparisons"].values(), key=lambda m: m["min_cosine"])
        return f"embedding cosine {worst['min_cosine']:.6f}, max |Δ| {worst['max_abs_diff']:.2e}"
    worst = max(report["comparisons"].values(), key=lambda m: m["max_abs_logit_diff"])
    return f"max |Δlogit| {worst['max_abs_logit_diff']:.2e}, top-1 {worst['top1_agreement']:.1%}"


def _print_comparisons(comparisons: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if "min_cosine" in next(iter(comparisons.values())):
        table = Table("comparison", "lowest cosine", "max |Δ|", "inputs")
        for name, m in comparisons.items():
            table.add_row(name, f"{m['min_cosine']:.6f}", f"{m['max_abs_diff']:.3e}", str(m["inputs"]))
        Console().print(table)
        return
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
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Write model.tflite, tokenizer and edgellm.json here (default: build/<spec name>).")
@click.option("--recipe", help="Then quantize with this recipe (a name from `edgellm recipes list`, or a YAML file).")
@click.option("--bundle", "bundle_formats", multiple=True, type=BundleFormat(), help="Then bundle the output for this runtime (repeatable).")
@calibration_option
def build(spec_path, checkpoint, token, offline, as_json, output, recipe, bundle_formats, calibration) -> None:
    """Run fetch -> verify -> convert -> verify-tflite (-> quantize -> bundle), skipping stages already cached."""
    from edgellm_cli.quantize import load_recipe

    output = output or Path("build") / _load_spec(spec_path).name
    loaded = load_recipe(recipe) if recipe is not None else None
    _run_spec_stages(spec_path, None, as_json, checkpoint=checkpoint, token=token, offline=offline, recipe=loaded, formats=bundle_formats, output=output,
                     calibration=calibration)


@cli.command(epilog="\b\nExample:\n  HF_HUB_OFFLINE=1 edgellm fetch --spec model_specs/MODEL.yaml")
@pipeline_options
def fetch(spec_path, checkpoint, token, offline, as_json) -> None:
    """Locate or download the checkpoint and check its tensors against the spec."""
    _run_spec_stages(spec_path, ["fetch"], as_json, checkpoint=checkpoint, token=token, offline=offline)


@cli.command(epilog="\b\nExample:\n  edgellm verify --spec model_specs/stories260k.yaml --tflite --json")
@pipeline_options
@click.option("--tflite", "with_tflite", is_flag=True, help="Also convert and verify the .tflite.")
def verify(spec_path, checkpoint, token, offline, as_json, with_tflite) -> None:
    """Compare the re-authored model's logits with transformers (and the .tflite's with --tflite)."""
    stages = ["verify", "verify-tflite"] if with_tflite else ["verify"]
    _run_spec_stages(spec_path, stages, as_json, checkpoint=checkpoint, token=token, offline=offline)


@cli.command(epilog="\b\nExample:\n  edgellm convert --spec model_specs/stories260k.yaml -o out/")
@pipeline_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Write model.tflite, tokenizer and edgellm.json here (default: build/<spec name>).")
def convert(spec_path, checkpoint, token, offline, as_json, output) -> None:
    """Convert to one .tflite with prefill_N and decode signatures (no verification)."""
    output = output or Path("build") / _load_spec(spec_path).name
    _run_spec_stages(spec_path, ["convert", "export"], as_json, checkpoint=checkpoint, token=token, offline=offline, output=output)


def sampling_options(func):
    """Sampling and stopping options shared by `run` and `chat`."""
    decorators = [
        click.option("--max-tokens", default=128, show_default=True, type=click.IntRange(min=1), help="New tokens to generate at most."),
        click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0 is greedy."),
        click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="Keep the k most likely tokens (0: all)."),
        click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Keep the smallest set with this probability mass."),
        click.option("--min-p", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Drop tokens below this share of the top token's probability."),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Above 1 discourages tokens already seen."),
        click.option("--seed", type=int, help="Seed for sampling, for reproducible output."),
        click.option("--stop-id", "stop_ids", multiple=True, type=int, help="Stop at this token id (repeatable; replaces the model's stop ids)."),
        click.option("--stop", "stop_strings", multiple=True, help="Stop when the text contains this string (repeatable)."),
        click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="tokenizer.model or tokenizer.json (default: the one beside MODEL)."),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: LiteRT's choice)."),
        click.option("--max-prefill", type=click.IntRange(min=1), help="Use only prefill signatures up to this length (longer prompts go in chunks)."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _generator(model, tokenizer, threads, max_prefill, stop_ids, stop_strings, **sampling):
    from edgellm_cli.runtime import Generator, Sampler

    return Generator(model, tokenizer, Sampler(**sampling), stop_ids, stop_strings, threads, max_prefill)


@cli.command(epilog="\b\nExamples:\n  edgellm run build/stories260k/model.tflite --max-tokens 200\n  edgellm run model.tflite --prompt 'Once' --temperature 0.8 --top-p 0.9 --seed 1 --json")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prompt", default="", help="Text to continue (BOS is added when the model uses it).")
@sampling_options
@click.option("--json", "as_json", is_flag=True, help="Print the text, token ids and tokens/s as JSON instead of streaming.")
def run(model, prompt, max_tokens, tokenizer, threads, max_prefill, stop_ids, stop_strings, as_json, **sampling) -> None:
    """Generate text from MODEL (.tflite) on the LiteRT runtime, streaming it as it comes.

    An encoder-decoder (T5) answers the prompt: it is encoded once, then the decoder generates."""
    import time

    from edgellm_cli.runtime import Sampler, Session
    from edgellm_cli.tflite_file import refuse_kind

    generated, pieces = [], []
    if refuse_kind(model, "run", ("decoder", "encoder-decoder")) == "encoder-decoder":
        from edgellm_cli.seq2seq import Seq2SeqGenerator

        gen = Seq2SeqGenerator(model, tokenizer, Sampler(**sampling), stop_ids, stop_strings, threads)
        prompt_ids = gen.input_ids(prompt)
        started = time.perf_counter()
        stream = gen.stream(prompt, max_tokens, generated)
    else:
        gen = _generator(model, tokenizer, threads, max_prefill, stop_ids, stop_strings, **sampling)
        prompt_ids = gen.prompt_ids(prompt)
        started = time.perf_counter()
        session = Session(gen.litert)
        if prompt_ids:
            session.feed(prompt_ids)
        stream = gen.stream(session, max_tokens, generated)
    for piece in stream:
        pieces.append(piece)
        if not as_json:
            click.echo(piece, nl=False)
    seconds = time.perf_counter() - started
    rate = round(len(generated) / seconds, 2)
    if as_json:
        emit_json({"text": "".join(pieces), "tokens": generated, "prompt_tokens": len(prompt_ids), "seconds": round(seconds, 4), "tokens_per_second": rate})
    else:
        click.echo()
        _console().print(f"[dim]{len(generated)} tokens in {seconds:.2f}s ({rate:.1f} tokens/s)[/]")


@cli.command(epilog="\b\nExample:\n  edgellm chat build/qwen2.5-0.5b/model.tflite --system 'Be brief.'\n  printf 'Hi\\nAnd then?\\n' | edgellm chat model.tflite --chat-template t.jinja")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--system", help="A system message opening the conversation.")
@click.option("--chat-template", "template_file", type=click.Path(dir_okay=False, path_type=Path), help="Jinja chat template file (default: the checkpoint's).")
@sampling_options
def chat(model, system, template_file, max_tokens, tokenizer, threads, max_prefill, stop_ids, stop_strings, **sampling) -> None:
    """Talk with MODEL: one line per user turn (/reset starts over, /exit or end of input ends).

    The chat template renders the whole conversation each turn; only the tokens that differ from
    what the KV cache already holds are computed.
    """
    from edgellm_cli.errors import EdgeLLMError
    from edgellm_cli.runtime import Chat

    template = _read_text(template_file, "chat template") if template_file else None
    conversation = Chat(_generator(model, tokenizer, threads, max_prefill, stop_ids, stop_strings, **sampling), max_tokens, system, template)
    if sys.stdin is None or sys.stdin.closed:
        raise EdgeLLMError("standard input is closed; chat reads one user message per line from it (pipe text in, or run it in a terminal)")
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            raise EdgeLLMError("standard input is not valid UTF-8 text; chat reads UTF-8 lines") from None
        if not line or line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            conversation.reset()
            continue
        for piece in conversation.turn(line.rstrip("\n")):
            click.echo(piece, nl=False)
        click.echo()
        _console().print(f"[dim]({conversation.session.computed} prompt tokens computed, {conversation.reused} reused from the cache)[/]")


def _read_text(path: Path, what: str) -> str:
    from edgellm_cli.errors import EdgeLLMError

    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeLLMError(f"{what} {path} is unreadable ({exc}); pass a UTF-8 text file") from None


@cli.command(epilog="\b\nExamples:\n  edgellm embed build/all-minilm-l6-v2/model.tflite 'A sentence.' 'Another one.' --similarity\n  edgellm embed model.tflite 'Some text' --json")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--similarity", is_flag=True, help="Print the cosine similarity matrix of the texts instead of the vectors.")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="tokenizer.json (default: the one beside MODEL).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: LiteRT's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print texts, embeddings (and the similarity matrix) as JSON.")
def embed(model, texts, similarity, tokenizer, threads, as_json) -> None:
    """Sentence embeddings of TEXT... from an embedding MODEL (.tflite with embed_N signatures).

    Each text goes through the smallest embed_N that holds it; a longer one is truncated to the
    largest N, with a warning, as sentence-transformers truncates to max_seq_length.
    """
    import numpy as np

    from edgellm_cli.embedding import EmbeddingModel, cosine_matrix
    from edgellm_cli.runtime import valid_text

    embedder = EmbeddingModel(model, tokenizer, threads)
    results = embedder.embed([valid_text(t, "the text") for t in texts])
    for i, result in enumerate(results):
        if result.truncated_from is not None:
            _console().print(f"[yellow]warning:[/] text {i + 1} has {result.truncated_from} tokens; truncated to {result.tokens} (the longest signature)")
    vectors = [r.vector for r in results]
    matrix = cosine_matrix(np.stack(vectors))
    if as_json:
        emit_json({"texts": list(texts), "dimension": int(vectors[0].size), "embeddings": [v.tolist() for v in vectors],
                   **({"similarity": matrix.round(6).tolist()} if similarity else {})})
    elif similarity:
        width = len(str(len(texts)))
        for i, row in enumerate(matrix):
            click.echo(f"[{i + 1:>{width}}] " + " ".join(f"{value:6.3f}" for value in row) + f"  {texts[i]}")
    else:
        for vector in vectors:
            click.echo(" ".join(f"{value:.6f}" for value in vector))


@cli.command(epilog="\b\nExamples:\n  edgellm bench build/stories260k/model.tflite --threads 2 --json\n"
             "  edgellm bench ours.tflite --compare litert-torch.tflite --threads 2 --repeats 5")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: LiteRT's choice).")
@click.option("--prompt-tokens", default=32, show_default=True, type=click.IntRange(min=1), help="Prompt length for time to first token.")
@click.option("--decode-tokens", default=64, show_default=True, type=click.IntRange(min=1), help="Tokens to decode for tokens/s.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Runs per measurement; the fastest counts (decode: pipeline and raw runs in pairs, overhead = median over pairs).")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="Detokenise in the pipeline numbers (default: the one beside MODEL, if any).")
@click.option("--compare", type=click.Path(dir_okay=False, path_type=Path),
              help="A second model (another converter's, say) timed in alternating rounds with MODEL; medians over --repeats rounds and their ratio.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
def bench(model, threads, prompt_tokens, decode_tokens, repeats, tokenizer, compare, as_json) -> None:
    """Time to first token, prefill tokens/s per signature, decode tokens/s (pipeline and raw invoke), peak memory.

    For an embedding model: milliseconds per call of each embed_N signature."""
    from edgellm_cli.benchmark import benchmark
    from edgellm_cli.tflite_file import refuse_kind

    if refuse_kind(model, "bench", ("decoder", "encoder")) == "encoder":
        from edgellm_cli.embedding import EmbeddingModel

        report = EmbeddingModel(model, threads=threads).benchmark(repeats)
        if as_json:
            emit_json(report)
            return
        for name, row in report["signatures"].items():
            click.echo(f"{name:<12} {row['ms']:9.2f} ms  {row['tokens_per_second']:10.1f} tokens/s")
        return
    from edgellm_cli.metadata import model_metadata, read_metadata
    from edgellm_cli.tokenizer import load_tokenizer

    def tokenizer_of(path: Path):
        return load_tokenizer(model_metadata(path, tokenizer)[1]) if tokenizer is not None or read_metadata(path) is not None else None

    if compare is not None:
        refuse_kind(compare, "bench --compare", ("decoder",))
        from edgellm_cli.benchmark import compare as compare_models

        _print_comparison(compare_models([(model, tokenizer_of(model)), (compare, tokenizer_of(compare))], threads, prompt_tokens, decode_tokens, repeats), as_json)
        return
    report = benchmark(model, tokenizer_of(model), threads, prompt_tokens, decode_tokens, repeats)
    if as_json:
        emit_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("measurement", "value", title=f"{model} ({report['threads'] or 'default'} threads)")
    table.add_row("time to first token", f"{report['time_to_first_token_ms']:.1f} ms ({prompt_tokens}-token prompt)")
    for name, row in report["prefill"].items():
        table.add_row(f"prefill ({name})", f"{row['tokens_per_second']:.1f} tokens/s ({row['ms']:.1f} ms)")
    table.add_row("decode, pipeline", f"{report['decode_tokens_per_second']:.1f} tokens/s")
    table.add_row("decode, raw invoke", f"{report['raw_decode_tokens_per_second']:.1f} tokens/s")
    table.add_row("pipeline overhead", f"{report['pipeline_overhead_percent']:.1f} % (median of {repeats} paired runs)")
    table.add_row("peak RSS", f"{report['peak_rss_mb']:.0f} MB")
    Console().print(table)


def _print_comparison(report: dict, as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    first, second = report["models"]
    table = Table("tokens/s", first, second, "ratio", title=f"median of {report['rounds']} alternating rounds ({report['threads'] or 'default'} threads)")
    for name in {**report["speeds"][0], **report["speeds"][1]}:
        cells = [f"{speeds[name]:.1f}" if name in speeds else "-" for speeds in report["speeds"]]
        table.add_row(name, *cells, f"{report['ratio'][name]:.2f}x" if name in report["ratio"] else "-")
    Console().print(table)


@cli.command(epilog="\b\nExamples:\n  edgellm quantize build/stories260k/model.tflite --recipe int8-dynamic\n"
             "  edgellm quantize model.tflite --recipe int4 --calibration my-text.txt\n"
             "  edgellm quantize model.tflite --search --max-ppl-ratio 1.05\n  edgellm quantize model.tflite --recipe my-recipe.yaml -o model-q.tflite --json")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--recipe", help="A name from `edgellm recipes list`, or a YAML recipe file.")
@click.option("--search", is_flag=True, help="Instead of a recipe: find the smallest int4/int8 mix of layer groups within --max-ppl-ratio, "
              "and write it as a recipe file beside the output.")
@click.option("--max-ppl-ratio", type=click.FloatRange(min=1.0, min_open=True), default=1.05, show_default=True,
              help="--search's budget: perplexity over the float model's, held as exp(mean KL from float) "
              "on held-out calibration text, which bounds it.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Where to write it (default: MODEL-<recipe>.tflite beside MODEL); "
              "a folder without edgellm.json also gets the model's, and its tokenizer.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@calibration_option
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="For calibration (default: the one named by edgellm.json beside MODEL).")
def quantize(model, recipe, search, max_ppl_ratio, output, as_json, calibration, tokenizer) -> None:
    """Quantize a .tflite with a recipe; every signature and I/O name is kept. Recipes with gptq
    rules first run the model on calibration text (a cached stage)."""
    from edgellm_cli.pipeline import publish_quantized, quantize_searched
    from edgellm_cli.quantize import load_recipe

    if (recipe is None) == (not search):
        raise click.UsageError("give either --recipe NAME or --search")
    pipeline = _pipeline(_Progress(model.name, as_json, "quantize"), model=model, recipe=load_recipe(recipe) if recipe else None,
                         calibration=calibration, tokenizer=tokenizer, max_ppl_ratio=max_ppl_ratio if search else None)
    searched = None
    if search:
        searched, result = quantize_searched(pipeline)
    else:
        result = pipeline.result("quantize")
    output, *companions = publish_quantized(pipeline, result, output or model.with_name(f"{model.stem}-{pipeline.recipe.name}.tflite"))
    recipe_file = pipeline.recipe.write(output.with_suffix(".yaml")) if searched is not None else None
    if as_json:
        extra = {"recipe_file": str(recipe_file), "search": searched.report, "recipe": pipeline.recipe.model_dump()} if searched is not None else {}
        emit_json({**result.as_json(), "output": str(output), "companions": [str(c) for c in companions], **extra})
        return
    if searched is not None:
        _print_frontier(searched.report, result.report)
        click.echo(recipe_file)
    for written in (*companions, output):
        click.echo(written)


def _print_frontier(search: dict, quantized: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    points = search["frontier"]
    shown = sorted({*range(0, len(points), max(1, len(points) // 10)), len(points) - 1,
                    *(i for i, p in enumerate(points) if "measured_kl_bound" in p)})
    table = Table("int4 groups", "grouped weights", "predicted exp(KL)", "measured exp(KL), weights only",
                  title=f"size-accuracy frontier, budget {search['max_ppl_ratio']:g}")
    for i in shown:
        p = points[i]
        measured = f"{p['measured_kl_bound']:.4f}" if "measured_kl_bound" in p else ""
        table.add_row(f"{len(p['int4_groups'])}/{len(points) - 1}", f"{p['grouped_bytes'] / 1e6:.1f} MB", f"{p['predicted_ppl_ratio']:.4f}", measured)
    Console().print(table)
    click.echo(f"chosen: {len(search['chosen']['int4_groups'])} groups in int4 (measured weights only); as quantized: {quantized['size_after'] / 1e6:.2f} MB "
               f"({quantized['ratio']:.1%} of float), perplexity ratio {quantized['held_out_ppl_ratio']:.4f}, exp(KL) {math.exp(quantized['held_out_mean_kl']):.4f} on held-out calibration text")


@cli.command(epilog="\b\nExamples:\n  edgellm bundle build/stories260k/model.tflite --format litertlm\n  edgellm bundle build/stories260k/model.tflite --format task -o stories.task")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=BundleFormat(), required=True, help="A registered bundle format (bundle.FORMATS).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: MODEL with the format's extension.")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="Default: the one named by edgellm.json beside MODEL.")
@click.option("--chat-template", "template_file", type=click.Path(dir_okay=False, path_type=Path), help="Jinja chat template file (default: the model's).")
@click.option("--stop-id", "stop_ids", multiple=True, type=int, help="Stop token id (repeatable; default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bundle(model, fmt, output, tokenizer, template_file, stop_ids, as_json) -> None:
    """Package MODEL with its tokenizer, start/stop tokens and prompt template for a runtime.

    Before writing, a pre-flight checks that the bundle will work there: the start and stop tokens
    exist, and the chat template renders in LiteRT-LM to the prompt `edgellm chat` would feed.
    """
    from edgellm_cli.files import publish

    stage, template = f"bundle-{fmt}", _read_text(template_file, "chat template") if template_file else None
    pipeline = _pipeline(_Progress(model.name, as_json, stage), model=model, tokenizer=tokenizer, formats=(fmt,), chat_template=template,
                         stop_ids=stop_ids)
    result = pipeline.result(stage)
    output = publish(result.file, output or model.with_suffix(f".{fmt}"))
    if as_json:
        emit_json({**result.as_json(), "output": str(output)})
        return
    click.echo(output)


@cli.command("check", epilog="\b\nExamples:\n  edgellm check build/smollm2-135m/smollm2-135m.litertlm\n  edgellm check other-tool.task --json")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-generate", is_flag=True, help="Skip the short greedy generation through LiteRT-LM's engine.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def check_bundle(path, no_generate, as_json) -> None:
    """Check a .litertlm or .task bundle (any tool's) the way its runtime will use it: a deploy gate.

    Signatures, KV length, start/stop tokens, the chat template as LiteRT-LM renders it, the
    tokenizer, and a short greedy reply through LiteRT-LM's engine. Exit 2 when a check fails.
    """
    from edgellm_cli.deploy_check import check_bundle as run_checks

    report = run_checks(path, generate=not no_generate)
    if as_json:
        emit_json(report)
    else:
        for item in report["checks"]:
            mark = "[green]ok[/]  " if item["ok"] else "[red]FAIL[/]"
            _console().print(f"  {mark} {item['name']:<11} {item['detail']}", markup=True, highlight=False)
    if not report["ok"]:
        sys.exit(2)


@cli.command(epilog="\b\nExamples:\n  edgellm inspect build/stories260k/model.tflite\n  edgellm inspect stories.task --json")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(path, as_json) -> None:
    """Show a .tflite's signatures and weight sizes, or a .litertlm / .task bundle's contents and metadata."""
    from edgellm_cli.inspect import inspect_file

    report = inspect_file(path)
    if as_json:
        emit_json(report)
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(report, expand_all=True))


@cli.command("eval", epilog="\b\nExample:\n  edgellm eval build/stories260k/model.tflite build/stories260k/model-int8-dynamic.tflite --corpus story.txt")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--corpus", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path), help="A UTF-8 text file.")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="Default: the one named by edgellm.json beside the first model.")
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(min=2), help="Evaluate the first N tokens of the corpus.")
@click.option("--window", type=click.IntRange(min=2), help="Tokens per window (default: min(256, KV cache)).")
@click.option("--transformers", "checkpoint", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Compare every model against transformers run on this checkpoint folder, instead of against the first model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate_models(models, corpus, tokenizer, max_tokens, window, checkpoint, as_json) -> None:
    """Perplexity of each model over a corpus; against the first (float) model, or transformers:
    perplexity ratio, top-1 agreement, mean KL, and the first token where greedy generation differs.

    For embedding models: each non-empty corpus line embedded by every model; mean and lowest cosine to the first."""
    from edgellm_cli.evaluate import evaluate
    from edgellm_cli.tflite_file import refuse_kind

    if refuse_kind(models[0], "eval", ("decoder", "encoder")) == "encoder":
        from edgellm_cli.embedding import compare_models

        lines = [line for line in _read_text(corpus, "corpus").splitlines() if line.strip()]
        report = compare_models(list(models), lines, tokenizer)
        if as_json:
            emit_json(report)
            return
        for row in report["models"]:
            cosine = f"cosine to first: mean {row['mean_cosine']:.6f}, lowest {row['min_cosine']:.6f}" if "mean_cosine" in row else "(reference)"
            click.echo(f"{Path(row['model']).name:<40} {row['size_bytes'] / 1e6:8.2f} MB  {cosine}")
        return
    from edgellm_cli.metadata import model_metadata
    from edgellm_cli.tokenizer import load_tokenizer

    metadata, tokenizer = model_metadata(models[0], tokenizer)
    with _console().status("[bold]eval[/]…", spinner="dots"):
        report = evaluate(list(models), load_tokenizer(tokenizer), corpus, metadata.start_id, max_tokens, window, checkpoint)
    if as_json:
        emit_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    against = "transformers" if checkpoint else "first"
    table = Table("model", "size", "perplexity", f"ratio vs {against}", "top-1", "mean KL", f"greedy differs at (of {report['greedy_tokens']})",
                  title=f"{corpus.name}: {report['tokens']} tokens")
    if checkpoint:
        table.add_row("transformers", "", f"{report['reference']['perplexity']:.3f}", "", "", "", "")
    for row in report["models"]:
        if "top1_agreement" not in row:
            table.add_row(Path(row["model"]).name, f"{row['size_bytes'] / 1e6:.2f} MB", f"{row['perplexity']:.3f}", "-", "-", "-", "-")
            continue
        divergence = "never" if row["greedy_divergence"] is None else str(row["greedy_divergence"])
        table.add_row(Path(row["model"]).name, f"{row['size_bytes'] / 1e6:.2f} MB", f"{row['perplexity']:.3f}", f"{row['perplexity_ratio']:.4f}",
                      f"{row['top1_agreement']:.2%}", f"{row['mean_kl']:.4f}", divergence)
    Console().print(table)


@cli.group()
def recipes() -> None:
    """List or show quantization recipes."""


@recipes.command("list")
def recipes_list() -> None:
    """The shipped recipes, one line each."""
    from edgellm_cli.quantize import load_recipe, recipe_names

    for name in recipe_names():
        click.echo(f"{name:<18} {load_recipe(name).description}")


@recipes.command("show")
@click.argument("name")
def recipes_show(name) -> None:
    """A recipe's rules, and the ai-edge-quantizer recipe they become."""
    from edgellm_cli.quantize import load_recipe

    recipe = load_recipe(name)
    emit_json({"recipe": recipe.model_dump(), "ai_edge_quantizer": recipe.to_aeq()})


@cli.group()
def spec() -> None:
    """Check model specs."""


@spec.command("check", epilog="\b\nExample:\n  edgellm spec check model_specs/*.yaml")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def spec_check(paths) -> None:
    """Validate YAML specs without reading any checkpoint: every field's type and bounds,
    architecture overrides, cross-field rules. Family files (`_hf-*.yaml`) are checked as fragments."""
    from edgellm_cli.spec import is_family_file, load_spec

    for path in paths:
        family = is_family_file(path)
        spec = load_spec(path, family=family)
        click.echo(f"ok  {path}  ({'family file' if family else spec.name})")


@spec.command("init", epilog="\b\nExample:\n  edgellm spec init --from ./my-checkpoint -o model_specs/my-model.yaml")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path), help="Checkpoint folder or its config.json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Spec file to write (default: <folder name>.yaml).")
def spec_init(source, output) -> None:
    """Draft a spec from a checkpoint's config.json (its `architectures` class picks the family)."""
    from edgellm_cli.spec_init import draft_specs

    for path in draft_specs(source, output or Path(f"{source.resolve().name if source.is_dir() else source.resolve().parent.name}.yaml")):
        click.echo(f"wrote {path}")


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


def _print_check(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['candidate']} against {report['reference']}")
    table.add_column("check")
    table.add_column("result", justify="right")
    if "pairs" in report:
        p = report["pairs"]
        table.add_row(f"random id pairs (n={p['pairs']}, seed {p['seed']}): strict mismatch", f"{p['strict_mismatches']} ({100 * p['strict_rate']:.2f} %)")
        table.add_row("random id pairs: loose mismatch", f"{p['loose_mismatches']} ({100 * p['loose_rate']:.2f} %)")
    if "vectors" in report:
        v = report["vectors"]
        table.add_row(f"llama.cpp vectors {Path(v['file']).name}", f"{v['passed']}/{v['total']} (reference {v['reference_passed']}/{v['total']})")
    if "corpus" in report:
        c = report["corpus"]
        table.add_row(f"corpus {Path(c['file']).name}: exact lines", f"{c['exact']}/{c['lines']} ({100 * c['exact_rate']:.2f} %)")
    Console().print(table)


@cli.group()
def tokenizer() -> None:
    """Convert tokenizers to SentencePiece and measure how faithful the result is."""


@tokenizer.command(
    "to-spm",
    epilog="""\b
Examples:
  edgellm tokenizer to-spm ../shared/assets/tokenizers/tinyllama-chat/tokenizer.json -o tokenizer.model
  edgellm tokenizer to-spm ./qwen2-folder -o tokenizer.model --json   # vocab.json + merges.txt
  edgellm tokenizer to-spm tokenizer.json -o tokenizer.model --pairs 0   # skip the fidelity check
""",
)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Where to write the SentencePiece tokenizer.model.")
@click.option("--pairs", default=1000, show_default=True, help="Random token-id pairs to check the result with (0: no check).")
@click.option("--seed", default=0, show_default=True, help="Seed for the random pairs.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report on stdout.")
def to_spm(source: Path, output: Path, pairs: int, seed: int, as_json: bool) -> None:
    """Write SOURCE (tokenizer.json, a folder, or vocab.json + merges.txt) as a SentencePiece model."""
    from edgellm_cli.spm import to_sentencepiece

    report = to_sentencepiece(source, output, pairs=pairs, seed=seed)
    if as_json:
        emit_json(report)
        return
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(report["pieces"].items()))
    click.echo(f"wrote {report['output']} ({report['kind']}: {counts})")
    for note in report["notes"]:
        click.echo(f"  {note}")
    if "check" in report:
        _print_check(report["check"])


@tokenizer.command(
    epilog="""\b
Examples:
  edgellm tokenizer check --reference ../shared/assets/tokenizers/gpt2 --candidate tokenizer.model
  edgellm tokenizer check --reference tokenizer.json --candidate tokenizer.model \\
      --vectors ../shared/assets/tokenizer-vectors/ggml-vocab-gpt-2.gguf.inp \\
      --corpus ../shared/assets/corpora/wikitext2-test/wikitext-2-raw-test.txt --json
""",
)
@click.option("--reference", required=True, type=click.Path(path_type=Path), help="The original tokenizer: tokenizer.json, its folder, or vocab.json + merges.txt.")
@click.option("--candidate", required=True, type=click.Path(path_type=Path), help="The SentencePiece tokenizer.model to measure.")
@click.option("--pairs", default=1000, show_default=True, help="Random token-id pairs (litert-torch's strict/loose measure; 0: skip).")
@click.option("--seed", default=0, show_default=True, help="Seed for the random pairs.")
@click.option("--vectors", type=click.Path(path_type=Path), help="llama.cpp test vectors: X.gguf.inp (X.gguf.out beside it).")
@click.option("--corpus", type=click.Path(path_type=Path), help="A UTF-8 text file; each non-empty line must encode to the same ids.")
@click.option("--corpus-lines", type=int, help="Use only the first N non-empty corpus lines.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report on stdout.")
def check(reference: Path, candidate: Path, pairs: int, seed: int, vectors: Path | None, corpus: Path | None, corpus_lines: int | None, as_json: bool) -> None:
    """Measure a SentencePiece model against the tokenizer it was converted from."""
    from edgellm_cli.tokenizer_check import check as run_check

    report = run_check(reference, candidate, pairs=pairs, seed=seed, vectors=vectors, corpus=corpus, corpus_lines=corpus_lines)
    if as_json:
        emit_json(report)
    else:
        _print_check(report)


def main() -> None:
    from edgellm_cli.errors import EdgeLLMError
    from edgellm_cli.quiet import quiet_libraries, silence_native_stderr

    quiet_libraries()
    silence_native_stderr()
    try:
        # Not cli.main(): it turns Ctrl-C into a blank line and an Abort before edgellm sees it.
        with cli.make_context("edgellm", sys.argv[1:]) as context:
            cli.invoke(context)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgeLLMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted; nothing half-written was kept (finished stages are cached: run it again to go on)", err=True)
        sys.exit(130)
    except BrokenPipeError:  # the reader of our output went away (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:
        if os.environ.get("EDGELLM_DEBUG"):
            raise
        first_line = (str(exc).splitlines() or [""])[0]
        click.echo(f"error: internal error ({type(exc).__name__}: {first_line}); rerun with EDGELLM_DEBUG=1 for the traceback and report it", err=True)
        sys.exit(1)
