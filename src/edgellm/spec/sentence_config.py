"""What a sentence-transformers checkpoint declares beside config.json: the pooling of its
`1_Pooling/config.json`, whether `modules.json` ends with a Normalize module, and the
`max_seq_length` of `sentence_bert_config.json`. These are architecture knobs of an encoder,
read from the checkpoint as config.json's are."""

from __future__ import annotations

import json
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import inside, read_json

_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
_UNSUPPORTED = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def sentence_pooling(folder: Path) -> dict:
    """`pooling` and `normalize_embedding` as the checkpoint declares them; {} when it has no modules.json."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        modules = None
    if not isinstance(modules, list):
        raise EdgeLLMError(f"{modules_file}: expected a list of modules; re-download the checkpoint or set architecture.pooling in the spec")
    kinds = [str(m.get("type", "")).rpartition(".")[2] for m in modules if isinstance(m, dict)]
    fields = {"normalize_embedding": "Normalize" in kinds}
    pooling = next((m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling")), None)
    if pooling is None:
        return fields
    config_file = inside(folder, f"{pooling.get('path', '')}/config.json", "modules.json: Pooling path")
    config = read_json(config_file, "pooling config")
    unsupported = [mode for mode in _UNSUPPORTED if config.get(mode)]
    chosen = [ours for mode, ours in _POOLING_MODES.items() if config.get(mode)]
    if unsupported or len(chosen) != 1:
        raise EdgeLLMError(f"{config_file}: pooling {', '.join(unsupported + chosen) or 'none'} is not supported; edgellm pools with exactly one of "
                           "mean or cls (set architecture.pooling in the spec to override)")
    return {**fields, "pooling": chosen[0]}


def max_seq_length(folder: Path) -> int | None:
    """sentence-transformers' truncation length, when the checkpoint states it."""
    path = folder / "sentence_bert_config.json"
    value = read_json(path, "sentence_bert_config.json").get("max_seq_length") if path.is_file() else None
    return value if isinstance(value, int) and value > 0 else None
