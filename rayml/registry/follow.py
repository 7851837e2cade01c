"""Serve whatever a registry alias points at: follow promotes and rollbacks, refuse versions that fail to load.

A server holds one :class:`AliasFollower` per served reference. The rules, the same for every model:

- A reference that is a version number (``"3"``, ``"v3"``) is pinned and never moves.
- An alias is re-resolved on every :meth:`AliasFollower.refresh` (servers call it every ``alias_poll_s``).
  When it moved, the new version is loaded off the request path and swapped in by one reference assignment, so
  a request sees the old or the new version whole.
- A version that fails to load (missing or corrupt file, failed parity, features the views lack) is refused:
  the current one keeps serving, the refusal is recorded in the registry, and every other server skips it.
- At start, a server whose alias points at a refused version, or at one that fails to load, serves the alias's
  last known-good version (recorded by the servers that loaded it) and reports the refusal.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from rayml.registry.store import ModelRegistry, RegistryError

T = TypeVar("T")


def is_pinned(ref: str) -> bool:
    """True for a version number (``"3"``, ``"v3"``), which never moves; False for an alias."""
    digits = ref[1:] if ref.startswith("v") else ref
    return digits.isdigit()


class AliasFollower(Generic[T]):
    """The loaded version of ``model`` that ``ref`` resolves to, kept current by :meth:`refresh`.

    Args:
        load: builds the served object of a version number; any exception refuses that version.

    Raises (at construction):
        RegistryError: neither the alias's version nor its last known-good one could be loaded.
    """

    def __init__(self, registry: ModelRegistry, model: str, ref: str, load: Callable[[int], T]) -> None:
        self.registry, self.model, self.ref = registry, model, str(ref)
        self._load = load
        self._lock = threading.Lock()  # one refresh at a time (poll thread and reconfigure)
        self.refused: dict[int, str] = {}  # version → why, as this server saw or read it
        target = registry.resolve(model, self.ref)
        self.target = target  # where the registry points the reference (may be a refused version)
        record = {} if self.pinned else registry.serving_record(model).get(self.ref, {})
        self.refused.update({int(v): why for v, why in record.get("refused", {}).items()})
        known_good = record.get("known_good")
        order = [known_good, target] if target in self.refused else [target, known_good]  # refused: last resort
        tried: list[str] = []
        for number in dict.fromkeys(n for n in order if n is not None):
            try:
                self.value, self.version = load(number), int(number)
            except Exception as exc:  # a broken version: try the known-good one
                self._refuse(number, exc)
                tried.append(f"v{number}: {exc}")
                continue
            self._record_good()
            return
        refused = "; ".join(tried) or "; ".join(f"v{v}: {why}" for v, why in self.refused.items())
        raise RegistryError(f"{model} {self.ref!r}: no loadable version ({refused})")

    @property
    def pinned(self) -> bool:
        return is_pinned(self.ref)

    @property
    def label(self) -> str:
        return f"{self.model}:v{self.version}"

    def refresh(self) -> bool:
        """Follow the alias when it moved; True when a new version now serves.

        Never raises: a registry that cannot be read, or a version that cannot be loaded, keeps the current one
        (the latter is recorded as refused).
        """
        if self.pinned:
            return False
        with self._lock:
            try:
                target = self.registry.resolve(self.model, self.ref)
            except RegistryError:
                return False  # alias deleted or registry unreadable: keep serving what is loaded
            self.target = target
            if target == self.version:
                return False
            refused = self.registry.serving_record(self.model).get(self.ref, {}).get("refused", {})
            if str(target) in refused:  # another server (or this one) refused it: do not load it again
                self.refused[target] = refused[str(target)]
                return False
            self.refused.pop(target, None)  # moved onto it again since (ModelRegistry.set_alias): retry
            try:
                loaded = self._load(target)
            except Exception as exc:
                self._refuse(target, exc)
                return False
            self.value, self.version = loaded, target
            self._record_good()
            return True

    def _refuse(self, number: int, exc: Exception) -> None:
        self.refused[number] = f"{type(exc).__name__}: {exc}"
        if not self.pinned:
            with contextlib.suppress(OSError, RegistryError):  # advisory: this server refuses it either way
                self.registry.record_serving(self.model, self.ref, number, error=self.refused[number])

    def _record_good(self) -> None:
        if not self.pinned:
            with contextlib.suppress(OSError, RegistryError):
                self.registry.record_serving(self.model, self.ref, self.version)

    def describe(self) -> dict[str, object]:
        """For ``/healthz``: what serves, what follows, and every refused version with the reason."""
        body: dict[str, object] = {"ref": self.ref, "serving": self.label, "follows_registry": not self.pinned}
        if self.refused:
            body["refused"] = {f"{self.model}:v{v}": why for v, why in sorted(self.refused.items())}
        return body
