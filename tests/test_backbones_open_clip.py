"""The open_clip source on tiny registered architectures (CLIP ViT, CoCa, timm trunk, ResNet): offline, CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

import huggingface_hub.constants  # noqa: E402
import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from medadapt.backbones import create_backbone  # noqa: E402
from medadapt.errors import ConfigError, MissingDependencyError, UnknownNameError, WeightsError  # noqa: E402

TEXT = {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}
VIT = {"image_size": 16, "layers": 2, "width": 32, "patch_size": 4, "head_width": 16}
TIMM_VIT = "medadapt_test_oc_vit"
CONFIGS = {
    "mdtest-vit": {"embed_dim": 16, "vision_cfg": VIT, "text_cfg": TEXT},
    "mdtest-coca": {
        "embed_dim": 16,
        "vision_cfg": dict(
            VIT, attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4, output_tokens=True
        ),
        "text_cfg": dict(TEXT, embed_cls=True, output_tokens=True),
        "multimodal_cfg": dict(TEXT, attn_pooler_heads=2),
        "custom_text": True,
    },
    "mdtest-timm": {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": TIMM_VIT, "timm_pool": "", "timm_proj": "linear", "image_size": 16},
        "text_cfg": TEXT,
    },
    "mdtest-timm-noproj": {  # the trunk's own head is the projection (EVA02, MobileCLIP, PE-Core configs)
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": TIMM_VIT, "timm_pool": "", "timm_proj": None, "image_size": 16},
        "text_cfg": TEXT,
    },
    "mdtest-rn": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": TEXT,
    },
}
PATCHED = ["mdtest-vit", "mdtest-coca", "mdtest-timm"]  # ViTs with patch 4 and width 32
OPENAI_MEAN = tuple(open_clip.OPENAI_DATASET_MEAN)


def _register_timm_vit() -> None:
    if timm.is_model(TIMM_VIT):
        return
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    def medadapt_test_oc_vit(pretrained: bool = False, **kwargs):
        kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or {"mean": (0.5,) * 3, "std": (0.5,) * 3}
        args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
        return _create_vision_transformer(TIMM_VIT, pretrained=pretrained, **args, **kwargs)

    register_model(medadapt_test_oc_vit)


@pytest.fixture(scope="module", autouse=True)
def _tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    _register_timm_vit()
    open_clip.add_model_config(folder)


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No hub access and an empty HF cache, whatever the machine has cached."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _clip(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model(name).eval()


def _save(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(params=PATCHED)
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, torch.nn.Module, Path]:
    model = _clip(request.param)
    return request.param, model, _save(model, tmp_path / f"{request.param}.safetensors")


@pytest.mark.parametrize("size", [(16, 16), (24, 16), (32, 48)])
def test_shapes_at_any_size(saved, size) -> None:
    name, _, path = saved
    bb = create_backbone(f"open_clip:{name}", weights=str(path), img_size=size)
    feats = bb.forward_features(torch.randn(2, 3, *size))
    grid = (size[0] // 4, size[1] // 4)
    assert feats.grid == grid and bb.spec.patch_size == 4
    assert feats.embedding.shape == (2, 32) and bb.num_features == 32
    assert feats.tokens.shape == (2, grid[0] * grid[1], 32)
    assert torch.isfinite(feats.embedding).all() and torch.isfinite(feats.tokens).all()


def test_resnet_tower_gives_the_last_map(tmp_path: Path) -> None:
    path = _save(_clip("mdtest-rn"), tmp_path / "rn.safetensors")
    bb = create_backbone("open_clip:mdtest-rn", weights=str(path), img_size=(64, 96))
    feats = bb.forward_features(torch.randn(2, 3, 64, 96))
    assert feats.grid == (2, 3) and feats.tokens.shape == (2, 6, 256) and bb.num_features == 256
    torch.testing.assert_close(feats.embedding, feats.tokens.mean(1))
    assert bb.model.attnpool is None
    _assert_groups_cover(bb, 5)


def test_weights_equal_the_saved_ones(saved) -> None:
    name, model, path = saved
    bb = create_backbone(f"open_clip:{name}", weights=str(path), img_size=16)
    reference = model.visual.trunk if name == "mdtest-timm" else model.visual
    ref = reference.state_dict()
    loaded = bb.model.state_dict()
    assert loaded.keys() <= ref.keys()
    for key, value in loaded.items():
        assert torch.equal(value, ref[key]), key
    assert bb.spec.pretrained == f"file:{path}" and bb.spec.mean == OPENAI_MEAN


def test_vit_features_are_the_towers_own_before_projection(tmp_path: Path) -> None:
    model = _clip("mdtest-vit")
    bb = create_backbone(
        "open_clip:mdtest-vit", weights=str(_save(model, tmp_path / "w.safetensors")), img_size=16
    )
    x = torch.randn(2, 3, 16, 16)
    model.visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = model.visual(x)
        feats = bb.forward_features(x)
    torch.testing.assert_close(feats.tokens, tokens)
    torch.testing.assert_close(feats.embedding @ model.visual.proj, pooled)
    assert bb.model.proj is None  # the unused projection is dropped


def test_timm_trunk_features_are_pre_projection(tmp_path: Path) -> None:
    model = _clip("mdtest-timm")
    bb = create_backbone(
        "open_clip:mdtest-timm", weights=str(_save(model, tmp_path / "w.safetensors")), img_size=16
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = bb.forward_features(x)
        torch.testing.assert_close(model.visual.head(feats.embedding), model.visual(x))
        torch.testing.assert_close(feats.tokens, model.visual.trunk.forward_features(x)[:, 1:])


def test_timm_trunk_projection_head_is_dropped(tmp_path: Path) -> None:
    """With timm_proj null the trunk's classifier is the projection: unused for the embedding, so not kept
    (no parameters without gradients, no adapters on it)."""
    model = _clip("mdtest-timm-noproj")
    bb = create_backbone(
        "open_clip:mdtest-timm-noproj", weights=str(_save(model, tmp_path / "w.safetensors")), img_size=16
    )
    assert bb.model.num_classes == 0 and not any(n.startswith("head.") for n, _ in bb.named_parameters())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        emb = bb.forward_features(x).embedding
        torch.testing.assert_close(model.visual.trunk.forward_head(model.visual.trunk.forward_features(x),
                                                                   pre_logits=True), emb)  # fmt: skip
        torch.testing.assert_close(model.visual.trunk.head(emb), model.visual(x))


def test_coca_drops_the_attentional_pooler(tmp_path: Path) -> None:
    model = _clip("mdtest-coca")
    bb = create_backbone(
        "open_clip:mdtest-coca", weights=str(_save(model, tmp_path / "w.safetensors")), img_size=16
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = bb.forward_features(x)
        v = model.visual
        h = v.transformer(v._embeds(x))
    torch.testing.assert_close(feats.tokens, h[:, 1:])
    torch.testing.assert_close(feats.embedding, h[:, 1:].mean(1))
    assert bb.model.attn_pool is None and not any("attn_pool" in n for n, _ in bb.named_parameters())


def test_position_embedding_is_resampled_once(tmp_path: Path) -> None:
    from timm.layers import resample_abs_pos_embed

    model = _clip("mdtest-vit")
    bb = create_backbone(
        "open_clip:mdtest-vit", weights=str(_save(model, tmp_path / "w.safetensors")), img_size=(24, 32)
    )
    pe = bb.model.positional_embedding
    assert pe.shape == (6 * 8 + 1, 32) and bb.model.grid_size == (6, 8) and bb.model.image_size == (24, 32)
    expected = resample_abs_pos_embed(model.visual.positional_embedding.detach()[None], [6, 8], [4, 4], 1)[0]
    torch.testing.assert_close(pe.detach(), expected)
    torch.testing.assert_close(pe[0], model.visual.positional_embedding[0])  # the [CLS] position is kept


def test_checkpoint_position_embedding_of_another_size_is_fitted(tmp_path: Path) -> None:
    big = open_clip.create_model("mdtest-vit", force_image_size=32)  # an 8x8 grid fine-tune
    bb = create_backbone(
        "open_clip:mdtest-vit", weights=str(_save(big, tmp_path / "w.safetensors")), img_size=16
    )
    assert bb.model.positional_embedding.shape == (17, 32)


@pytest.mark.parametrize("norm", ["", "?mean=0.5&std=0.25"])
def test_single_channel_sum_matches_gray_repeated_to_rgb(saved, norm: str) -> None:
    """The fold uses the model's statistics, or the address's ``mean`` / ``std`` in their place."""
    name, _, path = saved
    size = (16, 24)
    rgb = create_backbone(f"open_clip:{name}{norm}", weights=str(path), img_size=size)
    gray = create_backbone(
        f"open_clip:{name}{norm}", weights=str(path), img_size=size, data_chans=1, channel_mode="sum"
    )
    assert gray.spec.in_chans == 1 and gray.spec.mean == (0.0,)
    assert (
        (rgb.spec.mean == (0.5,) * 3 and rgb.spec.std == (0.25,) * 3) if norm else rgb.spec.mean != (0.5,) * 3
    )
    mean, std = torch.tensor(rgb.spec.mean).view(1, 3, 1, 1), torch.tensor(rgb.spec.std).view(1, 3, 1, 1)
    g = torch.rand(2, 1, *size)
    with torch.no_grad():
        a, b = rgb.forward_features((g.repeat(1, 3, 1, 1) - mean) / std), gray.forward_features(g)
    torch.testing.assert_close(b.embedding, a.embedding, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.tokens, a.tokens, atol=1e-4, rtol=0)


def _assert_groups_cover(bb: torch.nn.Module, n_groups: int) -> list[list[str]]:
    groups = bb.layer_groups()
    flat = [n for g in groups for n in g]
    assert len(flat) == len(set(flat)) and set(flat) == {n for n, _ in bb.named_parameters()}
    assert len(groups) == n_groups
    return groups


@pytest.mark.parametrize("name, n_groups", [("mdtest-vit", 4), ("mdtest-coca", 3), ("mdtest-timm", 3)])
def test_layer_groups_ordered_and_cover_every_parameter_once(name: str, n_groups: int) -> None:
    bb = create_backbone(f"open_clip:{name}", pretrained=False, img_size=16)
    groups = _assert_groups_cover(bb, n_groups)
    assert any("pos" in n for n in groups[0]) and any("cls" in n or "class" in n for n in groups[0])
    for i, group in enumerate(groups[1:3]):
        assert all(
            f"resblocks.{i}." in n or f"blocks.{i}." in n for n in group if not n.startswith("model.norm.")
        )


def test_all_parameters_receive_gradients(saved) -> None:
    name, _, path = saved
    bb = create_backbone(f"open_clip:{name}", weights=str(path), img_size=16).train()
    feats = bb.forward_features(torch.randn(2, 3, 16, 16))
    (feats.embedding.sum() + feats.tokens.sum()).backward()
    assert all(p.grad is not None for p in bb.parameters() if p.requires_grad)


def test_tower_only_and_wrapped_pickle_checkpoints_load(tmp_path: Path) -> None:
    model = _clip("mdtest-vit")
    tower = _save(model.visual, tmp_path / "tower.safetensors")
    bb = create_backbone("open_clip:mdtest-vit", weights=str(tower), img_size=16)
    assert torch.equal(bb.model.class_embedding, model.visual.class_embedding)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    bb = create_backbone("open_clip:mdtest-vit", weights=str(tmp_path / "w.pt"), img_size=16)
    assert torch.equal(bb.model.class_embedding, model.visual.class_embedding)


def test_weights_that_do_not_fit_raise(tmp_path: Path) -> None:
    path = _save(_clip("mdtest-coca"), tmp_path / "coca.safetensors")
    with pytest.raises(WeightsError, match="do not fit"):
        create_backbone("open_clip:mdtest-vit", weights=str(path), img_size=16)
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("open_clip:mdtest-vit", weights=str(tmp_path / "nope.pt"), img_size=16)


def _hub_folder(tmp_path: Path, name: str, mean: list[float]) -> tuple[Path, torch.nn.Module]:
    model = _clip(name, seed=3)
    folder = tmp_path / "hub-folder"
    folder.mkdir()
    config = {"model_cfg": CONFIGS[name], "preprocess_cfg": {"mean": mean, "std": [0.3, 0.3, 0.3]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    _save(model, folder / "open_clip_model.safetensors")
    return folder, model


def test_weights_folder_with_open_clip_config(tmp_path: Path) -> None:
    folder, model = _hub_folder(tmp_path, "mdtest-timm", [0.1, 0.2, 0.3])
    address = "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    bb = create_backbone(address, weights=str(folder), img_size=16)
    assert bb.spec.mean == (0.1, 0.2, 0.3) and bb.spec.license == "mit"
    assert torch.equal(bb.model.pos_embed, model.visual.trunk.pos_embed)


def _fake_cache(cache: Path, repo: str, folder: Path) -> None:
    """Lay the files of ``folder`` out in the HF cache as a download of ``repo`` would."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())


def test_hf_hub_model_from_the_cache(tmp_path: Path, _offline_hub: Path) -> None:
    folder, model = _hub_folder(tmp_path, "mdtest-vit", [0.2, 0.2, 0.2])
    repo = "medadapt-test/tiny-clip"
    _fake_cache(_offline_hub, repo, folder)
    bb = create_backbone(f"open_clip:hf-hub:{repo}", img_size=16)
    assert bb.spec.pretrained == f"hub:{repo}" and bb.spec.mean == (0.2, 0.2, 0.2)
    assert torch.equal(bb.model.class_embedding, model.visual.class_embedding)


def test_pretrained_tag_from_the_cache_uses_its_quick_gelu_and_stats(
    tmp_path: Path, _offline_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, model = _hub_folder(tmp_path, "mdtest-vit", [0.2, 0.2, 0.2])
    (folder / "open_clip_config.json").unlink()
    repo = "medadapt-test/tiny-clip-tagged"
    _fake_cache(_offline_hub, repo, folder)
    tag_cfg = {"hf_hub": f"{repo}/", "mean": (0.1,) * 3, "std": (0.2,) * 3, "quick_gelu": True}
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda m, t: tag_cfg if t == "tiny" else real(m, t))
    bb = create_backbone("open_clip:mdtest-vit@tiny", img_size=16)
    assert bb.spec.pretrained == f"hub:{repo}" and bb.spec.mean == (0.1,) * 3
    assert type(bb.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert torch.equal(bb.model.class_embedding, model.visual.class_embedding)


@pytest.mark.parametrize(
    "address, repo",
    [
        (
            "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        ),
        ("open_clip:coca_ViT-B-32@laion2b_s13b_b90k", "laion/CoCa-ViT-B-32-laion2B-s13B-b90k"),
    ],
)
def test_offline_without_cache_names_what_is_missing(address: str, repo: str, _offline_hub: Path) -> None:
    with pytest.raises(WeightsError) as info:
        create_backbone(address, img_size=16)
    message = str(info.value)
    assert repo in message and str(_offline_hub) in message and "--weights" in message
    assert "open_clip_pytorch_model.bin" in message or "open_clip_model.safetensors" in message
    if "@" in address:  # a built-in tag: its architecture is known, so no config file is asked for
        assert "open_clip_config.json" not in message


def test_name_and_tag_errors() -> None:
    with pytest.raises(UnknownNameError, match="mdtest-vit"):
        create_backbone("open_clip:mdtest-vitt", pretrained=False, img_size=16)
    with pytest.raises(ConfigError, match="laion2b_s13b_b90k"):
        create_backbone("open_clip:coca_ViT-B-32@nope", pretrained=False, img_size=16)
    with pytest.raises(ConfigError, match="@TAG"):
        create_backbone("open_clip:mdtest-vit", img_size=16)  # pretrained requested, but no tag names weights


def test_address_overrides_vision_cfg() -> None:
    bb = create_backbone("open_clip:mdtest-vit?layers=1", pretrained=False, img_size=16)
    assert len(bb.model.transformer.resblocks) == 1 and bb.spec.pretrained is None
    with pytest.raises(ConfigError, match="not_a_field"):
        create_backbone("open_clip:mdtest-vit?not_a_field=1", pretrained=False, img_size=16)


def test_missing_open_clip_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingDependencyError, match=r"medadapt\[open_clip\]"):
        create_backbone("open_clip:mdtest-vit", pretrained=False, img_size=16)
