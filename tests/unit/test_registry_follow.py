"""AliasFollower on a real file registry: promote and rollback followed, broken versions refused and remembered."""

from __future__ import annotations

import pytest

from rayml.registry import ModelRegistry, RegistryError
from rayml.registry.follow import AliasFollower, is_pinned
from tests.unit.test_registry import register

pytestmark = pytest.mark.unit


def loader(registry: ModelRegistry, broken: set[int]):
    """Loads a version's verified artifact bytes; versions in ``broken`` fail like a model that will not load."""
    def load(number: int) -> bytes:
        if number in broken:
            raise RegistryError(f"ranker v{number} failed its ONNX parity check; refusing to serve it")
        return registry.get("ranker", number).file("model.onnx").read_bytes()
    return load


@pytest.fixture
def registry(tmp_path):
    root = tmp_path / "reg"
    for tag in "abcd":
        register(root, tag)
    reg = ModelRegistry(root)
    reg.set_alias("ranker", "production", 1)
    return reg


def test_pinned_references():
    assert is_pinned("3") and is_pinned("v12")
    assert not is_pinned("production") and not is_pinned("canary")


def test_promote_and_rollback_are_followed(registry):
    follower = AliasFollower(registry, "ranker", "production", loader(registry, set()))
    assert follower.label == "ranker:v1" and follower.value.startswith(b"weights a")
    assert follower.refresh() is False  # nothing moved
    registry.set_alias("ranker", "production", 2, reason="promote")
    assert follower.refresh() is True and follower.label == "ranker:v2"
    assert follower.value.startswith(b"weights b")
    registry.rollback("ranker", "production")
    assert follower.refresh() is True and follower.label == "ranker:v1"
    assert registry.serving_record("ranker")["production"]["known_good"] == 1


def test_a_pinned_version_never_moves(registry):
    follower = AliasFollower(registry, "ranker", "1", loader(registry, set()))
    registry.set_alias("ranker", "production", 2)
    assert follower.refresh() is False and follower.label == "ranker:v1"
    assert follower.describe()["follows_registry"] is False
    assert registry.serving_record("ranker") == {}  # pinned servers record nothing


def test_a_broken_version_is_refused_recorded_and_skipped_by_later_servers(registry):
    broken = {3}
    first = AliasFollower(registry, "ranker", "production", loader(registry, broken))
    registry.set_alias("ranker", "production", 2)
    assert first.refresh() and first.label == "ranker:v2"
    registry.set_alias("ranker", "production", 3, reason="promote")  # a version that will not load
    assert first.refresh() is False and first.label == "ranker:v2"  # the current one keeps serving
    assert first.target == 3 and "parity" in first.refused[3]
    record = registry.serving_record("ranker")["production"]
    assert record["known_good"] == 2 and "parity" in record["refused"]["3"]
    assert "ranker:v3" in first.describe()["refused"]

    loads: list[int] = []

    def counting(number: int) -> bytes:
        loads.append(number)
        return loader(registry, set())(number)  # this server could load it: it must still not try

    later = AliasFollower(registry, "ranker", "production", counting)  # e.g. a replica added by autoscaling
    assert later.label == "ranker:v2" and loads == [2]
    assert later.refresh() is False and loads == [2]


def test_promoting_again_retries_a_refused_version(registry):
    broken = {3}
    follower = AliasFollower(registry, "ranker", "production", loader(registry, broken))
    registry.set_alias("ranker", "production", 3)
    assert follower.refresh() is False and follower.label == "ranker:v1"
    broken.clear()  # fixed (e.g. a transient read error); the operator promotes it again
    registry.set_alias("ranker", "production", 3, reason="promote again")
    assert "3" not in registry.serving_record("ranker")["production"]["refused"]
    assert follower.refresh() is True and follower.label == "ranker:v3"


def test_start_on_a_broken_alias_serves_the_last_known_good(registry):
    AliasFollower(registry, "ranker", "production", loader(registry, set()))  # v1 recorded as known good
    registry.set_alias("ranker", "production", 4)
    follower = AliasFollower(registry, "ranker", "production", loader(registry, {4}))
    assert follower.label == "ranker:v1" and follower.target == 4 and 4 in follower.refused


def test_no_loadable_version_is_an_error_naming_the_reference(registry):
    with pytest.raises(RegistryError, match=r"ranker 'production': no loadable version \(v1: .*parity"):
        AliasFollower(registry, "ranker", "production", loader(registry, {1}))
    with pytest.raises(RegistryError, match="no alias 'nope'"):
        AliasFollower(registry, "ranker", "nope", loader(registry, set()))


def test_an_unreadable_serving_record_only_costs_the_fallback(registry, tmp_path):
    (tmp_path / "reg" / "ranker" / "serving.json").write_text("{not json")
    follower = AliasFollower(registry, "ranker", "production", loader(registry, set()))
    assert follower.label == "ranker:v1"
