"""Fixtures shared by the command-line tests."""

import pytest

from instaseg.cli.main import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny synthetic COCO dataset (10 images of 64 px): annotations/{train,val}.json, train/, val/."""
    root = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(root), "--images", "10", "--size", "64", "--seed", "1"]) == 0
    return root
