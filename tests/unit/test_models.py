"""Models learn the world's tastes, export to ONNX with parity, and publish with lineage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayml.models import export_onnx, load_training_data, ort_session, resolve_device
from rayml.models.networks import Ranker, ScoreHead
from rayml.monitoring import ndcg_at_k

pytestmark = pytest.mark.unit


def test_models_beat_chance_on_held_out_users(trained):
    _, result = trained
    assert result.ranker_report.holdout_auc > 0.62
    assert result.retriever_report.holdout_auc > 0.62
    assert result.ranker_report.loss[-1] < result.ranker_report.loss[0]


def test_published_versions_carry_parity_lineage_and_metrics(trained, tiny_world):
    registry, _result = trained
    for name in ("ranker", "retriever"):
        meta = registry.get(name, "production").metadata
        assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] <= 1e-4
        assert meta["lineage"]["world_path"] == str(tiny_world.path.resolve())
        assert len(meta["lineage"]["world_digest"]) == 16
        assert meta["lineage"]["data_end"] == tiny_world.end_date.isoformat()
        assert 0.5 < meta["metrics"]["holdout_auc"] < 1


def test_retriever_embeddings_rank_relevant_items_first(trained, tiny_world):
    """Top-20 by user·item from the exported artifacts is far better than random against the truth."""
    registry, _ = trained
    version = registry.get("retriever", "production")
    data = load_training_data(tiny_world)
    users = np.arange(200)
    emb = ort_session(version.file("user_tower.onnx")).run(None, {"user_features": data.user_x[users]})[0]
    scores = emb @ np.load(version.file("item_embeddings.npy")).T
    truth = tiny_world.relevance(users, data.item_ids)
    top = np.argsort(-scores, axis=1)[:, :20]
    model_ndcg = ndcg_at_k(np.take_along_axis(truth, top, 1), truth, 20).mean()
    random_top = np.random.default_rng(0).permuted(np.tile(np.arange(300), (200, 1)), axis=1)[:, :20]
    random_ndcg = ndcg_at_k(np.take_along_axis(truth, random_top, 1), truth, 20).mean()
    assert model_ndcg > random_ndcg + 0.2, (model_ndcg, random_ndcg)


def test_onnx_export_dynamic_batch_and_parity(tmp_path):
    model = ScoreHead(Ranker(6, 4, cross_dim=3, hidden=(8,)))
    sample = np.random.default_rng(0).normal(size=(33, 10)).astype(np.float32)
    parity = export_onnx(model, sample, tmp_path / "m.onnx", "features", "score")
    assert parity.passed and parity.rows == 33
    session = ort_session(tmp_path / "m.onnx")
    for n in (1, 7, 500):
        x = np.random.default_rng(n).normal(size=(n, 10)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(None, {"features": x})[0], expected, atol=1e-5)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda was requested"):
            resolve_device("cuda")


def test_in_batch_softmax_targets_the_diagonal_and_masks_duplicate_items():
    from rayml.models.networks import TwoTower
    from rayml.models.training import InBatchSoftmax

    torch.manual_seed(0)
    model = TwoTower(4, 3, embedding_dim=5, hidden=8)
    objective = InBatchSoftmax(model, torch.log(torch.full((10,), 0.1)))
    user, item = torch.randn(6, 4), torch.randn(6, 3)
    rows = torch.tensor([0, 1, 2, 2, 3, 4])  # rows 2 and 3 show the same item
    loss = objective(user, item, rows)
    u, v = model.user(user), model.item(item)
    logits = u @ v[:, :-1].T + v[:, -1][None, :] + np.log(10)
    logits[2, 3] = logits[3, 2] = -1e9  # the same item is not a negative for its own duplicate
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(6))
    assert torch.isclose(loss, expected, atol=1e-5)


def test_both_retriever_objectives_learn(tiny_world):
    from rayml.models import RetrieverConfig, train_retriever

    data = load_training_data(tiny_world)
    for loss in ("in_batch_softmax", "pointwise"):
        config = RetrieverConfig.model_validate({"loss": loss, "train": {"epochs": 2, "batch_size": 256, "device": "cpu"}})
        _, report = train_retriever(data, config)
        assert report.holdout_auc > 0.6, (loss, report.holdout_auc)
        assert report.loss[-1] < report.loss[0]


def test_training_data_joins_user_features_point_in_time(tmp_path):
    """With covariate drift, impressions before the drift day get the old snapshot, later ones the new."""
    from rayml.world import World, WorldConfig, build_world

    config = WorldConfig(n_users=300, n_items=40, days=6, impressions_per_user=20, chunk_users=300,
                         drift={"covariate": {"enabled": True, "start_day": 3, "shift": 2.0}})
    build_world(config, tmp_path / "w")
    world = World(tmp_path / "w")
    data = load_training_data(world)
    events = world.events_dataset().to_table(columns=["user_id", "ts"]).to_pandas()
    assert len(data.user_x) == 600  # two snapshots × 300 users
    assert (data.user_ids[data.event_user] == events["user_id"].to_numpy()).all()
    after = (events["ts"] >= "2026-01-04").to_numpy()
    assert after.any() and (~after).any()
    assert (data.event_user[~after] < 300).all() and (data.event_user[after] >= 300).all()
