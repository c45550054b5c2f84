"""Print the README's embedding quantization table: all-MiniLM-L6-v2 with every shipped recipe that
applies, each recipe's embeddings against the float model's (cosine), and the published
sentence-transformers example similarities through each.

    .venv/bin/python scripts/embedding_quantization_table.py [MINILM_FOLDER]

MINILM_FOLDER defaults to ~/.cache/edgellm-real-models/all-minilm-l6-v2 (../shared/tools/get_real_models.sh).
Texts: the first 256 non-empty lines of wikitext-2's test split (headings and paragraphs, many
longer than 256 tokens and so truncated, as sentence-transformers truncates them).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.infra.cache import ArtifactCache
from edgellm.infra.quiet import native_output_to, quiet_libraries
from edgellm.measure.evaluate import embedding_agreement
from edgellm.pipeline.stages import Pipeline
from edgellm.quantize.recipes import load_recipe, recipe_names
from edgellm.runtime.encoder import EmbeddingModel, cosine_matrix
from edgellm.spec.load import load_spec

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared/assets/corpora/wikitext2-test/wikitext-2-raw-test.txt"
EXAMPLE = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


def main() -> None:
    quiet_libraries()
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache/edgellm-real-models/all-minilm-l6-v2")
    texts = [line.strip() for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()][:256]
    with tempfile.TemporaryDirectory() as tmp, native_output_to():
        spec, cache = load_spec("all-minilm-l6-v2"), ArtifactCache(Path(tmp) / "cache")
        pipeline = Pipeline(spec, checkpoint=folder, cache=cache, output=Path(tmp) / "out")
        pipeline.run(["convert", "export"])
        float_model = Path(tmp) / "out/model.tflite"
        quantized, skipped = {}, {}
        for name in recipe_names():
            try:
                quantized[name] = Pipeline(model=float_model, recipe=load_recipe(name), cache=cache).result("quantize").file
            except EdgeLLMError as exc:
                skipped[name] = str(exc)
        tokenizer = Path(tmp) / "out/tokenizer.json"
        report = embedding_agreement([float_model, *quantized.values()], texts, tokenizer)
        pairs = {}
        for name, path in {"float32": float_model, **quantized}.items():
            matrix = cosine_matrix(np.stack([e.vector for e in EmbeddingModel(path, tokenizer).embed(EXAMPLE)]))
            pairs[name] = (matrix[0, 1], matrix[0, 2], matrix[1, 2])
    base = report.models[0]
    print(f"\n**all-MiniLM-L6-v2, {report.texts} wikitext-2 lines**, cosine of each recipe's embedding to float32's:\n")
    print("| recipe | size | size ratio | mean cosine to float | lowest cosine | example similarities (0.666, 0.105, 0.141) |")
    print("|---|---|---|---|---|---|")
    print(f"| float32 | {base['size_bytes'] / 1e6:.2f} MB | 1.00 | - | - | {', '.join(f'{v:.3f}' for v in pairs['float32'])} |")
    for name, row in zip(quantized, report.models[1:]):
        print(f"| {name} | {row['size_bytes'] / 1e6:.2f} MB | {row['size_bytes'] / base['size_bytes']:.2f} | {row['mean_cosine']:.6f} | "
              f"{row['min_cosine']:.6f} | {', '.join(f'{v:.3f}' for v in pairs[name])} |")
    for name, why in skipped.items():
        print(f"\n{name}: not applicable ({why})")


if __name__ == "__main__":
    main()
