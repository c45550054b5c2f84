"""tokenizer to-spm, check: SentencePiece from other tokenizers, and how faithful it is."""

from __future__ import annotations

from pathlib import Path

import click

from edgellm.cli.output import emit_json, print_table


def _print_check(report: dict) -> None:
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
    print_table(table)


@click.group()
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
    from edgellm.text.spm import to_sentencepiece

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
    from edgellm.text.tokenizer_check import check as run_check

    report = run_check(reference, candidate, pairs=pairs, seed=seed, vectors=vectors, corpus=corpus, corpus_lines=corpus_lines)
    if as_json:
        emit_json(report)
    else:
        _print_check(report)
