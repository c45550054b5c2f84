"""int4 that keeps the model: GPTQ on calibration text (a cached stage), the written integers, the
layer-group search, and their errors, on the real quantizer and runtime."""

import json
import mmap
import re

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from conftest import SPECS, asset, cache_files, run_cli

from edgellm.infra.cache import ArtifactCache
from edgellm.pipeline.stages import Pipeline
from edgellm.quantize.calibration import load_hessians, weight_readers
from edgellm.quantize.gptq import quantize_weight
from edgellm.quantize.recipes import load_recipe
from edgellm.tflite.file import buffer_data


def _correlated_layer(seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((4096, 128)) @ rng.standard_normal((128, 128))  # inputs that move together, as activations do
    return rng.standard_normal((64, 128)).astype(np.float32), inputs


@pytest.mark.parametrize("bits, block", [(4, 32), (8, None)])
def test_gptq_beats_round_to_nearest_on_the_layer_output(bits, block):
    weight, inputs = _correlated_layer()
    gptq, nearest = quantize_weight(weight, inputs.T @ inputs, bits, block), quantize_weight(weight, None, bits, block)

    def output_error(q):
        return np.linalg.norm(inputs @ (weight - q.dequantized()).T)

    assert output_error(gptq) < 0.8 * output_error(nearest)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    assert gptq.values.min() >= low and gptq.values.max() <= high
    assert gptq.scales.shape == ((64, 128 // block) if block else (64,)) and (gptq.scales > 0).all()


def test_blockwise_scales_are_what_the_file_can_store():
    weight, inputs = _correlated_layer(1)
    import ml_dtypes

    scales = quantize_weight(weight, inputs.T @ inputs, 4, 32).scales
    stored = scales.astype(ml_dtypes.bfloat16).astype(np.float16).astype(np.float32)  # how ai-edge-quantizer writes them
    assert np.array_equal(scales, stored)


def test_an_all_zero_block_gets_a_positive_scale():
    weight, inputs = _correlated_layer(2)
    weight[3, :32] = 0
    quantized = quantize_weight(weight, inputs.T @ inputs, 4, 32)
    assert quantized.scales[3, 0] > 0 and np.isfinite(quantized.dequantized()).all()


@pytest.fixture(scope="module")
def int4_pipeline(stories_build, tmp_path_factory):
    """The stories260K float model quantized by the shipped int4 recipe, in process."""
    pipeline = Pipeline(model=stories_build.output / "model.tflite", recipe=load_recipe("int4"), cache=ArtifactCache(tmp_path_factory.mktemp("cache")))
    pipeline.run(["calibrate", "quantize"])
    return pipeline


def _int4_values(path, subgraph_index, tensor_index):
    """A blockwise int4 weight of the decode subgraph as written: values (two to a byte, low nibble first) and scales."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        flat = schema.Model.GetRootAs(data, 0)
        subgraph = flat.Subgraphs(subgraph_index)
        tensor = subgraph.Tensors(tensor_index)
        assert tensor.Type() == schema.TensorType.INT4
        start, length = buffer_data(flat.Buffers(tensor.Buffer()))
        packed = np.frombuffer(data, np.uint8, length, start).copy()
        details = schema.BlockwiseQuantization()
        details.Init(tensor.Quantization().Details().Bytes, tensor.Quantization().Details().Pos)
        start, length = buffer_data(flat.Buffers(subgraph.Tensors(details.Scales()).Buffer()))
        scales = np.frombuffer(data, np.float16, length // 2, start).astype(np.float32)
        shape = tuple(tensor.ShapeAsNumpy())
        del flat, subgraph, tensor, details
    nibbles = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1).astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).reshape(shape), scales.reshape(shape[0], -1)


def test_the_file_holds_exactly_the_integers_gptq_chose(int4_pipeline, stories_build):
    quantized = int4_pipeline.result("quantize")
    report = quantized.report
    assert report.gptq_weights == 20  # 5 blocks x qkv (merged), o, gate_up (merged), down
    float_model = stories_build.output / "model.tflite"
    _, [decode] = weight_readers(float_model, "decode")
    hessians = load_hessians(int4_pipeline.result("calibrate").path)
    with open(float_model, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        flat = schema.Model.GetRootAs(data, 0)
        subgraph = flat.Subgraphs(decode)
        checked = 0
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if tensor.Buffer() in hessians and tensor.ShapeAsNumpy()[-1] % 32 == 0 and checked < 3:
                start, length = buffer_data(flat.Buffers(tensor.Buffer()))
                weight = np.frombuffer(data, np.float32, length // 4, start).reshape(tuple(tensor.ShapeAsNumpy())).copy()
                expected = quantize_weight(weight, hessians[tensor.Buffer()], 4, 32)
                values, scales = _int4_values(quantized.file, decode, t)
                assert np.array_equal(values, expected.values) and np.array_equal(scales, expected.scales)
                checked += 1
        del flat, subgraph, tensor
    assert checked == 3


def test_gptq_keeps_the_model_closer_than_round_to_nearest(int4_pipeline, stories_build, tmp_path):
    minmax = tmp_path / "int4-block32.tflite"
    assert run_cli("quantize", str(stories_build.output / "model.tflite"), "--recipe", "int4-block32", "-o", str(minmax),
                   cache=stories_build.cache).code == 0
    corpus = asset("checkpoints/stories260K-llama2c/expected_greedy_200steps.txt")
    result = run_cli("eval", str(stories_build.output / "model.tflite"), str(int4_pipeline.result("quantize").file), str(minmax),
                     "--corpus", str(corpus), "--json", cache=stories_build.cache)
    _, gptq, nearest = json.loads(result.stdout)["models"]
    assert gptq["mean_kl"] < nearest["mean_kl"] and gptq["top1_agreement"] > nearest["top1_agreement"]


def test_calibration_is_cached_and_keyed_by_its_text(int4_pipeline, stories_build, tmp_path):
    again = Pipeline(model=stories_build.output / "model.tflite", recipe=load_recipe("int4"), cache=int4_pipeline.cache)
    assert [r.cached for r in again.run(["calibrate", "quantize"])] == [True, True]
    text = tmp_path / "other.txt"
    text.write_text(asset("checkpoints/stories260K-llama2c/expected_greedy_200steps.txt").read_text() * 4)
    other = Pipeline(model=stories_build.output / "model.tflite", recipe=load_recipe("int4"), cache=int4_pipeline.cache, calibration=text)
    assert other.key("calibrate") != again.key("calibrate") and other.key("quantize") != again.key("quantize")


def test_search_writes_a_recipe_that_rebuilds_its_model(stories_build, tmp_path):
    model = stories_build.output / "model.tflite"
    result = run_cli("quantize", str(model), "--search", "--max-ppl-ratio", "1.2", "-o", str(tmp_path / "s.tflite"), "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    frontier = report["search"]["frontier"]
    assert len(frontier) == 11 and [p["grouped_bytes"] for p in frontier] == sorted((p["grouped_bytes"] for p in frontier), reverse=True)
    chosen = report["search"]["chosen"]
    assert chosen["measured_kl_bound"] <= 1.2 or not chosen["int4_groups"]
    assert report["recipe_file"] == str(tmp_path / "s.yaml")
    again = run_cli("quantize", str(model), "--recipe", report["recipe_file"], "-o", str(tmp_path / "again.tflite"), "--json", cache=stories_build.cache)
    assert (tmp_path / "again.tflite").read_bytes() == (tmp_path / "s.tflite").read_bytes(), again.stderr
    # What the search measured, kept beside its recipe, is the explore command's sensitivity overlay.
    measured = json.loads((tmp_path / "s.sensitivity.json").read_text())
    assert len(measured["groups"]) == 10 and set(measured["int4_costs"]) == {g["name"] for g in measured["groups"]}
    exported = run_cli("explore", str(tmp_path / "s.tflite"), "--overlay", "sensitivity", "--export", str(tmp_path / "overlays"), cache=stories_build.cache)
    assert exported.code == 0, exported.stderr
    overlay = json.loads((tmp_path / "overlays" / "s.sensitivity.json").read_text())["prefill_32"]["results"]
    worst_group = max(measured["int4_costs"], key=measured["int4_costs"].get)
    block, module = worst_group.split()
    worst_op = max(overlay, key=lambda name: overlay[name]["value"])
    assert f"{block}/" in worst_op and module in worst_op, (worst_group, worst_op)


@pytest.mark.parametrize(
    "args, needle",
    [
        ((), "give either --recipe NAME or --search"),
        (("--recipe", "int4", "--search"), "give either --recipe NAME or --search"),
        (("--recipe", "int4", "--calibration", "EMPTY"), "is empty"),
    ],
)
def test_bad_quantize_requests_are_one_line_errors(stories_build, tmp_path, args, needle):
    (tmp_path / "empty.txt").write_text("  \n")
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in args]
    cache = tmp_path / "cache"
    result = run_cli("quantize", str(stories_build.output / "model.tflite"), *args, "-o", str(tmp_path / "q.tflite"), cache=cache)
    assert result.code == 2 and needle in result.stderr, result.stderr
    assert not (tmp_path / "q.tflite").exists() and cache_files(cache) == []


def test_build_with_the_int4_recipe_calibrates_then_quantizes(stories_build, tmp_path):
    result = run_cli("build", "--spec", str(SPECS / "stories260k.yaml"), "--recipe", "int4", "-o", str(tmp_path / "out"), "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    stages = {s["stage"]: s for s in json.loads(result.stdout)["stages"]}
    assert list(stages)[-3:] == ["calibrate", "quantize", "export"]
    assert stages["calibrate"]["tokens"] == 32 * 32 and stages["quantize"]["gptq_weights"] == 20  # 32 windows of prefill_32
    assert 0.5 < stages["quantize"]["held_out_ppl_ratio"] < 1.5 and stages["quantize"]["top1_agreement_with_float"] > 0.5


def test_calibration_shows_a_progress_bar_in_a_terminal(stories_build, tmp_path):
    """In a terminal, a long stage shows steps done, elapsed time and the time left, not only a spinner."""
    import os
    import pty
    import subprocess
    import sys

    primary, secondary = pty.openpty()
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "edgellm", "quantize", str(stories_build.output / "model.tflite"), "--recipe", "int4",
                                "-o", str(tmp_path / "q.tflite")], stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 1 << 16)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    assert process.wait(timeout=600) == 0, screen[-2000:]
    text = screen.decode(errors="replace")
    windows = re.findall(r"calibrate model.tflite\S*\s+\S+\s+(\d+)/(\d+) \d:\d\d:\d\d left", re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text))
    assert windows and {total for _, total in windows} == {"32"} and max(int(done) for done, _ in windows) == 32, text[-2000:]
