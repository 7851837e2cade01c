"""Model registry on any pyarrow filesystem: immutable versions, checksums, aliases with history.

Layout under the root URI (a local path by default; ``s3://bucket/prefix`` etc. through pyarrow)::

    <model>/versions/<N>/            artifact files + metadata.json (written last; never modified after)
    <model>/aliases.json             {"production": 3, "canary": 4}
    <model>/alias_history.jsonl      one line per alias move
    <model>/serving.json             per alias: the last version a server loaded, versions servers refused
    <model>/profiles/<N>/            feature profiles of version N, checksummed; current.json names the current
                                     build per kind (see ``save_profile``); beside, never inside, the version

On a local filesystem a version is staged under a unique name and renamed into place, so racing writers get
distinct numbers and readers never see half a version. On object stores (no atomic directory rename) files are
copied into place with ``metadata.json`` last, so an incomplete version is invisible; allocate versions and move
aliases from one writer per model there. Alias moves are serialised with a file lock on local filesystems.

A registry that workers on other nodes read (batch actors, Serve replicas) must be a URI every node reaches, e.g.
``s3://bucket/prefix?endpoint_override=host:port&scheme=http`` (the query is pyarrow's ``from_uri`` options;
credentials come from the standard AWS variables). Artifacts of a remote registry are downloaded once per node into
``RAYML_CACHE_DIR`` and verified there. Every failure of the filesystem is raised as :class:`RegistryError` naming
the URI (its secret query values masked). See docs/registry-uri.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import socket
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyarrow.fs as pafs

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
METADATA = "metadata.json"
CHUNK = 1 << 20
PROFILE_KINDS = ("training", "served")  # feature profiles kept per version (see save_profile)
COLLAPSED_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]")  # Path("s3://b/p") == Path("s3:/b/p")
SECRET_QUERY_KEYS = frozenset({"access_key", "secret_key", "session_token", "credentials"})
P = ParamSpec("P")
R = TypeVar("R")


class RegistryError(Exception):
    """A registry request cannot be served; the message names the model, version or file."""


class ArtifactCorruptError(RegistryError):
    """An artifact file is missing or does not match the checksum recorded at registration."""


def display_uri(uri: str) -> str:
    """``uri`` for messages and logs: a password in it (``s3://KEY:SECRET@bucket``) and secret query values
    (``secret_key=…``) replaced by ``***``."""
    head, sep, query = uri.partition("?")
    scheme, found, rest = head.partition("://")
    if found and "@" in rest.split("/", 1)[0]:
        userinfo, _, after = rest.partition("@")
        head = f"{scheme}://{userinfo.split(':', 1)[0]}:***@{after}" if ":" in userinfo else head
    if not sep:
        return head
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    masked = [(k, "***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs]
    return f"{head}?{urllib.parse.urlencode(masked, safe=':/*')}"


def _names_registry(method: Callable[Concatenate[ModelRegistry, P], R]) -> Callable[Concatenate[ModelRegistry, P], R]:
    """Raise a filesystem failure (unreachable endpoint, missing bucket, denied access) as a RegistryError naming
    the registry URI, so a caller (or a worker's log) says which registry failed, not just which key."""

    @functools.wraps(method)
    def wrapper(registry: ModelRegistry, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(registry, *args, **kwargs)
        except OSError as exc:
            raise RegistryError(f"registry {registry.display_uri}: {exc}") from exc

    return wrapper


def _sha256_local(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """Where artifacts from remote registries are downloaded (``RAYML_CACHE_DIR``, else ~/.cache/rayml)."""
    return Path(os.environ.get("RAYML_CACHE_DIR") or Path.home() / ".cache" / "rayml")


@dataclass(frozen=True)
class ModelVersion:
    """A published version whose artifact files were verified against their checksums.

    Attributes:
        path: local directory holding the verified files (the version itself on a local registry,
            a download cache for remote ones).
    """

    name: str
    version: int
    path: Path
    metadata: dict[str, Any]

    def file(self, name: str) -> Path:
        """Local path of artifact ``name``."""
        if name not in self.metadata["files"]:
            raise RegistryError(f"{self.name} v{self.version}: no artifact named {name!r}")
        return self.path / name

    @property
    def label(self) -> str:
        return f"{self.name}:v{self.version}"


class ModelRegistry:
    """Registry rooted at a local path or a pyarrow filesystem URI."""

    def __init__(self, root: str | Path, filesystem: pafs.FileSystem | None = None, cache_dir: Path | None = None):
        text = str(root)
        if filesystem is None and COLLAPSED_URI.match(text):
            raise RegistryError(
                f"registry {display_uri(text)} looks like a URI whose '//' was collapsed (by pathlib.Path): "
                f"pass it as a string, e.g. {display_uri(text.replace(':/', '://', 1))}"
            )
        if filesystem is not None:
            self.fs, self.base = filesystem, text.rstrip("/")
        elif "://" in text:
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(text)
            except (ValueError, OSError) as exc:  # ArrowInvalid: unknown scheme or query option
                raise RegistryError(f"invalid registry URI {display_uri(text)}: {exc}") from None
            self.base = self.base.rstrip("/")
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
        self.uri = text
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.cache_dir = cache_dir or default_cache_dir()

    @property
    def root(self) -> str:
        return self.uri

    @property
    def location(self) -> str:
        """What to hand a worker on another process or node: the URI as given, or the absolute local path."""
        return self.uri if not self.local or "://" in self.uri else self.base

    @property
    def display_uri(self) -> str:
        """The root for messages: secret query values masked."""
        return display_uri(self.uri)

    def _missing_root(self) -> str | None:
        """Why the registry root cannot be found (None when it exists): names the URI, host or bucket."""
        if self._exists(self.base):
            return None
        if self.local:
            return (f"registry directory {self.base} does not exist on this machine ({socket.gethostname()}); "
                    "workers on other nodes need a registry URI they can all reach (s3://…, gs://…)")
        bucket = self.base.split("/", 1)[0]
        if self.fs.type_name in ("s3", "gcs") and not self._exists(bucket):
            return f"bucket {bucket!r} of registry {self.display_uri} does not exist"
        return f"registry {self.display_uri} holds nothing at {self.base}"

    # -- filesystem helpers -------------------------------------------------------------------
    def _p(self, *parts: str | int) -> str:
        return "/".join([self.base, *(str(p) for p in parts)])

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as fh:
            return fh.read().decode()

    def _write_atomic(self, path: str, text: str) -> None:
        """Write then rename, so readers see the old or the new file, never half of one."""
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(text.encode())
        self.fs.move(tmp, path)

    def _model_dir(self, name: str) -> str:
        if not NAME_RE.match(name):
            raise RegistryError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-'")
        return self._p(name)

    # -- reading ------------------------------------------------------------------------------
    @_names_registry
    def models(self) -> list[str]:
        if not self._exists(self.base):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.base))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and self._exists(self._p(i.base_name, "versions")))

    @_names_registry
    def versions(self, name: str) -> list[int]:
        """Published versions (those whose metadata.json exists), ascending."""
        vdir = self._model_dir(name) + "/versions"
        if not self._exists(vdir):
            return []
        numbers = [int(i.base_name) for i in self.fs.get_file_info(pafs.FileSelector(vdir)) if i.base_name.isdigit()]
        return sorted(n for n in numbers if self._exists(f"{vdir}/{n}/{METADATA}"))

    @_names_registry
    def aliases(self, name: str) -> dict[str, int]:
        path = self._model_dir(name) + "/aliases.json"
        return json.loads(self._read_text(path)) if self._exists(path) else {}

    @_names_registry
    def alias_history(self, name: str) -> list[dict[str, Any]]:
        path = self._model_dir(name) + "/alias_history.jsonl"
        if not self._exists(path):
            return []
        return [json.loads(line) for line in self._read_text(path).splitlines() if line.strip()]

    @_names_registry
    def resolve(self, name: str, ref: str | int) -> int:
        """Version number for ``ref``: an int, ``"3"``, ``"v3"``, ``"latest"`` or an alias."""
        versions = self.versions(name)
        if not versions:
            missing = self._missing_root()
            why = f": {missing}" if missing else ""
            raise RegistryError(f"model {name!r} has no versions in registry {self.display_uri}{why}")
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

    @_names_registry
    def metadata(self, name: str, ref: str | int) -> dict[str, Any]:
        """Metadata of a version without touching its artifacts."""
        number = self.resolve(name, ref)
        path = f"{self._model_dir(name)}/versions/{number}/{METADATA}"
        try:
            return json.loads(self._read_text(path))
        except (OSError, ValueError) as exc:
            raise ArtifactCorruptError(f"{name} v{number}: unreadable {METADATA} ({exc})") from None

    @_names_registry
    def get(self, name: str, ref: str | int = "production", verify: bool = True) -> ModelVersion:
        """A version with its files available locally; checksums verified unless ``verify=False``."""
        meta = self.metadata(name, ref)
        number = meta["version"]
        remote_dir = f"{self._model_dir(name)}/versions/{number}"
        local_dir = Path(remote_dir) if self.local else self._download(name, number, remote_dir, meta)
        if verify:
            for fname, checksum in meta["files"].items():
                fpath = local_dir / fname
                if not fpath.is_file():
                    raise ArtifactCorruptError(f"{name} v{number}: artifact {fname} is missing")
                if _sha256_local(fpath) != checksum:
                    raise ArtifactCorruptError(
                        f"{name} v{number}: artifact {fname} fails its checksum (corrupt or truncated)"
                    )
        return ModelVersion(name, number, local_dir, meta)

    def _download(self, name: str, number: int, remote_dir: str, meta: dict[str, Any]) -> Path:
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        local_dir = self.cache_dir / key / name / str(number)
        local_dir.mkdir(parents=True, exist_ok=True)
        for fname, checksum in meta["files"].items():
            target = local_dir / fname
            if target.is_file() and _sha256_local(target) == checksum:
                continue
            # Several actors of one node may download the same version at once: each writes its own temporary
            # file and renames it into place, so a reader sees no file or a whole one, never a half-written one.
            partial = local_dir / f".{fname}.{uuid.uuid4().hex[:8]}.part"
            try:
                with self.fs.open_input_stream(f"{remote_dir}/{fname}") as src, partial.open("wb") as dst:
                    while block := src.read(CHUNK):
                        dst.write(block)
                os.replace(partial, target)
            except FileNotFoundError:
                raise ArtifactCorruptError(
                    f"{name} v{number}: artifact {fname} is missing in registry {self.display_uri}"
                ) from None
            finally:
                partial.unlink(missing_ok=True)
        return local_dir

    # -- writing ------------------------------------------------------------------------------
    @_names_registry
    def register(self, name: str, files: Mapping[str, str | Path], metadata: Mapping[str, Any]) -> ModelVersion:
        """Copy local ``files`` into a new immutable version and return it (verified)."""
        for fname in files:
            if not fname or "/" in fname or fname == METADATA:
                raise RegistryError(f"invalid artifact name {fname!r}")
        model_dir = self._model_dir(name)
        self.fs.create_dir(f"{model_dir}/versions", recursive=True)
        checksums = {fname: _sha256_local(Path(src)) for fname, src in files.items()}
        token = uuid.uuid4().hex
        stage = f"{model_dir}/.stage-{token}"
        self.fs.create_dir(stage, recursive=True)
        try:
            for fname, src in files.items():
                self._upload(src, f"{stage}/{fname}")
            for _ in range(1000):
                number = max(self.versions(name), default=0) + 1
                meta = {
                    **metadata, "name": name, "version": number, "files": checksums, "writer": token,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
                if self._publish(stage, f"{model_dir}/versions/{number}", meta):
                    return self.get(name, number)
            raise RegistryError(f"{name}: could not allocate a version number")
        finally:
            if self._exists(stage):
                self.fs.delete_dir(stage)

    def _upload(self, src: str | Path, dest: str) -> None:
        with Path(src).open("rb") as fh, self.fs.open_output_stream(dest) as out:
            while block := fh.read(CHUNK):
                out.write(block)

    def _publish(self, stage: str, final: str, meta: dict[str, Any]) -> bool:
        """Make ``stage`` version ``final``; False when another writer already took that number."""
        text = json.dumps(meta, indent=1, sort_keys=True)
        with self.fs.open_output_stream(f"{stage}/{METADATA}") as fh:
            fh.write(text.encode())
        if self.local:
            try:
                os.rename(stage, final)  # atomic; fails when `final` exists and is not empty
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False  # another writer took this number
                raise
            return True
        if self._exists(f"{final}/{METADATA}"):
            return False
        names = [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(stage)) if i.base_name != METADATA]
        self.fs.create_dir(final, recursive=True)
        for fname in names:
            self.fs.copy_file(f"{stage}/{fname}", f"{final}/{fname}")
        self._write_atomic(f"{final}/{METADATA}", text)  # last: the version becomes visible here
        return True

    @_names_registry
    def set_alias(self, name: str, alias: str, ref: str | int, reason: str = "", evidence: str | None = None) -> int:
        """Point ``alias`` at a version atomically and append the move to the history (with the id of the evidence
        behind it, when a rollout controller made the move)."""
        if not NAME_RE.match(alias) or alias == "latest" or alias.lstrip("v").isdigit():
            raise RegistryError(f"invalid alias {alias!r}")
        number = self.resolve(name, ref)
        model_dir = self._model_dir(name)
        with self._alias_lock(model_dir):
            aliases = self.aliases(name)
            previous = aliases.get(alias)
            aliases[alias] = number
            self._write_atomic(f"{model_dir}/aliases.json", json.dumps(aliases, indent=1, sort_keys=True))
            event = {
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "alias": alias, "from": previous, "to": number, "reason": reason,
            }
            if evidence is not None:
                event["evidence"] = evidence
            history = f"{model_dir}/alias_history.jsonl"
            old = self._read_text(history) if self._exists(history) else ""
            self._write_atomic(history, old + json.dumps(event) + "\n")
            record = self.serving_record(name)
            if str(number) in record.get(alias, {}).get("refused", {}):
                del record[alias]["refused"][str(number)]  # an explicit move retries a refused version
                self._write_atomic(f"{model_dir}/serving.json", json.dumps(record, indent=1, sort_keys=True))
        return number

    def serving_record(self, name: str) -> dict[str, dict[str, Any]]:
        """What servers reported per alias: ``{"production": {"known_good": 3, "refused": {"4": "why"}}}``."""
        path = self._model_dir(name) + "/serving.json"
        if not self._exists(path):
            return {}
        try:
            return json.loads(self._read_text(path))
        except (OSError, ValueError):
            return {}  # a damaged record only costs the fallback, never the serving

    @_names_registry
    def record_serving(self, name: str, alias: str, version: int, error: str | None = None) -> None:
        """A server loaded ``version`` for ``alias`` (it becomes the alias's last known-good one), or refused it.

        A later server that finds the alias on a refused version serves the known-good one instead; moving the
        alias again (``set_alias``, i.e. promote) clears that version's refusal, so an operator can retry it.
        """
        model_dir = self._model_dir(name)
        with self._alias_lock(model_dir):
            record = self.serving_record(name)
            entry = record.setdefault(alias, {"known_good": None, "refused": {}})
            if error is None:
                if entry.get("known_good") == version and str(version) not in entry["refused"]:
                    return  # nothing new: no write from every replica at every poll
                entry["known_good"] = version
                entry["refused"].pop(str(version), None)
            else:
                if entry["refused"].get(str(version)) == error:
                    return
                entry["refused"][str(version)] = error
            self._write_atomic(f"{model_dir}/serving.json", json.dumps(record, indent=1, sort_keys=True))

    @contextlib.contextmanager
    def _alias_lock(self, model_dir: str):
        """Serialise alias read-modify-write among processes on a local filesystem (flock)."""
        if not self.local:
            yield  # object stores: one writer of aliases per model (see module docstring)
            return
        with open(f"{model_dir}/.alias.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @_names_registry
    def rollback(self, name: str, alias: str) -> int:
        """Point ``alias`` back to the version it had before its latest move; returns that version."""
        current = self.aliases(name).get(alias)
        if current is None:
            raise RegistryError(f"{name}: no alias {alias!r} to roll back")
        moves = [m for m in self.alias_history(name) if m["alias"] == alias]
        if not moves or moves[-1]["to"] != current or moves[-1]["from"] is None:
            raise RegistryError(f"{name}: alias {alias!r} has no earlier version to roll back to")
        return self.set_alias(name, alias, moves[-1]["from"], reason=f"rollback from v{current}")

    # -- feature profiles (references versioned with the model) ---------------------------------
    # Layout, beside the immutable versions (never inside ``versions/<N>/``)::
    #
    #     <model>/profiles/<N>/<kind>.bin        first build of a profile kind ("training" | "served")
    #     <model>/profiles/<N>/<kind>-<n>.bin    rebuilds (n = 2, 3, …); older files are kept
    #     <model>/profiles/<N>/<file>.json       sidecar per file: sha256, size, created_at, meta
    #     <model>/profiles/<N>/current.json      {kind: {"file", "sha256", "created_at", "meta"}}: the current build
    def _profile_dir(self, name: str, version: str | int) -> tuple[int, str]:
        number = self.resolve(name, version)
        return number, f"{self._model_dir(name)}/profiles/{number}"

    @_names_registry
    def save_profile(self, name: str, version: str | int, kind: str, data: bytes,
                     meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Store a serialized feature profile of ``kind`` for a published version and make it current.

        The first build is ``<kind>.bin``; a rebuild writes ``<kind>-<n>.bin`` and moves ``current.json`` to it.
        Returns the ``current.json`` entry (file, sha256, created_at, meta).
        """
        if kind not in PROFILE_KINDS:
            raise RegistryError(f"invalid profile kind {kind!r} (kinds: {', '.join(PROFILE_KINDS)})")
        number, pdir = self._profile_dir(name, version)
        self.fs.create_dir(pdir, recursive=True)
        checksum = hashlib.sha256(data).hexdigest()
        with self._profile_lock(pdir):
            current = self.profiles(name, number)
            existing = {i.base_name for i in self.fs.get_file_info(pafs.FileSelector(pdir))}
            fname, n = f"{kind}.bin", 1
            while fname in existing or f"{fname[:-4]}.json" in existing:  # never reuse a name, even if lost
                n += 1
                fname = f"{kind}-{n}.bin"
            entry = {"file": fname, "sha256": checksum,
                     "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "meta": dict(meta or {})}
            tmp = f"{pdir}/{fname}.tmp-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(tmp) as fh:
                fh.write(data)
            self.fs.move(tmp, f"{pdir}/{fname}")
            sidecar = {**entry, "name": name, "version": number, "kind": kind, "size": len(data)}
            self._write_atomic(f"{pdir}/{fname[:-4]}.json", json.dumps(sidecar, indent=1, sort_keys=True))
            current[kind] = entry
            self._write_atomic(f"{pdir}/current.json", json.dumps(current, indent=1, sort_keys=True))
        return entry

    @_names_registry
    def profiles(self, name: str, version: str | int) -> dict[str, dict[str, Any]]:
        """The current profile per kind of a version: ``{kind: {"file", "sha256", "created_at", "meta"}}``."""
        number, pdir = self._profile_dir(name, version)
        path = f"{pdir}/current.json"
        if not self._exists(path):
            return {}
        try:
            return json.loads(self._read_text(path))
        except (OSError, ValueError) as exc:
            raise ArtifactCorruptError(f"{name} v{number}: unreadable profiles/current.json ({exc})") from None

    @_names_registry
    def load_profile(self, name: str, version: str | int, kind: str) -> bytes:
        """Bytes of the current profile of ``kind``, verified against the checksum recorded when saved."""
        number, pdir = self._profile_dir(name, version)
        entry = self.profiles(name, number).get(kind)
        if entry is None:
            raise RegistryError(f"{name} v{number}: no {kind!r} profile (have {sorted(self.profiles(name, number))})")
        try:
            with self.fs.open_input_stream(f"{pdir}/{entry['file']}") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise ArtifactCorruptError(f"{name} v{number}: profile file {entry['file']} is missing") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArtifactCorruptError(
                f"{name} v{number}: profile file {entry['file']} fails its checksum (corrupt or truncated)"
            )
        return data

    @contextlib.contextmanager
    def _profile_lock(self, pdir: str):
        """Serialise profile saves of one version among processes on a local filesystem (flock)."""
        if not self.local:
            yield  # object stores: one writer of profiles per version
            return
        with open(f"{pdir}/.profiles.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
