"""Segmentation heads on patch tokens: shapes, float32 logits, gradients, multi-scale fusion, the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medadapt.errors import ConfigError, DataError, UnknownNameError
from medadapt.heads.segmentation import (
    SEGMENTATION_HEADS,
    MultiScaleSegHead,
    bilinear_resize,
    create_segmentation_head,
    segmentation_loss,
    tokens_to_map,
)
from medadapt.tasks import class_map

DIM, CLASSES, BATCH = 16, 3, 2
GRIDS_AND_SIZES = [((4, 4), (16, 16)), ((3, 5), (24, 40)), ((2, 3), (7, 11)), ((4, 4), (4, 4))]


def _tokens(grid: tuple[int, int], dim: int = DIM, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, grid[0] * grid[1], dim, generator=g).half()


def _run(head: torch.nn.Module, grid: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
    if head.multiscale:
        coarse = (max(1, grid[0] // 2), max(1, grid[1] // 2))
        return head([(_tokens(grid), grid), (_tokens(coarse, seed=1), coarse)], out_size)
    return head(_tokens(grid), grid, out_size)


def _build(name: str) -> torch.nn.Module:
    dim = [DIM, DIM] if name == "multiscale" else DIM
    kwargs = {"width": 8, "stages": 2} if name == "decoder" else {}
    return create_segmentation_head(name, dim, CLASSES, **kwargs)


def test_registry_is_separate_and_suggests_names() -> None:
    from medadapt.heads import HEADS

    assert SEGMENTATION_HEADS.list() == ["decoder", "linear", "multiscale"]
    assert SEGMENTATION_HEADS.get("linear") is not HEADS.get("linear")
    with pytest.raises(UnknownNameError, match="did you mean 'decoder'"):
        SEGMENTATION_HEADS.get("decodr")


@pytest.mark.parametrize(("grid", "out_size"), GRIDS_AND_SIZES)
@pytest.mark.parametrize("name", SEGMENTATION_HEADS.list())
def test_output_shape_float32_and_finite(name: str, grid: tuple[int, int], out_size: tuple[int, int]) -> None:
    head = _build(name)
    assert (head.input_key, head.outputs, head.trainable) == ("tokens", "logits", True)
    assert head.multiscale == (name == "multiscale")
    for mode in (head.train, head.eval):
        mode()
        with torch.no_grad():
            out = _run(head, grid, out_size)
        assert out.shape == (BATCH, CLASSES, *out_size)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SEGMENTATION_HEADS.list())
def test_logits_are_float32_under_bf16_autocast(name: str) -> None:
    head = _build(name).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(head, (4, 4), (16, 16))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", SEGMENTATION_HEADS.list())
def test_every_head_parameter_gets_a_gradient(name: str) -> None:
    head = _build(name).train()
    out = _run(head, (4, 4), (16, 16))
    assert out.requires_grad
    masks = torch.randint(0, CLASSES, (BATCH, 16, 16), generator=torch.Generator().manual_seed(0))
    segmentation_loss(out, masks).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_linear_head_norm_option() -> None:
    assert (
        sum(p.numel() for p in create_segmentation_head("linear", DIM, 2, norm="none").parameters())
        == DIM * 2 + 2
    )
    with pytest.raises(ConfigError, match="'bn' or 'none'"):
        create_segmentation_head("linear", DIM, 2, norm="ln")


def test_linear_head_is_bn_then_1x1_conv_then_bilinear() -> None:
    head = create_segmentation_head("linear", DIM, CLASSES).eval()
    tokens, grid = _tokens((3, 4)), (3, 4)
    x = head.norm(tokens_to_map(tokens.float(), grid))
    want = F.interpolate(head.classifier(x), size=(9, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(tokens, grid, (9, 8)), want)


def test_linear_head_trains_like_bn_and_conv_on_the_token_map() -> None:
    """Train mode: batch statistics, running statistics and gradients as BatchNorm2d + conv on the map."""
    head = create_segmentation_head("linear", DIM, CLASSES).train()
    twin = create_segmentation_head("linear", DIM, CLASSES).train()
    twin.load_state_dict(head.state_dict())
    tokens, grid = _tokens((3, 4)).float(), (3, 4)
    x = twin.norm(tokens_to_map(tokens, grid))
    want = F.interpolate(twin.classifier(x), size=(9, 8), mode="bilinear", align_corners=False)
    got = head(tokens, grid, (9, 8))
    torch.testing.assert_close(got, want)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    (got * g).sum().backward()
    (want * g).sum().backward()
    for (name, a), b in zip(head.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    torch.testing.assert_close(head.norm.running_var, twin.norm.running_var)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((2, 3, 16, 16), (224, 224)),
        ((1, 2, 3, 5), (7, 11)),
        ((2, 4, 9, 8), (4, 3)),
        ((1, 1, 1, 1), (5, 6)),
        ((1, 2, 130, 6), (140, 12)),
    ],  # fmt: skip
)
def test_bilinear_resize_is_f_interpolate(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    """Values and gradients of torch's bilinear resize (align_corners=False), up, down and mixed; inputs
    over 128 a side go to F.interpolate itself."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, requires_grad=True)
    want = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    got = bilinear_resize(x, size)
    torch.testing.assert_close(got, want)
    g = torch.randn(want.shape, generator=gen)
    (grad_want,) = torch.autograd.grad((want * g).sum(), x)
    (grad_got,) = torch.autograd.grad((got * g).sum(), x)
    # an input's gradient sums up to ~200 output gradients (x14 upsampling), in another order than the
    # kernel's: float32 rounding of such sums is ~1e-5 of their size; wrong weights would be off by ~0.1
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-4)


def test_bilinear_resize_keeps_dtype_and_trains_after_inference_mode() -> None:
    x = torch.randn(1, 2, 4, 4)
    with torch.inference_mode():  # its weight matrices are cached: they must not be inference tensors
        bilinear_resize(x, (10, 10))
    leaf = x.clone().requires_grad_()
    bilinear_resize(leaf, (10, 10)).sum().backward()
    assert leaf.grad is not None
    assert bilinear_resize(x.bfloat16(), (10, 10)).dtype == torch.bfloat16


def _fused_shape(head: MultiScaleSegHead, features: list, out_size: tuple[int, int]) -> tuple[int, int]:
    seen = []
    hook = head.classifier.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        head(features, out_size)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize(("stride_out", "fused"), [(None, (4, 4)), (4, (8, 8)), (16, (2, 2)), (12, (3, 3))])
def test_multiscale_fuses_hierarchical_grids_at_the_output_stride(
    stride_out: int | None, fused: tuple[int, int]
) -> None:
    """Two stages of a hierarchical backbone on a 32-pixel image: 4x4 (stride 8) and 2x2 (stride 16)."""
    head = MultiScaleSegHead([8, 16], CLASSES, stride_out=stride_out).eval()
    features = [(_tokens((4, 4), 8), (4, 4)), (_tokens((2, 2), 16), (2, 2))]
    assert head.fused_size([(4, 4), (2, 2)], (32, 32)) == fused
    assert _fused_shape(head, features, (32, 32)) == fused
    assert head(features, (32, 32)).shape == (BATCH, CLASSES, 32, 32)


def test_multiscale_int_dims_means_levels_of_one_width_and_checks_them() -> None:
    head = MultiScaleSegHead(DIM, CLASSES, levels=3)
    assert len(head.proj) == 3
    with pytest.raises(DataError, match=r"dims=\[16, 16\]"):
        head([(_tokens((2, 2)), (2, 2))] * 2, (8, 8))


def test_decoder_upsamples_by_two_per_stage_up_to_out_size() -> None:
    head = create_segmentation_head("decoder", DIM, CLASSES, width=8, stages=3).eval()
    sizes = []
    hook = head.classifier.register_forward_hook(lambda m, args, out: sizes.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        head(_tokens((2, 3)), (2, 3), (32, 48))  # 3 doublings: 16x24, then resized to 32x48
        head(_tokens((2, 3)), (2, 3), (6, 12))  # capped at out_size: 4x6 -> 6x12 -> 6x12
    hook.remove()
    assert sizes == [(16, 24), (6, 12)]
    assert len(create_segmentation_head("decoder", DIM, CLASSES).blocks) == 4


def test_tokens_to_map_is_row_major() -> None:
    tokens = torch.arange(2 * 6 * 3).reshape(2, 6, 3)
    fmap = tokens_to_map(tokens, (2, 3))
    assert fmap.shape == (2, 3, 2, 3)
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 1 * 3 + 2])


def test_tokens_to_map_errors() -> None:
    with pytest.raises(DataError, match=r"\[CLS\].*tokens\[:, 1:\]"):
        tokens_to_map(torch.zeros(1, 17, 4), (4, 4))
    with pytest.raises(DataError, match="do not fill the grid"):
        tokens_to_map(torch.zeros(1, 12, 4), (4, 4))
    with pytest.raises(DataError, match=r"\[B, T, D\]"):
        tokens_to_map(torch.zeros(1, 4, 4, 4), (4, 4))


def _loss_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, CLASSES, 5, 6, generator=g), torch.randint(0, CLASSES, (3, 5, 6), generator=g)


def _one_hot_logits(masks: torch.Tensor, margin: float) -> torch.Tensor:
    return F.one_hot(masks, CLASSES).permute(0, 3, 1, 2).float() * margin


def test_ce_is_cross_entropy_and_class_weights_weight_it() -> None:
    logits, masks = _loss_inputs()
    torch.testing.assert_close(segmentation_loss(logits, masks, kind="ce"), F.cross_entropy(logits, masks))
    w = torch.tensor([0.2, 1.0, 3.0])
    weighted = segmentation_loss(logits, masks, kind="ce", class_weights=w)
    torch.testing.assert_close(weighted, F.cross_entropy(logits, masks, weight=w))
    assert not torch.isclose(weighted, F.cross_entropy(logits, masks))


def test_dice_is_zero_for_perfect_and_near_one_for_all_wrong_logits() -> None:
    _, masks = _loss_inputs()
    assert segmentation_loss(_one_hot_logits(masks, 50.0), masks, kind="dice").item() < 1e-6
    wrong = _one_hot_logits((masks + 1) % CLASSES, 50.0)
    assert segmentation_loss(wrong, masks, kind="dice").item() > 1 - 1e-6


def test_ce_plus_dice_is_their_sum() -> None:
    logits, masks = _loss_inputs()
    parts = [segmentation_loss(logits, masks, kind=k) for k in ("ce", "dice")]
    torch.testing.assert_close(segmentation_loss(logits, masks), parts[0] + parts[1])


@pytest.mark.parametrize("include_background", [False, True])
def test_dice_matches_monai(include_background: bool) -> None:
    losses = pytest.importorskip("monai.losses")
    logits, masks = _loss_inputs(1)
    ref = losses.DiceLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )(logits, masks[:, None])
    got = segmentation_loss(logits, masks, kind="dice", include_background=include_background)
    torch.testing.assert_close(got, ref)


def test_ignore_index_leaves_pixels_out_of_both_parts() -> None:
    logits, masks = _loss_inputs()
    ignored = masks.clone()
    ignored[:, :2] = 255
    want_ce = F.cross_entropy(logits, ignored, ignore_index=255)
    torch.testing.assert_close(segmentation_loss(logits, ignored, kind="ce", ignore_index=255), want_ce)
    kept = _one_hot_logits(masks, 50.0)
    kept[:, :, :2] = -kept[:, :, :2]  # wrong where ignored, right elsewhere
    assert segmentation_loss(kept, ignored, kind="dice", ignore_index=255).item() < 1e-6


def _softmax_reference(logits, masks, kind, weight, ignore_index, include_background, smooth=1e-5):
    """The loss as its docstring states it, through the softmax over every class (no two-class shortcut)."""
    loss = torch.zeros((), dtype=logits.dtype)
    valid = torch.ones_like(masks, dtype=torch.bool) if ignore_index is None else masks != ignore_index
    if "ce" in kind.split("+"):
        ignore = -100 if ignore_index is None else ignore_index
        loss = loss + F.cross_entropy(logits, masks, weight=weight, ignore_index=ignore)
    if "dice" in kind.split("+"):
        probs = torch.softmax(logits, 1) * valid[:, None]
        onehot = F.one_hot(masks.where(valid, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid[:, None]
        dice = (2 * (probs * onehot).sum((0, 2, 3)) + smooth) / (
            probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + smooth
        )
        loss = loss + 1 - dice[0 if include_background else 1 :].mean()
    return loss


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weighted": True},
        {"ignore_index": 255},
        {"include_background": True},
        {"weighted": True, "ignore_index": 255, "include_background": True},
    ],  # fmt: skip
)
def test_loss_values_and_gradients_match_the_softmax_formula(classes: int, kind: str, options: dict) -> None:
    """Two classes take the logit-difference path, more the softmax path: both give the softmax formula's
    values and gradients (float64, so a wrong term cannot hide in rounding), and uint8 masks what int64 do."""
    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(3, classes, 7, 9, generator=g, dtype=torch.float64)
    masks = torch.randint(0, classes, (3, 7, 9), generator=g)
    ignore_index = options.get("ignore_index")
    if ignore_index is not None:
        masks[:, :2, :3] = ignore_index
    weight = torch.rand(classes, generator=g, dtype=torch.float64) + 0.5 if options.get("weighted") else None
    include_background = options.get("include_background", False)
    want = _softmax_reference(logits.requires_grad_(), masks, kind, weight, ignore_index, include_background)
    (want_grad,) = torch.autograd.grad(want, logits)
    for dtype in (torch.int64, torch.uint8):
        got = segmentation_loss(logits, masks.to(dtype), kind=kind, class_weights=weight,
                                ignore_index=ignore_index, include_background=include_background)  # fmt: skip
        (got_grad,) = torch.autograd.grad(got, logits)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)  # the loss computes in float32
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)


def test_two_class_loss_gradient_matches_torch_and_monai() -> None:
    """The two-class path against the libraries: ``F.cross_entropy`` plus MONAI's batch soft Dice."""
    losses = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 2, 12, 10, generator=g).requires_grad_()
    masks = (torch.rand(4, 12, 10, generator=g) < 0.3).long()
    dice = losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                           smooth_nr=1e-5, smooth_dr=1e-5)  # fmt: skip
    want = F.cross_entropy(logits, masks) + dice(logits, masks[:, None])
    (want_grad,) = torch.autograd.grad(want, logits)
    got = segmentation_loss(logits, masks.to(torch.uint8))
    (got_grad,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


def test_class_map_is_argmax_with_ties_and_nan() -> None:
    logits = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    logits[0, 1:3, 0, 0] = 9.0  # a tie: the first class wins
    logits[1, 2, 1, 1] = float("nan")  # NaN counts as the largest
    torch.testing.assert_close(class_map(logits), logits.argmax(1))
    assert class_map(logits)[0, 0, 0] == 1 and class_map(logits)[1, 1, 1] == 2


def test_loss_errors() -> None:
    logits, masks = _loss_inputs()
    with pytest.raises(ConfigError, match="ce\\+dice"):
        segmentation_loss(logits, masks, kind="focal")
    with pytest.raises(DataError, match="do not match"):
        segmentation_loss(logits, masks[:, :4])
    with pytest.raises(DataError, match="outside the 3 classes"):
        segmentation_loss(logits, masks + 1)
    with pytest.raises(ConfigError, match=">= 2 softmax classes"):
        segmentation_loss(logits[:, :1], masks.clamp(max=0))
    with pytest.raises(DataError, match="outside the 2 classes"):  # the two-class path checks the same
        segmentation_loss(logits[:, :2], masks.to(torch.uint8))
    for classes in (2, 3):  # one weight per class, whichever path
        with pytest.raises(ConfigError, match="one weight per class"):
            segmentation_loss(logits[:, :classes], masks.clamp(max=1), class_weights=torch.ones(4))


def test_linear_head_learns_a_linear_token_mask() -> None:
    """Masks that are the argmax of a bilinearly upsampled linear function of the tokens (what the head can
    represent: a 1x1 conv commutes with bilinear resizing): 50 Adam steps reach > 90% of the pixels (about
    99%). Per-patch classes upsampled by nearest neighbour would cap any bilinear head near 81% here."""
    torch.manual_seed(0)
    grid, out_size, n = (4, 4), (16, 16), 64
    tokens = torch.randn(n, grid[0] * grid[1], DIM)
    scores = tokens_to_map(tokens @ torch.randn(DIM, CLASSES), grid)
    masks = F.interpolate(scores, size=out_size, mode="bilinear", align_corners=False).argmax(1)
    head = create_segmentation_head("linear", DIM, CLASSES)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        segmentation_loss(head(tokens.half(), grid, out_size), masks).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (head.eval()(tokens.half(), grid, out_size).argmax(1) == masks).float().mean().item()
    assert accuracy > 0.9
