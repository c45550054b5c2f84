"""Spec files: every shipped spec validates, `extends` merges, and mistakes name the file and the field."""

import pytest
from conftest import SPECS

from edgellm.errors import EdgeLLMError
from edgellm.spec.load import load_spec

SHIPPED = sorted(p for p in SPECS.glob("*.yaml") if not p.name.startswith("_"))


def test_the_foundation_specs_ship():
    assert {p.stem for p in SHIPPED} >= {"stories260k", "tinyllama-1.1b", "smollm2-135m", "llama-3.2-1b"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_validates(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert "blocks.{layer}.attn.q.weight" in spec.weights  # inherited from the family file
    assert spec.export.kv_cache_length >= max(spec.export.prefill_lengths)


def test_local_source_resolves_relative_to_the_spec_file():
    assert load_spec(SPECS / "stories260k.yaml").local_source() == (SPECS.parent / "demo" / "stories260K").resolve()


def write(tmp_path, text, name="s.yaml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


BASE = "name: x\nsource: {path: .}\nweights: {embed.weight: e}\n"


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("export: {prefill_lengths: [600]}\n", "export: prefill_lengths must each be in 1..kv_cache_length (512)"),
        ("export: {prefill_lengths: [8, 8]}\n", "must not repeat"),
        ("tokenizer: {add_bos: maybe}\n", "tokenizer.add_bos"),
        ("source: {path: ., hub: {repo_id: a/b}}\n", "exactly one of `hub` or `path`"),
        ("verify: {max_abs_logit_diff: -1}\n", "verify.max_abs_logit_diff"),
    ],
)
def test_invalid_values_are_one_line_errors_naming_the_field(tmp_path, extra, needle):
    with pytest.raises(EdgeLLMError) as error:
        load_spec(write(tmp_path, BASE.replace("source: {path: .}\n", "") + ("" if "source" in extra else "source: {path: .}\n") + extra))
    assert needle in str(error.value) and "s.yaml" in str(error.value) and "\n" not in str(error.value)


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(EdgeLLMError, match="cycle"):
        load_spec(tmp_path / "a.yaml")


def test_missing_spec_file(tmp_path):
    with pytest.raises(EdgeLLMError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ("{num_layers: 3, rope_layers: [true, false]}", "rope_layers has 2 entries for 3 layers"),
        ("{pre_norm: false, parallel_residual: true}", "it needs pre_norm"),
        ("{qk_norm_over: heads}", "qk_norm_over"),
        ("{logit_divisor: 0}", "logit_divisor"),
        ("{kind: encoder, norm_placement: pre}", "norm_placement pre is not for encoder models (they take post)"),
    ],
)
def test_architecture_overrides_are_checked_before_any_checkpoint(tmp_path, overrides, needle):
    with pytest.raises(EdgeLLMError) as error:
        load_spec(write(tmp_path, BASE + f"architecture: {overrides}\n"))
    assert needle in str(error.value) and "\n" not in str(error.value)
