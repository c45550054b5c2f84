"""What `quantize` does beyond running one stage: the search's choice quantized within its budget,
and a quantized model published where the user asked, with what run and bundle need beside it."""

from __future__ import annotations

import math
from pathlib import Path

from edgellm.infra.files import publish, write_json
from edgellm.pipeline.runner import StageResult
from edgellm.pipeline.stages import Pipeline
from edgellm.tflite.metadata import METADATA_FILE, read_metadata


def quantize_searched(p: Pipeline) -> tuple[StageResult, StageResult]:
    """The search's choice quantized as it ships (activations quantized too, which weights-only
    measurements do not see); while exp(its mean KL from float on the held-out text) is over the
    budget, a smaller frontier point, stepped back by the excess. Sets `p.recipe` to the one kept."""
    from edgellm.quantize.search import Group, search_recipe

    searched = p.result("search")
    groups = {g["name"]: Group(**g) for g in p.result("sensitivity").report.groups}
    points = searched.report.frontier
    index = len(searched.report.chosen["int4_groups"])
    while True:
        p.recipe = search_recipe([groups[name] for name in points[index]["int4_groups"]], f"search-{p.max_ppl_ratio:g}")
        p.forget("quantize")  # another recipe: another quantize stage
        quantized = p.result("quantize")
        excess = quantized.report.held_out_mean_kl - math.log(p.max_ppl_ratio)  # the budget bounds exp(KL)
        if excess <= 0 or index == 0:
            return searched, quantized
        target = math.log(points[index]["predicted_ppl_ratio"]) - excess
        index = max([i for i in range(index) if math.log(points[i]["predicted_ppl_ratio"]) <= target] or [0])


def publish_quantized(p: Pipeline, result: StageResult, output: Path) -> list[Path]:
    """The quantized model at `output`. Where that folder has no edgellm.json, the model's own
    (naming the recipe) and its tokenizer go with it, so that run, eval and bundle find them."""
    written = [publish(result.file, output)]
    if (output.parent / METADATA_FILE).exists() or read_metadata(p.model) is None:
        return written
    metadata, tokenizer = p.metadata_and_tokenizer()
    written.append(publish(tokenizer, output.parent / tokenizer.name))
    written.append(metadata.model_copy(update={"tokenizer": tokenizer.name, "recipe": p.recipe.name}).write(output.parent))
    return written


def write_sensitivity(p: Pipeline, path: Path) -> Path:
    """What the search measured per layer group (its int4 cost and how ops are matched to it),
    beside the searched recipe: `edgellm explore --overlay sensitivity` paints it on the graph."""
    report = p.result("sensitivity").report
    write_json(path, {"groups": [{"name": g["name"], "pattern": g["pattern"]} for g in report.groups], "int4_costs": report.int4_costs})
    return path
