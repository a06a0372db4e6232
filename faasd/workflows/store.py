"""Deployed workflows on disk: one JSON file per workflow in `<state_dir>/workflows/`.

A file holds the spec as deployed, its version number and when. Writes are atomic (a
temporary file renamed over the old one), so a crash leaves the old or the new workflow, never
half of one. A removed workflow leaves a tombstone with its last version number, so numbers
are never reused (as with functions). A file that cannot be read is logged and skipped; the
other workflows still load.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faasd.workflows.spec import WorkflowSpec, WorkflowSpecError, parse_spec

log = logging.getLogger("faasd.workflows")


@dataclass(frozen=True)
class StoredWorkflow:
    spec: WorkflowSpec
    version: int
    deployed_at: float


class WorkflowStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "workflows"
        self.directory.mkdir(parents=True, exist_ok=True)

    def load(self) -> list[StoredWorkflow]:
        """Every deployed workflow, by name."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            doc = self._read(path)
            if doc is None or doc.get("removed"):
                continue
            try:
                spec = parse_spec(doc["spec"], path.stem, file=str(path))
                found.append(StoredWorkflow(spec, int(doc["version"]), float(doc["deployed_at"])))
            except (KeyError, TypeError, ValueError, WorkflowSpecError) as exc:
                log.error("cannot load workflow %s from %s: %s; redeploy it", path.stem, path,
                          exc)
        return found

    def next_version(self, name: str) -> int:
        doc = self._read(self._path(name))
        return 1 if doc is None else int(doc.get("version", 0)) + 1

    def save(self, stored: StoredWorkflow) -> None:
        doc = {"spec": _without_name(stored.spec.to_json()), "version": stored.version,
               "deployed_at": stored.deployed_at}
        self._write(self._path(stored.spec.name), doc)

    def remove(self, name: str, version: int) -> None:
        self._write(self._path(name), {"removed": True, "version": version})

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.error("cannot read workflow file %s: %s; redeploy the workflow", path, exc)
            return None
        return doc if isinstance(doc, dict) else None

    def _write(self, path: Path, doc: dict[str, Any]) -> None:
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)


def _without_name(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "name" and (k != "description" or v)}
