"""Training augmentation: presets keep shapes and ranges, are seeded, and never touch the global RNG."""

from __future__ import annotations

import pytest
import torch

from medadapt.errors import ConfigError
from medadapt.training.augment import AUGMENT_PRESETS, Augment, make_augment


def batch(channels: int = 1, b: int = 6, size: int = 20) -> torch.Tensor:
    return torch.randint(
        0, 256, (b, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(AUGMENT_PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_are_seeded_and_keep_shape_and_range(name, channels):
    x = batch(channels)
    rng = torch.get_rng_state()
    out = make_augment(name)(x, gen(0))
    assert torch.equal(torch.get_rng_state(), rng)
    assert out.shape == x.shape
    if name == "none":
        assert out is x
        return
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, make_augment(name)(x, gen(0)))
    assert not torch.equal(out, make_augment(name)(x, gen(1)))
    assert not torch.equal(out, x.float() / 255)


def test_float_input_in_unit_range_is_accepted():
    x = batch().float() / 255
    assert torch.equal(make_augment("light")(x, gen(0)), make_augment("light")(batch(), gen(0)))


def test_flip_only_gives_each_image_or_its_mirror():
    x = batch(b=16).float() / 255
    out = Augment(hflip=True)(x, gen(0))
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_full_crop_is_the_identity():
    x = batch().float() / 255
    out = Augment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))(x, gen(0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_crops_zoom_in():
    """A crop shows part of the image enlarged: a one-pixel dot becomes larger or leaves the view."""
    x = torch.zeros(32, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = Augment(crop_scale=(0.1, 0.3))(x, gen(0))
    assert ((out > 0.01).flatten(1).sum(1) != 1).all()


def test_brightness_only_scales():
    x = torch.full((8, 1, 4, 4), 0.5)
    out = Augment(brightness=0.4)(x, gen(0))
    factors = out[:, 0, 0, 0] / 0.5
    assert ((factors >= 0.6 - 1e-6) & (factors <= 1.4 + 1e-6)).all() and factors.std() > 0
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="--augment 'heavy'"):
        make_augment("heavy")
