"""The YAML model spec's schema: where a checkpoint comes from, its architecture, and how its tensors map.

A spec is data, not code. Adding a model means writing a YAML file (shipped ones live in
`edgellm/data/model_specs/`, often a few lines that `extends:` a family file of shared tensor names).
Every field is validated here, so a typo'd key or a wrong type is one line that names the file
and the field, long before any weights are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSource(_Strict):
    repo_id: str
    revision: str = "main"
    allow_patterns: list[str] = ["*.json", "*.safetensors", "*.bin", "tokenizer.model"]


class Source(_Strict):
    """Exactly one of `hub` (a Hugging Face repo) or `path` (a local folder, relative to the spec)."""

    hub: HubSource | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if (self.hub is None) == (self.path is None):
            raise ValueError("give exactly one of `hub` or `path`")
        return self


class RopeScaling(_Strict):
    """A stretch of the rotary frequencies for long contexts.

    linear: every frequency divided by `factor`. llama3: long wavelengths divided by `factor`,
    short ones kept, the band between `low_freq_factor` and `high_freq_factor` blended.
    """

    type: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    @model_validator(mode="after")
    def _llama3_fields(self) -> RopeScaling:
        if self.type == "llama3":
            missing = [k for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"llama3 scaling needs {', '.join(missing)}")
        return self


# A layer's token mixer: attention over the KV cache (all of it, or a sliding window of it), a short
# causal convolution whose state is the last few inputs (LFM2), or gated delta-rule linear attention
# whose state is a matrix per head (Qwen3.5). The last two keep no per-position cache.
LayerType = Literal["full_attention", "sliding_attention", "conv", "linear_attention"]
RECURRENT_LAYERS = ("conv", "linear_attention")


class Architecture(_Strict):
    """The hyper-parameters of a transformer; every knob has one name, one default, one comment.

    Most come from the checkpoint's config.json; knobs a config.json does not state (a norm's
    +1 offset, biases, parallel residual) are set by the family spec file.
    """

    # What the model is: a decoder-only LM (prefill/decode), a bidirectional encoder that pools one
    # embedding per text (BERT, MiniLM; embed_N), or an encoder-decoder (T5; encode_N/decode).
    kind: Literal["decoder", "encoder", "encoder-decoder"] = "decoder"

    # Size
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)

    # Embedding and output head
    embedding_scale: bool = False  # multiply embeddings by sqrt(hidden_size)
    embedding_multiplier: float = 1.0  # multiply embeddings by this constant (Granite)
    tie_word_embeddings: bool = False  # the output head shares the embedding matrix
    lm_head_bias: bool = False
    final_logit_softcap: float | None = None  # logits = cap * tanh(logits / cap)
    logit_divisor: float = Field(default=1.0, gt=0)  # logits = head(x) / divisor (Granite's logits_scaling)

    # Block structure and norms
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: float = 1e-5
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): 1 where checkpoints store weight - 1
    pre_norm: bool = True  # a norm on each sublayer's input; False: none (OLMo 2 norms the outputs: post_*_norm)
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm(x)), one norm shared by both
    residual_multiplier: float = 1.0  # x + m * sublayer(x) (Granite)
    post_attention_norm: bool = False  # a norm on the attention output before the residual add
    post_mlp_norm: bool = False  # likewise on the MLP output
    norm_placement: Literal["pre", "post"] = "pre"  # post: norm(x + sublayer(x)), BERT's order (encoders only)

    # Attention: num_heads query heads share num_kv_heads key/value heads (GQA; MQA when 1)
    #   q heads:  0 1 | 2 3 | 4 5 | 6 7
    #   kv heads:  0  |  1  |  2  |  3     (num_heads=8, num_kv_heads=4)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    attention_bias: bool = False  # biases on the q, k, v projections
    attention_out_bias: bool = False  # bias on the output projection
    qk_norm: bool = False  # a norm on the queries and keys, before RoPE
    qk_norm_over: Literal["head", "projection"] = "head"  # head_dim of each head, or the whole q / k projection (OLMo 2)
    attention_output_gate: bool = False  # q's projection also gives, per head, a sigmoid gate on the attention output (Qwen3.5)
    attention_scale: float | None = None  # multiplies q.k; default head_dim ** -0.5
    attn_logit_softcap: float | None = None  # scores = cap * tanh(scores / cap)
    sliding_window: int | None = Field(default=None, gt=0)  # tokens a sliding layer sees, itself included
    layer_types: list[LayerType] | None = None  # per layer; None means every layer is full_attention

    # Convolution layers (layer_types "conv"): out(C * conv(B * x)), B, C and x from one input projection
    conv_kernel: int = Field(default=3, gt=1)  # taps of the causal depthwise convolution; its state keeps kernel - 1 inputs
    conv_bias: bool = False  # biases on the projections and the convolution
    # Linear-attention layers (layer_types "linear_attention"): key heads shared by consecutive value heads
    linear_num_key_heads: int | None = Field(default=None, gt=0)
    linear_num_value_heads: int | None = Field(default=None, gt=0)
    linear_key_head_dim: int | None = Field(default=None, gt=0)
    linear_value_head_dim: int | None = Field(default=None, gt=0)

    # Rotary position embedding
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_local_theta: float | None = None  # base of sliding layers when it differs (two RoPE bases)
    partial_rotary_factor: float = Field(default=1.0, gt=0, le=1)  # share of head_dim that is rotated
    rope_layers: list[bool] | None = None  # per layer, whether attention rotates q and k (SmolLM3's NoPE layers); None: every layer
    max_position_embeddings: int = Field(gt=0)

    # MLP
    mlp: Literal["gated", "plain"] = "gated"  # gated: down(act(gate(x)) * up(x)); plain: down(act(up(x)))
    activation: Literal["silu", "gelu", "gelu_tanh", "relu"] = "silu"
    mlp_bias: bool = False

    # Encoders (kind encoder / encoder-decoder); see layers/encoder.py and layers/t5.py
    position_embedding: Literal["rope", "learned", "relative"] = "rope"  # learned: an absolute table (BERT); relative: T5's bucketed bias
    type_vocab_size: int = Field(default=0, ge=0)  # token-type (segment) embeddings; every token is type 0
    embedding_norm: bool = False  # a norm on the summed embeddings, before the first block (BERT)
    pooling: Literal["mean", "cls"] | None = None  # encoder: token states -> one embedding (sentence-transformers' 1_Pooling)
    normalize_embedding: bool = False  # encoder: L2-normalise the pooled embedding (a Normalize module in modules.json)
    relative_attention_num_buckets: int = Field(default=32, gt=1)  # relative: buckets of the learned per-head bias
    relative_attention_max_distance: int = Field(default=128, gt=1)  # relative: distances from here on share the last bucket
    num_decoder_layers: int | None = Field(default=None, gt=0)  # encoder-decoder: decoder blocks (default num_layers)
    scale_decoder_outputs: bool = False  # multiply the final state by hidden_size ** -0.5 before the output head (T5, tied)

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        problem = architecture_problem(self.model_dump())
        if problem:
            raise ValueError(problem)
        return self

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def layer_type(self, layer: int) -> LayerType:
        return "full_attention" if self.layer_types is None else self.layer_types[layer]

    def is_attention(self, layer: int) -> bool:
        return self.layer_type(layer) not in RECURRENT_LAYERS

    def uses_rope(self, layer: int) -> bool:
        return self.rope_layers is None or self.rope_layers[layer]


# Knob values each model kind's blocks accept, where kinds differ (layers/decoder.py is pre-norm
# with RoPE; layers/encoder.py is BERT's post-norm and pools one embedding per text).
KIND_KNOBS: dict[str, dict[str, tuple]] = {
    "decoder": {"norm_placement": ("pre",), "position_embedding": ("rope",)},
    "encoder": {"norm_placement": ("post",), "pooling": ("mean", "cls")},
}

# Kinds that pool one embedding per text: their checkpoints may state the pooling (1_Pooling/).
POOLED_KINDS = ("encoder",)


def architecture_problem(values: dict) -> str | None:
    """The first cross-field rule `values` break; a rule whose fields are not all given is skipped,
    so a spec's overrides are checked before config.json fills in the rest."""
    heads, kv_heads, layers = values.get("num_heads"), values.get("num_kv_heads"), values.get("num_layers")
    layer_types = values.get("layer_types")
    if heads and kv_heads and heads % kv_heads:
        return f"num_heads ({heads}) must be a multiple of num_kv_heads ({kv_heads})"
    if layer_types is not None and layers is not None and len(layer_types) != layers:
        return f"layer_types has {len(layer_types)} entries for {layers} layers"
    rope_layers = values.get("rope_layers")
    if rope_layers is not None and layers is not None and len(rope_layers) != layers:
        return f"rope_layers has {len(rope_layers)} entries for {layers} layers"
    if values.get("pre_norm") is False and values.get("parallel_residual"):
        return "parallel_residual shares one pre-norm between attention and MLP; it needs pre_norm"
    if layer_types and all(t in RECURRENT_LAYERS for t in layer_types):
        return "layer_types has no attention layer; a decoder needs one to hold its positions"
    linear = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim")
    if layer_types and "linear_attention" in layer_types and any(k in values and values[k] is None for k in linear):
        return f"layer_types has linear_attention layers but {', '.join(k for k in linear if values.get(k) is None)} not set"
    keys, value_heads = values.get("linear_num_key_heads"), values.get("linear_num_value_heads")
    if keys and value_heads and value_heads % keys:
        return f"linear_num_value_heads ({value_heads}) must be a multiple of linear_num_key_heads ({keys})"
    if layer_types and "sliding_attention" in layer_types and "sliding_window" in values and values["sliding_window"] is None:
        return "layer_types has sliding_attention layers but sliding_window is not set"
    if values.get("parallel_residual") and (values.get("post_attention_norm") or values.get("post_mlp_norm")):
        return "parallel_residual cannot be combined with post_attention_norm or post_mlp_norm"
    for knob, allowed in KIND_KNOBS.get(values.get("kind"), {}).items():
        if knob in values and values[knob] not in allowed:
            return f"{knob} {values[knob]} is not for {values['kind']} models (they take {' or '.join(map(str, allowed))}); set {knob} or kind"
    return None


def _override_problem(overrides: dict) -> str | None:
    """Each override checked against its field's type and bounds, then the cross-field rules."""
    for name, value in overrides.items():
        field = Architecture.model_fields[name]
        try:
            TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation).validate_python(value)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
            return f"{name}{where}: {error['msg'].removeprefix('Value error, ').lower()} (got {value!r}); fix the value"
    problem = architecture_problem(overrides)
    return f"{problem}; fix the overrides" if problem else None


class ArchitectureSection(_Strict):
    """`from_config: true` reads the checkpoint's config.json; any field given here overrides it."""

    from_config: bool = True
    overrides: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _split_overrides(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = sorted(set(data) - set(Architecture.model_fields) - {"from_config"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(Architecture.model_fields)})")
        overrides = {k: v for k, v in data.items() if k != "from_config"}
        problem = _override_problem(overrides)
        if problem:
            raise ValueError(problem)
        return {"from_config": data.get("from_config", True), "overrides": overrides}


class TokenizerSection(_Strict):
    """Tokenizer file (relative to the checkpoint folder) and special tokens; unset ids come from the checkpoint."""

    file: str = "tokenizer.model"
    add_bos: bool = True
    bos_id: int | None = None
    eos_ids: list[int] | None = None
    stop_ids: list[int] = []  # besides the EOS ids: generation ends at any of these
    stop_strings: list[str] = []  # generation ends when the text contains one (it is not printed)
    chat_template: str | None = None  # Jinja, as in tokenizer_config.json; default: the checkpoint's
    prompt_prefix: str | None = None  # text before a user message in bundles; default: from the chat template
    prompt_suffix: str | None = None  # text after it, up to the model's reply; default: likewise

    @field_validator("file")
    @classmethod
    def _inside_checkpoint(cls, value: str) -> str:
        path = Path(value)
        if path.is_absolute() or ".." in path.parts or not value.strip():
            raise ValueError(f"{value!r} must be a file name inside the checkpoint folder (no absolute path, no ..); fix tokenizer.file")
        return value


LoraTarget = Literal["q", "k", "v", "o"]  # the projections LiteRT-LM feeds LoRA weights to


class ExportSection(_Strict):
    prefill_lengths: list[int] = Field(default=[32], min_length=1)
    kv_cache_length: int = Field(default=512, gt=0, le=1 << 20)  # beyond a million positions no phone has the memory
    # Encoders and encoder-decoders: one embed_N / encode_N signature per input length N (decoders ignore it).
    sequence_lengths: list[int] = Field(default=[128], min_length=1)
    # Swappable LoRA (decoders): the signatures also take LoRA weights of this rank for these attention
    # projections as inputs, in LiteRT-LM's convention (layers/lora.py); None: no LoRA inputs.
    lora_rank: int | None = Field(default=None, gt=0, le=1024)
    lora_targets: list[LoraTarget] = Field(default=["q", "k", "v", "o"], min_length=1)

    @model_validator(mode="after")
    def _prefill_fits(self) -> ExportSection:
        if any(n <= 0 or n > self.kv_cache_length for n in self.prefill_lengths):
            raise ValueError(f"prefill_lengths must each be in 1..kv_cache_length ({self.kv_cache_length})")
        for name in ("prefill_lengths", "sequence_lengths"):
            lengths = getattr(self, name)
            if len(set(lengths)) != len(lengths) or min(lengths) <= 0:
                raise ValueError(f"{name} must be positive and must not repeat")
        if len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError("lora_targets must not repeat")
        return self


class VerifySection(_Strict):
    num_tokens: int = Field(default=32, gt=0)
    max_abs_logit_diff: float = Field(default=1e-3, gt=0)
    min_top1_agreement: float = Field(default=1.0, ge=0, le=1)
    min_cosine: float = Field(default=0.9999, ge=-1, le=1)  # encoders: pooled embeddings against the reference


class LoraSource(_Strict):
    """The checkpoint tensor a LoRA target's projection reads (`{layer}` in its name), and its rows
    when the checkpoint fuses several projections in one tensor (Phi-3's qkv_proj)."""

    tensor: str
    rows: tuple[int, int] | None = None


class TensorRule(_Strict):
    """Where one of our parameters comes from when it is not a plain rename.

    `part: i` takes the i-th slice along `axis` of a fused tensor (qkv_proj, gate_up_proj); the
    slice sizes are those of the parameters that take parts of the same tensor, in part order.
    `transpose: true` swaps the two axes of a 2-D tensor (checkpoints that store Conv1D weights).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str = Field(alias="from")
    part: int | None = Field(default=None, ge=0)
    axis: int = 0
    transpose: bool = False


class ModelSpec(_Strict):
    name: str
    source: Source
    architecture: ArchitectureSection = ArchitectureSection()
    # Our parameter name -> checkpoint tensor name (or a TensorRule); `{layer}` stands for the block index.
    weights: dict[str, str | TensorRule]
    # Checkpoint tensors that are deliberately not loaded (regular expressions).
    ignore_tensors: list[str] = []
    # A `weights` source starting with a key is read under the value's prefix instead: a family's
    # names on a multimodal checkpoint's text model ({"model.": "model.language_model."}).
    tensor_prefixes: dict[str, str] = {}
    tokenizer: TokenizerSection = TokenizerSection()
    export: ExportSection = ExportSection()
    verify: VerifySection = VerifySection()
    # Folder of the spec file, for resolving relative paths; not part of the YAML.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _verify_fits(self) -> ModelSpec:
        if self.verify.num_tokens > self.export.kv_cache_length:
            raise ValueError(f"verify.num_tokens ({self.verify.num_tokens}) exceeds export.kv_cache_length ({self.export.kv_cache_length}); lower it")
        return self

    def local_source(self) -> Path | None:
        return None if self.source.path is None else (self.base_dir / self.source.path).resolve()


def describe_error(error: dict) -> str:
    field = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown key; check its spelling against the schema in edgellm/spec/schema.py"
    if error["type"] == "missing":
        return f"{field}: required field is missing; add it"
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: {message}" if field else message
