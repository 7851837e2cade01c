"""ONNX Runtime sessions, without torch: what serving and batch workers import to run a model."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def ort_session(path: str | Path, threads: int = 1, gpu: bool = False) -> ort.InferenceSession:
    """An inference session with a fixed CPU thread count (threads compete with Ray on small boxes).

    With ``gpu`` the CUDA provider comes first when this onnxruntime build has it (``onnxruntime-gpu``); a GPU
    requested from a CPU-only build is an error, not a silent CPU fallback.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if gpu:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"a GPU was requested for {path}, but this onnxruntime has no CUDA provider "
                               "(install onnxruntime-gpu on GPU nodes)")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)
