"""`edgellm explore`: overlays that are right, shown by the real Model Explorer in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, run_cli, wait_for_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def quantized(stories_build, tmp_path_factory) -> Path:
    """stories260K in int4 (block 32), beside its float model."""
    folder = tmp_path_factory.mktemp("explore") / "stories"
    shutil.copytree(stories_build.output, folder)  # the model, its edgellm.json and tokenizer
    result = run_cli("quantize", str(folder / "model.tflite"), "--recipe", "int4-block32", "-o", str(folder / "model-int4.tflite"), cache=stories_build.cache)
    assert result.code == 0, result.stderr
    return folder / "model-int4.tflite"


def _op_outputs_by_model_explorer(model: Path, graph: str) -> tuple[int, dict[int, str]]:
    """The subgraph index of `graph` and its op output tensors (index: name), as Model Explorer's own adapter reads the file."""
    import ai_edge_model_explorer_adapter as adapter

    subgraphs = json.loads(adapter.ConvertFlatbufferDirectlyToJson(adapter.VisualizeConfig(), str(model)))[0]["subgraphs"]
    index = next(i for i, s in enumerate(subgraphs) if s["id"] == graph)
    outputs = {}
    for node in subgraphs[index]["nodes"]:
        if node["label"] in ("GraphInputs", "GraphOutputs", "pseudo_const"):
            continue
        for output in node.get("outputsMetadata", []):
            attrs = {a["key"]: a["value"] for a in output["attrs"]}
            outputs[int(attrs["tensor_index"])] = attrs["tensor_name"]
    return index, outputs


def _run(model: Path, tokens: list[int], signature: str, index: int, tensors: dict[int, str]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model), experimental_preserve_all_tensors=True)
    runner = interpreter.get_signature_runner(signature)
    caches = {n: np.zeros(d["shape"], d["dtype"]) for n, d in runner.get_input_details().items() if n.startswith("kv_cache")}
    runner(tokens=np.array([tokens], np.int32), input_pos=np.arange(len(tokens), dtype=np.int32), **caches)
    return {name: interpreter.get_tensor(t, index) for t, name in tensors.items()}


def test_the_error_overlay_marks_the_op_whose_output_differs_most(quantized, tmp_path):
    pytest.importorskip("ai_edge_model_explorer_adapter", reason="Model Explorer is the [explore] extra: make install")
    from edgellm.quantize.overlays import calibration_tokens

    result = run_cli("explore", str(quantized), "--overlay", "error", "--overlay", "bytes", "--export", str(tmp_path / "overlays"), cache=tmp_path / "cache")
    assert result.code == 0, result.stderr
    error = json.loads((tmp_path / "overlays" / "model-int4.error.json").read_text())
    [(graph, data)] = error.items()
    marked = max(data["results"], key=lambda name: data["results"][name]["value"])
    # Independently: Model Explorer's reading of the graph, both models run, each op's output compared.
    tokens = calibration_tokens(quantized, int(graph.removeprefix("prefill_")))
    ours, theirs = (_run(model, tokens, graph, *_op_outputs_by_model_explorer(model, graph)) for model in (quantized, quantized.with_name("model.tflite")))
    differences = {name: np.linalg.norm(ours[name] - theirs[name]) / max(np.linalg.norm(theirs[name]), 1e-12)
                   for name in ours.keys() & theirs.keys() if ours[name].dtype == np.float32 and ours[name].shape == theirs[name].shape}
    assert marked == max(differences, key=differences.get)
    # Here with XNNPack's kernels, edgellm's without delegates: the same measure within a few percent.
    assert data["results"][marked]["value"] == pytest.approx(differences[marked], rel=0.03)
    bytes_data = json.loads((tmp_path / "overlays" / "model-int4.bytes.json").read_text())
    assert set(bytes_data) >= {"prefill_8", "prefill_32", "decode"}


def test_explore_refuses_a_non_model_and_an_overlay_without_data(stories_build, tmp_path):
    notes = tmp_path / "notes.tflite"
    notes.write_text("hello")
    for args, needle in (([str(notes)], "notes.tflite"),
                         ([str(stories_build.output / "model.tflite"), "--overlay", "sensitivity"], "no sensitivity for model.tflite"),
                         ([str(stories_build.output / "model.tflite"), "--overlay", "error"], "pass that with --reference")):
        result = run_cli("explore", *args, "--export", str(tmp_path / "out"), cache=tmp_path / "cache")
        assert result.code == 2 and needle in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_model_explorer_shows_the_error_overlay_in_a_browser(quantized, tmp_path):
    pytest.importorskip("model_explorer", reason="Model Explorer is the [explore] extra: make install")
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is a dev extra: make install")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is absent: make install")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgellm", "explore", str(quantized), "--overlay", "bytes", "--overlay", "error",
                               "--no-browser", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "EDGELLM_CACHE_DIR": str(tmp_path / "cache")})
    try:
        url = server.stderr.readline().removeprefix("Model Explorer: ").strip()
        assert url.startswith(f"http://127.0.0.1:{port}/?data="), url
        wait_for_port(port, server, "Model Explorer")
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            provider = page.locator(".run-name", has_text="error").first
            provider.wait_for(timeout=120_000)  # the overlay loaded: its row in the node data panel
            provider.click()
            page.locator(".index-row.selected .run-name", has_text="error").wait_for(timeout=30_000)
            page.locator(".mat-icon-container.expand-all").click()  # every layer open: each op node is painted
            page.wait_for_timeout(3000)
            page.screenshot(path=str(tmp_path / "explore.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    from PIL import Image

    with Image.open(tmp_path / "explore.png") as shot:
        graph = np.asarray(shot.convert("RGB"))[:, : shot.width * 3 // 4].astype(int)  # the graph, not the side panel
    red, green, blue = graph[..., 0], graph[..., 1], graph[..., 2]
    painted = (red > blue + 60) & (red > green + 30)  # the gradient's orange to red: Model Explorer draws nothing else warm
    assert painted.sum() > 300, f"{painted.sum()} overlay-coloured pixels: the overlay did not paint the graph"
