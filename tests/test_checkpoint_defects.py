"""Checkpoints transformers accepts that edgellm used to refuse or misread: a tokenizer with a
special token past the model's embedding (Gemma 3's `<image_soft_token>`), and a config that ties
the output head while the checkpoint stores a head of its own."""

import json

import pytest
import torch
from conftest import SPECS
from safetensors.torch import load_file, save_file
from tiny_models import COMMON, make_tiny_checkpoint, small_bpe_tokenizer
from tokenizers import AddedToken, Tokenizer

from edgellm.errors import EdgeLLMError
from edgellm.infra.cache import ArtifactCache
from edgellm.pipeline.build import fetch
from edgellm.pipeline.stages import Pipeline
from edgellm.spec.load import load_spec
from edgellm.text.tokenizer import load_tokenizer

VOCAB = COMMON["vocab_size"]


def spec_with(tmp_path, base: str, body: str = ""):
    path = tmp_path / "spec.yaml"
    path.write_text(f"extends: {SPECS / f'{base}.yaml'}\n{body}")
    return load_spec(path)


def add_token(folder, content: str, special: bool) -> None:
    """Add one token to the checkpoint's tokenizer.json, at the first free id (the model's vocab_size)."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)])
    tokenizer.save(str(folder / "tokenizer.json"))


# -- A: special added tokens past the embedding ------------------------------------------------


@pytest.fixture(scope="module")
def gemma3_with_image_token(tmp_path_factory):
    """A tiny Gemma 3 whose tokenizer has, like the real one, one special token at id == vocab_size."""
    folder = make_tiny_checkpoint("gemma-3-1b", tmp_path_factory.mktemp("gemma3") / "ckpt", "tokenizer.json")
    add_token(folder, "<image_soft_token>", special=True)
    return folder


def test_a_special_token_past_the_vocab_builds_and_verifies(tmp_path, gemma3_with_image_token):
    tokenizer = load_tokenizer(gemma3_with_image_token / "tokenizer.json")
    assert (tokenizer.vocab_size, tokenizer.ordinary_size, tokenizer.token_id("<image_soft_token>")) == (VOCAB + 1, VOCAB, VOCAB)
    spec = spec_with(tmp_path, "gemma-3-1b", "tokenizer:\n  file: tokenizer.json\n")
    pipeline = Pipeline(spec, checkpoint=gemma3_with_image_token, cache=ArtifactCache(tmp_path / "cache"))
    assert pipeline.result("fetch").report.architecture.vocab_size == VOCAB
    verified = pipeline.result("verify").report
    verified.check(spec.verify)
    assert verified.comparisons["reauthored_vs_transformers"].top1_agreement == 1.0


def test_a_larger_ordinary_vocabulary_is_still_refused(tmp_path):
    # A token that is not special comes out of plain text, so the model must have a row for it.
    folder = make_tiny_checkpoint("gemma-3-1b", tmp_path / "ckpt", "tokenizer.json")
    add_token(folder, "<plain_extra>", special=False)
    with pytest.raises(EdgeLLMError, match=f"the tokenizer has {VOCAB + 1} tokens but the model only {VOCAB}; fix tokenizer.file"):
        fetch(spec_with(tmp_path, "gemma-3-1b", "tokenizer:\n  file: tokenizer.json\n"), folder)


def test_a_start_token_past_the_vocab_is_refused(tmp_path):
    folder = make_tiny_checkpoint("gemma-3-1b", tmp_path / "ckpt", "tokenizer.json")
    add_token(folder, "<image_soft_token>", special=True)
    spec = spec_with(tmp_path, "gemma-3-1b", f"tokenizer:\n  file: tokenizer.json\n  bos_id: {VOCAB}\n")
    with pytest.raises(EdgeLLMError, match=f"BOS token id {VOCAB} is outside the model's {VOCAB} tokens; set tokenizer.bos_id"):
        fetch(spec, folder)


def test_the_runtime_takes_a_tokenizer_with_a_special_token_past_the_vocab(tmp_path, stories_build):
    """stories260K has 512 tokens: a 512-token tokenizer plus one special token runs it; the
    special token itself, which the model has no row for, is a one-line error, not a bad read."""
    from edgellm.runtime.generate import Generator, Session

    small_bpe_tokenizer().save(str(tmp_path / "tokenizer.json"))
    add_token(tmp_path, "<image_soft_token>", special=True)
    generator = Generator(stories_build.output / "model.tflite", tokenizer=tmp_path / "tokenizer.json")
    assert generator.litert.vocab_size == VOCAB and generator.tokenizer.vocab_size == VOCAB + 1
    generator.stop_ids, tokens = [], []
    list(generator.complete(generator.prompt_ids("Once upon a time"), 8, tokens))
    assert len(tokens) == 8 and all(0 <= t < VOCAB for t in tokens)
    with pytest.raises(EdgeLLMError, match=f"the input has token id {VOCAB}, outside the model's {VOCAB} tokens"):
        Session(generator.litert).feed(generator.prompt_ids("Once <image_soft_token>"))


# -- B: a stored head under a tied config --------------------------------------------------------


def store_head(folder, head: torch.Tensor | None = None) -> torch.Tensor:
    """Add lm_head.weight to the checkpoint (a fresh random matrix unless given); config.json still says tied."""
    weights = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in weights and json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True
    embedding = weights["model.embed_tokens.weight"]
    weights["lm_head.weight"] = torch.randn(embedding.shape, generator=torch.Generator().manual_seed(1)).to(embedding.dtype) if head is None else head
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return weights["lm_head.weight"]


@pytest.mark.parametrize("family", ["gemma-2-2b", "smollm2-135m"])
def test_a_stored_head_under_a_tied_config_is_used_as_transformers_does(tmp_path, family):
    spec = load_spec(SPECS / f"{family}.yaml")
    folder = make_tiny_checkpoint(family, tmp_path / "ckpt", spec.tokenizer.file, tie_word_embeddings=True)
    store_head(folder)
    pipeline = Pipeline(spec, checkpoint=folder, cache=ArtifactCache(tmp_path / "cache"))
    fetched = pipeline.result("fetch").report
    assert not fetched.architecture.tie_word_embeddings
    assert fetched.output_head.startswith("stored lm_head.weight (config.json ties it")
    assert "output head: stored lm_head.weight" in fetched.summary()
    verified = pipeline.result("verify").report
    verified.check(spec.verify)  # within the spec's tolerance (it was max |Δlogit| ~30 with the embedding as the head)
    assert verified.comparisons["reauthored_vs_transformers"].top1_agreement == 1.0


@pytest.mark.parametrize("stored", ["none", "equal"])
def test_a_tied_checkpoint_without_a_distinct_head_uses_the_embedding(tmp_path, stored):
    spec = load_spec(SPECS / "smollm2-135m.yaml")
    folder = make_tiny_checkpoint("smollm2-135m", tmp_path / "ckpt", spec.tokenizer.file)
    if stored == "equal":  # as a .bin checkpoint saves a tied head: the same values under both names
        store_head(folder, load_file(folder / "model.safetensors")["model.embed_tokens.weight"].clone())
    fetched = fetch(spec, folder)
    assert fetched.architecture.tie_word_embeddings and fetched.output_head == "the embedding (tied)"
    assert fetched.summary().endswith(", output head: the embedding (tied)")


def test_an_untied_checkpoint_names_its_head(tmp_path):
    spec = load_spec(SPECS / "tinyllama-1.1b.yaml")
    fetched = fetch(spec, make_tiny_checkpoint("tinyllama-1.1b", tmp_path / "ckpt", spec.tokenizer.file))
    assert not fetched.architecture.tie_word_embeddings and fetched.output_head == "lm_head.weight"
