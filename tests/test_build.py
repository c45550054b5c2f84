"""End to end on the real stories260K model: build, signatures, verify reports, cache, generated text."""

import json

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from conftest import EXPECTED_GREEDY, asset, run_cli

from edgellm.pipeline.stages import VERIFY_STAGES


def test_build_writes_exactly_the_requested_signatures_with_convention_names(stories_build):
    interpreter = Interpreter(model_path=str(stories_build.output / "model.tflite"))
    signatures = interpreter.get_signature_list()
    assert set(signatures) == {"prefill_8", "head_8", "prefill_32", "head_32", "decode"}
    caches = {f"kv_cache_{kind}_{i}" for i in range(5) for kind in "kv"}
    # A prefill gives hidden states, not logits; its head_N gives those.
    assert set(signatures["decode"]["inputs"]) == {"tokens", "input_pos"} | caches
    assert set(signatures["decode"]["outputs"]) == {"logits", "next_token"} | caches
    for n in (8, 32):
        assert set(signatures[f"prefill_{n}"]["inputs"]) == {"tokens", "input_pos"} | caches
        assert set(signatures[f"prefill_{n}"]["outputs"]) == {"hidden"} | caches
        assert signatures[f"head_{n}"] == {"inputs": ["hidden"], "outputs": ["logits"]}
        head = interpreter.get_signature_runner(f"head_{n}")
        assert list(head.get_input_details()["hidden"]["shape"]) == [1, n, 64]
        assert list(head.get_output_details()["logits"]["shape"]) == [1, n, 512]
    for n, name in [(8, "prefill_8"), (32, "prefill_32"), (1, "decode")]:
        details = interpreter.get_signature_runner(name).get_input_details()
        assert list(details["tokens"]["shape"]) == [1, n] and details["tokens"]["dtype"] == np.int32
        assert list(details["input_pos"]["shape"]) == [n] and details["input_pos"]["dtype"] == np.int32
        assert list(details["kv_cache_k_0"]["shape"]) == [1, 4, 256, 8] and list(details["kv_cache_v_0"]["shape"]) == [1, 4, 8, 256]


def test_build_report_meets_the_acceptance_tolerances(stories_build):
    report = json.loads(stories_build.first.stdout)
    assert [s["stage"] for s in report["stages"]] == [*VERIFY_STAGES, "export"]
    assert not any(s["cached"] for s in report["stages"])
    comparisons = {}
    for stage in report["stages"]:
        comparisons.update(stage.get("comparisons", {}))
    assert set(comparisons) == {"reauthored_vs_transformers", "tflite_vs_transformers", "tflite_vs_reauthored"}
    for name, metrics in comparisons.items():
        assert metrics["top1_agreement"] == 1.0, name
        assert metrics["max_abs_logit_diff"] <= 1e-3, name
        assert metrics["positions"] == 32


def test_second_build_is_served_from_the_cache_and_says_so(stories_build):
    lines = [line.split() for line in stories_build.second.stderr.splitlines() if line.strip().split()[:1] in ([s] for s in VERIFY_STAGES)]
    assert [(words[0], words[1]) for words in lines] == [(stage, "cached") for stage in VERIFY_STAGES]


def test_run_greedy_from_bos_prints_the_llama2c_reference_text(stories_build):
    expected = asset(EXPECTED_GREEDY).read_text()
    result = run_cli("run", str(stories_build.output / "model.tflite"), "--max-tokens", "200", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    assert result.stdout.rstrip("\n") == expected.rstrip("\n")
    assert "200 tokens" in result.stderr


def test_run_json_reports_tokens_and_text(stories_build):
    result = run_cli("run", str(stories_build.output / "model.tflite"), "--prompt", "Lily", "--max-tokens", "12", "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["tokens"]) == 12 and report["text"] and report["tokens_per_second"] > 0


def test_a_converter_worker_started_ahead_ends_when_the_conversion_is_cached(stories_build):
    import multiprocessing

    from conftest import SPECS

    from edgellm.infra.cache import ArtifactCache
    from edgellm.pipeline.stages import Pipeline
    from edgellm.spec.load import load_spec

    pipeline = Pipeline(load_spec(SPECS / "stories260k.yaml"), cache=ArtifactCache(stories_build.cache))
    [converted] = pipeline.run(["convert"])  # starts the converter's worker ahead of fetch
    assert converted.cached
    assert multiprocessing.active_children() == []
