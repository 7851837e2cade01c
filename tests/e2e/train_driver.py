"""A training driver for the kill-and-resume test: `python tests/e2e/train_driver.py WORLD STORAGE NAME EPOCHS`."""

from __future__ import annotations

import json
import sys

import numpy as np

from rayml.config import init_ray
from rayml.models.config import TrainLoop
from rayml.models.data import load_training_data
from rayml.models.ray_train import train_on_ray
from rayml.world import World

if __name__ == "__main__":
    world_path, storage, name, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    init_ray()
    data = load_training_data(World(world_path))
    result = train_on_ray(
        "student", {"hidden": [64, 32]}, TrainLoop(epochs=epochs, batch_size=512), data,
        np.flatnonzero(~data.is_holdout), name=name, storage_path=storage,
        scaling={"num_workers": 1, "use_gpu": "auto", "resources_per_worker": {"CPU": 1}, "max_failures": 0},
    )
    print("RESULT " + json.dumps(result.metrics))
