"""Integration fixtures: candidates from the real Ray Data job, and the recommender on real Serve."""

from __future__ import annotations

import pytest
import yaml

from rayml.batch import CandidateJobConfig, generate_candidates
from tests.conftest import REPO, free_port


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


def write_feature_repo(path, world_path, online_store: dict | None = None):
    """configs/features/demo.yaml pointed at ``world_path``, with another online store when given."""
    config = yaml.safe_load((REPO / "configs" / "features" / "demo.yaml").read_text())
    config["views"]["user_profile"]["source"] = str(world_path / "users")
    config["views"]["item_catalog"]["source"] = str(world_path / "items.parquet")
    config["views"]["user_profile"]["ttl_days"] = 36_500  # the test world's dates are fixed; today's are not
    if online_store is not None:
        config["online_store"] = online_store
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def feature_repo(ray_session, tiny_world, tmp_path_factory):
    """The tiny world's feature repo (embedded store), materialized: (repo YAML, state dir)."""
    from rayml.features.definitions import load_feature_repo
    from rayml.features.materialize import materialize_view

    root = tmp_path_factory.mktemp("features")
    path = write_feature_repo(root / "features.yaml", tiny_world.path)
    repo = load_feature_repo(path)
    for view in repo.views:
        materialize_view(repo, view, root / "online")
    return path, root / "online"


@pytest.fixture(scope="session")
def recommender_args(candidates, trained, feature_repo, tmp_path_factory):
    from rayml.serving import RecommenderArgs

    registry, _ = trained
    config, _ = candidates
    repo_path, state = feature_repo
    logs = tmp_path_factory.mktemp("serving-logs")
    return RecommenderArgs(
        registry=str(registry.root),
        candidates=config.output,
        features=str(repo_path),
        feature_state=str(state),
        event_log=str(logs / "events"),
        feature_log={"path": str(logs / "feature_log"), "sample_rate": 1.0, "flush_rows": 200},
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
