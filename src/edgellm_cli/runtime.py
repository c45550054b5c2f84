"""Text generation from a `.tflite` on the LiteRT runtime: prefill, decode loop, sampler, and the
`Generator` and `Chat` that `run` and `chat` drive.

The KV cache never leaves the runtime: each cache tensor is one LiteRT buffer bound as both
the input and the output of every signature. Tokens, positions, logits and the decode signature's
greedy pick are numpy memory the runtime uses in place, so a decode step stores two ints, calls
the model and reads one int (or, when sampling, the logits): nothing is copied through a binding.
"""

from __future__ import annotations

import ctypes
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgellm_cli.chat_template import encode_with_specials, render_chat
from edgellm_cli.errors import EdgeLLMError
from edgellm_cli.metadata import model_metadata
from edgellm_cli.quiet import native_output_to
from edgellm_cli.tflite_file import check_generative, head_signature
from edgellm_cli.tokenizer import load_tokenizer, stream_text
from edgellm_cli.weight_cache import weight_cache


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
        return _int32_slots(self.tokens), _int32_slots(self.positions), self.logits[0]

    def write(self, tokens, start: int) -> None:
        """Tokens at positions start.. (and their causal mask, if the model takes one)."""
        self.tokens[0] = tokens
        if self.tokens_buffer is not None:
            self.tokens_buffer.write(self.tokens)
        self.positions[:] = range(start, start + len(self.positions))
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


def _int32_slots(array: np.ndarray) -> memoryview:
    """Flat int access to an int32 array. A memoryview store or load runs far less code than numpy
    indexing, and that matters in the decode loop: code run between two model calls slows the next
    call by several times its own duration (it evicts the model's code and data)."""
    return memoryview(array).cast("B").cast("i")


def _aligned_zeros(size: int, dtype) -> np.ndarray:
    """A 1-D array on a 64-byte boundary: LiteRT wraps such memory as is (anything else it copies)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(size + 64 // itemsize, dtype)
    offset = (-raw.ctypes.data % 64) // itemsize
    return raw[offset : offset + size]


@functools.cache
def _litert_c_api() -> ctypes.CDLL | None:
    import ai_edge_litert

    try:
        return ctypes.CDLL(str(Path(ai_edge_litert.__file__).parent / "libLiteRt.so"))
    except OSError:
        return None


def _host_view(buffer, like: np.ndarray) -> np.ndarray | None:
    """A numpy array over a runtime buffer's own memory, shaped and typed like `like`, so that
    filling the buffer is a store instead of a copy through the binding (a third of a small
    model's decode overhead). The Python API has no such view; the C API in the wheel's
    libLiteRt.so gives the address. The buffer is left zeroed. None, and the caller copies, when
    that is unavailable or the view does not see what the buffer holds."""
    library = _litert_c_api()
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    address = ctypes.c_void_p()
    try:
        handle = ctypes.c_void_p(get_pointer(buffer.capsule, b"LiteRtTensorBuffer"))
        status = library.LiteRtGetTensorBufferHostMemory(handle, ctypes.byref(address))
    except (AttributeError, ValueError):  # no library or no such function; another capsule type
        return None
    if status != 0 or not address.value:
        return None
    view = np.ctypeslib.as_array((ctypes.c_byte * like.nbytes).from_address(address.value)).view(like.dtype).reshape(like.shape)
    probe = np.arange(1, like.size + 1, dtype=like.dtype).reshape(like.shape)
    buffer.write(probe)
    seen = view.copy()
    view[...] = 0
    if not np.array_equal(seen, probe) or buffer.read(like.size, like.dtype).any():
        return None
    return view


def _runtime_array(model, signature: str, name: str, shape: tuple, dtype) -> tuple[object, np.ndarray, bool]:
    """A zeroed input buffer of the runtime's own making (a static N-d input cannot take 1-D host
    memory), an array for it, and whether the array is a view of the buffer's memory (else the
    array is copied into the buffer after each change)."""
    buffer = model.create_input_buffer_by_name(signature, name)
    array = np.zeros(shape, dtype)
    view = _host_view(buffer, array)  # leaves the buffer zeroed when it succeeds
    if view is None:
        buffer.write(array)  # a new buffer holds whatever was in that memory
        return buffer, array, False
    return buffer, view, True


def cache_length(k_shape) -> int:
    """The positions a KV cache holds: K is [1, heads, T, dim] (edgellm's and litert-torch's layout)."""
    return int(k_shape[2])


class LiteRTModel:
    """A `.tflite` that follows the prefill_{N} / decode signature convention."""

    def __init__(self, path: Path, num_threads: int | None = None, max_prefill: int | None = None):
        check_generative(path)  # a damaged file would crash the runtime, not fail
        cache = weight_cache(path)  # the weights packed once for every signature
        try:
            try:
                signatures = self._compile(path, num_threads, cache.path if cache else "")
            except (ValueError, RuntimeError):  # only with a cache: without one, _compile says what is wrong
                cache.discard()
                cache = None  # load again without it: a model that cannot load fails there too
                signatures = self._compile(path, num_threads, "")
            if cache is not None:
                cache.commit()
        finally:
            if cache is not None:
                cache.discard()  # what it did not finish (nothing once committed)
        # check_generative made sure there are a decode and some prefill_N signatures
        prefill = {int(m.group(1)): name for name in signatures if (m := re.fullmatch(r"prefill_(\d+)", name))}
        self.prefill_signatures = {n: name for n, name in sorted(prefill.items()) if max_prefill is None or n <= max_prefill}
        if not self.prefill_signatures:
            raise EdgeLLMError(f"no prefill signature is at most {max_prefill} tokens (the model has {sorted(prefill)})")
        details = self._model.get_input_tensor_details("decode")
        self.cache_names = [name for name in signatures["decode"]["inputs"] if name.startswith("kv_cache_")]
        self.kv_cache_length = cache_length(details[self.cache_names[0]]["shape"])
        self.vocab_size = int(self._model.get_output_tensor_details("decode")["logits"]["shape"][-1])
        with native_output_to():
            self._caches = {name: self._model.create_input_buffer_by_name("decode", name) for name in self.cache_names}
            self._io = {sig: self._signature_io(sig, signatures) for sig in [*self.prefill_signatures.values(), "decode"]}
        # Logits for every prefill row: from the prefill itself, or its head_N (edgellm's); else
        # (litert-torch's prefill) from decode steps.
        self.prefill_gives_logits = all(self._io[name].logits is not None for name in self.prefill_signatures.values())
        self._cache_shapes = {name: tuple(details[name]["shape"]) for name in self.cache_names}
        next_token = self._io["decode"].next_token
        # The token the last decode picked greedily (edgellm's decode computes it; other tools'
        # models do not: None). A greedy loop reads this int instead of taking the arg-max itself.
        self.greedy_pick = None if next_token is None else _int32_slots(next_token)
        self.reset()

    def _compile(self, path: Path, num_threads: int | None, weight_cache_path: str) -> dict:
        """Compile the model for the CPU (weights packed into `weight_cache_path`, if any); its signatures."""
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import Options

        cpu = CpuOptions(num_threads=num_threads or 0, xnnpack_weight_cache_path=weight_cache_path)
        try:
            with native_output_to():  # the runtime logs every accelerator and plugin it probes
                self._model = CompiledModel.from_file(str(path), options=Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu))
                self._model.get_output_tensor_details("decode")  # a failed allocation surfaces here, not in from_file
                return self._model.get_signature_list()
        except (ValueError, RuntimeError) as exc:
            if not weight_cache_path:
                raise EdgeLLMError(f"{path}: not a loadable .tflite model ({str(exc).splitlines()[0]})") from None
            raise

    def _signature_io(self, signature: str, signatures: dict) -> _SignatureIO:
        """One signature's arrays and buffers, made once: a decode step only fills them.

        Positions and outputs are numpy arrays wrapped as host-memory buffers. Tokens ([1, N]) need
        a buffer the runtime makes, because a host-memory buffer is one-dimensional and the runtime
        will not reshape a static input; `_host_view` then gives numpy access to its memory.
        """
        from ai_edge_litert.tensor_buffer import TensorBuffer

        input_details = self._model.get_input_tensor_details(signature)
        width = int(input_details["tokens"]["shape"][-1])
        positions = _aligned_zeros(width, np.int32)
        buffer, tokens, is_view = _runtime_array(self._model, signature, "tokens", (1, width), np.int32)
        inputs = {"tokens": buffer, "input_pos": TensorBuffer.create_from_host_memory(positions), **self._caches}
        tokens_buffer, mask, mask_buffer = None if is_view else buffer, None, None
        if "mask" in input_details:  # litert-torch's layout: the causal mask [1, 1, N, T] is the caller's
            buffer, mask, is_view = _runtime_array(self._model, signature, "mask", tuple(input_details["mask"]["shape"]), np.float32)
            inputs["mask"], mask_buffer = buffer, None if is_view else buffer
            mask = mask.reshape(width, -1)
        # The runtime wants a buffer for every output: outputs we do not read (edgellm's decode
        # `next_token` when sampling, other tools' extras) get their own host arrays too.
        arrays = {
            name: _aligned_zeros(int(np.prod(detail["shape"])), np.dtype(detail["dtype"]))
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
            logits = _aligned_zeros(width * self.vocab_size, np.float32).reshape(width, self.vocab_size)
            head = (name, {"hidden": outputs["hidden"]}, {"logits": TensorBuffer.create_from_host_memory(logits)})
        return _SignatureIO(tokens, tokens_buffer, positions, logits, head, mask, mask_buffer, next_token, inputs, outputs)

    def reset(self) -> None:
        """Empty the KV cache (a new conversation)."""
        for name, buffer in self._caches.items():
            buffer.write(np.zeros(self._cache_shapes[name], np.float32))

    def run(self, signature: str, tokens: list[int], start: int, logits: bool = True) -> np.ndarray | None:
        """Invoke one signature on `tokens` (its width of them) at positions start..; logits [width, vocab]
        (None for a prefill that gives none, or when not asked for)."""
        io = self._io[signature]
        io.write(tokens, start)
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
            chunk = self.run(signature, tokens[:take] + [0] * (width - take), start, logits)
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


@dataclass(frozen=True)
class Sampler:
    """Repetition penalty, then greedy (temperature 0) or temperature -> top-k -> top-p -> min-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)
    plain_greedy: bool = field(init=False, repr=False, compare=False)  # the arg-max, nothing else

    def __post_init__(self):
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))
        object.__setattr__(self, "plain_greedy", self.temperature <= 0 and self.repetition_penalty == 1.0)

    def __call__(self, logits: np.ndarray, history: list[int] = ()) -> int:
        if self.plain_greedy:
            return int(logits.argmax())
        if self.repetition_penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history))
            logits = logits.copy()
            # The CTRL / transformers rule: shrink positive logits, push negative ones further down.
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / self.repetition_penalty, logits[seen] * self.repetition_penalty)
        if self.temperature <= 0:
            return int(logits.argmax())
        scaled = logits.astype(np.float64) / self.temperature
        order = np.argsort(-scaled, kind="stable")
        if self.top_k > 0:
            order = order[: self.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        keep = len(order)
        if self.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1)
        if self.min_p > 0.0:
            keep = min(keep, max(1, int((probs >= self.min_p * probs[0]).sum())))
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(self._rng.choice(order, p=probs))


class Session:
    """A conversation with the model: the KV cache holds `history`, and new input extends it.

    Feeding a sequence that shares a prefix with the history reuses those cache rows and
    computes only the rest, so a chat turn costs its own tokens, not the whole transcript.
    """

    def __init__(self, model: LiteRTModel):
        self.model = model
        self.history: list[int] = []
        self.computed = 0  # tokens the last `feed` had to compute (the rest came from the cache)
        self._logits: np.ndarray | None = None
        model.reset()

    def feed(self, tokens: list[int]) -> None:
        """Make the history equal `tokens`, computing only what differs from the cached prefix."""
        if len(tokens) > self.model.kv_cache_length:
            raise EdgeLLMError(
                f"the conversation ({len(tokens)} tokens) exceeds the KV cache ({self.model.kv_cache_length} positions); "
                "start a new one or rebuild with a larger export.kv_cache_length"
            )
        common = 0
        for ours, theirs in zip(self.history, tokens):
            if ours != theirs:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # recompute at least the last token: its logits are needed
        # Rows past `common` are stale; the causal mask hides them until new positions overwrite them.
        self._logits = self.model.prefill(tokens[common:], common, last_only=True)[-1]
        self.history, self.computed = list(tokens), len(tokens) - common

    def generate(self, max_new_tokens: int, sampler: Sampler, stop_ids: list[int]) -> Iterator[int]:
        """Yield new tokens after the history until a stop id (not yielded) or `max_new_tokens`.

        The history keeps what is in the cache: every yielded token but the last, which only a
        further step would need (the next `feed` computes it if the transcript keeps it).
        """
        if self._logits is None:
            raise EdgeLLMError("nothing to continue from: the prompt is empty and the model adds no BOS; give --prompt text")
        if len(self.history) + max_new_tokens - 1 > self.model.kv_cache_length:
            raise EdgeLLMError(
                f"prompt ({len(self.history)} tokens) + --max-tokens ({max_new_tokens}) exceeds the KV cache "
                f"({self.model.kv_cache_length} positions); lower --max-tokens or rebuild with a larger export.kv_cache_length"
            )
        picked = self.model.greedy_pick if sampler.plain_greedy else None
        token = sampler(self._logits, self.history)
        for produced in range(1, max_new_tokens + 1):
            if token in stop_ids:
                return
            yield token
            if produced == max_new_tokens:
                return
            self._logits = self.model.decode(token, len(self.history))
            self.history.append(token)
            token = picked[0] if picked is not None else sampler(self._logits, self.history)


def generate(model: LiteRTModel, prompt_ids: list[int], max_new_tokens: int, sampler: Sampler, stop_ids: list[int]) -> Iterator[int]:
    """One-shot generation from a fresh cache."""
    session = Session(model)
    if prompt_ids:
        session.feed(prompt_ids)
    yield from session.generate(max_new_tokens, sampler, stop_ids)


def valid_text(value: str, what: str) -> str:
    """`value` when it is text that encodes (command-line bytes that are not UTF-8 arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EdgeLLMError(f"{what} is not valid UTF-8 text; pass it in UTF-8") from None
    return value


class Generator:
    """A model ready to generate text: the runtime, its tokenizer and prompt settings, a sampler
    and the stop conditions (the model's own unless given)."""

    def __init__(
        self,
        model: Path,
        tokenizer: Path | None = None,
        sampler: Sampler = Sampler(),
        stop_ids: list[int] = (),
        stop_strings: list[str] = (),
        threads: int | None = None,
        max_prefill: int | None = None,
    ):
        self.metadata, tokenizer = model_metadata(model, tokenizer)
        self.tokenizer = load_tokenizer(tokenizer)
        self.litert = LiteRTModel(model, num_threads=threads, max_prefill=max_prefill)
        if self.tokenizer.vocab_size > self.litert.vocab_size:
            raise EdgeLLMError(f"{tokenizer} has {self.tokenizer.vocab_size} tokens but {model.name} only {self.litert.vocab_size}; "
                               "pass the tokenizer of this model with --tokenizer")
        self.sampler = sampler
        self.stop_ids = list(stop_ids) or self.metadata.stop_ids
        self.stop_strings = list(stop_strings) or self.metadata.stop_strings

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's ids, after the start token when the model uses one."""
        valid_text(prompt, "the prompt")
        start = self.metadata.start_id
        return ([start] if start is not None else []) + self.tokenizer.encode(prompt)

    def stream(self, session: Session, max_tokens: int, tokens: list[int] | None = None) -> Iterator[str]:
        """Text generated after the session's history, as it becomes final; each id also goes to `tokens`."""
        ids = session.generate(max_tokens, self.sampler, self.stop_ids)
        yield from stream_text(self.tokenizer, ids, self.stop_strings, session.history, tokens)


class Chat:
    """A conversation: each turn renders the whole transcript with the chat template and computes
    only the tokens the KV cache does not already hold."""

    def __init__(self, generator: Generator, max_tokens: int, system: str | None = None, template: str | None = None):
        self.generator, self.max_tokens = generator, max_tokens
        self.template = template or generator.metadata.chat_template
        if not self.template:
            raise EdgeLLMError("the model has no chat template; pass --chat-template FILE (or use `edgellm run`)")
        self.opening = [{"role": "system", "content": system}] if system else []
        self.reset()

    def reset(self) -> None:
        self.messages, self.session, self.reused = list(self.opening), Session(self.generator.litert), 0

    def turn(self, text: str) -> Iterator[str]:
        """The model's reply to `text`, as it streams."""
        metadata, tokenizer = self.generator.metadata, self.generator.tokenizer
        self.messages.append({"role": "user", "content": valid_text(text, "the message")})
        prompt = render_chat(self.template, self.messages, metadata.template_strings)
        self.session.feed(encode_with_specials(tokenizer, prompt, metadata.specials))
        self.reused = len(self.session.history) - self.session.computed  # prompt tokens served from the KV cache
        reply = []
        for piece in self.generator.stream(self.session, self.max_tokens):
            reply.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(reply)})
