"""Quantization recipes: YAML files (shipped ones in `edgellm/data/recipes/`) of rules that pick ops
and say how their weights are stored.

Each rule picks ops by a regular expression over their output tensor names (our module paths:
`Attention_attn`, `MLP_mlp`, `Linear_qkv`, `Linear_down`, `logits_output`, ...) and optionally by
TFLite op name. Later rules win where several match, as in ai-edge-quantizer itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgellm.errors import EdgeLLMError
from edgellm.infra.resources import data_path
from edgellm.spec.schema import describe_error

BUILTIN_RECIPES = data_path("recipes")


_GRANULARITY = {
    "tensor": "TENSORWISE",
    "channel": "CHANNELWISE",
    "block32": "BLOCKWISE_32",
    "block64": "BLOCKWISE_64",
    "block128": "BLOCKWISE_128",
    "block256": "BLOCKWISE_256",
}


class QuantRule(BaseModel):
    """One rule of a recipe: which ops, and how their weights are stored.

    mode dynamic: integer weights, activations quantized on the fly by the kernel (fast).
    mode weight_only: integer weights dequantized to float before the op (more accurate).
    mode float16: weights stored as float16 and computed in float.
    algorithm minmax: each weight rounded to the nearest step of a scale set by the largest weight.
    algorithm gptq: fully connected weights chosen by GPTQ on calibration text (see gptq.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = ".*"  # regular expression searched in each op's output tensor names
    ops: list[str] = ["*"]  # TFLite op names (FULLY_CONNECTED, EMBEDDING_LOOKUP, ...); * is any
    mode: Literal["dynamic", "weight_only", "float16"]
    bits: Literal[4, 8, 16] = 8
    granularity: Literal["tensor", "channel", "block32", "block64", "block128", "block256"] = "channel"
    symmetric: bool = True
    algorithm: Literal["minmax", "gptq"] = "minmax"

    @model_validator(mode="after")
    def _supported(self) -> QuantRule:
        try:
            re.compile(self.match)
        except re.error as exc:
            raise ValueError(f"match {self.match!r} is not a valid regular expression ({exc})") from None
        if self.mode == "float16":
            if self.bits != 16 and "bits" in self.model_fields_set or self.granularity != "channel" and "granularity" in self.model_fields_set:
                raise ValueError("float16 takes no bits or granularity: weights are cast whole")
            if self.algorithm != "minmax":
                raise ValueError("float16 takes no algorithm: weights are cast, not rounded to integers")
        elif self.bits not in (4, 8):
            raise ValueError(f"{self.mode} quantization takes bits 4 or 8, not {self.bits}")
        elif self.granularity.startswith("block") and not self.symmetric:
            raise ValueError(f"{self.granularity} needs symmetric: true (blockwise scales have no zero point)")
        elif self.bits == 4 and self.granularity == "tensor":
            raise ValueError("4-bit weights need channel or block granularity; one scale per tensor loses too much")
        elif self.algorithm == "gptq" and (self.granularity == "tensor" or not self.symmetric):
            raise ValueError("gptq takes symmetric channel or block scales")
        return self

    def to_aeq(self) -> dict:
        """The rule as an ai-edge-quantizer recipe entry (its JSON recipe format)."""
        if self.mode == "float16":
            weights = {"num_bits": 16, "symmetric": True, "granularity": "TENSORWISE", "dtype": "FLOAT"}
            algorithm, compute, explicit = "float_casting", "FLOAT", True
        else:
            weights = {"num_bits": self.bits, "symmetric": self.symmetric, "granularity": _GRANULARITY[self.granularity], "dtype": "INT"}
            algorithm = "min_max_uniform_quantize"
            compute, explicit = ("INTEGER", False) if self.mode == "dynamic" else ("FLOAT", True)
        config = {"weight_tensor_config": weights, "compute_precision": compute, "explicit_dequantize": explicit, "skip_checks": False, "min_weight_elements": 0}
        return [{"regex": self.match, "operation": op, "algorithm_key": algorithm, "op_config": config} for op in self.ops]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    rules: list[QuantRule] = Field(min_length=1)

    def to_aeq(self) -> list[dict]:
        return [entry for rule in self.rules for entry in rule.to_aeq()]

    def write(self, path: Path) -> Path:
        """The recipe as a YAML file that load_recipe reads back."""
        from edgellm.infra.files import write_bytes_atomically

        write_bytes_atomically(path, yaml.safe_dump(self.model_dump(exclude_defaults=True), sort_keys=False).encode())
        return path

    @property
    def calibrated(self) -> bool:
        """Whether it needs calibration text (a rule uses gptq)."""
        return any(rule.algorithm == "gptq" for rule in self.rules)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_RECIPES.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (`int8-dynamic`) or a YAML file; problems are one line."""
    path = Path(name_or_path)
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise EdgeLLMError(f"recipe file {path} does not exist")
        if str(name_or_path) not in recipe_names():
            raise EdgeLLMError(f"unknown recipe {name_or_path!r}; known: {', '.join(recipe_names())} (or pass a YAML file)")
        path = BUILTIN_RECIPES / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise EdgeLLMError(f"recipe {path.name}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise EdgeLLMError(f"recipe {path.name}: {describe_error(exc.errors()[0])}") from None
