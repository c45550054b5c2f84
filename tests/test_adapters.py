"""LoRA adapters, proven against peft and LiteRT-LM: merged into a build (verify compares with
transformers + peft applying them), or swappable (LoRA inputs, LoRA files LiteRT-LM loads per
conversation), and refused in one line when damaged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO, REAL_SMOLLM2, REPO, SPECS, run_cli
from tiny_models import make_tiny_adapter, make_tiny_checkpoint

from edgellm.infra.cache import ArtifactCache
from edgellm.pipeline.stages import Pipeline
from edgellm.spec.load import load_spec

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Each family's adapted modules and a second adapter's method: Llama-style separate projections
# (LoRA then rsLoRA), and Phi-3's fused qkv_proj / gate_up_proj (LoRA then DoRA).
FAMILIES = {
    "smollm2-135m": ([*ATTENTION, "gate_proj", "up_proj", "down_proj"], {"use_rslora": True}),
    "phi-3-mini": (["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], {"use_dora": True}),
}


def peft_model(checkpoint: Path, adapters: list[Path]):
    from edgellm.verify.logits import load_reference, with_adapters

    return with_adapters(load_reference(checkpoint, "MODEL_FOR_CAUSAL_LM_MAPPING"), adapters)


def assert_close(comparisons: dict) -> None:
    for name, metrics in comparisons.items():
        assert metrics.top1_agreement == 1.0 and metrics.max_abs_logit_diff <= 1e-3, (name, metrics)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def merged(request, tmp_path_factory):
    """A tiny checkpoint of a family with two adapters merged in order, built in-process."""
    targets, second = FAMILIES[request.param]
    spec = load_spec(SPECS / f"{request.param}.yaml")
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = make_tiny_checkpoint(request.param, root / "ckpt", spec.tokenizer.file)
    adapters = [make_tiny_adapter(checkpoint, root / "first", targets), make_tiny_adapter(checkpoint, root / "second", targets, rank=8, seed=2, **second)]
    return Pipeline(spec, checkpoint=checkpoint, adapters=tuple(adapters), cache=ArtifactCache(root / "cache")), checkpoint, adapters


@pytest.mark.slow
def test_merged_adapters_verify_against_transformers_and_peft(merged):
    pipeline = merged[0]
    second = "dora" if "use_dora" in FAMILIES[pipeline.spec.name][1] else "rslora"
    assert [a.method for a in pipeline.result("fetch").report.adapters] == ["lora", second]
    assert_close(pipeline.result("verify").report.comparisons | pipeline.result("verify-tflite").report.comparisons)


@pytest.mark.slow
def test_merged_greedy_through_the_tflite_equals_peft_generate(merged):
    """32 tokens through the .tflite against transformers + peft's own generate; the adapters really move the model."""
    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.runtime.generate import generate
    from edgellm.runtime.sampler import Sampler
    from edgellm.verify.logits import reference_logits

    pipeline, checkpoint, adapters = merged
    prompt = [1, 17, 101, 230]
    ours = list(generate(LiteRTModel(pipeline.result("convert").file), prompt, 32, Sampler(), stop_ids=[]))
    with torch.no_grad():
        theirs = peft_model(checkpoint, adapters).generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert ours == theirs[0, len(prompt):].tolist()
    moved = np.abs(reference_logits(checkpoint, prompt, adapters) - reference_logits(checkpoint, prompt)).max()
    assert moved > 0.5, "the adapters hardly change the model: the comparison would prove nothing"


def swappable_build(out: Path, cache: Path, checkpoint: Path, *extra: str) -> Path:
    result = run_cli("build", "--spec", "smollm2-135m", "--checkpoint", str(checkpoint), "--lora-rank", "16", "--bundle", "litertlm",
                     "-o", str(out), *extra, cache=cache)
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def swappable(tmp_path_factory):
    """Tiny SmolLM2 built with rank-16 LoRA inputs and bundled, and two attention adapters (ranks 4 and 8) as LoRA files."""
    root = tmp_path_factory.mktemp("swappable")
    checkpoint = make_tiny_checkpoint("smollm2-135m", root / "ckpt", "tokenizer.json")
    out = swappable_build(root / "out", root / "cache", checkpoint)
    files = []
    for seed, rank in ((1, 4), (2, 8)):
        peft_dir = make_tiny_adapter(checkpoint, root / f"peft{seed}", ATTENTION, rank=rank, seed=seed)
        files.append(root / f"adapter{seed}.tflite")
        result = run_cli("adapter", str(peft_dir), "--base", str(out / "model.tflite"), "-o", str(files[-1]), "--json", cache=root / "cache")
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["model_rank"] == 16
    return root, checkpoint, out, files


def engine_texts(bundle: Path, adapters: list, prompt: str, max_tokens: int) -> list[str]:
    pytest.importorskip("litert_lm", reason="litert-lm-api is a dev extra: make install")
    from edgellm.bundle.adapter import engine_texts as texts

    return texts(bundle, adapters, prompt, max_tokens)


def run_text(model: Path, cache: Path, *extra: str, prompt: str = "the king") -> str:
    result = run_cli("run", str(model), "--prompt", prompt, "--max-tokens", "32", "--json", *extra, cache=cache)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)["text"]


@pytest.mark.slow
def test_one_base_two_adapters_same_text_in_litert_lm_and_edgellm_run(swappable):
    """Each conversation its own adapter; the base model through the all-zero file (LiteRT-LM 0.18 binds
    nothing to LoRA inputs in a conversation that loads none), also after an adapter was used."""
    root, _, out, files = swappable
    zero = root / "zero.tflite"
    assert run_cli("adapter", "--zero", "--base", str(out / "smollm2-135m.litertlm"), "-o", str(zero), cache=root / "cache").code == 0
    ours = [run_text(out / "model.tflite", root / "cache", *(["--adapter", str(f)] if f else [])) for f in [None, *files]]
    theirs = engine_texts(out / "smollm2-135m.litertlm", [zero, *files, zero], "the king", 32)
    assert theirs == [*ours, ours[0]]
    assert len(set(ours)) == 3, "the adapters must change the text, and differently"


@pytest.mark.slow
def test_swappable_adapter_matches_peft_and_zero_inputs_are_the_base_model(swappable):
    """edgellm's runtime with a LoRA file against transformers + peft; with none, against transformers alone."""
    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.verify.logits import reference_logits

    root, checkpoint, out, files = swappable
    model = LiteRTModel(out / "model.tflite")
    tokens = [17, 101, 230, 4, 99, 312, 7, 45]
    base = model.prefill(tokens, 0)
    assert np.abs(base - reference_logits(checkpoint, tokens)).max() <= 1e-3
    model.load_adapter(files[0])
    model.reset()
    adapted = model.prefill(tokens, 0)
    assert np.abs(adapted - reference_logits(checkpoint, tokens, [root / "peft1"])).max() <= 1e-3
    assert np.abs(adapted - base).max() > 0.5


@pytest.mark.slow
def test_check_proves_the_adapter_takes_effect(swappable):
    root, _, out, files = swappable
    result = run_cli("check", str(out / "smollm2-135m.litertlm"), "--adapter", str(files[1]), "--json", cache=root / "cache")
    assert result.code == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["lora inputs"]["detail"] == "all 12 (target, layer) pairs move the logits"
    assert checks["zero adapter"]["ok"] and checks["in LiteRT-LM"]["detail"].endswith("(changes the text)")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["int8-dynamic", "int4"])
def test_quantized_base_runs_a_float_adapter_in_edgellm_and_litert_lm(swappable, tmp_path, recipe):
    """Calibration (int4's GPTQ) runs the base model: LoRA inputs zero."""
    root, checkpoint, _, files = swappable
    out = swappable_build(tmp_path / "out", root / "cache", checkpoint, "--recipe", recipe)  # the float build's conversion, cached
    ours = run_text(out / "model.tflite", root / "cache", "--adapter", str(files[0]))
    assert engine_texts(out / "smollm2-135m.litertlm", [files[0]], "the king", 32) == [ours]


# -- refusals: one line, exit 2, nothing written ----------------------------------------------------


@pytest.fixture(scope="module")
def stories_adapter(tmp_path_factory) -> Path:
    return make_tiny_adapter(DEMO, tmp_path_factory.mktemp("stories-adapter") / "peft", ATTENTION, rank=4)


def damaged(adapter: Path, tmp_path: Path, how: str) -> Path:
    from safetensors.torch import load_file, save_file

    copy = tmp_path / f"{how}-adapter"
    shutil.copytree(adapter, copy)
    weights = load_file(copy / "adapter_model.safetensors")
    first_a = min(name for name in weights if "lora_A" in name)
    if how == "missing":
        del weights[first_a.replace("lora_A", "lora_B")]
    elif how == "shapes":
        weights[first_a] = weights[first_a][:, :-1].contiguous()
    elif how == "nan":
        weights[first_a][0, 0] = float("nan")
    save_file(weights, copy / "adapter_model.safetensors")
    return copy


@pytest.mark.parametrize(("how", "message"), [
    ("missing", "has no lora_B; the adapter is damaged"),
    ("shapes", "the adapter was trained on another base model"),
    ("nan", "holds NaN or infinite values"),
])
def test_a_damaged_adapter_is_refused_before_anything_is_built(stories_adapter, tmp_path, how, message):
    out = tmp_path / "out"
    result = run_cli("build", "--spec", "stories260k", "--adapter", str(damaged(stories_adapter, tmp_path, how)), "-o", str(out), cache=tmp_path / "cache")
    assert result.code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists() and not list((tmp_path / "cache").glob("convert/*"))


def test_an_adapter_for_another_base_model_is_refused(tmp_path):
    checkpoint = make_tiny_checkpoint("smollm2-135m", tmp_path / "ckpt", "tokenizer.json")
    other = make_tiny_adapter(checkpoint, tmp_path / "other", ATTENTION)
    result = run_cli("build", "--spec", "stories260k", "--adapter", str(other), "-o", str(tmp_path / "out"), cache=tmp_path / "cache")
    assert result.code == 2 and "the adapter was trained on another base model" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def stories_lora(tmp_path_factory) -> Path:
    """stories260K built with rank-16 LoRA inputs (the CLI, its own cache)."""
    root = tmp_path_factory.mktemp("stories-lora")
    result = run_cli("build", "--spec", "stories260k", "--lora-rank", "16", "-o", str(root / "out"), cache=root / "cache")
    assert result.code == 0, result.stderr
    return root / "out" / "model.tflite"


@pytest.mark.parametrize(("args", "message"), [
    (["--rank-32"], "rank 32 is above the model's LoRA rank 16; rebuild the model with --lora-rank 32"),
    (["--mlp"], "which the model's LoRA inputs do not reach (they feed q, k, v, o attention projections)"),
    (["--dora"], "DoRA rescales whole weights, which LoRA inputs cannot carry"),
    (["--no-base"], "was not built for swappable adapters"),
])
def test_edgellm_adapter_refuses_what_the_lora_inputs_cannot_carry(stories_lora, tmp_path, args, message):
    kind = args[0]
    peft = make_tiny_adapter(DEMO, tmp_path / "peft", ["gate_proj", "up_proj"] if kind == "--mlp" else ATTENTION,
                             rank=32 if kind == "--rank-32" else 4, **({"use_dora": True} if kind == "--dora" else {}))
    base = stories_lora
    if kind == "--no-base":
        base = tmp_path / "plain" / "model.tflite"
        base.parent.mkdir()
        shutil.copy(stories_lora, base)
    out = tmp_path / "adapter.tflite"
    result = run_cli("adapter", str(peft), "--base", str(base), "-o", str(out), cache=tmp_path / "cache")
    assert result.code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists() and not list(tmp_path.glob("*.partial"))


def test_run_refuses_an_adapter_the_model_cannot_take(stories_lora, stories_build, tmp_path):
    """A LoRA model with a file written for another model, and a model without LoRA inputs."""
    from edgellm.tflite.lora_file import write_lora_file

    wrong = tmp_path / "wrong.tflite"
    write_lora_file(wrong, {"lora_atten_q_a_prime_weight_0": np.zeros((8, 16), np.float32)}, 16)
    result = run_cli("run", str(stories_lora), "--adapter", str(wrong), cache=tmp_path / "cache")
    assert result.code == 2 and "is [64, 16] in the model but [8, 16] in the file" in result.stderr, result.stderr
    result = run_cli("run", str(stories_build.output / "model.tflite"), "--adapter", str(wrong), cache=tmp_path / "cache")
    assert result.code == 2 and "the model takes no LoRA weights; build it with --lora-rank 16" in result.stderr, result.stderr
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    result = run_cli("run", str(stories_lora), "--adapter", str(tmp_path / "junk.tflite"), cache=tmp_path / "cache")
    assert result.code == 2 and "not a LiteRT-LM LoRA file" in result.stderr, result.stderr


def test_lora_inputs_zero_leave_the_base_model_and_each_reaches_the_output(stories_lora, stories_build):
    """The LoRA build with no adapter gives the plain build's logits; perturbing any one LoRA input moves them."""
    from edgellm.runtime.decoder import LiteRTModel

    tokens = [1, 403, 261, 29, 8, 77]
    lora, plain = LiteRTModel(stories_lora), LiteRTModel(stories_build.output / "model.tflite")
    base = lora.prefill(tokens, 0)
    np.testing.assert_allclose(base, plain.prefill(tokens, 0), atol=1e-5)
    rng = np.random.default_rng(0)
    for name in lora.lora_shapes:
        other = name.replace("_a_prime_", "_b_prime_") if "_a_prime_" in name else name.replace("_b_prime_", "_a_prime_")
        lora.set_lora({n: rng.standard_normal(lora.lora_shapes[n]).astype(np.float32) for n in (name, other)})
        lora.reset()
        assert np.abs(lora.prefill(tokens, 0) - base).max() > 1e-3, name


def test_lora_file_round_trips_and_ends_on_a_page(tmp_path):
    from edgellm.tflite.lora_file import read_lora_file, write_lora_file

    tensors = {"lora_atten_q_a_prime_weight_0": np.arange(48, dtype=np.float32).reshape(3, 16),
               "lora_atten_q_b_prime_weight_0": -np.ones((16, 5), np.float32)}
    write_lora_file(tmp_path / "a.tflite", tensors, 16)
    rank, read = read_lora_file(tmp_path / "a.tflite")
    assert rank == 16 and set(read) == set(tensors) and all(np.array_equal(read[n], tensors[n]) for n in tensors)
    assert (tmp_path / "a.tflite").stat().st_size % 4096 == 0



# -- a real adapter: trained here with peft on SmolLM2-135M-Instruct (scripts/train_lora.py) --------


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory) -> tuple[Path, Path]:
    if not (REAL_SMOLLM2 / ".complete").is_file():
        pytest.skip(f"real SmolLM2-135M-Instruct is absent from {REAL_SMOLLM2}")
    root = tmp_path_factory.mktemp("real-adapter")
    # A short run keeps CI quick: the adapter is as real as the README's (same script), only less trained.
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train_lora.py"), str(REAL_SMOLLM2), "-o", str(root / "peft"),
                           "--steps", "6", "--batch", "2", "--length", "32"], check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return root, root / "peft"


@pytest.mark.slow
def test_real_adapter_merged_equals_transformers_and_peft(real_adapter):
    from edgellm.runtime.decoder import LiteRTModel
    from edgellm.runtime.generate import generate
    from edgellm.runtime.sampler import Sampler

    root, peft_dir = real_adapter
    pipeline = Pipeline(load_spec(SPECS / "smollm2-135m.yaml"), checkpoint=REAL_SMOLLM2, adapters=(peft_dir,), cache=ArtifactCache(root / "cache"))
    assert_close(pipeline.result("verify").report.comparisons | pipeline.result("verify-tflite").report.comparisons)
    prompt = [1, 9690, 198, 2683, 359, 253]
    ours = list(generate(LiteRTModel(pipeline.result("convert").file), prompt, 32, Sampler(), stop_ids=[]))
    with torch.no_grad():
        theirs = peft_model(REAL_SMOLLM2, [peft_dir]).generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert ours == theirs[0, len(prompt):].tolist()


@pytest.mark.slow
def test_real_adapter_swaps_in_litert_lm_as_in_edgellm_run(real_adapter):
    root, peft_dir = real_adapter
    out = root / "swappable"
    result = run_cli("build", "--spec", "smollm2-135m", "--checkpoint", str(REAL_SMOLLM2), "--lora-rank", "16", "--bundle", "litertlm",
                     "-o", str(out), cache=root / "cache")
    assert result.code == 0, result.stderr
    adapter = root / "shakespeare.tflite"
    assert run_cli("adapter", str(peft_dir), "--base", str(out / "smollm2-135m.litertlm"), "-o", str(adapter), cache=root / "cache").code == 0
    ours = run_text(out / "model.tflite", root / "cache", "--adapter", str(adapter), prompt="ROMEO:")
    assert engine_texts(out / "smollm2-135m.litertlm", [adapter], "ROMEO:", 32) == [ours]


def test_the_adapters_content_is_part_of_the_cache_key(stories_adapter, tmp_path):
    """A retrained adapter in the same folder is another model: fetch and every later stage get new keys."""
    from safetensors.torch import load_file, save_file

    spec, cache = load_spec(SPECS / "stories260k.yaml"), ArtifactCache(tmp_path / "cache")
    adapter = tmp_path / "adapter"
    shutil.copytree(stories_adapter, adapter)
    keys = lambda: [Pipeline(spec, adapters=(adapter,), cache=cache).key(stage) for stage in ("fetch", "convert")]
    before, plain = keys(), Pipeline(spec, cache=cache).key("convert")
    weights = load_file(adapter / "adapter_model.safetensors")
    name = min(n for n in weights if "lora_B" in n)
    weights[name] = weights[name] + 1
    save_file(weights, adapter / "adapter_model.safetensors")
    after = keys()
    assert before[0] != after[0] and before[1] != after[1] and plain not in (before[1], after[1])


def test_runs_from_position_0_drive_a_lora_model_as_its_base(stories_lora, stories_build):
    """Calibration, the search's scores and the error overlay run signatures from an empty state: on a
    LoRA build, zero LoRA weights, so the scores are the plain build's."""
    from edgellm.quantize.calibration import capture_hessians
    from edgellm.quantize.overlays import error_overlay
    from edgellm.quantize.search import score_windows

    plain = stories_build.output / "model.tflite"
    windows = [[1, *range(40, 71)], [1, *range(300, 331)]]
    assert score_windows(stories_lora, windows, "prefill_32")[0] == pytest.approx(score_windows(plain, windows, "prefill_32")[0], rel=1e-5)
    assert capture_hessians(stories_lora, windows, "prefill_32")
    errors = error_overlay(stories_lora, stories_lora, windows[0], "prefill_32")["prefill_32"]  # op names match within one graph only
    assert len(errors) > 100 and max(errors.values()) == 0.0
