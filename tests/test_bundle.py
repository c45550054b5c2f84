"""Bundles checked against the real runtimes and tools: LiteRT-LM's engine runs our .litertlm,
and mediapipe 0.10.21's own bundler writes the same .task we do."""

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import SPECS, litert_lm_greedy, run_cli

from edgellm.bundle.task import TASK_ENTRIES, decode_message, read_task, task_metadata
from edgellm.text.chat_template import prompt_affixes
from edgellm.text.prompt import PromptSettings


@pytest.fixture(scope="module")
def bundles(stories_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    for fmt in ("litertlm", "task"):
        result = run_cli("bundle", str(stories_build.output / "model.tflite"), "--format", fmt, "-o", str(out / f"stories.{fmt}"),
                         "--json", cache=stories_build.cache)
        assert result.code == 0, result.stderr
    return out


def test_litertlm_runs_in_litert_lm_and_matches_edgellm_run(stories_build, bundles, tmp_path):
    [theirs] = litert_lm_greedy([bundles / "stories.litertlm"], 120, tmp_path)
    ours = run_cli("run", str(stories_build.output / "model.tflite"), "--max-tokens", "120", "--json", cache=stories_build.cache)
    ours_text = json.loads(ours.stdout)["text"]
    assert len(theirs) > 200 and theirs == ours_text


def test_inspect_shows_bundle_metadata_and_tflite_signatures(stories_build, bundles):
    task = json.loads(run_cli("inspect", str(bundles / "stories.task"), "--json", cache=stories_build.cache).stdout)
    assert [e["name"] for e in task["entries"]] == list(TASK_ENTRIES)
    assert task["metadata"] == {"start_token": "<s>", "stop_tokens": ["</s>", "<s>"]}
    litertlm = json.loads(run_cli("inspect", str(bundles / "stories.litertlm"), "--json", cache=stories_build.cache).stdout)
    text = "\n".join(litertlm["contents"])
    assert "start_token" in text and "ids: 1" in text and "sequence_axis: 2" in text and "sequence_axis: 3" in text and "SP_Tokenizer" in text
    tflite = json.loads(run_cli("inspect", str(stories_build.output / "model.tflite"), "--json", cache=stories_build.cache).stdout)
    assert set(tflite["signatures"]) == {"prefill_8", "head_8", "prefill_32", "head_32", "decode"}
    assert tflite["signatures"]["decode"]["inputs"]["tokens"] == {"shape": [1, 1], "dtype": "int32"}
    assert tflite["weight_bytes_by_dtype"]["float32"] > 1_000_000
    assert sum(1 for group in tflite["weight_bytes_by_group"] if group.startswith("block")) == 5
    assert [s["type"] for s in litertlm["sections"]] == ["LlmMetadataProto", "ExecutorMetadataProto", "SP_Tokenizer", "TFLiteModel"]
    assert litertlm["sections"][3]["bytes"] == (stories_build.output / "model.tflite").stat().st_size


def test_inspect_prints_tables(stories_build, bundles):
    tflite = run_cli("inspect", str(stories_build.output / "model.tflite"), cache=stories_build.cache).stdout
    # Numbered caches of one shape on one line; each block's weights by dtype.
    assert "kv_cache_k_0…4 float32[1, 4, 256, 8]" in tflite and "input_pos int32[32]" in tflite
    assert "weights by layer group and dtype" in tflite and "block 004" in tflite and "total" in tflite
    litertlm = run_cli("inspect", str(bundles / "stories.litertlm"), cache=stories_build.cache).stdout
    assert "TFLiteModel" in litertlm and "SP_Tokenizer" in litertlm and "MB" in litertlm
    task = run_cli("inspect", str(bundles / "stories.task"), cache=stories_build.cache).stdout
    assert "TF_LITE_PREFILL_DECODE" in task and "</s>, <s>" in task


def test_task_entries_are_stored_and_aligned(bundles):
    with zipfile.ZipFile(bundles / "stories.task") as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    assert all(entry["data_offset"] % 4 == 0 for entry in read_task(bundles / "stories.task")["entries"])


def test_inspect_refuses_a_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = run_cli("inspect", str(path), cache=tmp_path / "cache")
    assert result.code == 2 and result.stderr.count("\n") == 1 and "not a .tflite, .litertlm or .task" in result.stderr


def test_bundle_without_edgellm_metadata_is_a_clear_error(stories_build, tmp_path):
    lone = tmp_path / "model.tflite"
    lone.write_bytes((stories_build.output / "model.tflite").read_bytes())
    result = run_cli("bundle", str(lone), "--format", "task", cache=tmp_path / "cache")
    assert result.code == 2 and "edgellm.json" in result.stderr and not list(tmp_path.glob("*.task*"))


def test_prompt_affixes_come_from_the_chat_template():
    # As in transformers, Jinja drops the template source's final newline.
    template = "{{ bos_token }}{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n"
    assert prompt_affixes(PromptSettings(chat_template=template, bos_token="<s>")) == ("<|user|>\n", "<|end|>\n<|assistant|>")
    assert prompt_affixes(PromptSettings(chat_template=template, prompt_prefix="U:")) == ("U:", "<|end|>\n<|assistant|>")
    assert prompt_affixes(PromptSettings()) == ("", "")


def test_task_metadata_round_trips():
    data = task_metadata("<s>", ["</s>", "<eot>"], "<P>", "<S>")
    names = {5: "stop_tokens", 6: "start_token", 8: "prompt_template"}
    assert decode_message(data, names) == {"stop_tokens": ["</s>", "<eot>"], "start_token": "<s>",
                                           "prompt_template": {"prompt_prefix": "<P>", "prompt_suffix": "<S>"}}


MEDIAPIPE_PYTHON = Path(__file__).resolve().parents[1] / ".venv-mediapipe" / "bin" / "python"


BUNDLER = """
import sys
from mediapipe.tasks.python.genai import bundler
bundler.create_bundle(bundler.BundleConfig(tflite_model=sys.argv[1], tokenizer_model=sys.argv[2], start_token="<s>",
                      stop_tokens=["</s>", "<s>"], output_filename=sys.argv[3], prompt_prefix=sys.argv[4], prompt_suffix=sys.argv[5]))
"""


@pytest.mark.slow
def test_task_has_the_same_entries_and_metadata_as_mediapipes_bundler(stories_build, tmp_path):
    if not MEDIAPIPE_PYTHON.is_file():
        pytest.skip(f"MediaPipe's bundler is not installed at {MEDIAPIPE_PYTHON}: run `make install-mediapipe`")
    python = MEDIAPIPE_PYTHON
    out = tmp_path / "out"
    # A template gives the bundle a prompt prefix and suffix, as a chat model's would.
    spec = tmp_path / "chat.yaml"
    spec.write_text(f"extends: {SPECS / 'stories260k.yaml'}\n"
                    "tokenizer:\n  chat_template: \"{% for m in messages %}<U>{{ m['content'] }}</U>{% endfor %}<A>\"\n")
    assert run_cli("build", "--spec", str(spec), "-o", str(out), "--bundle", "task", cache=stories_build.cache).code == 0
    ours = out / "stories260k.task"
    theirs = tmp_path / "mediapipe.task"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    made = subprocess.run([str(python), "-c", BUNDLER, str(out / "model.tflite"), str(out / "tokenizer.model"), str(theirs), "<U>", "</U><A>"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        assert a.namelist() == b.namelist() == list(TASK_ENTRIES)
        for name in ("TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL"):
            assert a.read(name) == b.read(name), name
        names = {5: "stop_tokens", 6: "start_token", 8: "prompt_template"}
        assert decode_message(a.read("METADATA"), names) == decode_message(b.read("METADATA"), names)
        assert a.read("METADATA") == b.read("METADATA")
    assert read_task(ours)["metadata"]["prompt_template"] == {"prompt_prefix": "<U>", "prompt_suffix": "</U><A>"}
