"""Stage output folders: resolved recipe, manifest, atomic writes, skip-if-done.

Every stage writes one folder. On start the resolved recipe and its hash are
written there (``recipe.yaml``, ``recipe.sha256``); on success a
``manifest.json`` records the recipe hash, input hashes, code version, row
counts and wall time. A rerun with the same recipe finds the manifest and skips
the stage; a crashed run has no manifest and continues from what its
atomically written pieces left (each stage decides what a "piece" is: a JSONL
shard, a checkpoint, a Parquet part).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from aigp_train.config import recipe_hash, recipe_to_dict

MANIFEST = "manifest.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))


def iter_jsonl(path: str | Path, fix: str = "delete the shard to regenerate it") -> Iterator[tuple[int, Any]]:
    """(line number, decoded row) of every non-blank line; a bad line's error names it and ``fix``."""
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({err}); {fix}.") from err


def read_jsonl(path: str | Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of a folder's manifest if it has one (cheap and stable)."""
    path = Path(path)
    if path.is_dir():
        manifest = path / MANIFEST
        if manifest.is_file():
            return hashlib.sha256(manifest.read_bytes()).hexdigest()
        digest = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                digest.update(str(p.relative_to(path)).encode())
                digest.update(str(p.stat().st_size).encode())
        return digest.hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """git commit of the code that ran (with '+dirty' if the tree had changes), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("aigp-train")
        except PackageNotFoundError:
            return "unknown"


@dataclass
class StageOutput:
    """One stage's output folder. ``open`` it, write into ``path``, then ``finish``."""

    path: Path
    stage: str
    recipe: Any
    started: float = field(default_factory=time.time)

    @classmethod
    def open(cls, output_dir: str | Path, stage: str, recipe: Any) -> "StageOutput":
        out = cls(Path(output_dir), stage, recipe)
        out.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out.path / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
        atomic_write_text(out.path / "recipe.sha256", out.recipe_hash + "\n")
        return out

    @property
    def recipe_hash(self) -> str:
        return recipe_hash(self.recipe)

    def is_done(self) -> bool:
        """True if a previous run with the same recipe finished here."""
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            return False
        try:
            data = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            return False
        return data.get("recipe_sha256") == self.recipe_hash and data.get("stage") == self.stage

    def finish(self, *, inputs: dict[str, str | Path] | None = None, rows: dict[str, int] | None = None,
               summary: dict[str, Any] | None = None) -> dict:
        manifest = {
            "stage": self.stage,
            "recipe_sha256": self.recipe_hash,
            "inputs": {name: file_hash(p) for name, p in (inputs or {}).items() if Path(p).exists()},
            "code_version": code_version(),
            "rows": rows or {},
            "summary": summary or {},
            "started": self.started,
            "wall_seconds": round(time.time() - self.started, 3),
        }
        atomic_write_json(self.path / MANIFEST, manifest)
        return manifest


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: the stage that writes it has not finished. Run it first.")
    return json.loads(path.read_text())
