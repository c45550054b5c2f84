"""Bad input and faults, tried as a careless or hostile user would: every case ends with exit 2
(bad input) or 3 (verification) and one line naming the problem and the fix; no signal death, no
traceback, no file outside the cache and the requested output, and only complete artifacts in
the cache afterwards (a rerun succeeds)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import DEMO, REPO, SPECS, asset, run_cli
from safetensors.torch import load_file, save_file

from edgellm.errors import EdgeLLMError
from edgellm.pipeline.build import check_memory
from edgellm.spec.schema import Architecture, ExportSection

STORIES = str(SPECS / "stories260k.yaml")
CLI = [sys.executable, "-m", "edgellm"]


def one_line_error(result, *needles, code=2):
    """The promise: the exit code, one `error:` line naming the problem, no traceback."""
    assert result.code == code, (result.code, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stderr.rstrip().splitlines()
    # Before it, only the stage table: a line for each stage that finished.
    assert lines and lines[-1].startswith("error: ") and all(line.startswith("  ") for line in lines[:-1]), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def only_complete_artifacts(cache: Path) -> None:
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".staging-") or p.name.endswith(".partial")]
    assert leftovers == [], leftovers
    for report in cache.glob("*/*/report.json"):
        json.loads(report.read_text())  # every artifact that is there is whole


def spec_file(tmp_path: Path, body: str, checkpoint: Path = DEMO) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(f"extends: {SPECS / 'stories260k.yaml'}\nsource:\n  path: {checkpoint}\n{body}")
    return str(path)


# -- specs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd"])
def test_spec_paths_cannot_leave_the_checkpoint(tmp_path, cache, name):
    result = run_cli("build", "--spec", spec_file(tmp_path, f"tokenizer:\n  file: {name}\n"), "-o", str(tmp_path / "out"), cache=cache)
    one_line_error(result, "tokenizer.file", "inside the checkpoint folder")
    assert not (tmp_path / "out").exists()


def test_a_symlink_out_of_the_checkpoint_is_refused(demo_copy, tmp_path, cache):
    (demo_copy / "tokenizer.model").unlink()
    (demo_copy / "tokenizer.model").symlink_to("/etc/passwd")
    result = run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), "-o", str(tmp_path / "out"), cache=cache)
    one_line_error(result, "tokenizer.file", "outside")
    assert not (tmp_path / "out").exists() and not (cache / "fetch").exists()


@pytest.mark.parametrize(
    "body, field",
    [("architecture:\n  norm_eps: lots\n", "norm_eps"), ("architecture:\n  num_heads: 0\n", "num_heads"),
     ("export:\n  kv_cache_length: 1000000000\n", "kv_cache_length"), ("export:\n  prefill_lengths: [1000000000]\n", "prefill_lengths"),
     ("verify:\n  num_tokens: 4096\n", "verify.num_tokens")],
)
def test_impossible_spec_values_are_refused_by_check_and_build(tmp_path, cache, body, field):
    spec = spec_file(tmp_path, body)
    one_line_error(run_cli("spec", "check", spec, cache=cache), field)
    one_line_error(run_cli("build", "--spec", spec, cache=cache), field)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_model_too_large_for_this_machine_is_refused_with_the_estimate():
    gemma = Architecture(vocab_size=256000, hidden_size=2304, num_layers=26, intermediate_size=9216, num_heads=8, num_kv_heads=4,
                         head_dim=256, max_position_embeddings=8192)
    check_memory(gemma, ExportSection(prefill_lengths=[128], kv_cache_length=1024), 2_600_000_000)  # the real Gemma-2-2B fits
    with pytest.raises(EdgeLLMError, match=r"needs about .* GiB .*KV cache .*lower export.kv_cache_length"):
        check_memory(gemma, ExportSection(prefill_lengths=[128], kv_cache_length=1 << 20), 2_600_000_000)


# -- checkpoints --------------------------------------------------------------------------------


def resave(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_as_damage_not_a_mapping_error(demo_copy, cache, value):
    def poison(tensors):
        tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = value

    resave(demo_copy, poison)
    result = run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache)
    line = one_line_error(result, "model.layers.1.mlp.up_proj.weight", "NaN or infinite")
    assert "mapping" not in line
    only_complete_artifacts(cache)


def test_a_shard_index_cannot_point_outside_the_checkpoint(demo_copy, tmp_path, cache):
    shutil.move(demo_copy / "model.safetensors", tmp_path / "elsewhere.safetensors")
    names = load_file(tmp_path / "elsewhere.safetensors").keys()
    (demo_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, "../elsewhere.safetensors")}))
    one_line_error(run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache), "shard", "outside")


def test_a_pickle_that_runs_code_is_refused_and_never_runs(demo_copy, tmp_path, cache):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    tensors = load_file(demo_copy / "model.safetensors")
    (demo_copy / "model.safetensors").unlink()
    torch.save({**tensors, "x": Payload()}, demo_copy / "pytorch_model.bin")
    one_line_error(run_cli("build", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache), "pytorch_model.bin")
    assert not marker.exists()


# -- tokenizers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "json"])
def test_a_damaged_tokenizer_fails_the_build_and_is_not_copied(demo_copy, tmp_path, cache, damage):
    spec = None
    if damage == "garbage":
        (demo_copy / "tokenizer.model").write_bytes(os.urandom(4000))
    else:
        shutil.copy(asset("tokenizers/llama2-altered-invalid/tokenizer.json"), demo_copy / "tokenizer.json")
        spec = spec_file(tmp_path, "tokenizer:\n  file: tokenizer.json\n  stop_ids: [1]\n", demo_copy)
    result = run_cli("build", "--spec", spec or STORIES, "--checkpoint", str(demo_copy), "-o", str(tmp_path / "out"), cache=cache)
    one_line_error(result, "tokenizer")
    assert not (tmp_path / "out").exists()


def test_another_models_tokenizer_is_refused_at_fetch(demo_copy, cache):
    shutil.copy(asset("tokenizers/llama2-spm/tokenizer.model"), demo_copy / "tokenizer.model")
    one_line_error(run_cli("fetch", "--spec", STORIES, "--checkpoint", str(demo_copy), cache=cache), "32000 tokens", "512")


def test_run_refuses_a_tokenizer_larger_than_the_model(stories_build):
    result = run_cli("run", str(stories_build.output / "model.tflite"), "--tokenizer", str(asset("tokenizers/llama2-spm/tokenizer.model")),
                     cache=stories_build.cache)
    one_line_error(result, "32000 tokens", "--tokenizer")


# -- models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_models(stories_build, tmp_path_factory):
    """Beside a copy of edgellm.json and the tokenizer: truncated, empty and random-bytes models."""
    folder = tmp_path_factory.mktemp("damaged")
    data = (stories_build.output / "model.tflite").read_bytes()
    contents = {"truncated": data[: int(len(data) * 0.6)], "empty": b"", "random": os.urandom(50_000), "header-only": data[:64]}
    models = {}
    for name, content in contents.items():
        (folder / name).mkdir()
        for extra in ("edgellm.json", "tokenizer.model"):
            shutil.copy(stories_build.output / extra, folder / name / extra)
        (folder / name / "model.tflite").write_bytes(content)
        models[name] = folder / name / "model.tflite"
    return models


COMMANDS = {
    "run": ["run", "{m}"],
    "bench": ["bench", "{m}", "--repeats", "1"],
    "chat": ["chat", "{m}", "--chat-template", str(REPO / "README.md")],
    "inspect": ["inspect", "{m}"],
    "quantize": ["quantize", "{m}", "--recipe", "int8-dynamic", "-o", "{out}"],
    "bundle-task": ["bundle", "{m}", "--format", "task", "-o", "{out}"],
    "bundle-litertlm": ["bundle", "{m}", "--format", "litertlm", "-o", "{out}"],
    "eval": ["eval", "{m}", "--corpus", str(REPO / "README.md")],
}


@pytest.mark.parametrize("damage", ["truncated", "empty", pytest.param("random", marks=pytest.mark.slow),
                                    pytest.param("header-only", marks=pytest.mark.slow)])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_damaged_models_are_refused_before_native_code_sees_them(damaged_models, tmp_path, command, damage):
    model, out = damaged_models[damage], tmp_path / "out.bin"
    args = [a.format(m=model, out=out) for a in COMMANDS[command]]
    result = run_cli(*args, cache=tmp_path / "cache", stdin="hi\n")
    if command == "inspect" and damage in ("empty", "random"):
        one_line_error(result, "not a .tflite")
    else:
        one_line_error(result, "model.tflite")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_a_model_without_a_kv_cache_is_refused(tmp_path):
    import litert_torch

    class Stateless(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(512, 16)

        def forward(self, tokens, input_pos):
            return {"logits": self.embed(tokens) + input_pos[None, :, None].float()}

    module = Stateless().eval()
    converter = litert_torch.Converter()
    for name, n in (("prefill_4", 4), ("decode", 1)):
        converter.signature(name, module, sample_kwargs={"tokens": torch.zeros((1, n), dtype=torch.int32), "input_pos": torch.arange(n, dtype=torch.int32)})
    model = tmp_path / "model.tflite"
    converter.convert().export(str(model))
    result = run_cli("run", str(model), "--tokenizer", str(DEMO / "tokenizer.model"), cache=tmp_path / "cache")
    one_line_error(result, "no kv_cache")


# -- runtime inputs -----------------------------------------------------------------------------


def raw_cli(*args, cache: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], check=False, capture_output=True, env=env, cwd=REPO, timeout=300, **kwargs)


class Bytes:  # raw_cli's result, in run_cli's shape
    def __init__(self, done):
        self.code, self.stdout, self.stderr = done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def test_a_prompt_that_is_not_utf8_is_bad_input(stories_build):
    done = raw_cli("run", str(stories_build.output / "model.tflite"), "--prompt", b"Lily \xff\xfe saw", cache=stories_build.cache)
    one_line_error(Bytes(done), "the prompt", "UTF-8")


def test_chat_input_that_is_not_utf8_is_bad_input(stories_build, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    done = raw_cli("chat", str(stories_build.output / "model.tflite"), "--chat-template", str(template), cache=stories_build.cache,
                   input=b"hello \xff\n")
    one_line_error(Bytes(done), "UTF-8")


def test_chat_with_standard_input_closed(stories_build, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    done = raw_cli("chat", str(stories_build.output / "model.tflite"), "--chat-template", str(template), cache=stories_build.cache,
                   stdin=None, preexec_fn=lambda: os.close(0))
    one_line_error(Bytes(done), "standard input is closed")


def test_a_chat_template_cannot_reach_python(stories_build, tmp_path):
    template = tmp_path / "evil.jinja"
    template.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}{{ messages[0]['content'] }}")
    result = run_cli("chat", str(stories_build.output / "model.tflite"), "--chat-template", str(template), cache=stories_build.cache, stdin="hi\n")
    one_line_error(result, "chat template")


def test_edgellm_json_cannot_point_outside_the_model_folder(stories_build, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(stories_build.output, copy)
    metadata = json.loads((copy / "edgellm.json").read_text()) | {"tokenizer": "../../../../etc/passwd"}
    (copy / "edgellm.json").write_text(json.dumps(metadata))
    one_line_error(run_cli("run", str(copy / "model.tflite"), cache=stories_build.cache), "edgellm.json", "outside")


# -- faults -------------------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small filesystem of its own (root only): full and read-only disks without touching the machine's."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=False, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:120]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_a_read_only_cache_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as cache:
        one_line_error(run_cli("build", "--spec", STORIES, cache=cache / "cache"), "cannot write to the cache", "EDGELLM_CACHE_DIR")


@pytest.mark.slow
def test_a_full_cache_disk_is_one_line_and_leaves_only_complete_artifacts(tmp_path):
    with tmpfs(tmp_path / "full", "1200k") as disk:
        one_line_error(run_cli("build", "--spec", STORIES, "-o", str(tmp_path / "out"), cache=disk / "cache"), "cache", "EDGELLM_CACHE_DIR")
        only_complete_artifacts(disk / "cache")
        assert not (tmp_path / "out" / "model.tflite").exists()


def test_a_full_output_disk_leaves_no_half_model(stories_build, tmp_path):
    with tmpfs(tmp_path / "full", "600k") as disk:
        result = run_cli("build", "--spec", STORIES, "-o", str(disk / "out"), cache=stories_build.cache)
        one_line_error(result, "cannot write", "model.tflite")
        assert not (disk / "out" / "model.tflite").exists() and not list((disk / "out").glob(".*partial"))


def start_build(cache: Path, out: Path) -> subprocess.Popen:
    """A build as a terminal starts a foreground job: SIGINT unblocked and at its default action. This test
    run may have it ignored (`make test &` from a script: a non-interactive shell ignores SIGINT in its
    background jobs, and an ignored signal stays ignored across exec, so the build would shrug off the
    Ctrl-C and finish). exec resets a handled signal to its default: handle it while the build starts."""
    env = {**os.environ, "EDGELLM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        return subprocess.Popen([*CLI, "build", "--spec", STORIES, "-o", str(out)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def stop_mid_convert(cache: Path, build: subprocess.Popen) -> None:
    """Wait until the worker is converting, then stop the whole build (SIGSTOP to its group) with the
    conversion unfinished: the signal a test sends next lands mid-convert however slow or fast the machine.
    The worker opens the stage's log just before the converter runs (lowering.write_tflite), and writes
    model.tflite as its last step, before which the parent cannot commit the artifact."""
    deadline = time.monotonic() + 300
    while not list(cache.glob("logs/staging-convert-*.log")):
        assert build.poll() is None, "the build ended before converting"
        if time.monotonic() > deadline:
            os.killpg(build.pid, signal.SIGKILL)
            pytest.fail("the conversion did not start within 300 s")
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGSTOP)
    staging = list(cache.glob(".staging-convert-*"))
    if len(staging) != 1 or (staging[0] / "model.tflite").exists() or (cache / "convert").exists():
        os.killpg(build.pid, signal.SIGKILL)
        pytest.fail("the conversion finished before the build could be stopped mid-convert")


@pytest.mark.slow
def test_a_build_killed_mid_convert_is_swept_and_a_rerun_succeeds(tmp_path):
    cache = tmp_path / "cache"
    build = start_build(cache, tmp_path / "out")
    stop_mid_convert(cache, build)
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    assert list(cache.glob(".staging-convert-*")) and not (cache / "convert").exists()  # what a kill leaves
    rerun = run_cli("build", "--spec", STORIES, "-o", str(tmp_path / "out"), cache=cache)
    assert rerun.code == 0, rerun.stderr
    only_complete_artifacts(cache)
    assert len(list((cache / "convert").iterdir())) == 1


@pytest.mark.slow
def test_ctrl_c_mid_convert_exits_130_in_one_line_and_leaves_nothing_half_done(tmp_path):
    cache = tmp_path / "cache"
    build = start_build(cache, tmp_path / "out")
    stop_mid_convert(cache, build)
    os.killpg(build.pid, signal.SIGINT)  # what a terminal sends: the whole foreground group
    os.killpg(build.pid, signal.SIGCONT)  # parent and worker take it now, mid-convert
    _, stderr = build.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert build.returncode == 130 and len(errors) == 1 and errors[0].startswith("error: interrupted") and "Traceback" not in stderr, stderr
    only_complete_artifacts(cache)
    assert not (cache / "convert").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_builds_on_one_cache_both_succeed(tmp_path):
    cache = tmp_path / "cache"
    builds = [start_build(cache, tmp_path / f"out{i}") for i in range(2)]
    for build in builds:
        _, stderr = build.communicate(timeout=600)
        assert build.returncode == 0, stderr
    assert (tmp_path / "out0" / "model.tflite").read_bytes() == (tmp_path / "out1" / "model.tflite").read_bytes()
    only_complete_artifacts(cache)
