"""Print the README's quantization table: every shipped recipe on stories260K, evaluated against
the float model on two corpora, plus each recipe's greedy 200-token story from BOS.

    .venv/bin/python scripts/quantization_table.py

Corpora: (1) in-domain: 16 stories the float model samples itself (temperature 1, seeds 1-16,
250 tokens each), since stories260K was trained on TinyStories, which is not on this machine;
(2) out-of-domain: the first 4096 tokens of tinyshakespeare.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from edgellm_cli.cache import ArtifactCache
from edgellm_cli.evaluate import evaluate
from edgellm_cli.pipeline import Pipeline
from edgellm_cli.quantize import load_recipe, recipe_names
from edgellm_cli.quiet import native_output_to, quiet_libraries
from edgellm_cli.runtime import LiteRTModel, Sampler, generate
from edgellm_cli.spec import load_spec
from edgellm_cli.tokenizer import load_tokenizer

SHAKESPEARE = REPO.parent / "shared/assets/corpora/tinyshakespeare/input.txt"


def sampled_stories(model: Path, tokenizer) -> str:
    runner = LiteRTModel(model)
    return "\n".join(tokenizer.decode(list(generate(runner, [1], 250, Sampler(temperature=1.0, seed=seed), stop_ids=[1, 2])))
                     for seed in range(1, 17))


def main() -> None:
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp, native_output_to():
        spec, cache = load_spec(REPO / "model_specs/stories260k.yaml"), ArtifactCache(Path(tmp) / "cache")
        float_model = Pipeline(spec, cache=cache).result("convert").file
        tokenizer = load_tokenizer(REPO / "demo/stories260K/tokenizer.model")
        quantized = {name: Pipeline(spec, recipe=load_recipe(name), cache=cache).result("quantize") for name in recipe_names()}
        in_domain = Path(tmp) / "stories.txt"
        in_domain.write_text(sampled_stories(float_model, tokenizer))
        models = [float_model] + [q.file for q in quantized.values()]
        reports = {corpus: evaluate(models, tokenizer, path, 1, 4096) for corpus, path in
                   [("in-domain stories sampled by the float model", in_domain), ("tinyshakespeare", SHAKESPEARE)]}
        greedy = {name: list(generate(LiteRTModel(path), [1], 200, Sampler(), stop_ids=[1])) for name, path in zip(["float", *quantized], models)}
    for corpus, report in reports.items():
        base = report["models"][0]
        sys.stdout.write(f"\n**{corpus}** ({report['tokens']} tokens, windows of {report['window']}):\n\n")
        print("| recipe | size | size ratio | perplexity | perplexity ratio | top-1 agreement | mean KL |")
        print("|---|---|---|---|---|---|---|")
        print(f"| float32 | {base['size_bytes'] / 1e6:.2f} MB | 1.00 | {base['perplexity']:.3f} | 1.000 | - | - |")
        for name, row in zip(quantized, report["models"][1:]):
            print(f"| {name} | {row['size_bytes'] / 1e6:.2f} MB | {row['size_bytes'] / base['size_bytes']:.2f} | {row['perplexity']:.3f} | "
                  f"{row['perplexity'] / base['perplexity']:.3f} | {row['top1_agreement']:.2%} | {row['mean_kl']:.4f} |")
    print("\n**Greedy 200 tokens from BOS** (stopping at BOS), against float:\n")
    print("| recipe | same tokens as float | first differing token |")
    print("|---|---|---|")
    for name, tokens in greedy.items():
        if name == "float":
            continue
        first = next((i for i, (a, b) in enumerate(zip(tokens, greedy["float"])) if a != b), None)
        same = tokens == greedy["float"]
        print(f"| {name} | {'yes' if same else 'no'} | {'-' if same else first if first is not None else min(len(tokens), len(greedy['float']))} |")


if __name__ == "__main__":
    main()
