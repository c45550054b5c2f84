"""LiteRT's CompiledModel, as every edgellm runtime uses it: compiled for the CPU, buffers the
runtime reads in place (numpy views of its own memory where its C API gives the address)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.infra.quiet import native_output_to
from edgellm.tflite.weight_cache import weight_cache


def int32_slots(array: np.ndarray) -> memoryview:
    """Flat int access to an int32 array. A memoryview store or load runs far less code than numpy
    indexing, and that matters in the decode loop: code run between two model calls slows the next
    call by several times its own duration (it evicts the model's code and data)."""
    return memoryview(array).cast("B").cast("i")


def aligned_zeros(size: int, dtype) -> np.ndarray:
    """A 1-D array on a 64-byte boundary: LiteRT wraps such memory as is (anything else it copies)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(size + 64 // itemsize, dtype)
    offset = (-raw.ctypes.data % 64) // itemsize
    return raw[offset : offset + size]


@functools.cache
def litert_c_api() -> ctypes.CDLL | None:
    import ai_edge_litert

    try:
        return ctypes.CDLL(str(Path(ai_edge_litert.__file__).parent / "libLiteRt.so"))
    except OSError:
        return None


def host_view(buffer, like: np.ndarray) -> np.ndarray | None:
    """A numpy array over a runtime buffer's own memory, shaped and typed like `like`, so that
    filling the buffer is a store instead of a copy through the binding (a third of a small
    model's decode overhead). The Python API has no such view; the C API in the wheel's
    libLiteRt.so gives the address. The buffer is left zeroed. None, and the caller copies, when
    that is unavailable or the view does not see what the buffer holds."""
    library = litert_c_api()
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


def runtime_array(model, signature: str, name: str, shape: tuple, dtype) -> tuple[object, np.ndarray, bool]:
    """A zeroed input buffer of the runtime's own making (a static N-d input cannot take 1-D host
    memory), an array for it, and whether the array is a view of the buffer's memory (else the
    array is copied into the buffer after each change)."""
    buffer = model.create_input_buffer_by_name(signature, name)
    array = np.zeros(shape, dtype)
    view = host_view(buffer, array)  # leaves the buffer zeroed when it succeeds
    if view is None:
        buffer.write(array)  # a new buffer holds whatever was in that memory
        return buffer, array, False
    return buffer, view, True


def _compile(path: Path | bytes, threads: int | None, weight_cache_path: str):
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    cpu = CpuOptions(num_threads=threads or 0, xnnpack_weight_cache_path=weight_cache_path)
    try:
        with native_output_to():  # the runtime logs every accelerator and plugin it probes
            options = Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu)
            model = CompiledModel.from_buffer(path, options=options) if isinstance(path, bytes) else CompiledModel.from_file(str(path), options=options)
            for signature in model.get_signature_list():
                model.get_output_tensor_details(signature)  # a failed allocation surfaces here, not in from_file
            return model
    except (ValueError, RuntimeError) as exc:
        if not weight_cache_path:
            raise EdgeLLMError(f"{'the model' if isinstance(path, bytes) else path}: not a loadable .tflite model ({str(exc).splitlines()[0]})") from None
        raise


def compile_for_cpu(path: Path | bytes, threads: int | None = None, packed_weights: bool = False):
    """`path` (or a model's bytes) compiled for the CPU (XNNPack); with `packed_weights`, XNNPack's packing of the weights
    is kept in edgellm's cache and shared by every signature and later loads (tflite/weight_cache.py)."""
    cache = weight_cache(path) if packed_weights else None
    try:
        try:
            model = _compile(path, threads, cache.path if cache else "")
        except (ValueError, RuntimeError):  # only with a cache: without one, _compile says what is wrong
            cache.discard()
            cache = None  # load again without it: a model that cannot load fails there too
            model = _compile(path, threads, "")
        if cache is not None:
            cache.commit()
        return model
    finally:
        if cache is not None:
            cache.discard()  # what it did not finish (nothing once committed)


class Signatures:
    """A compiled model's signatures called with numpy arrays, their buffers made once per signature
    (what LiteRT's Interpreter calls signature runners, on the CompiledModel API)."""

    def __init__(self, model: Path | bytes, threads: int | None = None):
        self._data = model  # a model given as bytes must outlive its compiled form
        self._model = compile_for_cpu(model, threads)
        self._buffers: dict[str, tuple[dict, dict, dict]] = {}

    def names(self) -> list[str]:
        return list(self._model.get_signature_list())

    def input_shapes(self, signature: str) -> dict[str, tuple[int, ...]]:
        return {name: tuple(int(d) for d in detail["shape"]) for name, detail in self._model.get_input_tensor_details(signature).items()}

    def __call__(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if signature not in self._buffers:
            details = self._model.get_output_tensor_details(signature)
            with native_output_to():
                self._buffers[signature] = (
                    {name: self._model.create_input_buffer_by_name(signature, name) for name in self._model.get_input_tensor_details(signature)},
                    {name: self._model.create_output_buffer_by_name(signature, name) for name in details},
                    {name: (tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"])) for name, detail in details.items()},
                )
        ins, outs, shapes = self._buffers[signature]
        for name, array in inputs.items():
            ins[name].write(np.ascontiguousarray(array))
        self._model.run_by_name(signature, ins, outs)
        return {name: outs[name].read(int(np.prod(shape)), dtype).reshape(shape) for name, (shape, dtype) in shapes.items()}
