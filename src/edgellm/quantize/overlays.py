"""Model Explorer overlays: a number per op of a `.tflite`, as Model Explorer's node data.

Model Explorer names a graph by its signature (a subgraph no signature enters, by its own name)
and matches a value to the op that outputs the tensor of that name. Three measurements:
- bytes: the constant bytes (weights, scales) each op reads;
- sensitivity: the int4 cost (KL per token) that `quantize --search` measured for the layer
  group an op belongs to (kept beside the searched recipe as <model>.sensitivity.json);
- error: the relative RMS difference of each op's output between a quantized model and its
  float model, both run on the same calibration text through the widest prefill signature.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import read_json
from edgellm.quantize.calibration import (
    DEFAULT_CALIBRATION,
    calibration_windows,
    read_calibration_text,
    tensor_keeping_interpreter,
    widest_prefill,
)
from edgellm.tflite.file import buffer_data, empty_state

Values = dict[str, dict[str, float]]  # graph id -> output tensor name -> value
# Low values pale, high values deep red: the worst op is the one to look at.
GRADIENT = [{"stop": 0, "bgColor": "#fff5eb"}, {"stop": 0.5, "bgColor": "#fd8d3c"}, {"stop": 1, "bgColor": "#a50f15"}]


def _ops(model: Path) -> Iterator[tuple[str, int, list[int], list[int], object, object]]:
    """(graph id, subgraph index, op input tensors, op output tensors, subgraph, flat model) for every op."""
    from ai_edge_litert import schema_py_generated as schema

    with open(model, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        flat = schema.Model.GetRootAs(data, 0)
        signatures = {flat.SignatureDefs(i).SubgraphIndex(): flat.SignatureDefs(i).SignatureKey().decode() for i in range(flat.SignatureDefsLength())}
        for s in range(flat.SubgraphsLength()):
            subgraph = flat.Subgraphs(s)
            graph = signatures.get(s) or (subgraph.Name() or b"").decode()
            for o in range(subgraph.OperatorsLength()):
                op = subgraph.Operators(o)
                yield graph, s, list(op.InputsAsNumpy()) if op.InputsLength() else [], list(op.OutputsAsNumpy()) if op.OutputsLength() else [], subgraph, flat
        del flat


def _name(subgraph, tensor: int) -> str:
    return subgraph.Tensors(tensor).Name().decode(errors="replace")


def bytes_overlay(model: Path) -> Values:
    """Bytes of the constants each op reads."""
    values: Values = {}
    for graph, _, inputs, outputs, subgraph, flat in _ops(model):
        size = sum((buffer_data(flat.Buffers(subgraph.Tensors(t).Buffer())) or (0, 0))[1] for t in inputs if t >= 0 and subgraph.Tensors(t).Buffer() > 0)
        if size and outputs:
            values.setdefault(graph, {})[_name(subgraph, outputs[0])] = float(size)
    return values


def sensitivity_overlay(model: Path, measured: dict) -> Values:
    """Each op of a layer group gets the group's int4 cost; `measured` is a <model>.sensitivity.json."""
    patterns = [(re.compile(group["pattern"]), measured["int4_costs"][group["name"]]) for group in measured["groups"]]
    values: Values = {}
    for graph, _, _, outputs, subgraph, _ in _ops(model):
        for output in outputs[:1]:
            name = _name(subgraph, output)
            if cost := next((c for pattern, c in patterns if pattern.search(name)), None):
                values.setdefault(graph, {})[name] = float(cost)
    return values


def _outputs_on(model: Path, signature: str, tokens: list[int]) -> dict[str, np.ndarray]:
    """Every op output of `signature`'s subgraph, by tensor name, after one prefill of `tokens`."""
    interpreter = tensor_keeping_interpreter(model)
    runner = interpreter.get_signature_runner(signature)
    caches = empty_state({name: tuple(detail["shape"]) for name, detail in runner.get_input_details().items()})
    runner(tokens=np.array([tokens], np.int32), input_pos=np.arange(len(tokens), dtype=np.int32), **caches)
    found = {}
    for graph, index, _, outputs, subgraph, _ in _ops(model):
        if graph == signature:
            for tensor in outputs:
                value = interpreter.get_tensor(tensor, index)
                if value.dtype == np.float32:
                    found[_name(subgraph, tensor)] = value
    return found


def error_overlay(model: Path, reference: Path, tokens: list[int], signature: str) -> Values:
    """Relative RMS difference of each op's output against the same op of `reference` (matched by
    output tensor name), on one prefill of `tokens` through `signature`."""
    ours, theirs = _outputs_on(model, signature, tokens), _outputs_on(reference, signature, tokens)
    values = {}
    for name, value in ours.items():
        expected = theirs.get(name)
        if expected is not None and expected.shape == value.shape:
            scale = float(np.sqrt(np.mean(np.square(expected, dtype=np.float64))))
            values[name] = float(np.sqrt(np.mean(np.square(value - expected, dtype=np.float64)))) / max(scale, 1e-12)
    if not values:
        raise EdgeLLMError(f"{model.name} and {reference.name} share no op outputs by name; --reference must be the float model {model.name} was quantized from")
    return {signature: values}


def node_data(name: str, values: Values) -> dict:
    """Model Explorer's node-data JSON: per graph, a value per op and a colour gradient."""
    return {graph: {"name": name, "results": {key: {"value": value} for key, value in results.items()}, "gradient": GRADIENT}
            for graph, results in values.items() if results}


def overlays_for(model: Path, names: tuple[str, ...], reference: Path | None, sensitivity: Path | None, tokenizer: Path | None = None) -> dict[str, dict]:
    """Node data for each overlay in `names`; one that this model has no data for is one line saying what to pass."""
    found = {}
    for name in names:
        if name == "bytes":
            values = bytes_overlay(model)
        elif name == "sensitivity":
            if sensitivity is None or not sensitivity.is_file():
                raise EdgeLLMError(f"no sensitivity for {model.name}: `edgellm quantize FLOAT.tflite --search` writes <output>.sensitivity.json; "
                                   "pass it with --sensitivity")
            values = sensitivity_overlay(model, read_json(sensitivity, "sensitivity file"))
        else:
            if reference is None or not reference.is_file():
                raise EdgeLLMError(f"the error overlay compares {model.name} with its float model; pass that with --reference FLOAT.tflite")
            width = widest_prefill(model)
            values = error_overlay(model, reference, calibration_tokens(model, width, tokenizer), f"prefill_{width}")
        if not values:
            raise EdgeLLMError(f"{model.name} has no data for the {name} overlay (no op matches); drop --overlay {name}")
        found[name] = node_data(name, values)
    return found


def calibration_tokens(model: Path, width: int, tokenizer: Path | None = None) -> list[int]:
    """The first window of the shipped calibration text, in the model's tokenizer (edgellm.json's, or `tokenizer`)."""
    from edgellm.text.tokenizer import load_tokenizer
    from edgellm.tflite.metadata import model_metadata

    encoder = load_tokenizer(model_metadata(model, tokenizer)[1])
    return calibration_windows(encoder.encode(read_calibration_text(DEFAULT_CALIBRATION)), width, 1)[0]
