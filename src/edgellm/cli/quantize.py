"""quantize and recipes: a model file made smaller, by a recipe or by a search within a perplexity budget."""

from __future__ import annotations

import math
from pathlib import Path

import click

from edgellm.cli.build import pipeline
from edgellm.cli.options import cache_option, calibration_option, json_option, model_argument, tokenizer_option
from edgellm.cli.output import Progress, emit_json, print_table


@click.command(epilog="\b\nExamples:\n  edgellm quantize build/stories260k/model.tflite --recipe int8-dynamic\n"
               "  edgellm quantize model.tflite --recipe int4 --calibration my-text.txt\n"
               "  edgellm quantize model.tflite --search --max-ppl-ratio 1.05\n  edgellm quantize model.tflite --recipe my-recipe.yaml -o model-q.tflite --json")
@model_argument()
@click.option("--recipe", help="A name from `edgellm recipes list`, or a YAML recipe file.")
@click.option("--search", is_flag=True, help="Instead of a recipe: find the smallest int4/int8 mix of layer groups within --max-ppl-ratio, "
              "and write it as a recipe file beside the output.")
@click.option("--max-ppl-ratio", type=click.FloatRange(min=1.0, min_open=True), default=1.05, show_default=True,
              help="--search's budget: perplexity over the float model's, held as exp(mean KL from float) "
              "on held-out calibration text, which bounds it.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Where to write it (default: MODEL-<recipe>.tflite beside MODEL); "
              "a folder without edgellm.json also gets the model's, and its tokenizer.")
@json_option()
@calibration_option
@tokenizer_option("For calibration (default: the one named by edgellm.json beside MODEL).")
@cache_option
def quantize(model, recipe, search, max_ppl_ratio, output, as_json, calibration, tokenizer, cache_url) -> None:
    """Quantize a .tflite with a recipe; every signature and I/O name is kept. Recipes with gptq
    rules first run the model on calibration text (a cached stage)."""
    from edgellm.pipeline.flows import publish_quantized, quantize_searched, write_sensitivity
    from edgellm.quantize.recipes import load_recipe

    if (recipe is None) == (not search):
        raise click.UsageError("give either --recipe NAME or --search")
    build = pipeline(Progress(model.name, as_json, "quantize"), model=model, recipe=load_recipe(recipe) if recipe else None,
                     calibration=calibration, tokenizer=tokenizer, max_ppl_ratio=max_ppl_ratio if search else None, cache_url=cache_url)
    searched = None
    if search:
        searched, result = quantize_searched(build)
    else:
        result = build.result("quantize")
    output, *companions = publish_quantized(build, result, output or model.with_name(f"{model.stem}-{build.recipe.name}.tflite"))
    recipe_file = build.recipe.write(output.with_suffix(".yaml")) if searched is not None else None
    if searched is not None:
        companions.append(write_sensitivity(build, output.with_suffix(".sensitivity.json")))
    if as_json:
        extra = {"recipe_file": str(recipe_file), "search": searched.report.as_json(), "recipe": build.recipe.model_dump()} if searched is not None else {}
        emit_json({**result.as_json(), "output": str(output), "companions": [str(c) for c in companions], **extra})
        return
    if searched is not None:
        _print_frontier(searched.report, result.report)
        click.echo(recipe_file)
    for written in (*companions, output):
        click.echo(written)


def _print_frontier(search, quantized) -> None:
    from rich.table import Table

    points = search.frontier
    shown = sorted({*range(0, len(points), max(1, len(points) // 10)), len(points) - 1,
                    *(i for i, p in enumerate(points) if "measured_kl_bound" in p)})
    table = Table("int4 groups", "grouped weights", "predicted exp(KL)", "measured exp(KL), weights only",
                  title=f"size-accuracy frontier, budget {search.max_ppl_ratio:g}")
    for i in shown:
        p = points[i]
        measured = f"{p['measured_kl_bound']:.4f}" if "measured_kl_bound" in p else ""
        table.add_row(f"{len(p['int4_groups'])}/{len(points) - 1}", f"{p['grouped_bytes'] / 1e6:.1f} MB", f"{p['predicted_ppl_ratio']:.4f}", measured)
    print_table(table)
    click.echo(f"chosen: {len(search.chosen['int4_groups'])} groups in int4 (measured weights only); as quantized: {quantized.size_after / 1e6:.2f} MB "
               f"({quantized.ratio:.1%} of float), perplexity ratio {quantized.held_out_ppl_ratio:.4f}, "
               f"exp(KL) {math.exp(quantized.held_out_mean_kl):.4f} on held-out calibration text")


@click.group()
def recipes() -> None:
    """List or show quantization recipes."""


@recipes.command("list")
def recipes_list() -> None:
    """The shipped recipes, one line each."""
    from edgellm.quantize.recipes import load_recipe, recipe_names

    for name in recipe_names():
        click.echo(f"{name:<18} {load_recipe(name).description}")


@recipes.command("show", epilog="\b\nExample:\n  edgellm recipes show int4")
@click.argument("name")
def recipes_show(name) -> None:
    """A recipe's rules, and the ai-edge-quantizer recipe they become."""
    from edgellm.quantize.recipes import load_recipe

    recipe = load_recipe(name)
    emit_json({"recipe": recipe.model_dump(), "ai_edge_quantizer": recipe.to_aeq()})
