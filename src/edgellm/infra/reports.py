"""The base of every stage's typed report: stored as the artifact's report.json, printed by `--json`,
and summarised in one line by the stage that made it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StageReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def summary(self) -> str:
        """The stage's line in the build table (after its name, time and memory)."""
        return ""

    def as_json(self) -> dict:
        """The report as JSON data; fields a stage did not fill are left out."""
        return self.model_dump(mode="json", exclude_none=True)
