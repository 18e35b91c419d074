"""Shared fixtures."""

import os
from pathlib import Path

import pytest

from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE
from tests.helpers import SampleModel, copy_project, dvc_repro, make_image_folder, tiny_params, train_on_sample


@pytest.fixture(autouse=True, scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests, and the `dvc repro` runs they start, keep frozen-backbone features in a throwaway cache."""
    folder = tmp_path_factory.mktemp("feature-cache")
    os.environ[CACHE_ENVIRONMENT_VARIABLE] = str(folder)
    return folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "raw")


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on tiny images after one full `dvc repro`; copy it before changing anything."""
    root = tmp_path_factory.mktemp("pipeline")
    raw_dir = make_image_folder(root / "raw")
    project = copy_project(root / "project", **tiny_params(raw_dir))
    ran, output = dvc_repro(project)
    assert ran == {"split", "augment", "train", "evaluate"}, output
    return project


@pytest.fixture(scope="session")
def sample_model(tmp_path_factory: pytest.TempPathFactory) -> SampleModel:
    """A model trained on the embedded sample by the train stage's code, with its unknown threshold (about 10 s)."""
    return train_on_sample(tmp_path_factory.mktemp("sample-model"))


# Fixtures that run a full `dvc repro` or train a model: a test that needs one is slow wherever it lives.
PIPELINE_FIXTURES = {"reproduced_project", "colour_model", "sample_model"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
