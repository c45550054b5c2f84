"""bench, eval, inspect: measuring a model file, and printing what was measured by its type."""

from __future__ import annotations

from functools import singledispatch
from pathlib import Path

import click

from edgellm.cli.options import json_option, model_argument, threads_option, tokenizer_option
from edgellm.cli.output import emit_json, print_table, progress_bar


@singledispatch
def print_report(report) -> None:
    """A measurement as a table (each report type registers its own printer below)."""
    raise TypeError(f"no printer for {type(report).__name__}")


def register_printers() -> None:
    """Printers for the report types of measure/reports.py (imported only when a command prints)."""
    from rich.table import Table

    from edgellm.measure.reports import BenchComparison, DecodeBench, EmbedBench, EmbeddingAgreement, PerplexityReport

    @print_report.register(DecodeBench)  # explicit: the annotations are strings here (from __future__), unresolvable by singledispatch
    def _(report: DecodeBench) -> None:
        table = Table("measurement", "value", title=f"{report.model} ({report.threads or 'default'} threads)")
        table.add_row("time to first token", f"{report.time_to_first_token_ms:.1f} ms ({report.prompt_tokens}-token prompt)")
        for name, row in report.prefill.items():
            table.add_row(f"prefill ({name})", f"{row['tokens_per_second']:.1f} tokens/s ({row['ms']:.1f} ms)")
        table.add_row("decode, pipeline", f"{report.decode_tokens_per_second:.1f} tokens/s")
        table.add_row("decode, raw invoke", f"{report.raw_decode_tokens_per_second:.1f} tokens/s")
        table.add_row("pipeline overhead", f"{report.pipeline_overhead_percent:.1f} % (median of paired runs)")
        table.add_row("peak RSS", f"{report.peak_rss_mb:.0f} MB")
        print_table(table)

    @print_report.register(BenchComparison)
    def _(report: BenchComparison) -> None:
        first, second = report.models
        table = Table("tokens/s", first, second, "ratio", title=f"median of {report.rounds} alternating rounds ({report.threads or 'default'} threads)")
        for name in {**report.speeds[0], **report.speeds[1]}:
            cells = [f"{speeds[name]:.1f}" if name in speeds else "-" for speeds in report.speeds]
            table.add_row(name, *cells, f"{report.ratio[name]:.2f}x" if name in report.ratio else "-")
        print_table(table)

    @print_report.register(EmbedBench)
    def _(report: EmbedBench) -> None:
        for name, row in report.signatures.items():
            click.echo(f"{name:<12} {row['ms']:9.2f} ms  {row['tokens_per_second']:10.1f} tokens/s")

    @print_report.register(EmbeddingAgreement)
    def _(report: EmbeddingAgreement) -> None:
        for row in report.models:
            cosine = f"cosine to first: mean {row['mean_cosine']:.6f}, lowest {row['min_cosine']:.6f}" if "mean_cosine" in row else "(reference)"
            click.echo(f"{Path(row['model']).name:<40} {row['size_bytes'] / 1e6:8.2f} MB  {cosine}")

    @print_report.register(PerplexityReport)
    def _(report: PerplexityReport) -> None:
        against = "transformers" if report.reference else "first"
        table = Table("model", "size", "perplexity", f"ratio vs {against}", "top-1", "mean KL", f"greedy differs at (of {report.greedy_tokens})",
                      title=f"{Path(report.corpus).name}: {report.tokens} tokens")
        if report.reference:
            table.add_row("transformers", "", f"{report.reference['perplexity']:.3f}", "", "", "", "")
        for row in report.models:
            size = f"{row['size_bytes'] / 1e6:.2f} MB"
            if "top1_agreement" not in row:
                table.add_row(Path(row["model"]).name, size, f"{row['perplexity']:.3f}", "-", "-", "-", "-")
                continue
            divergence = "never" if row["greedy_divergence"] is None else str(row["greedy_divergence"])
            table.add_row(Path(row["model"]).name, size, f"{row['perplexity']:.3f}", f"{row['perplexity_ratio']:.4f}",
                          f"{row['top1_agreement']:.2%}", f"{row['mean_kl']:.4f}", divergence)
        print_table(table)


def show(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_json())
        return
    register_printers()
    print_report(report)


@click.command(epilog="\b\nExamples:\n  edgellm bench build/stories260k/model.tflite --threads 2 --json\n"
               "  edgellm bench ours.tflite --compare litert-torch.tflite --threads 2 --repeats 5")
@model_argument()
@threads_option()
@click.option("--prompt-tokens", default=32, show_default=True, type=click.IntRange(min=1), help="Prompt length for time to first token.")
@click.option("--decode-tokens", default=64, show_default=True, type=click.IntRange(min=1), help="Tokens to decode for tokens/s.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1),
              help="Runs per measurement; the fastest counts (decode: pipeline and raw runs in pairs, overhead = median over pairs).")
@tokenizer_option("Detokenise in the pipeline numbers (default: the one beside MODEL, if any).")
@click.option("--compare", type=click.Path(dir_okay=False, path_type=Path),
              help="A second model (another converter's, say) timed in alternating rounds with MODEL; medians over --repeats rounds and their ratio.")
@json_option("Print the measurements as JSON.")
def bench(model, threads, prompt_tokens, decode_tokens, repeats, tokenizer, compare, as_json) -> None:
    """Time to first token, prefill tokens/s per signature, decode tokens/s (pipeline and raw invoke), peak memory.

    For an embedding model: milliseconds per call of each embed_N signature."""
    from edgellm.kinds import model_kind

    command = "bench" if compare is None else "bench --compare"  # a comparison times decoders only
    kind = model_kind(model, command)
    if compare is not None:
        model_kind(compare, command)
    show(kind.benchmark(model, tokenizer, threads, prompt_tokens, decode_tokens, repeats, compare), as_json)  # no spinner: it would take CPU from what is timed


@click.command("eval", epilog="\b\nExamples:\n  edgellm eval build/stories260k/model.tflite build/stories260k/model-int8-dynamic.tflite --corpus story.txt\n"
               "  edgellm eval model.tflite model-int4.tflite --corpus wiki.txt --transformers ./checkpoint --json\n"
               "  edgellm eval model.tflite model-int8-dynamic.tflite model-int4.tflite --corpus wiki.txt --plot eval.png")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--corpus", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path), help="A UTF-8 text file.")
@tokenizer_option("Default: the one named by edgellm.json beside the first model.")
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(min=2), help="Evaluate the first N tokens of the corpus.")
@click.option("--window", type=click.IntRange(min=2), help="Tokens per window (default: min(256, KV cache)).")
@click.option("--transformers", "checkpoint", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Compare every model against transformers run on this checkpoint folder, instead of against the first model.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw perplexity ratio against size per model, and KL by position in the window (.png, .svg or .pdf).")
@json_option()
def evaluate_models(models, corpus, tokenizer, max_tokens, window, checkpoint, plot, as_json) -> None:
    """Perplexity of each model over a corpus; against the first (float) model, or transformers:
    perplexity ratio, top-1 agreement, mean KL, and the first token where greedy generation differs.

    For embedding models: each non-empty corpus line embedded by every model; mean and lowest cosine to the first."""
    from edgellm.kinds import model_kind

    kind = model_kind(models[0], "eval")
    if plot is not None:
        from edgellm.measure.plots import check_plot_path

        check_plot_path(plot)
    if as_json:
        report = kind.evaluate(list(models), corpus, tokenizer, max_tokens, window, checkpoint)
    else:
        with progress_bar("[bold]eval[/] windows"):
            report = kind.evaluate(list(models), corpus, tokenizer, max_tokens, window, checkpoint)
    if plot is not None:
        from edgellm.errors import EdgeLLMError
        from edgellm.measure.plots import plot_evaluation
        from edgellm.measure.reports import PerplexityReport

        if not isinstance(report, PerplexityReport):
            raise EdgeLLMError("--plot draws a language model's perplexity; an embedding model's eval has no such figure: drop --plot")
        report.plot = str(plot_evaluation(report, plot))
    show(report, as_json)
    if plot is not None and not as_json:
        click.echo(plot)


@click.command(epilog="\b\nExamples:\n  edgellm inspect build/stories260k/model.tflite\n  edgellm inspect stories.task --json")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@json_option()
def inspect(path, as_json) -> None:
    """Show a .tflite's signatures and weight sizes, or a .litertlm / .task bundle's contents and metadata."""
    from edgellm.measure.inspect import inspect_file

    report = inspect_file(path)
    if as_json:
        emit_json(report)
        return
    click.echo(f"{path.name}: {report['format']}, {_mb(report['size_bytes'])}")
    for table in _INSPECT_TABLES[report["format"]](report):
        print_table(table)


def _mb(size: int) -> str:
    """Bytes in the unit that keeps 3 significant figures readable (12.3 KB, 1.37 MB, 2.10 GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}" if size < 100 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} B"


def _io_summary(tensors: dict[str, dict]) -> str:
    """Tensors as "name dtype[shape]" lines; numbered names of one dtype and shape on one line (kv_cache_k_0…27)."""
    import re

    runs: dict[tuple, list[int]] = {}  # (name or numbered prefix, dtype, shape) -> the numbers, in first-seen order
    for name, info in tensors.items():
        numbered = re.fullmatch(r"(.*?_)(\d+)", name)
        key = (numbered[1] if numbered else name, bool(numbered), info["dtype"], tuple(info["shape"]))
        runs.setdefault(key, []).extend([int(numbered[2])] if numbered else [])
    lines = []
    for (prefix, is_numbered, dtype, shape), numbers in runs.items():
        if not is_numbered:
            name = prefix
        elif len(numbers) > 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            name = f"{prefix}{numbers[0]}…{numbers[-1]}"
        else:
            name = f"{prefix}{','.join(map(str, numbers))}"
        lines.append(f"{name} {dtype}[{', '.join(map(str, shape))}]")
    return "\n".join(lines)


def _tflite_tables(report: dict) -> list:
    from rich.table import Table

    signatures = Table("signature", "inputs", "outputs", title="signatures", show_lines=True)
    for name, io in report["signatures"].items():
        signatures.add_row(name, _io_summary(io["inputs"]), _io_summary(io["outputs"]))
    total = sum(report["weight_bytes_by_dtype"].values()) or 1
    dtypes = list(report["weight_bytes_by_dtype"])
    groups = Table("layer group", "weights", *dtypes, title=f"weights by layer group and dtype ({_mb(report['duplicate_weight_bytes'])} stored twice)")
    for group, by_dtype in report["weight_bytes_by_group_and_dtype"].items():
        groups.add_row(group, _mb(sum(by_dtype.values())), *(_mb(by_dtype[d]) if d in by_dtype else "" for d in dtypes))
    groups.add_row("total", _mb(total), *(f"{_mb(b)} ({b / total:.0%})" for b in report["weight_bytes_by_dtype"].values()), style="bold")
    return [signatures, groups]


def _litertlm_tables(report: dict) -> list:
    from rich.table import Table

    sections = Table("section", "data type", "size", title="sections")
    for section in report["sections"]:
        sections.add_row(str(section["index"]), section["type"], _mb(section["bytes"]))
    return [sections]


def _task_tables(report: dict) -> list:
    from rich.table import Table

    entries = Table("entry", "size", title="entries")
    for entry in report["entries"]:
        entries.add_row(entry["name"], _mb(entry["size"]))
    metadata = Table("metadata", "value", title="metadata")
    for key, value in report["metadata"].items():
        metadata.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    return [entries, metadata]


_INSPECT_TABLES = {"tflite": _tflite_tables, "litertlm": _litertlm_tables, "task": _task_tables}
