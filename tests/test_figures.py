"""Report figures: PNGs are written, t-SNE is deterministic, Grad-CAM maps vary and leave the model alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("pytorch_grad_cam")
pd = pytest.importorskip("pandas")
Image = pytest.importorskip("PIL.Image")

from medadapt.backbones import create_backbone  # noqa: E402
from medadapt.data.transforms import Preprocess  # noqa: E402
from medadapt.errors import ConfigError  # noqa: E402
from medadapt.reporting import figures  # noqa: E402
from medadapt.strategies import build_classifier  # noqa: E402


def _assert_png(path: Path, written: Path) -> None:
    assert written == path and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGBA" and min(im.size) > 100
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temp file left by the atomic write


def _clusters(n: int = 36, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return rng.normal(size=(3, 6))[labels] * 4 + rng.normal(size=(n, 6)), labels


# ------------------------------------------------------------------------------------------------- t-SNE
def test_tsne_plot_writes_a_png(tmp_path: Path) -> None:
    emb, labels = _clusters()
    embeddings = {"teacher": emb * 100, "distilled student": emb[:, :4]}  # different widths and scales
    path = tmp_path / "tsne.png"
    written = figures.plot_tsne(embeddings, labels[:, None], path, class_names=["a", "b", "c"])
    _assert_png(path, written)


def test_tsne_coordinates_are_deterministic_for_a_seed() -> None:
    emb, _ = _clusters(30)
    first = figures.tsne_coordinates(emb, seed=3)
    assert first.shape == (30, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, figures.tsne_coordinates(emb, seed=3))


def test_tsne_works_on_tiny_sets() -> None:
    assert figures.tsne_coordinates(np.random.default_rng(0).normal(size=(3, 5))).shape == (3, 2)
    with pytest.raises(ConfigError, match="N >= 3"):
        figures.tsne_coordinates(np.zeros((2, 5)))


def test_tsne_subsamples_the_same_rows_for_every_panel(monkeypatch, tmp_path: Path) -> None:
    seen = []

    def fake_tsne(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
        seen.append(np.asarray(x)[:, 0].copy())
        return np.asarray(x, dtype=np.float64)[:, :2]

    monkeypatch.setattr(figures, "tsne_coordinates", fake_tsne)
    rows = np.arange(50, dtype=np.float64)[:, None].repeat(3, 1)
    labels = np.zeros((50, 4))  # multilabel: mostly "none", one label per few rows, one unknown
    labels[::5, 2] = 1
    labels[1, 0] = np.nan
    path = tmp_path / "ml.png"
    figures.plot_tsne({"a": rows, "b": rows * 2}, labels, path, max_points=20, seed=1)
    assert len(seen[0]) == 20 and len(set(seen[0])) == 20
    np.testing.assert_array_equal(seen[1], seen[0] * 2)
    _assert_png(path, path)


def test_tsne_rejects_misaligned_embeddings(tmp_path: Path) -> None:
    emb, labels = _clusters()
    with pytest.raises(ConfigError, match="one row per label"):
        figures.plot_tsne({"teacher": emb[:-1]}, labels, tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------- Grad-CAM
def _classifier(address: str, img_size: int, chans: int):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = create_backbone(address, pretrained=False, img_size=img_size, data_chans=chans)
        model = build_classifier(backbone, "linear", 2)
    spec = backbone.spec
    return model, Preprocess(size=img_size, mean=spec.mean, std=spec.std)


def _images(n: int, chans: int, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, chans, size, size), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )


def _state(model: torch.nn.Module) -> tuple[dict, dict, dict]:
    return (
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    )


# ResNet-18 has stride 32: at 32 px its last block is 1x1 and every map would be flat, so the model runs at
# 64 px (2x2) on 32 px images. The ViT gets patch 8 for a 4x4 grid at 32 px.
MODELS = {
    "resnet18": ("timm:resnet18", 64, 1, "layer4.1"),
    "vit": ("timm:vit_tiny_patch16_224?depth=2&patch_size=8", 32, 3, "blocks.1.norm1"),
}


@pytest.fixture(params=sorted(MODELS))
def model_case(request):
    address, img_size, chans, layer = MODELS[request.param]
    model, prep = _classifier(address, img_size, chans)
    return model, prep, chans, layer


def test_default_target_layer(model_case) -> None:
    model, _, _, layer = model_case
    assert figures.default_target_layer(model) is model.backbone.model.get_submodule(layer)


def test_gradcam_maps_vary_and_leave_the_model_as_it_was(model_case) -> None:
    model, prep, chans, _ = model_case
    model.train()
    model.backbone.requires_grad_(False)  # frozen backbone in eval mode, trainable head in train mode
    model.backbone.eval()
    model.head.fc.weight.grad = torch.ones_like(model.head.fc.weight)
    before = _state(model)

    images = _images(3, chans)
    maps = figures.gradcam_maps(model, images, preprocess=prep)
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert all(np.ptp(m) > 0 for m in maps)  # a real map, not a constant
    by_label = figures.gradcam_maps(model, images, preprocess=prep, targets=[0, 1, 1])
    assert by_label.shape == maps.shape

    after = _state(model)
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2].keys() == before[2].keys()
    for name, grad in before[2].items():
        assert (grad is None and after[2][name] is None) or torch.equal(grad, after[2][name])


@pytest.mark.parametrize("mode", ["pad", "pad_mean"])
def test_gradcam_on_padded_input_is_cropped_back_to_the_image(mode: str) -> None:
    model, prep = _classifier("timm:resnet18", 64, 1)
    prep = Preprocess(size=64, mode=mode, mean=prep.mean, std=prep.std)
    maps = figures.gradcam_maps(model, _images(2, 1, size=28), preprocess=prep)
    assert maps.shape == (2, 28, 28)


@pytest.mark.parametrize("with_labels", [True, False])
def test_gradcam_plot_writes_a_png(model_case, tmp_path: Path, with_labels: bool) -> None:
    model, prep, chans, _ = model_case
    labels = torch.tensor([[0], [1], [1], [0], [1]]) if with_labels else None
    path = tmp_path / "cam.png"
    written = figures.plot_gradcam(
        model, _images(5, chans), path, preprocess=prep, labels=labels, class_names=["normal", "pneumonia"]
    )
    _assert_png(path, written)


def test_gradcam_rejects_bad_images() -> None:
    model, prep = _classifier("timm:resnet18", 64, 1)
    with pytest.raises(ConfigError, match="C = 1 or 3"):
        figures.gradcam_maps(model, torch.zeros(2, 2, 32, 32, dtype=torch.uint8), preprocess=prep)


# ----------------------------------------------------------------------------------------------- heatmap
def test_heatmap_with_a_nan_cell(tmp_path: Path) -> None:
    table = pd.DataFrame(
        [[0.90, 0.91, np.nan], [0.89, 0.93, 0.92]],
        index=pd.Index([1, 4], name="T"),
        columns=pd.Index([0.1, 0.5, 0.9], name="alpha"),
    )
    path = tmp_path / "sweep.png"
    written = figures.plot_heatmap(table, path, title="Mean val AUC", xlabel="alpha", ylabel="T")
    _assert_png(path, written)


def test_heatmap_all_nan_and_non_numeric(tmp_path: Path) -> None:
    empty = pd.DataFrame([[np.nan, np.nan]], columns=["a", "b"])
    path = tmp_path / "nan.png"
    _assert_png(path, figures.plot_heatmap(empty, path, title="t", xlabel="x", ylabel="y"))
    with pytest.raises(ConfigError, match="numeric"):
        figures.plot_heatmap(pd.DataFrame([["a"]]), tmp_path / "s.png", title="t", xlabel="x", ylabel="y")


def test_gradcam_falls_back_to_a_block_with_a_spatial_map_on_small_inputs() -> None:
    model, prep = _classifier("timm:resnet18", 32, 1)  # stride 32: the default layer4 map is 1x1 here
    maps = figures.gradcam_maps(model, _images(3, 1), preprocess=prep)
    assert maps.shape == (3, 32, 32)
    assert all(m.std() > 0 for m in maps)  # not flat: an earlier block (layer3, 2x2) was used
