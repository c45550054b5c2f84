"""A checkpoint's config.json in our architecture's field names: what `architecture.from_config` reads."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from edgellm.errors import EdgeLLMError
from edgellm.spec.schema import POOLED_KINDS, Architecture, ModelSpec, RopeScaling, describe_error

_HF_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": ("hidden_size", "d_model"),  # T5: d_model
    "num_layers": ("num_hidden_layers", "num_layers"),  # T5: num_layers
    "intermediate_size": ("intermediate_size", "d_ff"),  # T5: d_ff
    "num_heads": ("num_attention_heads", "num_heads"),  # T5: num_heads
    "num_kv_heads": "num_key_value_heads",
    "head_dim": ("head_dim", "d_kv"),  # T5: d_kv
    "max_position_embeddings": "max_position_embeddings",
    "tie_word_embeddings": "tie_word_embeddings",
    "mlp_bias": "mlp_bias",
    "attention_bias": "attention_bias",
    "attention_out_bias": "attention_bias",
    "attn_logit_softcap": "attn_logit_softcapping",
    "final_logit_softcap": "final_logit_softcapping",
    "norm_eps": ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps"),
    "type_vocab_size": "type_vocab_size",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "num_decoder_layers": "num_decoder_layers",
    "scale_decoder_outputs": "scale_decoder_outputs",
    "activation": ("hidden_activation", "hidden_act", "dense_act_fn"),
    "embedding_multiplier": "embedding_multiplier",
    "residual_multiplier": "residual_multiplier",
    "logit_divisor": "logits_scaling",
    "attention_scale": "attention_multiplier",  # Granite: q.k scaled by this instead of head_dim ** -0.5
    "conv_kernel": ("conv_L_cache", "linear_conv_kernel_dim"),
    "linear_num_key_heads": "linear_num_key_heads",
    "linear_num_value_heads": "linear_num_value_heads",
    "linear_key_head_dim": "linear_key_head_dim",
    "linear_value_head_dim": "linear_value_head_dim",
    "conv_bias": "conv_bias",
}


_HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "relu": "relu"}


def _first(config: dict, keys: str | tuple[str, ...]):
    for key in (keys,) if isinstance(keys, str) else keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _rope_from_hf(config: dict) -> dict:
    # transformers 5 writes `rope_parameters` (per layer type when they differ); 4.x wrote
    # `rope_theta` and `rope_scaling`.
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    local = {}
    if "full_attention" in params:
        local = params.get("sliding_attention", {})
        params = params["full_attention"]
    params = dict(params)
    theta = params.pop("rope_theta", config.get("rope_theta", 10000.0))
    rope = {"rope_theta": theta, "partial_rotary_factor": params.pop("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))}
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind != "default":
        rope["rope_scaling"] = {"type": kind, **{k: params[k] for k in RopeScaling.model_fields if k in params}}
    if local.get("rope_theta", theta) != theta:
        rope["rope_local_theta"] = local["rope_theta"]
    return rope


def _layers_from_hf(config: dict, num_layers: int | None) -> dict:
    layer_types = config.get("layer_types")
    window = config.get("sliding_window")
    if layer_types is None and window is not None and config.get("use_sliding_window", True) and num_layers:
        layer_types = ["sliding_attention"] * num_layers  # no per-layer list: one window for every layer
    if not layer_types or set(layer_types) == {"full_attention"}:
        return {}
    return {"layer_types": list(layer_types), **({"sliding_window": window} if "sliding_attention" in layer_types else {})}


def _feed_forward_size(config: dict) -> int:
    """The MLP's hidden size when config.json states it before an adjustment (block_auto_adjust_ff_dim:
    two thirds of it, times a multiplier, rounded up to a multiple)."""
    size = config["intermediate_size"]
    if config.get("block_auto_adjust_ff_dim"):
        size = int(2 * size / 3)
        if config.get("block_ffn_dim_multiplier") is not None:
            multiple = config["block_multiple_of"]
            size = multiple * -(-int(config["block_ffn_dim_multiplier"] * size) // multiple)
    return size


def architecture_from_hf_config(config: dict) -> dict:
    """Translate a Hugging Face config (as a dict) into our architecture field names; a multimodal
    config's text model (`text_config`) is what a decoder spec builds."""
    config = {**config, **(config.get("text_config") or {})}
    arch = {ours: value for ours, theirs in _HF_KEYS.items() if (value := _first(config, theirs)) is not None}
    if "activation" in arch:
        arch["activation"] = _HF_ACTIVATIONS.get(arch["activation"], arch["activation"])
    if "hidden_size" in arch and "num_heads" in arch:
        arch.setdefault("head_dim", arch["hidden_size"] // arch["num_heads"])
    if "num_heads" in arch:
        arch.setdefault("num_kv_heads", arch["num_heads"])
    if config.get("query_pre_attn_scalar"):
        arch["attention_scale"] = config["query_pre_attn_scalar"] ** -0.5
    if config.get("no_rope_layers") is not None:  # SmolLM3: 1 where the layer rotates, 0 for NoPE
        arch["rope_layers"] = [bool(flag) for flag in config["no_rope_layers"]]
    if config.get("intermediate_size") is not None:
        arch["intermediate_size"] = _feed_forward_size(config)
    if "is_gated_act" in config:  # T5's feed_forward_proj: gated-gelu or relu
        arch["mlp"] = "gated" if config["is_gated_act"] else "plain"
    return {**arch, **_rope_from_hf(config), **_layers_from_hf(config, arch.get("num_layers"))}


def read_hf_config(path: Path) -> dict:
    """A checkpoint folder's (or a config.json file's) configuration, normalised by transformers."""
    from transformers import AutoConfig

    if not path.exists() or (path.is_dir() and not (path / "config.json").is_file()):
        raise EdgeLLMError(f"{path}: no config.json found; point at a Hugging Face checkpoint folder or its config.json")
    try:
        return AutoConfig.from_pretrained(path).to_dict()
    except (OSError, ValueError, KeyError) as exc:
        raise EdgeLLMError(f"{path}: transformers cannot read this config ({str(exc).splitlines()[0]}); check config.json") from None


def resolve_architecture(spec: ModelSpec, checkpoint_dir: Path) -> Architecture:
    """The spec's architecture, filled in from the checkpoint's config.json where it says so."""
    fields = architecture_from_hf_config(read_hf_config(checkpoint_dir)) if spec.architecture.from_config else {}
    if spec.architecture.overrides.get("kind") in POOLED_KINDS:  # sentence-transformers state the pooling beside config.json
        from edgellm.spec.sentence_config import sentence_pooling

        fields.update(sentence_pooling(checkpoint_dir))
    fields.update(spec.architecture.overrides)
    try:
        return Architecture.model_validate(fields)
    except ValidationError as exc:
        raise EdgeLLMError(f"spec {spec.name}: architecture.{describe_error(exc.errors()[0])}") from None
