"""The runner of a build: each stage at most once per build, served from the cache when it can be.

A stage (stages.py holds the table) declares the stages it needs (run first), what its key hashes
(plus edgellm's code and the versions of the libraries that shape its output: see
infra/cache.artifact_key) and how its artifact is made: a plain function from typed inputs to a
typed report, stored as the artifact's report.json. A key hashes exactly what the artifact depends
on, so a repeated build serves every stage from the cache, and a change (new weights, another
prefill length) re-runs only the stages downstream of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgellm.infra.cache import ArtifactCache, artifact_key
from edgellm.infra.files import read_json, write_json
from edgellm.infra.heap import proc_bytes
from edgellm.infra.isolated import discard_spare, start_ahead
from edgellm.infra.reports import StageReport

REPORT_FILE = "report.json"


@dataclass
class StageResult:
    stage: str
    key: str
    path: Path  # the artifact folder; for a stage that is not cached, the folder it read or wrote
    how: str  # "ran", "cached" (in the local cache) or "fetched" (from the remote tier)
    seconds: float  # this run's time: a cached stage reports its lookup, not the original run
    report: StageReport
    peak_rss_bytes: int = 0  # the stage's peak memory (its worker's, when it ran in one)

    @property
    def cached(self) -> bool:
        return self.how != "ran"

    @property
    def file(self) -> Path:
        """The artifact's main file (a model or a bundle)."""
        return self.path / self.report.file

    def as_json(self) -> dict:
        return {**self.report.as_json(), "stage": self.stage, "key": self.key, "path": str(self.path), "cached": self.cached, "how": self.how,
                "seconds": round(self.seconds, 3), "peak_rss_bytes": self.peak_rss_bytes}


@dataclass(frozen=True)
class Stage:
    needs: Callable[[Runner], list[str]]  # stages that run first
    inputs: Callable[[Runner], dict]  # what the key hashes (JSON-able)
    produce: Callable[[Runner, Path], StageReport]  # calls the stage's function with its inputs, into the artifact folder
    report: type[StageReport]  # what produce returns, read back from report.json when cached
    libraries: tuple[str, ...] = ()  # distributions whose versions shape the artifact
    cached: bool = True  # False: produce writes outside the cache; its report's `path` says where
    shared: bool = True  # False: the key names something of this machine's (a folder), so the remote tier never sees it
    worker_imports: tuple[str, ...] = ()  # produce runs in a worker (infra/isolated.py), started ahead importing these


class Runner:
    """Runs stages from a table: each at most once, after the stages it needs, from the cache when it can."""

    def __init__(self, stages: dict[str, Stage], cache: ArtifactCache | None = None, on_start: Callable[[str], None] = lambda stage: None,
                 on_finish: Callable[[StageResult], None] = lambda result: None):
        self.stages, self.cache = stages, cache or ArtifactCache()
        self.on_start, self.on_finish = on_start, on_finish
        self._results: dict[str, StageResult] = {}

    # -- the runner -------------------------------------------------------------------------
    def result(self, name: str) -> StageResult:
        """Stage `name`'s result: memoised in this build, served from the cache, or produced."""
        if name not in self._results:
            stage = self.stages[name]
            for need in stage.needs(self):
                self.result(need)
            self.on_start(name)
            started, memory = time.perf_counter(), PeakMemory()
            key = self.key(name)
            if stage.cached:
                def build(folder: Path) -> None:
                    write_json(folder / REPORT_FILE, stage.produce(self, folder).as_json())

                how = self.cache.obtain(name, key, build, stage.shared)
                path = self.cache.path(name, key)
                report = stage.report.model_validate(read_json(path / REPORT_FILE, "stage report"))
            else:
                how, report = "ran", stage.produce(self, Path())
                path = Path(report.path)
            worker_peak = getattr(report, "worker_peak_rss_bytes", None) or 0
            peak = max(memory.peak(), worker_peak if how == "ran" else 0)
            self._results[name] = StageResult(name, key, path, how, time.perf_counter() - started, report, peak)
            if stage.worker_imports:
                discard_spare()  # started for this stage: not kept beside the next ones when it was cached
            self.on_finish(self._results[name])
        return self._results[name]

    def key(self, name: str) -> str:
        """Stage `name`'s cache key (its needs run, it does not)."""
        stage = self.stages[name]
        for need in stage.needs(self):
            self.result(need)
        return artifact_key(name, stage.inputs(self), stage.libraries)

    def forget(self, name: str) -> None:
        """Drop stage `name`'s memoised result (after changing what it is made from)."""
        self._results.pop(name, None)

    def run(self, names: list[str]) -> list[StageResult]:
        ahead = [self.stages[name].worker_imports for name in names if self.stages[name].worker_imports]
        if ahead:
            start_ahead(ahead[0])  # its imports overlap the stages before it (fetch, verify)
        try:
            return [self.result(name) for name in names]
        finally:
            discard_spare()

class PeakMemory:
    """This process's peak resident memory from now on: Linux lets a process reset its high-water
    mark (clear_refs 5), so each stage gets its own peak; elsewhere, the process's peak so far."""

    def __init__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak(self) -> int:
        if (high_water := proc_bytes("/proc/self/status", "VmHWM")) is not None:
            return high_water
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
