"""Chat bundles in LiteRT-LM's conversation mode (issue #15): the template a `.litertlm` carries renders
for what LiteRT-LM sends, the bundle pre-flight and `edgellm check` catch what would break, and
LiteRT-LM's Conversation API answers as `edgellm chat` does on the same model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS, REAL_SMOLLM2, SPECS, run_cli
from tiny_models import make_tiny_checkpoint

from edgellm.errors import EdgeLLMError
from edgellm.text.chat_template import render_chat
from edgellm.text.litert_template import PROBE_CONVERSATIONS, adapt_for_litert_lm, as_parts, render_litert_lm, turn_tail
from edgellm.text.tokenizer import load_tokenizer

CONVERSATION = """
import json, sys, litert_lm as lm
lm.set_min_log_severity(lm.LogSeverity.ERROR)
engine = lm.Engine(sys.argv[1], backend=lm.Backend.CPU(), cache_dir=sys.argv[2])
conversation = engine.create_conversation(sampler_config=lm.SamplerConfig(top_k=1), max_output_tokens=int(sys.argv[3]))
replies = []
for prompt in sys.argv[4:]:
    content = conversation.send_message(prompt).to_json()["content"]
    replies.append(content if isinstance(content, str) else "".join(p["text"] for p in content))
print(json.dumps({"replies": replies, "tokens": conversation.token_count}))
"""


def converse(bundle: Path, prompts: list[str], max_tokens: int, tmp_path: Path) -> dict:
    """A conversation through LiteRT-LM's Conversation API with the bundle's own template, greedy."""
    pytest.importorskip("litert_lm", reason="litert-lm-api is a dev extra: make install")
    done = subprocess.run([sys.executable, "-c", CONVERSATION, str(bundle), str(tmp_path), str(max_tokens), *prompts],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def template_of(folder: Path) -> str:
    return json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]


CHAT_TOKENIZERS = {  # family -> (tokenizer folder, the end-of-turn token its template writes)
    "smollm2-135m": (REAL_SMOLLM2, "<|im_end|>"),
    "phi-3-mini": (ASSETS / "tokenizers" / "phi-3-mini", "<|end|>"),
    "qwen2.5-0.5b": (ASSETS / "tokenizers" / "qwen2", "<|im_end|>"),
    "tinyllama-1.1b": (ASSETS / "tokenizers" / "tinyllama-chat", "</s>"),
}


def chat_folder(family: str) -> Path:
    folder = CHAT_TOKENIZERS[family][0]
    if not (folder / "tokenizer_config.json").is_file():
        pytest.skip(f"{folder} is absent (the real model: scripts fetch it to ~/.cache/edgellm-real-models)")
    if "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text()):
        pytest.skip(f"{folder}/tokenizer_config.json has no chat_template")
    return folder


# -- the template, rendered as LiteRT-LM renders it -------------------------------------------


def test_minijinja_reproduces_the_litert_lm_error_and_the_adapted_template_renders():
    template = template_of(chat_folder("smollm2-135m"))
    conversation = as_parts(PROBE_CONVERSATIONS["one user message"])
    with pytest.raises(EdgeLLMError, match="unsupported types string and sequence"):
        render_litert_lm(template, conversation)
    assert render_litert_lm(adapt_for_litert_lm(template), conversation).endswith("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family", ["smollm2-135m", "phi-3-mini", "qwen2.5-0.5b"])
def test_adapted_template_renders_each_conversation_as_transformers_and_turn_by_turn(family):
    folder = chat_folder(family)
    template, stop = template_of(folder), CHAT_TOKENIZERS[family][1]
    adapted = adapt_for_litert_lm(template, turn_tail(template, [stop]))
    for conversation in PROBE_CONVERSATIONS.values():
        # LiteRT-LM renders bos_token and eos_token empty; these templates write neither with a generation prompt.
        assert render_litert_lm(adapted, as_parts(conversation)) == render_chat(template, conversation, {"bos_token": "", "eos_token": ""})
    turns = as_parts(PROBE_CONVERSATIONS["several turns"])
    history = render_litert_lm(adapted, turns[:2], add_generation_prompt=False)
    assert history.endswith("Hello. How can I help?" + stop)  # the turn's tail comes with the next turn
    assert render_litert_lm(adapted, turns[:3]).startswith(history)
    assert adapt_for_litert_lm(adapted, "\n") == adapted  # re-bundling adapts once


def test_bundle_preflight_refuses_a_template_litert_lm_cannot_render_and_writes_nothing(stories_build, tmp_path):
    template = tmp_path / "upper.jinja"
    template.write_text("{% for m in messages %}{{ m['content'].upper() }}{% endfor %}")  # a Python method: Jinja2 only
    out = tmp_path / "stories.litertlm"
    result = run_cli("bundle", str(stories_build.output / "model.tflite"), "--format", "litertlm", "-o", str(out),
                     "--chat-template", str(template), cache=stories_build.cache)
    assert result.code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "LiteRT-LM" in result.stderr and "--chat-template FILE" in result.stderr
    assert not list(tmp_path.glob("*.litertlm*"))


def test_check_reports_a_task_bundle(stories_build, tmp_path):
    out = tmp_path / "stories.task"
    assert run_cli("bundle", str(stories_build.output / "model.tflite"), "--format", "task", "-o", str(out), cache=stories_build.cache).code == 0
    result = run_cli("check", str(out), "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["signatures"]["detail"] == "prefill_8, prefill_32, decode" and checks["kv cache"]["detail"].startswith("256 positions")
    assert checks["tokens"]["detail"] == "start '<s>', stop ['</s>', '<s>']"


# -- real SmolLM2-135M-Instruct ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_smollm2(tmp_path_factory):
    if not (REAL_SMOLLM2 / ".complete").is_file():
        pytest.skip(f"real SmolLM2-135M-Instruct is absent from {REAL_SMOLLM2}")
    root = tmp_path_factory.mktemp("smollm2")
    result = run_cli("build", "--spec", str(SPECS / "smollm2-135m.yaml"), "--checkpoint", str(REAL_SMOLLM2), "--recipe", "int8-dynamic",
                     "--bundle", "litertlm", "-o", str(root / "out"), cache=root / "cache")
    assert result.code == 0, result.stderr
    return root / "out" / "smollm2-135m.litertlm"


@pytest.mark.slow
def test_real_smollm2_bundle_answers_in_litert_lm_conversation_mode(real_smollm2, tmp_path):
    reply = converse(real_smollm2, ["What is the capital of France?"], 256, tmp_path)["replies"][0]
    assert "Paris" in reply


@pytest.mark.slow
def test_litert_lm_cli_runs_the_bundle_with_its_template(real_smollm2):
    cli = Path(sys.executable).parent / "litert-lm"
    if not cli.is_file():
        pytest.skip("the litert-lm CLI (PyPI litert-lm) is not installed")
    done = subprocess.run([str(cli), "run", str(real_smollm2), "--prompt", "What is the capital of France?"],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Paris" in done.stdout, done.stderr[-2000:]
    assert "Failed to apply template" not in done.stderr


@pytest.mark.slow
def test_check_passes_the_real_bundle_and_fails_an_unadapted_one(real_smollm2, tmp_path):
    result = run_cli("check", str(real_smollm2), "--json", cache=tmp_path / "cache")
    assert result.code == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["tokens"]["detail"] == "no start token; stop 2 '<|im_end|>'"
    assert checks["tokenizer"]["detail"] == "hf-tokenizer-json, 49152 tokens" and checks["kv cache"]["detail"].startswith("1024 positions")
    assert checks["generation"]["ok"] and checks["generation"]["detail"].startswith("8 greedy tokens")
    # The same bundle with the checkpoint's template as it was: what LiteRT-LM rejected before issue #15.
    from edgellm.bundle.check import read_litertlm

    llm = read_litertlm(real_smollm2)["llm"]
    assert llm.jinja_prompt_template.startswith("{#- edgellm") and llm.llm_model_type.WhichOneof("model_type") == "generic_model"
    from edgellm.bundle.check import _template_check

    broken = _template_check(template_of(REAL_SMOLLM2))
    assert not broken.ok and "string and sequence" in broken.detail


# -- each chat family: a tiny random checkpoint with the family's tokenizer and template --------


def tiny_chat_checkpoint(family: str, folder: Path) -> Path:
    """A tiny random checkpoint (written by transformers) with the family's real tokenizer and template,
    whose end-of-turn token takes the place of the third token greedy decoding writes: replies then end
    as a trained model's do, which is what LiteRT-LM's turn-by-turn prefill relies on."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from edgellm.text.chat_template import encode_with_specials

    source = chat_folder(family)
    tokenizer = AutoTokenizer.from_pretrained(source)
    stop = tokenizer.convert_tokens_to_ids(CHAT_TOKENIZERS[family][1])
    bos = tokenizer.bos_token_id
    vocab = max(len(tokenizer), 32064 if family == "phi-3-mini" else 0)
    make_tiny_checkpoint(family, folder, "tokenizer.json", vocab_size=vocab, bos_token_id=bos, eos_token_id=stop)
    tokenizer.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({**json.loads((folder / "tokenizer_config.json").read_text()),
                                                             "chat_template": template_of(source)}))
    model = AutoModelForCausalLM.from_pretrained(folder, config=AutoConfig.from_pretrained(folder))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    strings = {k: (v.get("content") if isinstance(v, dict) else v) or "" for k in ("bos_token", "eos_token") for v in [config.get(k)]}
    specials = {strings["bos_token"]: bos} if strings["bos_token"] and bos is not None else {}
    prompt = encode_with_specials(load_tokenizer(folder / "tokenizer.json"), render_chat(template_of(source), [{"role": "user", "content": FIRST}], strings), specials)
    with torch.no_grad():
        # A tied head moves the input embedding too, which changes the path: repeat until replies end early.
        for _ in range(8):
            written = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
            if stop in written[:8]:
                break
            head = model.get_output_embeddings().weight
            head[stop] = head[written[2]] * 1.5
    model.save_pretrained(folder)
    return folder


FIRST, SECOND = "Hi there!", "Tell me more."


@pytest.mark.slow
@pytest.mark.parametrize("family", ["smollm2-135m", "phi-3-mini", "qwen2.5-0.5b", "tinyllama-1.1b"])
def test_two_turns_in_litert_lm_give_the_tokens_edgellm_chat_gives(family, tmp_path):
    pytest.importorskip("litert_lm", reason="litert-lm-api is a dev extra: make install")
    chat_folder(family)
    checkpoint = tiny_chat_checkpoint(family, tmp_path / "ckpt")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"extends: {SPECS / (family + '.yaml')}\ntokenizer:\n  file: tokenizer.json\n"
                    "export:\n  prefill_lengths: [64]\n  kv_cache_length: 256\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    built = run_cli("build", "--spec", str(spec), "--checkpoint", str(checkpoint), "-o", str(out), "--bundle", "litertlm", cache=cache)
    assert built.code == 0, built.stderr
    bundle = next(out.glob("*.litertlm"))
    theirs = converse(bundle, [FIRST, SECOND], 12, tmp_path)["replies"]
    ours = run_cli("chat", str(out / "model.tflite"), "--max-tokens", "12", cache=cache, stdin=f"{FIRST}\n{SECOND}\n")
    assert ours.code == 0, ours.stderr
    # LiteRT-LM drops a reply's leading space with SentencePiece-style tokenizers; the tokens are the same.
    replies = [line.lstrip(" ") for line in ours.stdout.splitlines()]
    assert theirs[0] and replies[0] == theirs[0].lstrip(" ")
    if family != "phi-3-mini":
        # Phi-3's first reply starts with a space-prefixed piece: `edgellm chat` keeps its text, and
        # re-encoding " word" after "<|assistant|>\n" gives other ids than LiteRT-LM's cache holds.
        assert replies[1] == theirs[1].lstrip(" ")
    if family == "qwen2.5-0.5b":
        from edgellm.bundle.check import read_litertlm

        assert read_litertlm(bundle)["llm"].llm_model_type.WhichOneof("model_type") == "qwen2p5"


def test_another_tools_model_bundles_with_its_tokenizer_and_stop_ids(stories_build, tmp_path):
    lone = tmp_path / "model.tflite"  # no edgellm.json beside it
    lone.write_bytes((stories_build.output / "model.tflite").read_bytes())
    tokenizer = stories_build.output / "tokenizer.model"
    result = run_cli("bundle", str(lone), "--format", "task", "--tokenizer", str(tokenizer), "--stop-id", "2", "--json", cache=stories_build.cache)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["start_token"], report["stop_tokens"]) == ("<s>", ["</s>"])  # BOS from the tokenizer, stops as given
