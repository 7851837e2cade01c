"""The ranking stage as its own Serve deployment: the ``split`` composition plan.

The ingress retrieves, looks features up and encodes them, then sends ``(version label, rows)`` here through a
Serve handle. This deployment batches rows from all ingress replicas into one ONNX call per version, on a GPU
when the deployment was given one (``ray_actor_options: {num_gpus: 1}``), and loads any version it is asked
for on first use (the ingress decides which version answers, so an alias swap never mixes two).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import ray
from ray import serve

from rayml.inference import ort_session
from rayml.registry import ModelRegistry
from rayml.serving.batching import apply_batching, batching_state
from rayml.serving.stages import ranker_artifact, split_rows


class RankerSessions:
    """ONNX sessions of ranker versions by label (``ranker:v3``), loaded on first use, the least recent evicted."""

    def __init__(self, registry: str, model: str, precision: str, gpu: bool, max_versions: int = 4) -> None:
        self.registry = ModelRegistry(registry)
        self.model, self.precision, self.gpu, self.max_versions = model, precision, gpu, max_versions
        self._sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()

    def session(self, label: str) -> ort.InferenceSession:
        with self._lock:
            if label in self._sessions:
                self._sessions.move_to_end(label)
                return self._sessions[label]
        model, _, number = label.rpartition(":v")
        if model != self.model or not number.isdigit():
            raise KeyError(f"version label {label!r} is not one of model {self.model!r}")
        version = self.registry.get(self.model, number)  # verifies checksums
        session = ort_session(version.file(ranker_artifact(version, self.precision)), threads=1, gpu=self.gpu)
        with self._lock:
            self._sessions[label] = session
            while len(self._sessions) > self.max_versions:
                self._sessions.popitem(last=False)
        return session

    def score(self, labels: list[str], rows: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """Scores of each request's rows: one ONNX call per version across all requests; a version that fails
        (e.g. cannot load) gives its own requests the exception, and the batch's other versions are answered."""
        out: dict[int, np.ndarray | Exception] = {}
        for label in dict.fromkeys(labels):
            members = [i for i, name in enumerate(labels) if name == label]
            try:
                scores = self.session(label).run(["score"], {"features": np.concatenate([rows[i] for i in members])})[0]
            except Exception as exc:
                out.update(dict.fromkeys(members, exc))
                continue
            out.update(zip(members, split_rows(scores, [len(rows[i]) for i in members]), strict=True))
        return [out[i] for i in range(len(rows))]

    @property
    def loaded(self) -> list[str]:
        return list(self._sessions)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Ranker:
    """Scores encoded rows for the ingress replicas; ``user_config`` tunes its batching live."""

    def __init__(self, registry: str, model: str, precision: str, preload: str) -> None:
        """``preload``: the alias the ingress serves by default, loaded now so a bad deploy (e.g. a GPU node
        without onnxruntime-gpu) fails at start, not on the first request."""
        gpu = bool(ray.get_gpu_ids())  # num_gpus in the deployment's ray_actor_options
        self.sessions = RankerSessions(registry, model, "fp32" if gpu and precision == "auto" else precision, gpu)
        self.device = "cuda" if gpu else "cpu"
        self.sessions.session(f"{model}:v{self.sessions.registry.metadata(model, preload)['version']}")

    def reconfigure(self, config: dict) -> None:
        """``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``."""
        apply_batching(self._score_batch, config, allowed=set())

    async def score(self, request: tuple[str, np.ndarray]) -> np.ndarray:
        """Scores of ``(version label, encoded rows)``; concurrent requests share one ONNX call per version."""
        scores = await self._score_batch(request)
        if isinstance(scores, Exception):  # only this version failed (e.g. a shadow the Ranker cannot load)
            raise scores
        return scores

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def _score_batch(self, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray | Exception]:
        return self.sessions.score([label for label, _ in requests], [rows for _, rows in requests])

    def describe(self) -> dict:
        return {"device": self.device, "loaded": self.sessions.loaded, **batching_state(self._score_batch)}
