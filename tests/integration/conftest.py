"""Integration fixtures: candidates from the real Ray Data job, and the recommender on real Serve."""

from __future__ import annotations

import pytest

from rayml.batch import CandidateJobConfig, generate_candidates
from tests.conftest import free_port


@pytest.fixture(scope="session")
def candidates(ray_session, trained, tiny_world, tmp_path_factory):
    registry, _ = trained
    config = CandidateJobConfig(
        users=str(tiny_world.path / "users"),
        registry=str(registry.root),
        output=str(tmp_path_factory.mktemp("cands") / "candidates"),
        top_k=50,
        batch_size=512,
    )
    return config, generate_candidates(config)


@pytest.fixture(scope="session")
def recommender_args(candidates, trained, tiny_world):
    from rayml.serving import RecommenderArgs

    registry, _ = trained
    config, _ = candidates
    return RecommenderArgs(
        registry=str(registry.root),
        candidates=config.output,
        users=str(tiny_world.path / "users"),
        items=str(tiny_world.path / "items.parquet"),
        max_k=50,
    )


@pytest.fixture(scope="session")
def serve_url(ray_session, recommender_args):
    from ray import serve

    from rayml.serving.app import build_recommender

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_recommender(recommender_args), name="recommender", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("recommender")
