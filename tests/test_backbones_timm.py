"""timm source: every catalogue family as a tiny random instance, weights loading, channel/size adaptation."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file

from medadapt.backbones import create_backbone, list_backbones
from medadapt.errors import ConfigError, WeightsError

VIT = "embed_dim=32&depth=2&num_heads=2"
TINY = {
    "dinov2": f"timm:vit_small_patch14_dinov2?{VIT}",
    "dinov2_reg": f"timm:vit_small_patch14_reg4_dinov2?{VIT}",
    "mae": f"timm:vit_base_patch16_224?{VIT}",
    "aimv2": f"timm:aimv2_large_patch14_224?{VIT}",
    "eva02": f"timm:eva02_base_patch14_224?{VIT}",
    "siglip2": f"timm:vit_base_patch16_siglip_224?{VIT}",
    "clip": f"timm:vit_base_patch16_clip_224?{VIT}",
    "sam2_hiera": "timm:sam2_hiera_tiny?embed_dim=16&num_heads=1&stages=[1,1,1,1]&global_att_blocks=[]",
    "resnet18": "timm:resnet18",
    "resnet50": "timm:resnet50?layers=[1,1,1,1]",
    "convnext": "timm:convnext_tiny?depths=[1,1,1,1]&dims=[8,16,32,64]",
}
HW = {"sam2_hiera": (64, 96), "convnext": (64, 96), "resnet18": (64, 96), "resnet50": (64, 96)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _make(family: str, **kw):
    hw = kw.pop("img_size", HW.get(family, (28, 42)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_backbone(TINY[family], pretrained=False, img_size=hw, **kw), hw


@pytest.mark.parametrize("family", sorted(TINY))
def test_contract_shapes_and_groups(family):
    bb, (h, w) = _make(family, data_chans=1)
    f = bb.forward_features(torch.rand(2, 1, h, w))
    assert f.embedding.shape == (2, bb.num_features)
    assert f.tokens.shape[0] == 2 and f.tokens.shape[1] == f.grid[0] * f.grid[1]
    assert torch.isfinite(f.embedding).all() and torch.isfinite(f.tokens).all()
    groups = bb.layer_groups()
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(n for n, _ in bb.named_parameters())  # each parameter exactly once
    assert len(groups) >= 3
    assert bb.spec.in_chans == 1 and bb.spec.mean == (0.0,)


def test_vit_patch_tokens_exclude_prefix_tokens():
    bb, _ = _make("dinov2_reg", img_size=(28, 42))
    f = bb.forward_features(torch.rand(1, 3, 28, 42))
    assert f.grid == (2, 3) and f.tokens.shape[1] == 6  # 1 [CLS] + 4 registers dropped


def _gray_to_rgb_normalised(g, mean, std):
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (g.expand(-1, 3, -1, -1) - m) / s


@pytest.mark.parametrize("family", ["dinov2", "eva02", "siglip2"])
def test_sum_mode_equals_gray_copied_to_rgb(family):
    rgb, (h, w) = _make(family, data_chans=3)
    gray, _ = _make(family, data_chans=1, channel_mode="sum")
    g = torch.rand(3, 1, h, w)
    ref = rgb(_gray_to_rgb_normalised(g, rgb.spec.mean, rgb.spec.std))
    torch.testing.assert_close(gray(g), ref, atol=1e-4, rtol=1e-4)


def test_address_mean_and_std_replace_the_models_normalisation():
    """``?mean=0.5&std=0.25`` (one value for every channel) is what the model expects, folded in for gray."""
    address, hw = TINY["dinov2"] + "&mean=0.5&std=0.25", (28, 42)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        rgb = create_backbone(address, pretrained=False, img_size=hw)
        torch.manual_seed(0)
        gray = create_backbone(address, pretrained=False, img_size=hw, data_chans=1, channel_mode="sum")
    assert rgb.spec.mean == (0.5,) * 3 and rgb.spec.std == (0.25,) * 3
    assert {"mean=0.5", "std=0.25"} <= set(rgb.spec.address.split("?")[1].split("&"))  # recorded
    h, w = hw
    g = torch.rand(3, 1, h, w)
    ref = rgb(_gray_to_rgb_normalised(g, (0.5,) * 3, (0.25,) * 3))
    torch.testing.assert_close(gray(g), ref, atol=1e-4, rtol=1e-4)
    per_channel = create_backbone("timm:resnet18?mean=0.1,0.2,0.3", pretrained=False, img_size=32)
    assert per_channel.spec.mean == (0.1, 0.2, 0.3) and per_channel.spec.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("query", "match"),
    [("mean=0.1,0.2", "mean=0.1,0.2 .* has 2 values, but the model takes 3 channels"),
     ("std=0", "std=0 .* not valid; give one or one per channel positive numbers"),
     ("mean=gray", "mean=gray .* not valid.*e.g. mean=0.5"),
     ("std=yes", "std=True .* not valid")],
)  # fmt: skip
def test_bad_address_normalisation_is_a_config_error(query: str, match: str):
    with pytest.raises(ConfigError, match=match):
        create_backbone(f"timm:resnet18?{query}", pretrained=False, img_size=32)


def test_first_and_mean_modes_use_the_intended_filters():
    rgb, _ = _make("dinov2", data_chans=3)
    w = rgb.model.patch_embed.proj.weight
    s = torch.tensor(rgb.spec.std).view(1, 3, 1, 1)
    first, _ = _make("dinov2", data_chans=1, channel_mode="first")
    mean, _ = _make("dinov2", data_chans=1, channel_mode="mean")
    torch.testing.assert_close(first.model.patch_embed.proj.weight, (w / s)[:, :1])
    torch.testing.assert_close(mean.model.patch_embed.proj.weight, (w / s).mean(1, keepdim=True))


def test_repeat_mode_keeps_rgb_model():
    bb, _ = _make("dinov2", data_chans=1, channel_mode="repeat")
    assert bb.spec.in_chans == 3 and bb.spec.channel_mode == "repeat" and len(bb.spec.mean) == 3


def test_weights_file_roundtrip_safetensors_and_pth(tmp_path):
    src, hw = _make("dinov2")
    sd = {k.removeprefix("model."): v for k, v in src.state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    x = torch.rand(2, 3, *hw)
    for name in ("w.safetensors", "w.pth"):
        bb = create_backbone(TINY["dinov2"], weights=str(tmp_path / name), img_size=hw)
        torch.testing.assert_close(bb(x), src(x))
        assert bb.spec.pretrained == f"file:{tmp_path / name}"


def test_official_dinov2_release_format_with_1370_token_pos_embed(tmp_path):
    """dinov2_vits14_pretrain.pth layout: 518 px (37x37 + [CLS] = 1370 tokens), a mask_token, no 'model.' prefix."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                                embed_dim=32, depth=2, num_heads=2)  # fmt: skip
    official = dict(ref.state_dict())
    assert official["pos_embed"].shape == (1, 1370, 32)
    official["mask_token"] = torch.zeros(1, 32)
    torch.save(official, tmp_path / "dinov2_vits14_pretrain.pth")
    at518 = create_backbone(
        TINY["dinov2"], weights=str(tmp_path / "dinov2_vits14_pretrain.pth"), img_size=518
    )
    x = torch.rand(1, 3, 518, 518)
    torch.testing.assert_close(at518(x), ref.forward_head(ref.forward_features(x), pre_logits=True))
    small = create_backbone(TINY["dinov2"], weights=str(tmp_path / "dinov2_vits14_pretrain.pth"), img_size=56)
    assert small.model.pos_embed.shape == (1, 1 + 4 * 4, 32)  # bicubic-resampled to the new grid
    torch.testing.assert_close(small.model.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)


class _Payload:
    """Stands for arbitrary code a pickle could run on load."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"a": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        create_backbone(TINY["dinov2"], weights=str(tmp_path / "evil.pth"), img_size=28)


def test_mismatched_weights_file_is_a_weights_error(tmp_path):
    save_file({"nope": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="does not fit"):
        create_backbone(TINY["dinov2"], weights=str(tmp_path / "bad.safetensors"), img_size=28)


def test_shape_mismatches_are_summarised_not_listed(tmp_path):
    """torch lists every mismatched tensor (a ResNet-18 file into a ResNet-50: dozens of lines)."""
    small = timm.create_model("resnet18", pretrained=False, num_classes=0)
    save_file(small.state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(WeightsError, match="does not fit") as e:
        create_backbone(TINY["resnet50"], weights=str(tmp_path / "r18.safetensors"), img_size=32)
    assert len(str(e.value).splitlines()) == 1 and "more lines" in str(e.value)


def test_offline_pretrained_says_which_file_and_where():
    with pytest.raises(WeightsError) as e:
        create_backbone("timm:vit_small_patch14_dinov2.lvd142m", img_size=28)
    msg = str(e.value)
    assert (
        "timm/vit_small_patch14_dinov2.lvd142m" in msg and "model.safetensors" in msg and "--weights" in msg
    )


@pytest.mark.parametrize("offline", [True, False])
def test_hub_message_names_the_offline_switch_when_it_is_off(monkeypatch, offline: bool):
    """Without HF_HUB_OFFLINE, huggingface_hub retries an unreachable hub for about a minute first."""
    import huggingface_hub.constants

    from medadapt.backbones._weights import hub_hint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    assert ("HF_HUB_OFFLINE=1 skips" in hub_hint("timm:x", "timm/x", "model.safetensors")) is not offline


def test_weights_file_for_a_cnn_loads_strictly(tmp_path):
    """timm drops the classifier and then loads non-strictly: a file missing a block, or prefixed, was accepted."""
    from safetensors.torch import save_file

    full = timm.create_model("resnet18", num_classes=10)  # a classifier in the file is fine (dropped)
    sd = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(sd, tmp_path / "ok.safetensors")
    bb = create_backbone("timm:resnet18", weights=str(tmp_path / "ok.safetensors"), img_size=32)
    assert torch.equal(bb.model.layer4[1].conv2.weight, full.layer4[1].conv2.weight)
    save_file(
        {k: v for k, v in sd.items() if not k.startswith("layer4.")}, tmp_path / "no_layer4.safetensors"
    )
    with pytest.raises(WeightsError, match=r"tensors are not in it \['layer4"):
        create_backbone("timm:resnet18", weights=str(tmp_path / "no_layer4.safetensors"), img_size=32)
    save_file({f"backbone.{k}": v for k, v in sd.items()}, tmp_path / "prefixed.safetensors")
    with pytest.raises(WeightsError, match="of its tensors are not in the model"):
        create_backbone("timm:resnet18", weights=str(tmp_path / "prefixed.safetensors"), img_size=32)


def test_missing_weights_file_and_unknown_model():
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone(TINY["dinov2"], weights="/nonexistent/w.safetensors", img_size=28)
    with pytest.raises(ConfigError, match="timm has no model"):
        create_backbone("timm:vit_smal_patch14_dinov2", pretrained=False)


def test_too_small_input_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot run on 28x28"):
        create_backbone(TINY["convnext"], pretrained=False, img_size=28)


def test_bad_channel_mode_and_address():
    with pytest.raises(ConfigError, match="channel-mode"):
        create_backbone(TINY["dinov2"], pretrained=False, img_size=28, data_chans=1, channel_mode="avg")
    with pytest.raises(ConfigError, match="not an address"):
        create_backbone("vit_small", pretrained=False)


def test_catalogue_aliases_resolve_and_list():
    assert {e["alias"] for e in list_backbones("*dinov2*")} >= {"dinov2_vits14", "dinov2_vitg14_reg"}
    families = {e["family"] for e in list_backbones()}
    assert {
        "dinov2",
        "mae",
        "aimv2",
        "sam2-hiera",
        "eva02",
        "siglip2",
        "clip",
        "resnet",
        "convnext",
    } <= families
    for e in list_backbones("timm:*"):
        assert timm.is_model(e["address"].split(":", 1)[1].split("?")[0].split(".")[0]), e


def test_cifar_stem_keeps_28px_resolution_for_medmnist_v2_resnets():
    bb = create_backbone("resnet18_28", pretrained=False, img_size=28, data_chans=1, channel_mode="repeat")
    f = bb.forward_features(torch.rand(2, 3, 28, 28))
    assert bb.model.conv1.kernel_size == (3, 3) and bb.model.conv1.stride == (1, 1)
    assert isinstance(bb.model.maxpool, torch.nn.Identity)
    assert f.grid == (4, 4)  # 28 -> 28 (stem) -> 4 after the three stride-2 stages
    assert torch.equal(bb.model.layer1[0].bn2.weight, torch.ones(64))  # the official code's init (init=torch)
    with pytest.raises(ConfigError, match="stem=cifar applies to timm ResNets"):
        create_backbone(f"{TINY['dinov2']}&stem=cifar", pretrained=False, img_size=28)


def test_init_torch_restores_pytorch_default_initialisation():
    """init=torch: the official MedMNIST v2 ResNets' start (PyTorch defaults), not timm's scheme."""
    timm_init = create_backbone("timm:resnet18?stem=cifar", pretrained=False, img_size=28).model
    torch_init = create_backbone("timm:resnet18?stem=cifar&init=torch", pretrained=False, img_size=28).model
    conv = torch_init.layer2[0].conv2  # 128 -> 128, 3x3: fan_in = fan_out = 1152
    bound = 1 / math.sqrt(conv.in_channels * 9)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), +)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
    ratio = (timm_init.layer2[0].conv2.weight.std() / conv.weight.std()).detach()
    assert 2.2 < float(ratio) < 2.7  # timm's kaiming fan-out normal: sqrt(6) ~ 2.45x larger
    assert float(timm_init.layer1[0].bn2.weight.detach().abs().sum()) == 0  # timm's zero_init_last ...
    assert torch.equal(torch_init.layer1[0].bn2.weight, torch.ones(64))  # ... undone
    # the classifier's head too: the official ResNet's fc is a default nn.Linear, U(+-1/sqrt(512)) with a bias
    from medadapt.strategies import build_classifier

    bb = create_backbone("timm:resnet18?stem=cifar&init=torch", pretrained=False, img_size=28)
    fc = build_classifier(bb, "linear", 2).head.fc.requires_grad_(False)
    bound = 1 / math.sqrt(512)
    assert 0.95 * bound < float(fc.weight.abs().max()) <= bound and float(fc.bias.abs().min()) > 0
    timm_bb = create_backbone("timm:resnet18?stem=cifar", pretrained=False, img_size=28)
    fc = build_classifier(timm_bb, "linear", 2).head.fc.requires_grad_(False)
    assert float(fc.weight.std()) < 0.015 and float(fc.bias.abs().max()) == 0  # medadapt's head otherwise
    with pytest.raises(ConfigError, match="init=torch re-initialises every weight"):
        create_backbone("timm:resnet18?init=torch", pretrained=True, img_size=28)
    with pytest.raises(ConfigError, match="only init option is init=torch"):
        create_backbone("timm:resnet18?init=xavier", pretrained=False, img_size=28)


def test_size_check_does_not_touch_batchnorm_statistics():
    bb = create_backbone("timm:resnet18", pretrained=False, img_size=28)
    assert int(bb.model.bn1.num_batches_tracked) == 0
    torch.testing.assert_close(bb.model.bn1.running_mean, torch.zeros(64))
    assert bb.training  # the mode it was built in is kept


def test_token_heads_take_the_token_width_when_the_head_has_layers():
    """MobileNetV3's conv_head widens the embedding (1024) past the feature map (288) the tokens come from."""
    from medadapt.strategies import build_classifier

    bb = create_backbone("timm:mobilenetv3_small_050", pretrained=False, img_size=64)
    f = bb.forward_features(torch.rand(2, 3, 64, 64))
    assert (bb.num_features, bb.token_dim) == (f.embedding.shape[-1], f.tokens.shape[-1]) == (1024, 288)
    assert build_classifier(bb, "attention", 2)(torch.rand(2, 3, 64, 64)).shape == (2, 2)


def test_flat_tokens_of_a_hierarchical_model_get_their_grid():
    """timm's hiera_* returns the last stage's tokens flat (row-major): the grid is (H/32, W/32), not (1, N)."""
    bb = create_backbone("timm:hiera_tiny_224?embed_dim=16&num_heads=1&stages=[1,1,1,1]", pretrained=False,
                         img_size=(224, 160))  # fmt: skip
    f = bb.forward_features(torch.rand(1, 3, 224, 160))
    assert f.tokens.shape[1] == 35 and f.grid == (7, 5)


# ------------------------------------------------------------------------------- multi-level features
def _levels_of(address: str, hw: tuple[int, int], levels: int, chans: int = 1):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        bb = create_backbone(address, pretrained=False, img_size=hw, data_chans=chans).eval()
    x = torch.rand(2, chans, *hw)
    with torch.no_grad():
        return bb, x, bb.forward_levels(x, levels), bb.forward_features(x)


def _last_is_forward_features(levels, ref) -> None:
    assert torch.equal(levels[-1].tokens, ref.tokens) and levels[-1].grid == ref.grid
    assert torch.equal(levels[-1].embedding, ref.embedding)


def test_vit_levels_are_the_last_blocks_normed_on_one_grid_without_prefix_tokens():
    """The DINOv2 rule: each of the last blocks' patch tokens through the final norm; the last = forward_features."""
    address = "timm:vit_small_patch14_reg4_dinov2?embed_dim=32&depth=5&num_heads=2"
    bb, x, levels, ref = _levels_of(address, (28, 42), 4)
    assert bb.num_levels == 5 and len(levels) == 4
    assert [lv.grid for lv in levels] == [(2, 3)] * 4 and all(lv.tokens.shape == (2, 6, 32) for lv in levels)
    _last_is_forward_features(levels, ref)
    outputs = []  # what the blocks compute, taken from the model itself
    hooks = [blk.register_forward_hook(lambda m, i, o: outputs.append(o)) for blk in bb.model.blocks]
    with torch.no_grad():
        bb.forward_features(x)
    for h in hooks:
        h.remove()
    for i, (level, out) in enumerate(zip(levels, outputs[1:])):
        expected = bb.model.norm(out)[:, 5:]  # 1 [CLS] + 4 registers dropped
        torch.testing.assert_close(level.tokens, expected, atol=1e-5, rtol=1e-5)
        if i < 3:  # an intermediate level's embedding: its mean token (the last one's: the model's own)
            torch.testing.assert_close(level.embedding, expected.mean(1), atol=1e-5, rtol=1e-5)
    one = bb.forward_levels(x, 1)
    assert len(one) == 1 and torch.allclose(one[0].tokens, ref.tokens, atol=1e-6)


@pytest.mark.parametrize(
    ("family", "widths", "available"),
    [("convnext", [8, 16, 32, 64], 4), ("resnet18", [64, 128, 256, 512], 5), ("sam2_hiera", [16, 32, 64, 128], 4)],
)  # fmt: skip
def test_hierarchical_levels_are_the_stages_at_strides_4_to_32(family, widths, available):
    bb, _, levels, ref = _levels_of(TINY[family], (64, 96), 4)
    assert bb.num_levels == available
    assert [lv.grid for lv in levels] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [lv.tokens.shape[-1] for lv in levels] == widths
    assert all(lv.tokens.shape[1] == lv.grid[0] * lv.grid[1] for lv in levels)
    _last_is_forward_features(levels, ref)
    if available == 5:  # a ResNet's first level is its stride-2 stem
        assert bb.forward_levels(torch.rand(1, 1, 64, 96), 5)[0].grid == (32, 48)


def test_levels_out_of_range_and_sources_without_levels_are_config_errors():
    from torch import nn

    from medadapt.backbones.base import Backbone, BackboneSpec

    bb, x, _, _ = _levels_of(TINY["convnext"], (64, 96), 1)
    for bad in (0, 5, 2.0):
        with pytest.raises(ConfigError, match="levels must be an integer from 1 to 4"):
            bb.forward_levels(x, bad)
    spec = BackboneSpec(
        address="x:plain", source="x", num_features=4, input_size=(8, 8), mean=(0.0,), std=(1.0,)
    )
    with pytest.raises(ConfigError, match="no multi-level features; sources that have them: timm"):
        Backbone(nn.Identity(), spec).forward_levels(x, 1)
