"""LiteRT-LM's `.litertlm`, written with litert-lm-builder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgellm.bundle.inputs import BundleInputs, BundleReport, writer_report
from edgellm.bundle.preflight import model_type
from edgellm.errors import EdgeLLMError
from edgellm.text.tokenizer import load_tokenizer
from edgellm.tflite.file import check_generative

# LiteRT-LM's StateBuffer type and sequence axis by state name prefix; any other state
# (kv_cache_c_{i}, kv_cache_r_{i}) is linear attention's, with no sequence axis.
STATE_BUFFERS = {"kv_cache_k_": ("TYPE_GLOBAL_KEY_CACHE", 2), "kv_cache_v_": ("TYPE_GLOBAL_VALUE_CACHE", 3)}


def write_litertlm(inputs: BundleInputs, out: Path) -> BundleReport:
    """A `.litertlm` LiteRT-LM runs: model, tokenizer, LLM metadata and the KV-cache layout."""
    from litert_lm_builder import litertlm_builder as lb
    from litert_lm_builder import litertlm_core
    from litert_lm_builder.runtime.proto import executor_metadata_pb2, llm_metadata_pb2, sampler_params_pb2

    report = writer_report("litertlm", inputs, load_tokenizer(inputs.tokenizer))
    meta = inputs.metadata
    llm = llm_metadata_pb2.LlmMetadata()
    if inputs.start_id is not None:
        llm.start_token.token_ids.ids.append(inputs.start_id)
    for stop in report.stop_ids:
        llm.stop_tokens.add().token_ids.ids.append(stop)
    llm.prompt_templates.user.prefix, llm.prompt_templates.user.suffix = report.prompt_prefix, report.prompt_suffix
    if inputs.chat is not None:  # what LiteRT-LM's conversation mode renders (list-of-parts content)
        llm.jinja_prompt_template = inputs.chat.template
    # Greedy. LiteRT-LM 0.18 runs only TOP_P samplers on CPU; k=1 makes it greedy.
    llm.sampler_params.type = sampler_params_pb2.SamplerParameters.TOP_P
    llm.sampler_params.k, llm.sampler_params.p, llm.sampler_params.temperature = 1, 1.0, 1.0
    caches = [name for name in check_generative(inputs.model)["decode"].inputs if name.startswith("kv_cache_")]
    if meta.kv_cache_length is None:
        raise EdgeLLMError(f"{inputs.model}: its edgellm.json gives no kv_cache_length; bundle a model that `edgellm build` wrote")
    llm.max_num_tokens = meta.kv_cache_length
    getattr(llm.llm_model_type, model_type(meta.name)).SetInParent()

    # K is [1, heads, T, dim] and V [1, heads, dim, T]: the runtime needs each one's sequence axis. A
    # conv layer's state has none: LiteRT-LM calls such a buffer linear attention.
    executor = executor_metadata_pb2.ExecutorMetadata()
    layout = executor.llm_executor_metadata
    for name in caches:
        buffer = layout.state_buffers.add()
        buffer.prefill_input_name = buffer.prefill_output_name = buffer.decode_input_name = buffer.decode_output_name = name
        kind, axis = STATE_BUFFERS.get(name[: len("kv_cache_k_")], ("TYPE_LINEAR_ATTENTION", None))
        buffer.type = executor_metadata_pb2.StateBuffer.Type.Value(kind)
        if axis is not None:
            buffer.sequence_axis = axis
    layout.attention_mask_settings.attention_mask_type = executor_metadata_pb2.ATTENTION_MASK_TYPE_CAUSAL

    with tempfile.TemporaryDirectory() as tmp:
        llm_path, executor_path = Path(tmp) / "llm_metadata.pb", Path(tmp) / "executor_metadata.pb"
        llm_path.write_bytes(llm.SerializeToString())
        executor_path.write_bytes(executor.SerializeToString())
        builder = lb.LitertLmFileBuilder()
        builder.add_system_metadata(lb.Metadata(key="Authors", value="edgellm", dtype=lb.DType.STRING))
        builder.add_llm_metadata(str(llm_path), supports_thinking=False, supports_function_calling=False)
        builder.add_executor_metadata(str(executor_path))
        if inputs.tokenizer.suffix == ".json":
            builder.add_hf_tokenizer(str(inputs.tokenizer))
        else:
            builder.add_sentencepiece_tokenizer(str(inputs.tokenizer))
        builder.add_tflite_model(str(inputs.model), lb.TfLiteModelType.PREFILL_DECODE)
        with litertlm_core.open_file(str(out), "wb") as f:
            builder.build(f, validate_metadata=True)
    return report
