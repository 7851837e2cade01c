"""The file registry: round trip, checksums, aliases with history and rollback, concurrent writers."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from rayml.registry import ArtifactCorruptError, ModelRegistry, RegistryError

pytestmark = pytest.mark.unit


def register(root, tag: str, parity: bool = True):
    reg = ModelRegistry(root)
    src = root.parent / f"model-{tag}.bin"
    src.write_bytes(f"weights {tag}".encode() * 100)
    return reg.register("ranker", {"model.onnx": src}, {"tag": tag, "parity": {"passed": parity}})


def test_round_trip_and_resolution(tmp_path):
    root = tmp_path / "reg"
    v1, v2 = register(root, "a"), register(root, "b")
    reg = ModelRegistry(root)
    assert (v1.version, v2.version) == (1, 2)
    assert reg.models() == ["ranker"] and reg.versions("ranker") == [1, 2]
    got = reg.get("ranker", "v1")
    assert got.metadata["tag"] == "a" and got.file("model.onnx").read_bytes().startswith(b"weights a")
    assert reg.resolve("ranker", "latest") == 2 and reg.resolve("ranker", 1) == 1
    assert set(got.metadata) >= {"files", "created_at", "version", "name"}


def test_aliases_history_and_rollback(tmp_path):
    root = tmp_path / "reg"
    register(root, "a"), register(root, "b")
    reg = ModelRegistry(root)
    reg.set_alias("ranker", "production", 1)
    reg.set_alias("ranker", "production", 2, reason="better")
    reg.set_alias("ranker", "canary", 2)
    assert reg.aliases("ranker") == {"production": 2, "canary": 2}
    assert reg.get("ranker", "production").version == 2
    assert reg.rollback("ranker", "production") == 1
    assert reg.get("ranker").version == 1
    history = [(h["alias"], h["from"], h["to"]) for h in reg.alias_history("ranker")]
    assert history == [("production", None, 1), ("production", 1, 2), ("canary", None, 2), ("production", 2, 1)]
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("ranker", "canary")


def test_bad_references_are_refused(tmp_path):
    root = tmp_path / "reg"
    register(root, "a")
    reg = ModelRegistry(root)
    with pytest.raises(RegistryError, match=r"version 7 does not exist \(have \[1\]\)"):
        reg.get("ranker", 7)
    with pytest.raises(RegistryError, match="no alias 'shadow'"):
        reg.get("ranker", "shadow")
    with pytest.raises(RegistryError, match="has no versions"):
        reg.get("retriever", "production")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.get("../etc", 1)
    with pytest.raises(RegistryError, match="invalid alias"):
        reg.set_alias("ranker", "v3", 1)


def test_corrupt_or_missing_artifact_names_version_and_file(tmp_path):
    root = tmp_path / "reg"
    v = register(root, "a")
    path = v.path / "model.onnx"
    path.write_bytes(path.read_bytes()[:10])  # truncated
    with pytest.raises(ArtifactCorruptError, match=r"ranker v1: artifact model.onnx fails its checksum"):
        ModelRegistry(root).get("ranker", 1)
    path.unlink()
    with pytest.raises(ArtifactCorruptError, match=r"ranker v1: artifact model.onnx is missing"):
        ModelRegistry(root).get("ranker", 1)


def _register_one(args):
    root, tag = args
    return register(root, tag).version


def test_concurrent_registrations_get_distinct_complete_versions(tmp_path):
    root = tmp_path / "reg"
    with ProcessPoolExecutor(4) as pool:
        numbers = list(pool.map(_register_one, [(root, str(i)) for i in range(12)]))
    assert sorted(numbers) == list(range(1, 13))
    reg = ModelRegistry(root)
    tags = {reg.get("ranker", n).metadata["tag"] for n in numbers}  # every version verifies
    assert tags == {str(i) for i in range(12)}
    assert not [p for p in (root / "ranker").iterdir() if p.name.startswith(".stage")]


def test_registry_on_a_non_local_pyarrow_filesystem(tmp_path):
    """Same API over any pyarrow filesystem: files are copied in with metadata last, downloaded and verified."""
    import pyarrow.fs as pafs

    remote = pafs._MockFileSystem()
    src = tmp_path / "m.onnx"
    src.write_bytes(b"weights" * 1000)
    reg = ModelRegistry("bucket/registry", filesystem=remote, cache_dir=tmp_path / "cache")
    v1 = reg.register("ranker", {"model.onnx": src}, {"tag": "a"})
    v2 = reg.register("ranker", {"model.onnx": src}, {"tag": "b"})
    assert (v1.version, v2.version) == (1, 2) and not reg.local
    assert v1.file("model.onnx").read_bytes() == src.read_bytes()
    assert str(v1.path).startswith(str(tmp_path / "cache"))
    reg.set_alias("ranker", "production", 2)
    assert reg.get("ranker").metadata["tag"] == "b"
    assert [p.base_name for p in remote.get_file_info(pafs.FileSelector("bucket/registry/ranker"))
            if p.base_name.startswith(".stage")] == []
    with remote.open_output_stream("bucket/registry/ranker/versions/1/model.onnx") as fh:
        fh.write(b"truncated")
    fresh = ModelRegistry("bucket/registry", filesystem=remote, cache_dir=tmp_path / "cache2")
    with pytest.raises(ArtifactCorruptError, match=r"ranker v1: artifact model.onnx fails its checksum"):
        fresh.get("ranker", 1)


def test_half_written_version_is_invisible(tmp_path):
    """A version directory without metadata.json (a crashed writer) is neither listed nor numbered over."""
    root = tmp_path / "reg"
    register(root, "a")
    (root / "ranker" / "versions" / "2").mkdir()
    (root / "ranker" / "versions" / "2" / "model.onnx").write_bytes(b"partial")
    reg = ModelRegistry(root)
    assert reg.versions("ranker") == [1]
    with pytest.raises(RegistryError, match="version 2 does not exist"):
        reg.get("ranker", 2)


def _promote(args):
    root, alias = args
    ModelRegistry(root).set_alias("ranker", alias, 1)


def test_concurrent_alias_moves_lose_nothing(tmp_path):
    root = tmp_path / "reg"
    register(root, "a")
    aliases = [f"a{i}" for i in range(16)]
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_promote, [(root, a) for a in aliases]))
    reg = ModelRegistry(root)
    assert set(reg.aliases("ranker")) == set(aliases)
    assert sorted(h["alias"] for h in reg.alias_history("ranker")) == sorted(aliases)
