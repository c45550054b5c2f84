"""Tiny random-weight checkpoints, one per shipped spec, written by each architecture's real
`transformers` class with `save_pretrained`, so the reference is code nobody on this team wrote.

Dimensions are small but keep each architecture's structure; sliding windows are shorter than
the 32 verification tokens so the window is exercised. Used by the tests and by
`scripts/architecture_table.py`.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from edgellm.infra.resources import data_path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
SPM = data_path("demo", "stories260K", "tokenizer.model")
CORPUS = ASSETS / "corpora" / "tinyshakespeare" / "input.txt"

WINDOW = 6
COMMON = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 1024, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
              "initializer_range": 0.2}  # logits with a trained model's spread (std ~1.6), so 1e-3 means something
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

QWEN3_5_TEXT = {"tie_word_embeddings": True, "num_hidden_layers": 4, "head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
                "linear_key_head_dim": 8, "linear_value_head_dim": 12}

# spec name -> (transformers class prefix, config overrides); with a vision_config, the multimodal
# class (ForConditionalGeneration) whose text_config gets COMMON

TINY = {
    "tinyllama-1.1b": ("Llama", {"tie_word_embeddings": False}),
    "smollm2-135m": ("Llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    "llama-3.2-1b": ("Llama", {"tie_word_embeddings": True, "rope_parameters": LLAMA3_ROPE}),
    "qwen2.5-0.5b": ("Qwen2", {"tie_word_embeddings": True}),
    "qwen2.5-1.5b": ("Qwen2", {"tie_word_embeddings": False}),
    "qwen3-0.6b": ("Qwen3", {"tie_word_embeddings": True, "head_dim": 24}),
    "gemma-2b": ("Gemma", {"num_key_value_heads": 1, "head_dim": 16}),
    "gemma-2-2b": ("Gemma2", {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                              "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}),
    "gemma-3-1b": ("Gemma3", {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                              "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
    "phi-2": ("Phi", {"num_key_value_heads": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4}}),
    "phi-3-mini": ("Phi3", {"sliding_window": WINDOW}),
    "mistral-7b-v0.1": ("Mistral", {"head_dim": 16, "sliding_window": WINDOW}),
    "smollm3-3b": ("SmolLM3", {"tie_word_embeddings": True, "no_rope_layers": [1, 0, 1]}),
    "olmo-2-1b": ("Olmo2", {"tie_word_embeddings": False}),
    "olmo-3-7b": ("Olmo3", {"tie_word_embeddings": False, "sliding_window": WINDOW,
                            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
    # Convolution layers around one attention layer, the MLP size adjusted as LFM2's configs ask (96 -> 64).
    "lfm2-350m": ("Lfm2", {"tie_word_embeddings": True, "num_hidden_layers": 4, "layer_types": ["conv", "full_attention", "conv", "conv"],
                           "block_multiple_of": 32, "conv_L_cache": 3}),
    # Three linear-attention layers to one gated full-attention layer, key heads shared by two value
    # heads; the text model of a Qwen3_5ForConditionalGeneration, as the released checkpoints are.
    "qwen3.5-0.8b": ("Qwen3_5", {"text_config": QWEN3_5_TEXT, "vision_config": {"depth": 1, "hidden_size": 32, "num_heads": 2,
                                                                            "intermediate_size": 64, "out_hidden_size": 64}}),
    "granite-3.3-2b": ("Granite", {"tie_word_embeddings": True, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                                   "attention_multiplier": 0.015625, "logits_scaling": 2.0}),  # real ones divide by 8: 2 keeps a trained spread here
}


def make_tiny_checkpoint(spec_name: str, folder: Path, tokenizer_file: str, max_shard_size: str | None = None, **extra) -> Path:
    import torch
    import transformers

    prefix, overrides = TINY[spec_name]
    torch.manual_seed(0)
    if "vision_config" in overrides:
        text = {**COMMON, **overrides["text_config"], **extra}
        config = getattr(transformers, f"{prefix}Config")(**{**overrides, "text_config": text, "tie_word_embeddings": text["tie_word_embeddings"]})
        model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    else:
        config_class = getattr(transformers, f"{prefix}TextConfig" if prefix in ("Gemma3", "Qwen3_5") else f"{prefix}Config")
        model = getattr(transformers, f"{prefix}ForCausalLM")(config_class(**{**COMMON, **overrides, **extra}))
    _perturb_norms(model)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    if tokenizer_file == "tokenizer.model":
        shutil.copyfile(SPM, folder / tokenizer_file)
    else:
        small_bpe_tokenizer().save(str(folder / tokenizer_file))
    return folder


@functools.cache
def small_bpe_tokenizer():
    """A byte-level BPE tokenizer.json with the tiny models' 512 tokens, trained on Shakespeare: a
    tokenizer must fit its model's vocabulary (fetch refuses one that does not)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=COMMON["vocab_size"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines()[:4000], trainer)
    return tokenizer


def _perturb_norms(model) -> None:
    """Random init leaves norm weights at 1 (or 0 with a +1 offset) and biases at 0, which would
    hide a missing offset or bias; give them random values as trained checkpoints have."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)


def make_tiny_adapter(checkpoint: Path, folder: Path, targets: list[str], rank: int = 4, alpha: float = 8.0, seed: int = 1, **lora) -> Path:
    """A PEFT LoRA adapter for a tiny checkpoint, written by peft's own save_pretrained, with random
    non-zero lora_B (peft initialises it to zero, which would make any adapter look right)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    torch.manual_seed(seed)  # lora_A's initialisation too
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, **lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                param.add_(torch.randn_like(param) * 0.3)
    peft_model.save_pretrained(folder)
    return folder
