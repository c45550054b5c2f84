"""A decoder `.tflite` (prefill_{N} / decode signatures) on the LiteRT runtime.

The KV cache never leaves the runtime: each cache tensor is one LiteRT buffer bound as both
the input and the output of every signature. Tokens, positions, logits and the decode signature's
greedy pick are numpy memory the runtime uses in place, so a decode step stores two ints, calls
the model and reads one int (or, when sampling, the logits): nothing is copied through a binding.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.infra.quiet import native_output_to
from edgellm.runtime.litert import aligned_zeros, compile_for_cpu, int32_slots, runtime_array
from edgellm.tflite.file import check_generative, head_signature


@dataclass
class _SignatureIO:
    tokens: np.ndarray  # [1, width] int32: the runtime's own memory, or copied into tokens_buffer
    tokens_buffer: object | None  # None when `tokens` is a view of the runtime's buffer
    positions: np.ndarray  # [width] int32, read by the runtime in place
    logits: np.ndarray | None  # [width, vocab] float32, written by the runtime in place (None: no logits output)
    head: tuple[str, dict, dict] | None  # (signature, inputs, outputs) giving a prefill's logits from its hidden states
    mask: np.ndarray | None  # [width, T] float32 additive causal mask, for models that take it as an input
    mask_buffer: object | None  # None when `mask` is a view of the runtime's buffer
    next_token: np.ndarray | None  # [1] int32, the decode signature's arg-max, if it has one
    inputs: dict
    outputs: dict

    @functools.cached_property
    def one_token(self) -> tuple[memoryview, memoryview, np.ndarray]:
        """Token slot, position slot and logits row for a one-token step, made once."""
        return int32_slots(self.tokens), int32_slots(self.positions), self.logits[0]

    def write(self, tokens, start: int, count: int) -> None:
        """Tokens at positions start.., the first `count` of them real (and their causal mask, if the
        model takes one). Padding gets position 0, so a position that does not rise marks where the real
        tokens end (LiteRT-LM's convention; a recurrent state must stop there, layers/decoder.py)."""
        self.tokens[0] = tokens
        if self.tokens_buffer is not None:
            self.tokens_buffer.write(self.tokens)
        self.positions[:count] = range(start, start + count)
        self.positions[count:] = 0
        if self.mask is not None:
            self.fill_mask()

    def fill_mask(self) -> None:
        """The causal mask of the positions in place: each row sees the keys up to its position."""
        for row, position in zip(self.mask, self.positions):
            row[: position + 1], row[position + 1 :] = 0.0, _MASKED
        if self.mask_buffer is not None:
            self.mask_buffer.write(self.mask)


# What a model that takes its mask as an input gets for hidden positions: finite, so no row is NaN.
_MASKED = np.finfo(np.float32).min


def cache_length(shapes: dict[str, tuple[int, ...]]) -> int:
    """The positions the KV cache holds, from a signature's input shapes: K is [1, heads, T, dim]
    (edgellm's and litert-torch's layout; `kv_cache_k_{i}`, beside other layers' states)."""
    return int(next(shape for name, shape in shapes.items() if name.startswith("kv_cache_k_"))[2])


def recurrent_states(cache_names) -> list[str]:
    """The states that are not per position (conv and delta-rule states, `kv_cache_c_{i}`,
    `kv_cache_r_{i}`): they cannot be rewound to an earlier position, only recomputed."""
    return [name for name in cache_names if not name.startswith(("kv_cache_k_", "kv_cache_v_"))]


class LiteRTModel:
    """A `.tflite` that follows the prefill_{N} / decode signature convention."""

    def __init__(self, path: Path, num_threads: int | None = None, max_prefill: int | None = None):
        check_generative(path)  # a damaged file would crash the runtime, not fail
        self._model = compile_for_cpu(path, num_threads, packed_weights=True)
        signatures = self._model.get_signature_list()
        # check_generative made sure there are a decode and some prefill_N signatures
        prefill = {int(m.group(1)): name for name in signatures if (m := re.fullmatch(r"prefill_(\d+)", name))}
        self.prefill_signatures = {n: name for n, name in sorted(prefill.items()) if max_prefill is None or n <= max_prefill}
        if not self.prefill_signatures:
            raise EdgeLLMError(f"no prefill signature is at most {max_prefill} tokens (the model has {sorted(prefill)})")
        details = self._model.get_input_tensor_details("decode")
        self.cache_names = [name for name in signatures["decode"]["inputs"] if name.startswith("kv_cache_")]
        self.kv_cache_length = cache_length({name: details[name]["shape"] for name in self.cache_names})
        self.recurrent = bool(recurrent_states(self.cache_names))
        self.vocab_size = int(self._model.get_output_tensor_details("decode")["logits"]["shape"][-1])
        # Swappable LoRA weights (layers/lora.py): one buffer per input, shared by every signature.
        self.lora_shapes = {name: tuple(details[name]["shape"]) for name in signatures["decode"]["inputs"] if name.startswith("lora_")}
        with native_output_to():
            self._caches = {name: self._model.create_input_buffer_by_name("decode", name) for name in self.cache_names}
            self._lora = {name: self._model.create_input_buffer_by_name("decode", name) for name in self.lora_shapes}
            self._io = {sig: self._signature_io(sig, signatures) for sig in [*self.prefill_signatures.values(), "decode"]}
        # Logits for every prefill row: from the prefill itself, or its head_N (edgellm's); else
        # (litert-torch's prefill) from decode steps.
        self.prefill_gives_logits = all(self._io[name].logits is not None for name in self.prefill_signatures.values())
        self._cache_shapes = {name: tuple(details[name]["shape"]) for name in self.cache_names}
        next_token = self._io["decode"].next_token
        # The token the last decode picked greedily (edgellm's decode computes it; other tools'
        # models do not: None). A greedy loop reads this int instead of taking the arg-max itself.
        self.greedy_pick = None if next_token is None else int32_slots(next_token)
        self.reset()
        self.set_lora({})

    def _signature_io(self, signature: str, signatures: dict) -> _SignatureIO:
        """One signature's arrays and buffers, made once: a decode step only fills them.

        Positions and outputs are numpy arrays wrapped as host-memory buffers. Tokens ([1, N]) need
        a buffer the runtime makes, because a host-memory buffer is one-dimensional and the runtime
        will not reshape a static input; `host_view` then gives numpy access to its memory.
        """
        from ai_edge_litert.tensor_buffer import TensorBuffer

        input_details = self._model.get_input_tensor_details(signature)
        width = int(input_details["tokens"]["shape"][-1])
        positions = aligned_zeros(width, np.int32)
        buffer, tokens, is_view = runtime_array(self._model, signature, "tokens", (1, width), np.int32)
        inputs = {"tokens": buffer, "input_pos": TensorBuffer.create_from_host_memory(positions), **self._caches, **self._lora}
        tokens_buffer, mask, mask_buffer = None if is_view else buffer, None, None
        if "mask" in input_details:  # litert-torch's layout: the causal mask [1, 1, N, T] is the caller's
            buffer, mask, is_view = runtime_array(self._model, signature, "mask", tuple(input_details["mask"]["shape"]), np.float32)
            inputs["mask"], mask_buffer = buffer, None if is_view else buffer
            mask = mask.reshape(width, -1)
        # The runtime wants a buffer for every output: outputs we do not read (edgellm's decode
        # `next_token` when sampling, other tools' extras) get their own host arrays too.
        arrays = {
            name: aligned_zeros(int(np.prod(detail["shape"])), np.dtype(detail["dtype"]))
            for name, detail in self._model.get_output_tensor_details(signature).items()
            if name not in self._caches
        }
        outputs = {**{name: TensorBuffer.create_from_host_memory(array) for name, array in arrays.items()}, **self._caches}
        next_token = arrays.get("next_token")
        if next_token is not None and (next_token.dtype != np.int32 or next_token.size != 1):
            next_token = None  # not edgellm's greedy pick
        logits = arrays["logits"].reshape(width, self.vocab_size) if "logits" in arrays else None
        head, name = None, head_signature(signature)
        if logits is None and "hidden" in arrays and name in signatures:
            # The prefill writes its hidden states into the head's input buffer (one of the runtime's
            # making, as for tokens), so they pass from one to the other without a copy.
            outputs["hidden"] = self._model.create_input_buffer_by_name(name, "hidden")
            logits = aligned_zeros(width * self.vocab_size, np.float32).reshape(width, self.vocab_size)
            head = (name, {"hidden": outputs["hidden"]}, {"logits": TensorBuffer.create_from_host_memory(logits)})
        return _SignatureIO(tokens, tokens_buffer, positions, logits, head, mask, mask_buffer, next_token, inputs, outputs)

    def reset(self) -> None:
        """Empty the KV cache (a new conversation)."""
        for name, buffer in self._caches.items():
            buffer.write(np.zeros(self._cache_shapes[name], np.float32))

    def set_lora(self, weights: dict[str, np.ndarray]) -> None:
        """Bind an adapter's LoRA weights, each of its input's full shape (`edgellm adapter` pads them to
        the model's rank); an input it has none for is zero, so {} runs the base model."""
        for name, shape in self.lora_shapes.items():
            self._lora[name].write(np.ascontiguousarray(weights.get(name, np.zeros(shape, np.float32)), np.float32))

    def load_adapter(self, path: Path) -> dict[str, np.ndarray]:
        """Bind a LoRA file's weights (tflite/lora_file.py) to the model's LoRA inputs, each of its input's
        shape; returns them."""
        from edgellm.tflite.lora_file import read_lora_file

        if not self.lora_shapes:
            raise EdgeLLMError("the model takes no LoRA weights; build it with --lora-rank 16 to run adapters, or merge one with build --adapter")
        _, weights = read_lora_file(path)
        for name, tensor in weights.items():
            shape = self.lora_shapes.get(name)
            if shape != tensor.shape:
                found = "is not one of its LoRA inputs" if shape is None else f"is {list(shape)} in the model but {list(tensor.shape)} in the file"
                raise EdgeLLMError(f"adapter {path}: {name} {found}; write the adapter for this model with `edgellm adapter PEFT_DIR --base MODEL`")
        self.set_lora(weights)
        return weights

    def run(self, signature: str, tokens: list[int], start: int, logits: bool = True, count: int | None = None) -> np.ndarray | None:
        """Invoke one signature on `tokens` (its width of them, the first `count` real; default all) at
        positions start..; logits [width, vocab] (None for a prefill that gives none, or when not asked for)."""
        io = self._io[signature]
        io.write(tokens, start, len(tokens) if count is None else count)
        self.invoke(signature)
        if not logits:
            return None
        if io.head is not None:
            self._model.run_by_name(*io.head)
        return None if io.logits is None else io.logits.copy()

    def invoke(self, signature: str) -> None:
        """The bare model call, on whatever the input buffers hold (also what `bench` times raw)."""
        io = self._io[signature]
        self._model.run_by_name(signature, io.inputs, io.outputs)

    def prefill_plan(self, count: int, start: int) -> tuple[str, int]:
        """The signature to use and how many real tokens it takes: the smallest N that holds all
        `count` tokens, else the largest that fits in the cache (a chunk), else decode one."""
        room = self.kv_cache_length - start
        fitting = {n: name for n, name in self.prefill_signatures.items() if n <= room}
        holding = [n for n in fitting if n >= count]
        if holding:
            return fitting[min(holding)], count
        if fitting:
            n = max(fitting)
            return fitting[n], min(n, count)
        return "decode", 1

    def prefill(self, tokens: list[int], start: int, last_only: bool = False) -> np.ndarray:
        """Feed `tokens` at positions start.. (in chunks if needed); logits [len(tokens), vocab], or
        the last row alone with `last_only`."""
        if last_only or not self.prefill_gives_logits:
            # The last token through decode, as LiteRT-LM does: one row of the output head instead of
            # a whole prefill's. Rows of a prefill that gives none (litert-torch's) come from decode too.
            ahead = len(tokens) - 1 if last_only else 0
            self._chunks(tokens[:ahead], start, logits=False)
            return np.stack([self.decode(token, start + ahead + i).copy() for i, token in enumerate(tokens[ahead:])])
        return np.concatenate(self._chunks(tokens, start))

    def _chunks(self, tokens: list[int], start: int, logits: bool = True) -> list[np.ndarray]:
        """Run `tokens` through the prefill signatures that fit; each chunk's logits (or None)."""
        rows = []
        while tokens:
            signature, take = self.prefill_plan(len(tokens), start)
            width = 1 if signature == "decode" else int(signature.removeprefix("prefill_"))
            # Padding writes throwaway cache rows past the real tokens; the causal mask hides them
            # and later positions overwrite them.
            chunk = self.run(signature, tokens[:take] + [0] * (width - take), start, logits, count=take)
            rows.append(None if chunk is None else chunk[:take])
            tokens, start = tokens[take:], start + take
        return rows

    def decode(self, token: int, position: int) -> np.ndarray:
        """One generation step: logits [vocab] for `token` at `position`, in memory the next decode
        overwrites (copy them to keep them). `run` for one token, without its lists, ranges and
        copy: this is the loop `bench` holds against the bare model call."""
        io = self._io["decode"]
        token_slot, position_slot, logits = io.one_token
        token_slot[0], position_slot[0] = token, position
        if io.tokens_buffer is not None:
            io.tokens_buffer.write(io.tokens)
        if io.mask is not None:
            io.fill_mask()
        self.invoke("decode")  # the same call bench's raw loop makes
        return logits
