"""A file-based model registry: immutable versions, checksums, aliases with history.

Layout under ``root``::

    <model>/versions/<N>/            artifact files + metadata.json (never modified after publish)
    <model>/aliases.json             {"production": 3, "canary": 4}
    <model>/alias_history.jsonl      one line per alias move
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class RegistryError(Exception):
    """A registry request cannot be served; the message names the model, version or file."""


class ArtifactCorruptError(RegistryError):
    """An artifact file is missing or does not match the checksum recorded at registration."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so readers see the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class ModelVersion:
    """A published, verified version: where its files are and what was recorded about it."""

    name: str
    version: int
    path: Path
    metadata: dict[str, Any]

    def file(self, name: str) -> Path:
        """Path of artifact ``name`` (checked against the recorded file list)."""
        if name not in self.metadata["files"]:
            raise RegistryError(f"{self.name} v{self.version}: no artifact named {name!r}")
        return self.path / name

    @property
    def label(self) -> str:
        return f"{self.name}:v{self.version}"


class ModelRegistry:
    """Registry rooted at a directory. Safe for concurrent writers on one filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _model_dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise RegistryError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-'")
        return self.root / name

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def versions(self, name: str) -> list[int]:
        vdir = self._model_dir(name) / "versions"
        if not vdir.is_dir():
            return []
        return sorted(int(p.name) for p in vdir.iterdir() if p.name.isdigit())

    def register(self, name: str, files: Mapping[str, str | Path], metadata: Mapping[str, Any]) -> ModelVersion:
        """Copy ``files`` into a new immutable version and return it.

        The version directory is staged under a temporary name and renamed into place, so a crash
        or a concurrent writer never leaves a half-written version; racing writers get distinct numbers.
        """
        model_dir = self._model_dir(name)
        vdir = model_dir / "versions"
        vdir.mkdir(parents=True, exist_ok=True)
        stage = model_dir / f".stage-{uuid.uuid4().hex}"
        stage.mkdir()
        try:
            checksums = {}
            for fname, src in files.items():
                if "/" in fname or fname in ("metadata.json", ""):
                    raise RegistryError(f"invalid artifact name {fname!r}")
                shutil.copyfile(src, stage / fname)
                checksums[fname] = _sha256(stage / fname)
            for _ in range(1000):
                number = (max(self.versions(name), default=0)) + 1
                meta = {
                    **metadata,
                    "name": name,
                    "version": number,
                    "files": checksums,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
                (stage / "metadata.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
                try:
                    os.rename(stage, vdir / str(number))
                except OSError:
                    continue  # another writer took this number; try the next one
                return ModelVersion(name, number, vdir / str(number), meta)
            raise RegistryError(f"{name}: could not allocate a version number")
        finally:
            if stage.exists():
                shutil.rmtree(stage)

    def aliases(self, name: str) -> dict[str, int]:
        path = self._model_dir(name) / "aliases.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def resolve(self, name: str, ref: str | int) -> int:
        """Version number for ``ref``: an int, ``"3"``, ``"v3"``, ``"latest"`` or an alias."""
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"model {name!r} has no versions in registry {self.root}")
        text = str(ref)
        if text == "latest":
            return versions[-1]
        digits = text[1:] if text.startswith("v") else text
        if digits.isdigit():
            if int(digits) not in versions:
                raise RegistryError(f"{name}: version {digits} does not exist (have {versions})")
            return int(digits)
        aliases = self.aliases(name)
        if text not in aliases:
            raise RegistryError(f"{name}: no alias {text!r} (aliases: {sorted(aliases) or 'none'})")
        return aliases[text]

    def get(self, name: str, ref: str | int = "production", verify: bool = True) -> ModelVersion:
        """Load a version's metadata and (by default) verify every artifact's checksum."""
        number = self.resolve(name, ref)
        path = self._model_dir(name) / "versions" / str(number)
        try:
            meta = json.loads((path / "metadata.json").read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactCorruptError(f"{name} v{number}: unreadable metadata.json ({exc})") from None
        if verify:
            for fname, checksum in meta["files"].items():
                fpath = path / fname
                if not fpath.is_file():
                    raise ArtifactCorruptError(f"{name} v{number}: artifact {fname} is missing")
                if _sha256(fpath) != checksum:
                    raise ArtifactCorruptError(f"{name} v{number}: artifact {fname} fails its checksum (corrupt or truncated)")
        return ModelVersion(name, number, path, meta)

    def set_alias(self, name: str, alias: str, ref: str | int, reason: str = "") -> int:
        """Point ``alias`` at a version atomically and append the move to the history."""
        if not NAME_RE.match(alias) or alias == "latest" or alias.lstrip("v").isdigit():
            raise RegistryError(f"invalid alias {alias!r}")
        number = self.resolve(name, ref)
        model_dir = self._model_dir(name)
        aliases = self.aliases(name)
        previous = aliases.get(alias)
        aliases[alias] = number
        _write_json_atomic(model_dir / "aliases.json", aliases)
        event = {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "alias": alias,
            "from": previous,
            "to": number,
            "reason": reason,
        }
        with (model_dir / "alias_history.jsonl").open("a") as fh:
            fh.write(json.dumps(event) + "\n")
        return number

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        path = self._model_dir(name) / "alias_history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def rollback(self, name: str, alias: str) -> int:
        """Point ``alias`` back to the version it had before its latest move; returns that version."""
        current = self.aliases(name).get(alias)
        if current is None:
            raise RegistryError(f"{name}: no alias {alias!r} to roll back")
        moves = [m for m in self.alias_history(name) if m["alias"] == alias]
        if not moves or moves[-1]["to"] != current or moves[-1]["from"] is None:
            raise RegistryError(f"{name}: alias {alias!r} has no earlier version to roll back to")
        return self.set_alias(name, alias, moves[-1]["from"], reason=f"rollback from v{current}")
