"""`quantize --search`: the smallest mix of int4 and int8 layer groups within a perplexity budget.

Each layer group (one block's attention, one block's MLP) is measured once: the float model with
only that group's weights in int4 (by GPTQ), its mean KL divergence from the float model on
held-out calibration text (KL, unlike a difference of perplexities, is never negative and barely
noisy at the size of one group's error). Treating those costs as additive, groups move from int8
to int4 in order of cost per byte saved; every prefix of that order is a point of the
size-accuracy frontier, its perplexity ratio predicted as exp(total KL). The budget holds that
bound, not the perplexity ratio on the held-out text itself: the ratio measured on one text is
noisy and, on text of another kind, larger (SmolLM2 searched on the default text at 1.05 by
held-out perplexity measured 1.078 on WikiText-2), while exp(KL) stayed above the ratio on every
text measured. The largest prefix predicted within the budget is checked by measuring its KL
whole (stepping back while it is over). Measurements put GPTQ's dequantized weights into a copy of the
float model, so they see weight error only; the quantized model the chosen recipe writes is then
evaluated as shipped.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.infra.progress import advance
from edgellm.quantize.apply import OpInfo
from edgellm.quantize.recipes import QuantRule, Recipe

BLOCK = 32  # int4 weights: one scale per 32 (per channel where the input width is not a multiple)
INT8 = (8, None)  # bits, per channel
_GROUP = re.compile(r"(Block_\d+)/(?:[\w.]+\.)?(\w+?_\w+)/")  # `Block_3/edgellm.layers.mlp.MLP_mlp/`


@dataclass
class Group:
    name: str  # `Block_3 MLP_mlp`
    pattern: str  # the regular expression a recipe rule selects it by
    buffers: list[int]  # its weights, by buffer in the float model
    int4_blocks: list[int | None]  # per weight: the block its int4 takes (None: per channel)
    int4_bytes: int
    int8_bytes: int

    def int4(self) -> dict[int, tuple[int, int | None]]:
        return {buffer: (4, block) for buffer, block in zip(self.buffers, self.int4_blocks, strict=True)}


def layer_groups(ops: list[OpInfo], readers: dict[int, list[tuple[int, int, int]]]) -> list[Group]:
    """The attention and MLP of every transformer block, from edgellm's module names."""
    by_position = {op.position: op for op in ops}
    groups: dict[str, Group] = {}
    for buffer, uses in sorted(readers.items()):
        op = by_position[uses[0][:2]]
        found = _GROUP.search(op.scope)
        if found is None or op.weight_shape is None:
            continue
        rows, cols = op.weight_shape
        block, module = found.groups()
        group = groups.setdefault(f"{block} {module}", Group(f"{block} {module}", rf"{block}/(?:[\w.]+\.)?{module}/", [], [], 0, 0))
        group.buffers.append(buffer)
        group.int4_blocks.append(None if cols % BLOCK else BLOCK)  # as quantize.plan_recipe falls back
        group.int4_bytes += (rows * cols + 1) // 2 + (rows * 4 if cols % BLOCK else rows * cols // BLOCK * 2)  # values, then float32 or float16 scales
        group.int8_bytes += rows * cols + rows * 4
    if not groups:
        raise EdgeLLMError("--search finds layer groups by edgellm's module names (Block_N/...); this model has none: convert it with edgellm")
    return sorted(groups.values(), key=lambda g: (int(g.name.split()[0].removeprefix("Block_")), g.name))


def search_recipe(int4_groups: list[Group], name: str) -> Recipe:
    """int8 (GPTQ) everywhere, int4 blocks of 32 (GPTQ) for `int4_groups`."""
    rules = [QuantRule(mode="dynamic", bits=8, algorithm="gptq")]
    if int4_groups:
        rules.append(QuantRule(match="|".join(g.pattern for g in int4_groups), mode="dynamic", bits=4, granularity=f"block{BLOCK}", algorithm="gptq"))
    description = f"Found by edgellm quantize --search: {len(int4_groups)} layer groups in int4 (blocks of 32, GPTQ), the rest in int8 (GPTQ)."
    return Recipe(name=name, description=description, rules=rules)


class WeightProbe:
    """The float model with chosen weights replaced by their GPTQ dequantization, scored by mean
    negative log-likelihood on fixed token windows through its prefill signature."""

    def __init__(self, model_path: Path, hessians: dict[int, np.ndarray], windows: list[list[int]], signature: str):
        from ai_edge_litert import schema_py_generated as schema

        from edgellm.tflite.file import buffer_data

        self.data = bytearray(model_path.read_bytes())
        self.hessians, self.windows, self.signature = hessians, windows, signature
        flat = schema.Model.GetRootAs(self.data, 0)
        self.shapes: dict[int, tuple[int, ...]] = {}
        for s in range(flat.SubgraphsLength()):
            subgraph = flat.Subgraphs(s)
            for t in range(subgraph.TensorsLength()):
                tensor = subgraph.Tensors(t)
                if tensor.Buffer() in hessians:
                    self.shapes[tensor.Buffer()] = tuple(int(d) for d in tensor.ShapeAsNumpy())
        self.places = {b: buffer_data(flat.Buffers(b)) for b in self.shapes}
        self.float_values = {b: bytes(self.data[start : start + length]) for b, (start, length) in self.places.items()}
        self._solved: dict[tuple[int, int, int | None], bytes] = {}
        self.float_nll, _, self.float_logp = score_windows(bytes(self.data), windows, signature)

    def _dequantized(self, buffer: int, precision: tuple[int, int | None]) -> bytes:
        from edgellm.quantize.gptq import quantize_weight

        key = (buffer, *precision)
        if key not in self._solved:
            weight = np.frombuffer(self.float_values[buffer], np.float32).reshape(self.shapes[buffer])
            self._solved[key] = quantize_weight(weight, self.hessians[buffer], *precision).dequantized().astype(np.float32).tobytes()
        return self._solved[key]

    def score(self, assignment: dict[int, tuple[int, int | None]]) -> tuple[float, float]:
        """(perplexity ratio, mean KL from float) with the weights in `assignment` quantized, the others float."""
        for buffer, (start, length) in self.places.items():
            self.data[start : start + length] = self._dequantized(buffer, assignment[buffer]) if buffer in assignment else self.float_values[buffer]
        nll, kl, _ = score_windows(bytes(self.data), self.windows, self.signature, self.float_logp)
        return math.exp(nll - self.float_nll), kl


def score_windows(model: bytes | Path, windows: list[list[int]], signature: str, reference: list[np.ndarray] | None = None):
    """Mean negative log-likelihood per token of each window's continuation, every window run
    from position 0 through `signature` (a prefill as wide as the windows) in LiteRT's CPU path;
    mean KL from `reference` (log-probabilities per window); and these log-probabilities (float16)."""
    from edgellm.measure.evaluate import log_softmax
    from edgellm.runtime.litert import Signatures
    from edgellm.tflite.file import empty_state, head_signature

    runner = Signatures(model, os.cpu_count())
    head = head_signature(signature) if head_signature(signature) in runner.names() else None
    caches = empty_state(runner.input_shapes(signature))
    nll, kl, count, logps = 0.0, 0.0, 0, []
    for i, window in enumerate(windows):
        out = runner(signature, tokens=np.array([window], np.int32), input_pos=np.arange(len(window), dtype=np.int32), **caches)
        logits = (runner(head, hidden=out["hidden"]) if head else out)["logits"][0, :-1]
        logp = log_softmax(logits.astype(np.float64))
        nll -= float(logp[np.arange(len(window) - 1), window[1:]].sum())
        if reference is not None:
            expected = reference[i].astype(np.float64)
            kl += float((np.exp(expected) * (expected - logp)).sum())
        else:
            logps.append(logp.astype(np.float16))
        count += len(window) - 1
    return nll / count, kl / count, logps


def measure_sensitivity(probe: WeightProbe, groups: list[Group]) -> dict:
    """The KL cost of all weights in int8, and per group the KL cost of int4 with everything else float."""
    int8_cost = probe.score({b: INT8 for g in groups for b in g.buffers})[1]
    int4_costs = {}
    for done, group in enumerate(groups, 1):
        advance(done, len(groups) + 1)
        int4_costs[group.name] = probe.score(group.int4())[1]
    return {"int8_cost": int8_cost, "int4_costs": int4_costs}


def frontier(groups: list[Group], sensitivity: dict) -> list[dict]:
    """Points from all-int8 to all-int4, groups added cheapest per byte first; each with its
    predicted perplexity ratio and size of the grouped weights."""
    order = sorted(groups, key=lambda g: sensitivity["int4_costs"][g.name] / (g.int8_bytes - g.int4_bytes))
    cost, size = sensitivity["int8_cost"], sum(g.int8_bytes for g in groups)
    points = [{"int4_groups": [], "predicted_ppl_ratio": math.exp(cost), "grouped_bytes": size}]
    for group in order:
        cost += sensitivity["int4_costs"][group.name]
        size -= group.int8_bytes - group.int4_bytes
        points.append({"int4_groups": [*points[-1]["int4_groups"], group.name], "predicted_ppl_ratio": math.exp(cost), "grouped_bytes": size})
    return points


def choose(probe: WeightProbe, groups: list[Group], points: list[dict], max_ppl_ratio: float) -> tuple[dict, list[dict]]:
    """The largest frontier prefix predicted within the budget, measured whole and stepped back
    while over it; returns the choice and every point measured."""
    by_name = {g.name: g for g in groups}
    index = max(i for i, p in enumerate(points) if p["predicted_ppl_ratio"] <= max_ppl_ratio or i == 0)
    measured = []
    while True:
        point = points[index]
        chosen = [by_name[n] for n in point["int4_groups"]]
        assignment = {b: INT8 for g in groups for b in g.buffers}
        for group in chosen:
            assignment |= group.int4()
        ratio, kl = probe.score(assignment)
        point = {**point, "measured_ppl_ratio": ratio, "measured_kl_bound": math.exp(kl)}
        points[index] = point
        measured.append(point)
        advance(len(measured), None)  # how many steps back the budget takes is not known ahead
        if point["measured_kl_bound"] <= max_ppl_ratio or index == 0:
            return point, measured
        index -= 1
