"""ONNX Runtime sessions, without torch: what serving and batch workers import to run a model."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def ort_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU inference session with a fixed thread count (threads compete with Ray on small boxes)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
