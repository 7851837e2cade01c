"""Models: networks, training, ONNX export and publishing to the registry."""

from __future__ import annotations

from rayml.models.config import ModelsConfig, RankerConfig, RetrieverConfig, TrainLoop
from rayml.models.data import TrainingData, load_training_data
from rayml.models.export import Parity, export_onnx, ort_session
from rayml.models.networks import Ranker, TwoTower
from rayml.models.pipeline import TrainedSlice, train_and_publish
from rayml.models.publish import RANKER, RETRIEVER
from rayml.models.training import TrainReport, resolve_device, train_ranker, train_retriever

__all__ = [
    "RANKER",
    "RETRIEVER",
    "ModelsConfig",
    "Parity",
    "Ranker",
    "RankerConfig",
    "RetrieverConfig",
    "TrainLoop",
    "TrainReport",
    "TrainedSlice",
    "TrainingData",
    "TwoTower",
    "export_onnx",
    "load_training_data",
    "ort_session",
    "resolve_device",
    "train_and_publish",
    "train_ranker",
    "train_retriever",
]
