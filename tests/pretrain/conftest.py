"""Fixtures for the pretraining app tests: demo shards written once per session."""

from pathlib import Path

import pytest

from data_pipelines.demo import write_demo_shards


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """A small demo set (train/ and test/), enough for a few epochs of 16-image batches."""
    root = tmp_path_factory.mktemp("demo-shards")
    write_demo_shards(root, num_train=512, num_test=128, max_count=128, workers=1)
    return root
