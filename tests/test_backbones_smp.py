"""smp source: SMP encoders as backbones, their decoders as native heads, weights, sizes and errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("segmentation_models_pytorch")

from safetensors.torch import save_file  # noqa: E402

from medadapt.backbones import create_backbone  # noqa: E402
from medadapt.backbones._smp import list_architectures  # noqa: E402
from medadapt.errors import ConfigError, WeightsError  # noqa: E402

UNET = "smp:unet?encoder=resnet18&encoder_depth=3&decoder_channels=[32,16,8]"
SEGFORMER = "smp:segformer?encoder=mit_b0&decoder_segmentation_channels=32"
HW = (64, 64)


def _make(address: str = UNET, seed: int = 0, **kw):
    kw = {"pretrained": False, "img_size": HW, **kw}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_backbone(address, **kw)


@pytest.mark.parametrize("data_chans", [1, 3])
def test_unet_encoder_contract(data_chans):
    bb = _make(data_chans=data_chans)
    x = torch.rand(2, data_chans, *HW)
    f = bb.forward_features(x)
    assert f.embedding.shape == (2, 128) and bb.num_features == 128  # resnet18's layer2 at encoder_depth=3
    assert f.grid == (8, 8) and f.tokens.shape == (2, 64, 128)

    pyramid = bb.forward_pyramid(x)
    assert [p.shape[1] for p in pyramid] == [data_chans, 64, 64, 128]  # the input, then strides 2, 4, 8
    assert [p.shape[-1] for p in pyramid] == [64, 32, 16, 8]

    assert bb.num_levels == 3
    levels = bb.forward_levels(x, 3)
    assert [lv.grid for lv in levels] == [(32, 32), (16, 16), (8, 8)]
    assert [lv.tokens.shape[-1] for lv in levels] == [64, 64, 128]
    torch.testing.assert_close(levels[-1].tokens, f.tokens)
    assert [lv.grid for lv in bb.forward_levels(x, 1)] == [(8, 8)]
    with pytest.raises(ConfigError, match="levels must be an integer from 1 to 3"):
        bb.forward_levels(x, 4)

    spec = bb.spec
    assert spec.source == "smp" and spec.input_size == HW and spec.patch_size is None
    assert spec.pretrained is None and spec.license is None
    assert "encoder=resnet18" in spec.address and spec.address.startswith("smp:unet?")
    if data_chans == 1:  # the RGB normalisation folded into conv1, as for the other sources
        assert spec.in_chans == 1 and spec.mean == (0.0,) and spec.channel_mode == "sum"
        assert bb.model.conv1.in_channels == 1
    else:
        assert spec.in_chans == 3 and spec.mean == (0.485, 0.456, 0.406) and spec.channel_mode == "none"


def test_backbone_holds_the_encoder_only():
    bb = _make()
    names = [n for n, _ in bb.named_parameters()]
    assert names and all(n.startswith("model.") for n in names)
    assert not any("decoder" in n or "segmentation_head" in n for n in bb.state_dict())


def test_repeat_mode_keeps_three_input_channels():
    bb = _make(data_chans=1, channel_mode="repeat")
    assert bb.spec.in_chans == 3 and bb.spec.data_chans == 1 and bb.spec.channel_mode == "repeat"
    assert bb.model.conv1.in_channels == 3


def _check_groups(bb, firsts: list[str]) -> None:
    groups = bb.layer_groups()
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(n for n, _ in bb.named_parameters())  # each parameter exactly once
    assert [g[0] for g in groups] == firsts  # ordered input -> output
    assert all(p.requires_grad for p in bb.parameters()) and bb.training  # state restored


def test_layer_groups_follow_the_encoder_stages():
    bb = _make()
    _check_groups(bb, ["model.conv1.weight", "model.layer1.0.conv1.weight", "model.layer2.0.conv1.weight"])
    last = bb.layer_groups()[-1]
    assert "model.layer4.1.bn2.bias" in last  # past encoder_depth=3: used by no feature map, last group
    seg = _make(SEGFORMER)
    _check_groups(seg, [f"model.patch_embed{i}.proj.weight" for i in (1, 2, 3, 4)])
    assert "model.norm4.weight" in seg.layer_groups()[-1]


def test_layer_groups_keep_frozen_parameters_frozen():
    bb = _make()
    for p in bb.parameters():
        p.requires_grad_(False)
    bb.eval()
    assert len(bb.layer_groups()) == 3
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.training


def test_native_head_gives_float32_logits_at_out_size():
    bb = _make(data_chans=1)
    x = torch.rand(2, 1, *HW)
    head = bb.native_head(3)
    assert (head.input_key, head.outputs, head.trainable, head.multiscale) == (
        "pyramid",
        "logits",
        True,
        False,
    )
    logits = head(bb.forward_pyramid(x), HW)
    assert logits.shape == (2, 3, 64, 64) and logits.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(bb.forward_pyramid(x), (48, 80))
    assert mixed.shape == (2, 3, 48, 80) and mixed.dtype == torch.float32
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    assert next(bb.parameters()).grad is not None  # end to end: the loss reaches the encoder
    head_ids = {id(p) for p in head.parameters()}
    assert not head_ids & {id(p) for p in bb.parameters()}
    assert not head_ids & {id(p) for p in bb.native_head(3).parameters()}  # each call a new module


def test_segformer_contract_and_head():
    bb = _make(SEGFORMER, data_chans=1)
    x = torch.rand(2, 1, *HW)
    f = bb.forward_features(x)
    assert f.grid == (2, 2) and f.embedding.shape == (2, 256)
    assert [lv.grid for lv in bb.forward_levels(x, 4)] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    head = bb.native_head(2)
    assert head(bb.forward_pyramid(x), HW).shape == (2, 2, 64, 64)  # SMP's x4 upsampling of the stride-4 map
    assert head(bb.forward_pyramid(x), (50, 70)).shape == (2, 2, 50, 70)


def test_size_the_architecture_cannot_take_is_a_config_error():
    with pytest.raises(ConfigError, match="divisible by its encoder's output stride 32.*height 64 or 96"):
        _make("smp:fpn?encoder=resnet18&encoder_depth=5", img_size=(70, 64))
    with pytest.raises(ConfigError, match="output stride 8.*height 64 or 72"):
        _make("smp:fpn?encoder=resnet18&encoder_depth=3&decoder_pyramid_channels=16", img_size=(66, 64))


def test_unknown_architecture_option_or_encoder_is_a_config_error():
    assert {"unet", "unetplusplus", "fpn", "deeplabv3plus", "segformer"} <= set(list_architectures())
    with pytest.raises(
        ConfigError, match=r"no architecture 'unnet'; did you mean 'unet'.*valid: .*segformer"
    ):
        _make("smp:unnet")
    with pytest.raises(ConfigError, match="no option decoder_chanels; did you mean 'decoder_channels'"):
        _make("smp:unet?encoder=resnet18&decoder_chanels=[8]")
    with pytest.raises(ConfigError, match="no encoder 'resnet81'.*tu-NAME"):
        _make("smp:unet?encoder=resnet81")
    with pytest.raises(ConfigError, match="classes cannot be set in an smp address"):
        _make("smp:unet?encoder=resnet18&classes=4")


def test_seeded_creation_is_reproducible():
    a, b = _make(seed=0), _make(seed=0)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    torch.manual_seed(1)
    ha = a.native_head(3).state_dict()
    torch.manual_seed(1)
    hb = b.native_head(3).state_dict()
    assert all(torch.equal(ha[k], hb[k]) for k in ha)


@pytest.mark.parametrize("prefix", ["", "encoder."])  # the encoder's state dict, or a whole SMP model's
def test_local_weights_file_loads_into_the_encoder(tmp_path, prefix):
    source = _make(seed=1)
    saved = {prefix + k: v.clone() for k, v in source.model.state_dict().items()}
    if prefix:
        saved["decoder.blocks.0.conv1.0.weight"] = torch.zeros(1)  # the decoder's part is not loaded
    path = tmp_path / "encoder.safetensors"
    save_file(saved, str(path))
    bb = _make(seed=0, weights=str(path))
    assert bb.spec.pretrained == f"file:{path}"
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, saved[prefix + k]), k


def test_weights_file_of_another_encoder_is_a_weights_error(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(_make("smp:unet?encoder=resnet18").model.state_dict(), str(path))
    with pytest.raises(
        WeightsError,
        match=r"does not fit smp encoder .resnet34.: 80 of the encoder.s tensors are not in it \[.layer1.2.conv1",
    ):
        _make("smp:unet?encoder=resnet34", weights=str(path))


def test_pretrained_without_internet_names_the_files_and_where_to_put_them(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError(f"no connection for {repo_id}/{filename}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(WeightsError) as info:
        create_backbone("smp:unet?encoder=resnet18", pretrained=True, img_size=HW)
    message = str(info.value)
    assert "smp-hub/resnet18.imagenet" in message and "model.safetensors" in message
    assert "--weights PATH" in message and "HF cache" in message
    with pytest.raises(ConfigError, match="no pretrained weights 'nope'; valid: weights=imagenet"):
        create_backbone("smp:unet?encoder=resnet18&weights=nope", pretrained=True, img_size=HW)


def test_dpt_reads_prefix_tokens_through_the_pyramid():
    """DPT's encoder returns (feature maps, [CLS] tokens); the pyramid carries both to the native head."""
    address = (
        "smp:dpt?encoder=tu-vit_tiny_patch16_224&embed_dim=32&num_heads=2"
        "&decoder_intermediate_channels=[16,16,16,16]&decoder_fusion_channels=16"
    )
    bb = _make(address, data_chans=1)
    x = torch.rand(2, 1, *HW)
    assert bb.forward_features(x).grid == (4, 4) and bb.num_features == 32
    pyramid = bb.forward_pyramid(x)
    assert [tuple(p.shape) for p in pyramid] == [(2, 32, 4, 4)] * 4 + [(2, 1, 32)] * 4
    assert bb.native_head(2)(pyramid, HW).shape == (2, 2, 64, 64)
    _check_groups(
        bb, [f"model.model.{n}" for n in ("cls_token", *(f"blocks.{i}.norm1.weight" for i in (3, 6, 9)))]
    )


def test_timm_checkpoint_loads_into_a_tu_encoder(tmp_path):
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(1)
        plain = timm.create_model("resnet18", pretrained=False)  # a timm checkpoint, with its classifier
    path = tmp_path / "resnet18.safetensors"
    save_file(plain.state_dict(), str(path))
    bb = _make("smp:unet?encoder=tu-resnet18", weights=str(path))
    torch.testing.assert_close(
        bb.model.model.layer4[1].conv2.weight, plain.layer4[1].conv2.weight, rtol=0, atol=0
    )
    assert bb.spec.pretrained == f"file:{path}" and bb.spec.mean == (0.485, 0.456, 0.406)
    partial = {k: v for k, v in plain.state_dict().items() if k != "layer4.1.bn2.weight"}
    save_file(partial, str(path))
    with pytest.raises(
        WeightsError, match=r"1 of the model's tensors are not in it \['layer4.1.bn2.weight'\]"
    ):
        _make("smp:unet?encoder=tu-resnet18", weights=str(path))
