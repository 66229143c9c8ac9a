"""scripts/channel_fold_cosine.py: the measurement behind the README's numbers on the ``sum`` channel fold."""

from __future__ import annotations

import pytest
import torch
from script_loader import load_script

VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"


@pytest.fixture(scope="module")
def script():
    return load_script("channel_fold_cosine")


def test_patch_embeddings_fold_exactly_and_padded_cnn_stems_do_not(script):
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert script.cosine(VIT, images, 28, seed=0) == pytest.approx(1.0, abs=1e-5)  # the same computation
    assert script.cosine("timm:resnet18", images, 28, seed=0) < 0.99  # the zero padding's border differs
