"""Quantization recipes through the real ai-edge-quantizer, run in the real LiteRT runtime."""

import json

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import REPO, SPECS, asset, cache_files, litert_lm_greedy, run_cli

from edgellm.errors import EdgeLLMError
from edgellm.quantize.recipes import load_recipe, recipe_names
from edgellm.runtime.decoder import LiteRTModel
from edgellm.runtime.generate import generate
from edgellm.runtime.sampler import Sampler

ISSUE_RECIPES = {"fp16", "int8-dynamic", "int8-weight-only", "int4-block32", "int4-block128", "mixed-int8-int4"}


def test_the_recipes_ship_and_validate():
    assert set(recipe_names()) >= ISSUE_RECIPES
    for name in recipe_names():
        assert load_recipe(name).rules


@pytest.fixture(scope="module")
def quantized(stories_build, tmp_path_factory):
    """Every shipped recipe applied to the stories260K build, through the CLI, into a folder of their own."""
    out = tmp_path_factory.mktemp("quantized")
    reports = {}
    for name in recipe_names():
        result = run_cli("quantize", str(stories_build.output / "model.tflite"), "--recipe", name, "-o", str(out / f"{name}.tflite"),
                         "--json", cache=stories_build.cache)
        assert result.code == 0, result.stderr
        reports[name] = json.loads(result.stdout)
    return out, reports


@pytest.mark.parametrize("name", sorted(ISSUE_RECIPES))
def test_quantized_model_keeps_signatures_and_runs_prefill_and_decode(stories_build, quantized, name):
    out, reports = quantized
    float_signatures = Interpreter(model_path=str(stories_build.output / "model.tflite")).get_signature_list()
    assert Interpreter(model_path=str(out / f"{name}.tflite")).get_signature_list() == float_signatures
    assert reports[name]["size_after"] < reports[name]["size_before"]
    prompt = [1, 403, 407, 261, 378, 10, 57, 300, 22, 90]
    quantized_model, float_model = LiteRTModel(out / f"{name}.tflite"), LiteRTModel(stories_build.output / "model.tflite")
    ours, reference = quantized_model.prefill(prompt, 0), float_model.prefill(prompt, 0)
    assert np.isfinite(ours).all() and (ours.argmax(-1) == reference.argmax(-1)).mean() >= 0.5  # prefill still predicts
    assert len(list(generate(quantized_model, prompt, 20, Sampler(), stop_ids=[]))) == 20  # and decode runs


def test_every_quantized_model_runs_in_litert_lm_as_it_runs_in_edgellm(quantized, tmp_path):
    out, _ = quantized
    names = recipe_names()
    bundles = []
    for name in names:
        bundle = tmp_path / f"{name}.litertlm"
        assert run_cli("bundle", str(out / f"{name}.tflite"), "--format", "litertlm", "-o", str(bundle), cache=tmp_path / "cache").code == 0
        bundles.append(bundle)
    theirs = litert_lm_greedy(bundles, 60, tmp_path)
    for name, text in zip(names, theirs, strict=True):
        ours = json.loads(run_cli("run", str(out / f"{name}.tflite"), "--max-tokens", "60", "--json", cache=tmp_path / "cache").stdout)["text"]
        assert len(text) > 100 and text == ours, name  # LiteRT-LM ran prefill and 60 decode steps, to the same greedy text


def test_quantized_model_written_elsewhere_takes_its_metadata_and_tokenizer_along(stories_build, quantized):
    out, reports = quantized
    # The first quantize into the folder wrote them; the later ones found them there.
    assert sum(1 for report in reports.values() if report["companions"]) == 1
    metadata = json.loads((out / "edgellm.json").read_text())
    assert metadata["tokenizer"] == "tokenizer.model" and (out / "tokenizer.model").read_bytes() == (stories_build.output / "tokenizer.model").read_bytes()
    assert metadata["kv_cache_length"] == 256 and metadata["recipe"] in reports


def test_int4_is_smaller_than_int8_is_smaller_than_fp16(quantized):
    sizes = {name: report["size_after"] for name, report in quantized[1].items()}
    assert sizes["int4-block32"] < sizes["int8-dynamic"] < sizes["fp16"] < quantized[1]["fp16"]["size_before"]


def test_blockwise_falls_back_to_channels_only_where_blocks_do_not_divide(quantized):
    reports = quantized[1]
    # stories260K: hidden 64 divides into 32-blocks, the MLP's 172 does not; 128-blocks divide nothing.
    assert reports["int4-block32"]["block_fallbacks"] == [f"Block_{i}.Linear_down" for i in range(5)]
    assert len(reports["int4-block128"]["block_fallbacks"]) > len(reports["int4-block32"]["block_fallbacks"])


def test_repeated_quantize_is_served_from_the_cache(stories_build, quantized, tmp_path):
    result = run_cli("quantize", str(stories_build.output / "model.tflite"), "--recipe", "int8-dynamic", "-o", str(tmp_path / "q.tflite"),
                     "--json", cache=stories_build.cache)
    report = json.loads(result.stdout)
    # This run's time, not the original run's (a cached stage reports its lookup).
    first = quantized[1]["int8-dynamic"]
    assert first["cached"] is False and report["cached"] is True and report["seconds"] < first["seconds"]


def test_eval_measures_float_against_quantized_and_plots_it(stories_build, quantized, tmp_path):
    corpus = asset("checkpoints/stories260K-llama2c/expected_greedy_200steps.txt")
    out, _ = quantized
    result = run_cli("eval", str(stories_build.output / "model.tflite"), str(out / "int8-dynamic.tflite"), str(out / "int4-block32.tflite"),
                     "--corpus", str(corpus), "--plot", str(tmp_path / "eval.png"), "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    base, int8, int4 = report["models"]
    assert base["perplexity"] < 3  # the model's own greedy story is very likely to it
    assert int8["top1_agreement"] >= 0.95 and int8["mean_kl"] < 0.01
    assert int4["mean_kl"] > int8["mean_kl"] and int4["perplexity"] > int8["perplexity"]
    assert 0 < len(int4["kl_by_position"]) <= report["window"] - 1 and sum(int4["kl_by_position"]) > sum(int8["kl_by_position"])
    from PIL import Image

    with Image.open(report["plot"]) as image:
        assert image.format == "PNG" and image.width >= 1000 and image.height >= 500
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # axes, text, and a point and a line per quantized model: not a blank canvas
    assert sum(count for count, _ in colours) > max(count for count, _ in colours) * 1.01


def test_eval_and_bench_print_tables(stories_build):
    model = str(stories_build.output / "model.tflite")
    evaluated = run_cli("eval", model, "--corpus", str(REPO / "README.md"), "--max-tokens", "300", cache=stories_build.cache)
    assert evaluated.code == 0 and "perplexity" in evaluated.stdout and "model.tflite" in evaluated.stdout, evaluated.stderr
    bench = run_cli("bench", model, "--repeats", "1", "--decode-tokens", "4", cache=stories_build.cache)
    assert bench.code == 0 and "time to first token" in bench.stdout and "decode, raw invoke" in bench.stdout, bench.stderr


def test_a_bench_table_becomes_a_png(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    (tmp_path / "bench.md").write_text("speeds\n\n| model | tokens/s |\n|---|---|\n| a | 10.5 |\n| b | 12.0 |\n\n| x | y |\n|---|---|\n| 1 | 2 |\n")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "table_png.py"), str(tmp_path / "bench.md"), "-o", str(tmp_path / "bench.png")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "bench.png") as image:
        assert image.format == "PNG" and image.width > 200 and len(image.convert("RGB").getcolors(1 << 20)) > 10


def test_eval_plot_refuses_a_path_it_cannot_write_before_measuring(stories_build, tmp_path):
    model = str(stories_build.output / "model.tflite")
    for path, needle in ((tmp_path / "eval.txt", "unknown image format .txt"), (tmp_path / "missing" / "eval.png", "does not exist")):
        result = run_cli("eval", model, "--corpus", str(REPO / "README.md"), "--plot", str(path), cache=stories_build.cache)
        assert result.code == 2 and needle in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_build_with_a_recipe_writes_the_quantized_model(stories_build, tmp_path):
    out = tmp_path / "out"
    result = run_cli("build", "--spec", str(SPECS / "stories260k.yaml"), "--recipe", "int8-dynamic", "-o", str(out), "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    assert [s["stage"] for s in stages][-2:] == ["quantize", "export"] and all(s["cached"] for s in stages[:-2])
    assert (out / "model.tflite").stat().st_size == stages[-2]["size_after"]
    assert json.loads((out / "edgellm.json").read_text())["recipe"] == "int8-dynamic"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("name: bad\nrules:\n  - mode: dynamic\n    bits: 4\n    granularity: tensor\n", "4-bit weights need channel or block granularity"),
        ("name: bad\nrules:\n  - mode: float16\n    granularity: block32\n", "float16 takes no bits or granularity"),
        ("name: bad\nrules:\n  - mode: dynamic\n    bits: 16\n", "takes bits 4 or 8"),
        ("name: bad\nrules:\n  - mode: dynamic\n    match: '[unclosed'\n", "not a valid regular expression"),
        ("name: bad\nrules:\n  - mode: dynamc\n", "rules.0.mode"),
    ],
)
def test_unsupported_recipes_are_one_line_errors(tmp_path, body, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(EdgeLLMError, match="bad.yaml") as error:
        load_recipe(path)
    assert needle in str(error.value)


@pytest.mark.parametrize("recipe, needle", [("int9", "unknown recipe 'int9'"), ("RULE", "selects no op")])
def test_bad_recipe_on_the_cli_leaves_no_artifact(stories_build, tmp_path, recipe, needle):
    if recipe == "RULE":
        recipe = str(tmp_path / "nomatch.yaml")
        (tmp_path / "nomatch.yaml").write_text("name: nomatch\nrules:\n  - mode: dynamic\n    match: NoSuchLayer\n")
    cache = tmp_path / "cache"
    result = run_cli("quantize", str(stories_build.output / "model.tflite"), "--recipe", recipe, "-o", str(tmp_path / "q.tflite"), cache=cache)
    assert result.code == 2 and needle in result.stderr and result.stderr.count("\n") == 1
    assert cache_files(cache) == [] and not (tmp_path / "q.tflite").exists()


@pytest.mark.slow
def test_an_all_zero_weight_block_still_loads_and_runs_at_int4(demo_copy, tmp_path, cache):
    from safetensors.torch import load_file, save_file

    tensors = load_file(demo_copy / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"][5, :32] = 0  # one block of 32 zeros: scale 0, which LiteRT refuses
    tensors["model.layers.0.self_attn.q_proj.weight"][7, :] = 0  # and a whole zero channel
    save_file(tensors, demo_copy / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    result = run_cli("build", "--spec", str(SPECS / "stories260k.yaml"), "--checkpoint", str(demo_copy), "--recipe", "int4-block32",
                     "-o", str(out), "--json", cache=cache)
    assert result.code == 0, result.stderr
    report = next(s for s in json.loads(result.stdout)["stages"] if s["stage"] == "quantize")
    assert report["zero_scales_repaired"] == 3 and 0 < report["top1_agreement_with_float"] <= 1  # it loaded and ran in the stage
    assert run_cli("run", str(out / "model.tflite"), "--max-tokens", "8", cache=cache).code == 0


def test_every_quantized_model_reports_its_agreement_with_float(quantized):
    reports = quantized[1]
    assert reports["fp16"]["top1_agreement_with_float"] == 1.0
    assert reports["int8-dynamic"]["top1_agreement_with_float"] >= reports["int4-block128"]["top1_agreement_with_float"]
