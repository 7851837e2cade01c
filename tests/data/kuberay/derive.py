"""Derive the KubeRay v1.7 CRDs' openAPIV3Schema into this folder, so tests need no copy of the CRDs.

    .venv/bin/python tests/data/kuberay/derive.py ../shared/reference/kuberay-v1.7

Writes ``<kind>.v1.schema.json`` (the ``v1`` version's ``openAPIV3Schema``, unchanged, keys sorted) for the kinds
rayml renders. Source and licence: README.md and LICENSE beside this file.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {"rayservice": "ray.io_rayservices.yaml", "rayjob": "ray.io_rayjobs.yaml"}


def derive(reference: Path) -> None:
    for kind, name in CRDS.items():
        crd = yaml.safe_load((reference / name).read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = version["schema"]["openAPIV3Schema"]
        (HERE / f"{kind}.v1.schema.json").write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
    shutil.copyfile(reference / "LICENSE", HERE / "LICENSE")


if __name__ == "__main__":
    derive(Path(sys.argv[1]))
