"""One call that trains both slice models on a world and publishes them."""

from __future__ import annotations

from dataclasses import dataclass

from rayml.models.config import ModelsConfig
from rayml.models.data import load_training_data
from rayml.models.publish import publish_ranker, publish_retriever, world_lineage
from rayml.models.training import TrainReport, train_ranker, train_retriever
from rayml.registry import ModelRegistry, ModelVersion
from rayml.world import World


@dataclass(frozen=True)
class TrainedSlice:
    ranker: ModelVersion
    retriever: ModelVersion
    ranker_report: TrainReport
    retriever_report: TrainReport


def train_and_publish(
    world: World, config: ModelsConfig, registry: ModelRegistry, alias: str | None = "production"
) -> TrainedSlice:
    """Train ranker and retriever on ``world``, register both, and point ``alias`` at them."""
    data = load_training_data(world, config.split.holdout_users, config.split.seed)
    lineage = world_lineage(world)
    ranker, ranker_report = train_ranker(data, config.ranker)
    retriever, retriever_report = train_retriever(data, config.retriever)
    ranker_v = publish_ranker(registry, ranker, data, ranker_report, config.ranker.model_dump(mode="json"), lineage)
    retriever_v = publish_retriever(
        registry, retriever, data, retriever_report, config.retriever.model_dump(mode="json"), lineage
    )
    if alias:
        registry.set_alias(ranker_v.name, alias, ranker_v.version, reason="trained by train_and_publish")
        registry.set_alias(retriever_v.name, alias, retriever_v.version, reason="trained by train_and_publish")
    return TrainedSlice(ranker_v, retriever_v, ranker_report, retriever_report)
