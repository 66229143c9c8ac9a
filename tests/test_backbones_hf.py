"""The transformers source (``hf:``) on tiny random models saved in ``tmp_path``: offline, CPU, fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import huggingface_hub.constants  # noqa: E402
import transformers  # noqa: E402

from medadapt.backbones import create_backbone  # noqa: E402
from medadapt.errors import ConfigError, MissingDependencyError, WeightsError  # noqa: E402

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4)
SIGLIP_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _dinov2() -> torch.nn.Module:
    return transformers.Dinov2Model(transformers.Dinov2Config(image_size=16, **TINY))


def _dinov2_reg() -> torch.nn.Module:
    config = transformers.Dinov2WithRegistersConfig(image_size=16, num_register_tokens=3, **TINY)
    return transformers.Dinov2WithRegistersModel(config)


def _dinov3() -> torch.nn.Module:
    return transformers.DINOv3ViTModel(
        transformers.DINOv3ViTConfig(image_size=16, num_register_tokens=2, **TINY)
    )


def _siglip() -> torch.nn.Module:
    """A text+vision SigLIP checkpoint, as google/medsiglip-448 is; only its vision tower is loaded."""
    text = dict(SIGLIP_TEXT, vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = transformers.SiglipConfig(text_config=text, vision_config=dict(image_size=16, **TINY))
    return transformers.SiglipModel(config)


# family -> (builder, number of [CLS] + register tokens, address)
FAMILIES = {
    "dinov2": (_dinov2, 1, "hf:facebook/dinov2-small"),
    "dinov2_reg": (_dinov2_reg, 4, "hf:facebook/dinov2-with-registers-small"),
    "dinov3": (_dinov3, 3, "hf:facebook/dinov3-vits16-pretrain-lvd1689m"),
    "siglip": (_siglip, 0, "hf:google/medsiglip-448"),
}


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No hub access and an empty HF cache, whatever the machine has cached."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _save(model: torch.nn.Module, folder: Path, *, preprocessor: bool = True) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    if preprocessor:
        pre = {"image_mean": MEAN, "image_std": STD, "size": {"height": 16, "width": 16}}
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def _vision(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "vision_model", model)


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, torch.nn.Module, Path]:
    build, _, _ = FAMILIES[request.param]
    torch.manual_seed(0)
    model = build().eval()
    return request.param, model, _save(model, tmp_path / request.param)


def _fake_cache(cache: Path, repo: str, folder: Path, files: list[str]) -> None:
    """Lay ``files`` of ``folder`` out in the HF cache as a download of ``repo`` would."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in files:
        (snap / name).write_bytes((folder / name).read_bytes())


@pytest.mark.parametrize("size", [(16, 16), (24, 16), (32, 48)])
def test_shapes_at_any_size(family, size) -> None:
    name, _, folder = family
    bb = create_backbone(FAMILIES[name][2], weights=str(folder), img_size=size)
    feats = bb.forward_features(torch.randn(2, 3, *size))
    grid = (size[0] // 4, size[1] // 4)
    assert feats.grid == grid
    assert feats.embedding.shape == (2, 32) and bb.num_features == 32
    assert feats.tokens.shape == (2, grid[0] * grid[1], 32)
    assert torch.isfinite(feats.tokens).all() and torch.isfinite(feats.embedding).all()


def test_tokens_exclude_cls_and_registers(family) -> None:
    name, model, folder = family
    bb = create_backbone(FAMILIES[name][2], weights=str(folder), img_size=16)
    x = torch.randn(2, 3, 16, 24)
    kwargs = {"interpolate_pos_encoding": True} if name == "siglip" else {}
    with torch.no_grad():
        ref = _vision(model)(pixel_values=x, **kwargs)
        feats = bb.forward_features(x)
    prefix = FAMILIES[name][1]
    assert ref.last_hidden_state.shape[1] == prefix + 24
    torch.testing.assert_close(feats.tokens, ref.last_hidden_state[:, prefix:])
    torch.testing.assert_close(feats.embedding, ref.pooler_output)  # [CLS] after the norm / SigLIP's head
    if prefix:
        torch.testing.assert_close(feats.embedding, ref.last_hidden_state[:, 0])


def test_weights_equal_the_saved_ones(family) -> None:
    name, model, folder = family
    bb = create_backbone(FAMILIES[name][2], weights=str(folder), img_size=16)
    saved = _vision(model).state_dict()
    loaded = _vision(bb.model).state_dict()
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        assert torch.equal(value, loaded[key]), key
    assert bb.spec.pretrained == f"file:{folder}"
    assert bb.spec.mean == tuple(MEAN) and bb.spec.std == tuple(STD)


@pytest.mark.parametrize("norm", ["", "?mean=0.5&std=0.25"])
def test_single_channel_sum_matches_gray_repeated_to_rgb(family, norm: str) -> None:
    """The fold uses the preprocessor's statistics, or the address's ``mean`` / ``std`` in their place."""
    name, _, folder = family
    address = FAMILIES[name][2] + norm
    rgb = create_backbone(address, weights=str(folder), img_size=(16, 20))
    gray = create_backbone(address, weights=str(folder), img_size=(16, 20), data_chans=1, channel_mode="sum")
    mean, std = ((0.5,) * 3, (0.25,) * 3) if norm else (tuple(MEAN), tuple(STD))
    assert rgb.spec.mean == mean and rgb.spec.std == std and gray.spec.address == rgb.spec.address
    assert gray.spec.in_chans == 1 and gray.spec.mean == (0.0,) and gray.spec.std == (1.0,)
    g = torch.rand(2, 1, 16, 20)
    x = (g.repeat(1, 3, 1, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        a, b = rgb.forward_features(x), gray.forward_features(g)
    torch.testing.assert_close(b.embedding, a.embedding, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.tokens, a.tokens, atol=1e-4, rtol=0)
    assert gray.model.config.num_channels == 1


def test_layer_groups_ordered_and_cover_every_parameter_once(family) -> None:
    name, _, folder = family
    bb = create_backbone(FAMILIES[name][2], weights=str(folder), img_size=16)
    groups = bb.layer_groups()
    flat = [n for g in groups for n in g]
    assert len(flat) == len(set(flat))
    assert set(flat) == {n for n, _ in bb.named_parameters()}
    assert len(groups) == 2 + 2  # embeddings, layer 0, layer 1, final norm (+ head)
    assert all("embeddings" in n for n in groups[0])
    for i, group in enumerate(groups[1:-1]):
        assert all(f"layer.{i}." in n or f"layers.{i}." in n for n in group), group
    assert any("norm" in n for n in groups[-1])
    if name == "siglip":
        assert any(".head." in n for n in groups[-1])


def test_missing_preprocessor_config_uses_family_defaults(tmp_path: Path) -> None:
    folder = _save(_siglip(), tmp_path / "siglip", preprocessor=False)
    assert (
        create_backbone("hf:google/medsiglip-448", weights=str(folder), img_size=16).spec.mean == (0.5,) * 3
    )
    folder = _save(_dinov2(), tmp_path / "dinov2", preprocessor=False)
    assert create_backbone("hf:facebook/dinov2-small", weights=str(folder), img_size=16).spec.mean == (
        0.485,
        0.456,
        0.406,
    )


def test_pretrained_from_the_hf_cache_and_single_weights_file(tmp_path: Path, _offline_hub: Path) -> None:
    torch.manual_seed(1)
    model = _dinov2()
    folder = _save(model, tmp_path / "ckpt")
    repo = "facebook/dinov2-small"
    _fake_cache(_offline_hub, repo, folder, ["config.json", "model.safetensors", "preprocessor_config.json"])
    bb = create_backbone(f"hf:{repo}", img_size=16)
    assert bb.spec.pretrained == f"hub:{repo}" and bb.spec.license == "apache-2.0"
    assert bb.spec.mean == tuple(MEAN)
    assert torch.equal(bb.model.embeddings.cls_token, model.embeddings.cls_token)
    # a single weights file takes its architecture from the cached config
    torch.manual_seed(2)
    other = _save(_dinov2(), tmp_path / "other", preprocessor=False)
    bb = create_backbone(f"hf:{repo}", weights=str(other / "model.safetensors"), img_size=16)
    assert bb.spec.pretrained == f"file:{other / 'model.safetensors'}"
    assert not torch.equal(bb.model.embeddings.cls_token, model.embeddings.cls_token)


def test_address_overrides_config_fields(tmp_path: Path, _offline_hub: Path) -> None:
    folder = _save(_dinov2(), tmp_path / "ckpt")
    _fake_cache(_offline_hub, "facebook/dinov2-small", folder, ["config.json"])
    bb = create_backbone("hf:facebook/dinov2-small?num_hidden_layers=1", pretrained=False, img_size=16)
    assert bb.spec.pretrained is None and len(bb.layer_groups()) == 3
    with pytest.raises(ConfigError, match="not_a_field"):
        create_backbone("hf:facebook/dinov2-small?not_a_field=1", pretrained=False, img_size=16)


def test_weights_that_do_not_fit_raise(tmp_path: Path) -> None:
    folder = _save(_dinov2(), tmp_path / "ckpt")
    with pytest.raises(WeightsError, match="ckpt"):
        create_backbone("hf:facebook/dinov2-small?hidden_size=64", weights=str(folder), img_size=16)
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("hf:facebook/dinov2-small", weights=str(tmp_path / "nope"), img_size=16)


@pytest.mark.parametrize("pretrained", [True, False])
def test_offline_without_cache_names_what_is_missing(pretrained: bool, _offline_hub: Path) -> None:
    with pytest.raises(WeightsError) as info:
        create_backbone("hf:microsoft/rad-dino", pretrained=pretrained, img_size=16)
    message = str(info.value)
    assert "microsoft/rad-dino" in message and "config.json" in message and str(_offline_hub) in message
    assert "--weights" in message and "save_pretrained" in message
    assert ("model.safetensors" in message.split("--weights")[0]) == pretrained


def test_single_weights_file_without_cached_config_raises(tmp_path: Path) -> None:
    folder = _save(_dinov2(), tmp_path / "ckpt")
    with pytest.raises(WeightsError, match="facebook/dinov2-small"):
        create_backbone("hf:facebook/dinov2-small", weights=str(folder / "model.safetensors"), img_size=16)


def test_bad_name_raises() -> None:
    with pytest.raises(ConfigError, match="ORG/NAME"):
        create_backbone("hf:rad-dino", pretrained=False, img_size=16)


def test_missing_transformers_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"medadapt\[hf\]"):
        create_backbone("hf:facebook/dinov2-small", pretrained=False, img_size=16)


def test_weights_folder_without_config_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json"):
        create_backbone("hf:facebook/dinov2-small", weights=str(tmp_path / "empty"), img_size=16)


def test_all_parameters_but_the_mask_token_receive_gradients(family) -> None:
    name, _, folder = family
    bb = create_backbone(FAMILIES[name][2], weights=str(folder), img_size=16).train()
    feats = bb.forward_features(torch.randn(2, 3, 16, 16))
    (feats.embedding.sum() + feats.tokens.sum()).backward()
    without = [n for n, p in bb.named_parameters() if p.grad is None]
    assert all(n.endswith("mask_token") for n in without), without


def test_levels_are_the_last_layers_through_the_final_norm(family) -> None:
    """``forward_levels``: each layer's patch tokens through the final norm (DINOv2's rule); the last one is
    ``forward_features``."""
    name, model, folder = family
    bb = create_backbone(FAMILIES[name][2], weights=str(folder), img_size=16).eval()
    x = torch.randn(2, 3, 16, 24)
    kwargs = {"interpolate_pos_encoding": True} if name == "siglip" else {}
    with torch.no_grad():
        levels, ref = bb.forward_levels(x, 2), bb.forward_features(x)
        hidden = _vision(model)(pixel_values=x, output_hidden_states=True, **kwargs).hidden_states
    assert bb.num_levels == 2 and [lv.grid for lv in levels] == [(4, 6), (4, 6)]
    assert torch.equal(levels[-1].tokens, ref.tokens) and torch.equal(levels[-1].embedding, ref.embedding)
    vision = _vision(bb.model)
    norm = getattr(
        getattr(vision, "vision_model", vision),
        {"dinov3": "norm", "siglip": "post_layernorm"}.get(name, "layernorm"),
    )
    with torch.no_grad():
        expected = norm(hidden[1][:, FAMILIES[name][1] :])
    torch.testing.assert_close(levels[0].tokens, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="levels must be an integer from 1 to 2"):
        bb.forward_levels(x, 3)
