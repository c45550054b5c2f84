"""A decoder verified on its logits: the re-authored model and the `.tflite` against `transformers`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.verify.report import LogitComparison


def verification_tokens(vocab_size: int, count: int, bos_id: int | None) -> list[int]:
    """A fixed pseudo-random token sequence (same every run), starting with BOS when the model has one."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab_size, size=count).tolist()
    if bos_id is not None:
        tokens[0] = bos_id
    return tokens


def load_reference(checkpoint_dir: Path, mapping: str):
    """transformers' own model of `checkpoint_dir` in float32 with eager attention, the class chosen
    by `mapping` (MODEL_FOR_CAUSAL_LM_MAPPING, ...) as its Auto class would.

    Safetensors weights reach it through plain reads (the loader's reasons): transformers maps
    the files, and the mapped pages of a bfloat16 checkpoint would stay in memory beside the
    float32 model until loading ends."""
    from contextlib import ExitStack

    import torch
    import transformers
    from safetensors import safe_open

    try:
        config = transformers.AutoConfig.from_pretrained(checkpoint_dir)
        model_class = getattr(transformers, mapping)[type(config)]
        if not isinstance(config, model_class.config_class):  # a multimodal checkpoint: its text model's class
            config = config.get_text_config()
        options = {"config": config, "dtype": torch.float32, "attn_implementation": "eager"}
        files = sorted(checkpoint_dir.glob("*.safetensors"))
        if not files:
            return model_class.from_pretrained(checkpoint_dir, **options).eval()
        with ExitStack() as files_open:
            handles = [files_open.enter_context(safe_open(str(f), framework="pt", backend="pread")) for f in files]
            weights = {name: handle.get_slice(name) for handle in handles for name in handle.keys()}  # noqa: SIM118 - a handle is not iterable
            return model_class.from_pretrained(None, state_dict=weights, **options).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise EdgeLLMError(f"transformers cannot load {checkpoint_dir} as the reference ({str(exc).splitlines()[0]})") from None


def with_adapters(model, adapters: list[Path]):
    """`model` with PEFT LoRA `adapters` applied by peft itself, in order: each but the last merged
    (peft's merge_and_unload), the last one live (peft's own forward)."""
    if not adapters:
        return model
    try:
        from peft import PeftModel
    except ImportError:
        raise EdgeLLMError("verifying an adapter needs peft, the reference that applies it: pip install 'edgellm[adapters]'") from None
    for i, adapter in enumerate(adapters):
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
        if i < len(adapters) - 1:
            model = model.merge_and_unload()
    return model


def reference_logits(checkpoint_dir: Path, tokens: list[int], adapters: list[Path] = ()) -> np.ndarray:
    """Logits [len(tokens), vocab] of the original `transformers` model (with `adapters` applied by peft), in float32."""
    import torch

    model = with_adapters(load_reference(checkpoint_dir, "MODEL_FOR_CAUSAL_LM_MAPPING"), list(adapters))
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def reauthored_logits(decoder, tokens: list[int]) -> np.ndarray:
    """Our Decoder's logits for `tokens` in one prefill pass."""
    import torch

    with torch.no_grad():
        out = decoder(
            torch.tensor([tokens], dtype=torch.int32),
            torch.arange(len(tokens), dtype=torch.int32),
            decoder.empty_cache(len(tokens)),
        )
    return out["logits"][0].numpy()


def tflite_logits(model_path: Path, tokens: list[int]) -> np.ndarray:
    """The `.tflite`'s logits: the first half through a prefill signature, the rest through decode."""
    from edgellm.runtime.decoder import LiteRTModel

    model = LiteRTModel(model_path)
    if len(tokens) > model.kv_cache_length:
        raise EdgeLLMError(f"verify.num_tokens ({len(tokens)}) exceeds the KV cache ({model.kv_cache_length}); lower it in the spec")
    split = max(1, len(tokens) // 2)
    rows = [model.prefill(tokens[:split], 0)]
    rows += [model.decode(t, split + i)[None].copy() for i, t in enumerate(tokens[split:])]
    return np.concatenate(rows)


def compare(candidate: np.ndarray, reference: np.ndarray) -> LogitComparison:
    """max |Δlogit| and the share of positions whose arg-max token agrees."""
    return LogitComparison(
        max_abs_logit_diff=float(np.abs(candidate - reference).max()),
        top1_agreement=float((candidate.argmax(-1) == reference.argmax(-1)).mean()),
        positions=int(reference.shape[0]),
    )
