"""A build matrix: models x quantization recipes (x bundle formats), one cell per model and recipe.

    models:
      - spec: smollm2-135m            # a shipped name or a path
        checkpoint: ./ckpt/smollm2    # optional, as --checkpoint
        export: {kv_cache_length: 1024}   # optional overrides of the spec's export section
    recipes: [int8-dynamic, int4]
    bundles: [litertlm]               # optional
    export: {prefill_lengths: [32]}   # optional, for every model

A cell is one ordinary build (stages.py) through the shared cache, so cells that share a model
share its convert, and a cell some runner built before is fetched, not rebuilt. A finished cell
leaves a small "cell" record under a key of everything its artifacts depend on, which
`matrix plan` looks up without building anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgellm.errors import EdgeLLMError
from edgellm.infra.cache import ArtifactCache, artifact_key
from edgellm.infra.cache_admin import RECORD_STAGE as CELL_STAGE  # a finished cell's record, beside the stages' artifacts
from edgellm.infra.files import write_json
from edgellm.pipeline.runner import REPORT_FILE, StageResult
from edgellm.pipeline.stages import STAGES, Pipeline
from edgellm.spec.schema import describe_error

# Every library some stage's artifact depends on: a cell's record moves with any of them.
CELL_LIBRARIES = tuple(sorted({name for stage in STAGES.values() for name in stage.libraries}))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatrixModel(_Strict):
    spec: str
    checkpoint: Path | None = None
    export: dict = {}


class MatrixFile(_Strict):
    models: list[MatrixModel] = Field(min_length=1)
    recipes: list[str] = Field(min_length=1)
    bundles: list[str] = []
    export: dict = {}


@dataclass(frozen=True)
class Cell:
    id: str  # "<spec name>/<recipe>"
    spec: object  # spec.schema.ModelSpec, with the matrix's export overrides
    checkpoint: Path | None
    recipe: str  # a shipped recipe's name or a recipe file's path
    bundles: tuple[str, ...]

    @property
    def recipe_name(self) -> str:
        return Path(self.recipe).stem

    def pipeline(self, cache: ArtifactCache, on_finish=lambda result: None) -> Pipeline:
        from edgellm.quantize.recipes import load_recipe

        return Pipeline(self.spec, checkpoint=self.checkpoint, recipe=load_recipe(self.recipe), formats=self.bundles, cache=cache, on_finish=on_finish)


def load_matrix(path: Path) -> list[Cell]:
    """The cells of a matrix file; every problem (a bad key, an unknown spec, recipe or format) is one line."""
    from edgellm.bundle.formats import FORMATS
    from edgellm.quantize.recipes import load_recipe
    from edgellm.spec.load import load_spec

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgeLLMError(f"matrix {path}: cannot read it ({exc.strerror}); pass the path of a matrix YAML file") from None
    except yaml.YAMLError as exc:
        raise EdgeLLMError(f"matrix {path.name}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        matrix = MatrixFile.model_validate(data)
    except ValidationError as exc:
        raise EdgeLLMError(f"matrix {path.name}: {describe_error(exc.errors()[0])}") from None
    for fmt in matrix.bundles:
        if fmt not in FORMATS:
            raise EdgeLLMError(f"matrix {path.name}: unknown bundle format {fmt!r}; known: {', '.join(FORMATS)}")
    for recipe in matrix.recipes:
        load_recipe(_beside(path, recipe))  # an unknown recipe fails before any cell runs
    cells = []
    for model in matrix.models:
        spec = load_spec(_beside(path, model.spec))
        overrides = {**spec.export.model_dump(), **matrix.export, **model.export}
        try:
            spec = spec.model_copy(update={"export": type(spec.export).model_validate(overrides)})
        except ValidationError as exc:
            raise EdgeLLMError(f"matrix {path.name}: export overrides of {spec.name}: {describe_error(exc.errors()[0])}") from None
        checkpoint = path.parent / model.checkpoint if model.checkpoint is not None else None
        cells += [Cell(f"{spec.name}/{Path(recipe).stem}", spec, checkpoint, _beside(path, recipe), tuple(matrix.bundles)) for recipe in matrix.recipes]
    ids = [cell.id for cell in cells]
    if duplicate := next((i for i in ids if ids.count(i) > 1), None):
        raise EdgeLLMError(f"matrix {path.name}: cell {duplicate} appears twice; list each model and recipe once")
    return cells


def _beside(matrix: Path, name: str) -> str:
    """A spec or recipe named by a relative path is relative to the matrix file; a bare name is a shipped one."""
    candidate = matrix.parent / name
    return str(candidate) if Path(name).suffix in (".yaml", ".yml") and candidate.is_file() else name


def pick(cells: list[Cell], cell_id: str) -> Cell:
    for cell in cells:
        if cell.id == cell_id:
            return cell
    raise EdgeLLMError(f"no cell {cell_id!r} in the matrix; its cells: {', '.join(c.id for c in cells)}")


def cell_key(pipeline: Pipeline, cell: Cell) -> str:
    """What a cell's artifacts depend on, from the checkpoint check alone (nothing is built)."""
    return artifact_key(CELL_STAGE, {**pipeline.model_identity(), "spec": cell.spec.model_dump(mode="json"), "recipe": pipeline.recipe.model_dump(),
                                     "bundles": list(cell.bundles)}, CELL_LIBRARIES)


def where_cached(cell: Cell, cache: ArtifactCache) -> str:
    """"local", "remote" or "missing": where the cell's finished record is."""
    pipeline = cell.pipeline(cache)
    key = cell_key(pipeline, cell)
    if cache.lookup(CELL_STAGE, key):
        return "local"
    if cache.remote is not None and cache.remote.manifest(CELL_STAGE, key) is not None:
        return "remote"
    return "missing"


def memory_estimate(cell: Cell, cache: ArtifactCache) -> int:
    """Bytes a cell's build may hold at its peak: float weights twice over (the model and what
    the converter makes of it), its KV cache and logits, and a process's libraries."""
    from edgellm.pipeline.build import memory_needed

    fetched = cell.pipeline(cache).fetched
    return 2 * memory_needed(fetched.architecture, cell.spec.export, fetched.weight_elements) + (3 << 29)


def run_cell(cell: Cell, cache: ArtifactCache) -> dict:
    """Build one cell; its report for `matrix run --json` (a failure is the cell's, not the run's)."""
    results: list[StageResult] = []
    report = {"id": cell.id, "model": cell.spec.name, "recipe": cell.recipe_name, "error": None}
    try:
        pipeline = cell.pipeline(cache, on_finish=results.append)
        pipeline.run(pipeline.build_stages())
        key = cell_key(pipeline, cell)
        stages = {r.stage: r.key for r in results}
        cache.obtain(CELL_STAGE, key, lambda folder: write_json(folder / REPORT_FILE, {"id": cell.id, "stages": stages}))
    except EdgeLLMError as exc:
        report["error"] = str(exc)
    # The checkpoint check (fetch) always runs here, on this machine's folder: it is no build.
    shared = [r for r in results if STAGES[r.stage].shared]
    hows = {r.how for r in shared}
    status = "failed" if report["error"] else "built" if "ran" in hows else "fetched" if "fetched" in hows else "cached"
    outputs = [str(r.file) for r in shared if r.stage == "quantize" or r.stage.startswith("bundle-")]
    return {**report, "status": status, "stages": [{"stage": r.stage, "how": r.how, "key": r.key} for r in shared], "outputs": outputs}
