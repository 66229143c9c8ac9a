"""Batched preprocessing, collation and loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medadapt.data.base import MedicalDataset
from medadapt.data.transforms import INTERPOLATIONS, Preprocess, collate, make_loader
from medadapt.errors import ConfigError, DataError


def images(b: int = 2, c: int = 1, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


class TinyDataset(MedicalDataset):
    """``n`` random gray images; ``sizes`` cycles image sizes to make mixed batches."""

    def __init__(self, n: int = 10, sizes: tuple[int, ...] = (8,)) -> None:
        self.name, self.split, self.task = "tiny", "train", "binary"
        self.classes, self.n_channels = ["a", "b"], 1
        self.labels = (np.arange(n) % 2).reshape(-1, 1).astype(np.int64)
        self._images = [
            images(1, 1, sizes[i % len(sizes)], sizes[i % len(sizes)], seed=i)[0] for i in range(n)
        ]
        self.batched_calls = 0

    def image(self, i: int) -> torch.Tensor:
        return self._images[i]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        self.batched_calls += 1
        return [self[i] for i in indices]


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize(("size", "c"), [((64, 64), 1), ((16, 20), 3), (28, 1)])
def test_resize_shapes(interpolation, size, c):
    out = Preprocess(size=size, interpolation=interpolation)(images(3, c))
    expected = (size, size) if isinstance(size, int) else size
    assert out.shape == (3, c, *expected) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 1.0  # bicubic is clamped


def test_same_size_resize_only_scales():
    x = images()
    assert torch.equal(Preprocess(size=28)(x), x.float() / 255)


def test_nearest_upsampling_repeats_pixels():
    x = images(1, 1, 4, 4)
    out = Preprocess(size=(8, 8), interpolation="nearest")(x)
    assert torch.equal(out, x.repeat_interleave(2, -1).repeat_interleave(2, -2).float() / 255)


@pytest.mark.parametrize(("name", "pil"), [("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)])
@pytest.mark.parametrize("target", [14, 56])
def test_antialiased_resize_matches_pil(name, pil, target):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 28), torch.linspace(0, 1, 28), indexing="ij")
    x = ((torch.sin(6 * xx) * torch.cos(4 * yy) + 1) * 127.5).round().to(torch.uint8)[None, None]
    ours = Preprocess(size=target, interpolation=name)(x)[0, 0] * 255
    ref = np.asarray(Image.fromarray(x[0, 0].numpy()).resize((target, target), pil), dtype=np.float32)
    assert (ours - torch.from_numpy(ref)).abs().max() <= 1.001  # PIL rounds to uint8 between its two passes


def test_pad_centres_the_image_on_zeros():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = Preprocess(size=(32, 31), mode="pad")(x)
    assert out.shape == (2, 1, 32, 31)
    inside = torch.zeros_like(out, dtype=torch.bool)
    inside[..., 2:30, 1:29] = True  # (32 - 28) // 2 = 2 rows on top, (31 - 28) // 2 = 1 column left
    assert (out[inside] == 1).all() and (out[~inside] == 0).all()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_pad_mean_matches_the_medmnist_plus_reference_transform():
    """The MedMNIST+ code normalises the RGB copy of the gray image, then pads with zeros (torchvision)."""
    transforms = pytest.importorskip("torchvision.transforms")
    x = images(2, 1, 28, 28)
    ref = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        transforms.Pad((98, 98, 98, 98), fill=0, padding_mode="constant"),
    ])  # fmt: skip
    expected = torch.stack([ref(Image.fromarray(im[0].numpy()).convert("RGB")) for im in x])
    prep = Preprocess(size=224, mode="pad_mean", mean=IMAGENET_MEAN, std=IMAGENET_STD, repeat_channels=True)
    out = prep(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out[..., :98, :] == 0).all() and (out[..., 126:, :] == 0).all()  # exactly the mean colour
    black = Preprocess(size=224, mode="pad", mean=IMAGENET_MEAN, std=IMAGENET_STD, repeat_channels=True)(x)
    torch.testing.assert_close(black[..., 98:126, 98:126], out[..., 98:126, 98:126], rtol=0, atol=0)
    corner = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(black[0, :, 0, 0], corner)  # pad: black before normalising


def test_pad_mean_needs_normalisation_and_matching_channels():
    with pytest.raises(ConfigError, match="pad_mean.*no mean/std.*--resize-mode pad"):
        Preprocess(size=32, mode="pad_mean")
    prep = Preprocess(size=32, mode="pad_mean", mean=IMAGENET_MEAN, std=IMAGENET_STD)  # no gray-to-RGB copy
    with pytest.raises(ConfigError, match="3 channel values.*1 channel.*--channel-mode"):
        prep(images())


def test_pad_mean_refuses_a_folded_gray_model():
    """After a sum / mean / first fold the model takes raw gray values: no mean colour is left to pad with."""
    from medadapt.backbones import create_backbone

    folded = create_backbone("timm:resnet18", pretrained=False, img_size=32, data_chans=1).spec
    with pytest.raises(ConfigError, match="--channel-mode sum folded.*--channel-mode repeat"):
        Preprocess.for_backbone(folded, 32, mode="pad_mean")
    repeated = create_backbone(
        "timm:resnet18", pretrained=False, img_size=32, data_chans=1, channel_mode="repeat"
    )
    assert Preprocess.for_backbone(repeated.spec, 32, mode="pad_mean").mean == IMAGENET_MEAN


def test_pad_refuses_larger_images():
    with pytest.raises(ConfigError, match="--resize-mode"):
        Preprocess(size=16, mode="pad")(images())


def test_normalisation_numbers():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    out = Preprocess(size=(1, 3), mean=(0.5,), std=(0.25,))(x)
    assert torch.allclose(out.flatten(), torch.tensor([-2.0, 2.0, (0.2 - 0.5) / 0.25]))


def test_repeat_channels_copies_gray_then_normalises_per_channel():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = images()
    out = Preprocess(size=32, repeat_channels=True, mean=mean, std=std)(x)
    assert out.shape == (2, 3, 32, 32)
    gray = Preprocess(size=32)(x)[:, 0]
    for c in range(3):
        assert torch.allclose(out[:, c], (gray - mean[c]) / std[c], atol=1e-5)


def test_channel_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="channel"):
        Preprocess(size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(images())


def test_float_input_and_bad_shapes():
    x = images()
    assert torch.equal(Preprocess(size=28)(x.float() / 255), x.float() / 255)
    with pytest.raises(DataError, match="batch"):
        Preprocess(size=28)(x[0])


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mode": "crop"}, "--resize-mode"),
        ({"interpolation": "lanczos"}, "--interpolation"),
        ({"size": (0, 4)}, "size"),
        ({"mean": (0.5,)}, "mean"),
        ({"mean": (0.5,), "std": (0.5, 0.5)}, "one value per channel"),
        ({"mean": (0.5,), "std": (0.0,)}, "positive"),
    ],
)
def test_invalid_config_names_the_flag(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        Preprocess(**{"size": 28, **kwargs})


def test_preprocess_is_hashable_and_comparable():
    a = Preprocess(size=28, mean=[0.5], std=[0.5])
    assert a == Preprocess(size=(28, 28), mean=(0.5,), std=(0.5,)) and hash(a) == hash(
        Preprocess(**a.__dict__)
    )


def test_collate_same_size_stacks_without_changes():
    ds = TinyDataset(4)
    batch = collate([ds[i] for i in range(4)], size=16)
    assert batch["image"].shape == (4, 1, 8, 8) and batch["image"].dtype == torch.uint8
    assert torch.equal(batch["image"][2], ds.image(2))
    assert batch["label"].shape == (4, 1) and batch["index"].dtype == torch.long
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_collate_resizes_mixed_sizes_on_tensors():
    ds = TinyDataset(4, sizes=(8, 12))
    batch = collate([ds[i] for i in range(4)], size=(10, 10))
    assert batch["image"].shape == (4, 1, 10, 10) and batch["image"].dtype == torch.uint8
    with pytest.raises(DataError, match="different sizes"):
        collate([ds[i] for i in range(4)])


@pytest.mark.parametrize(
    ("mode", "interpolation", "rgb"),
    [("pad", "bilinear", False), ("pad_mean", "bilinear", False), ("pad_mean", "bilinear", True),
     ("resize", "bicubic", False), ("resize", "nearest", False)],
)  # fmt: skip
def test_mixed_sizes_are_fitted_per_image_as_the_model_would(mode, interpolation, rgb):
    """An image's preprocessed tensor does not depend on which images share its batch."""
    stats = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} if rgb else {"mean": (0.5,), "std": (0.25,)}
    prep = Preprocess(size=(16, 16), mode=mode, interpolation=interpolation, repeat_channels=rgb, **stats)
    ds = TinyDataset(4, sizes=(8, 12))
    alone = prep(ds.image(0)[None])  # a batch of one size
    mixed = collate([ds[i] for i in range(4)], fit=prep.fit_one)
    assert mixed["image"].shape == (4, 3 if rgb else 1, 16, 16)
    torch.testing.assert_close(prep(mixed["image"])[0], alone[0], rtol=0, atol=1e-6)
    same = collate([ds[0], ds[2]], fit=prep.fit_one)  # one size: stacked as stored, uint8
    assert same["image"].dtype == torch.uint8 and torch.equal(prep(same["image"])[0], alone[0])


def test_collate_passes_extra_keys_through():
    samples = [
        {"image": images(1)[0], "label": torch.tensor([1]), "index": i, "site": f"s{i}"} for i in range(2)
    ]
    assert collate(samples)["site"] == ["s0", "s1"]


def test_make_loader_is_seeded_and_uses_batched_fetch():
    ds = TinyDataset(10, sizes=(8, 6))

    def order(seed: int) -> list[int]:
        return torch.cat(
            [b["index"] for b in make_loader(ds, batch_size=4, shuffle=True, seed=seed, size=8)]
        ).tolist()

    assert order(1) == order(1) and sorted(order(1)) == list(range(10)) and order(1) != order(2)
    assert ds.batched_calls > 0
    batches = list(make_loader(ds, batch_size=4, size=8, drop_last=True))
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 1, 8, 8)


def test_make_loader_validates():
    with pytest.raises(ConfigError, match="--batch-size"):
        make_loader(TinyDataset(), batch_size=0)
    with pytest.raises(ConfigError, match="--num-workers"):
        make_loader(TinyDataset(), batch_size=2, num_workers=-1)
    assert make_loader(TinyDataset(), batch_size=2, pin_memory=False).pin_memory is False


def test_preprocess_for_backbone_takes_the_specs_statistics_and_channel_copy():
    from types import SimpleNamespace

    spec = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), channel_mode="repeat")
    prep = Preprocess.for_backbone(spec, 32, interpolation="nearest")
    assert prep == Preprocess(size=(32, 32), interpolation="nearest", mean=spec.mean, std=spec.std,
                              repeat_channels=True)  # fmt: skip
    assert not Preprocess.for_backbone(
        SimpleNamespace(mean=None, std=None, channel_mode="sum"), 8
    ).repeat_channels
