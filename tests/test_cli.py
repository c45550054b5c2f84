"""CLI behaviour that does not need a model: instant help, spec checks, cache commands."""

import subprocess
import sys

from conftest import SPECS, run_cli


def test_help_does_not_import_torch():
    code = "import sys; from edgellm_cli.cli import cli; print(sorted(m for m in ('torch', 'transformers', 'litert_torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_commands_and_examples(cache):
    result = run_cli("--help", cache=cache)
    assert result.code == 0
    for word in ("build", "fetch", "verify", "convert", "run", "Examples:"):
        assert word in result.stdout


def test_spec_check_reports_each_file(cache):
    result = run_cli("spec", "check", str(SPECS / "stories260k.yaml"), str(SPECS / "llama-3.2-1b.yaml"), cache=cache)
    assert result.code == 0 and result.stdout.count("ok ") == 2


def test_cache_path_and_clear(cache):
    (cache / "convert" / "k").mkdir(parents=True)
    (cache / "convert" / "k" / "model.tflite").write_bytes(b"x" * 1000)
    assert run_cli("cache", "path", cache=cache).stdout.strip() == str(cache)
    assert "freed 0.0 MB" in run_cli("cache", "clear", cache=cache).stdout
    assert not cache.exists()
