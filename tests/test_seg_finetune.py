"""Segmentation through the fine-tuning loop: every strategy trains a segmentation head, masks follow the
augmentation, checkpoints resume bit for bit, and the run's model, predictions and figures come back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import write_square_masks

from medadapt.backbones import create_backbone
from medadapt.data import load_dataset
from medadapt.errors import ConfigError, DataError
from medadapt.strategies import STRATEGIES, Segmenter, build_segmenter, create_strategy
from medadapt.training.augment import make_augment
from medadapt.training.loop import TrainConfig, fit, predict, selection_key

VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2&patch_size=8"


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """24 gray 32-px images, each with a bright square that is the object; 18 train (20% carved for val), 6
    test."""
    root = write_square_masks(tmp_path_factory.mktemp("seg") / "squares")
    return f"segfolder:{root}?val_fraction=0.2"


def _segmenter(head: str = "linear", seed: int = 0, **kw) -> Segmenter:
    torch.manual_seed(seed)
    bb = create_backbone(VIT, pretrained=False, img_size=(32, 32), data_chans=1)
    return build_segmenter(bb, head, 2, **kw)


def _prep(model):
    from medadapt.data.transforms import Preprocess

    spec = model.backbone.spec
    return Preprocess(size=(32, 32), mean=spec.mean, std=spec.std)


@pytest.mark.parametrize("head", ["linear", "decoder", "multiscale"])
def test_a_segmenter_gives_logits_at_the_input_size_and_every_head_parameter_reaches_them(head):
    kw = {"levels": 2} if head == "multiscale" else {"width": 8, "stages": 2} if head == "decoder" else {}
    try:
        model = _segmenter(head, **kw)
    except ConfigError as e:  # multi-level tokens come with forward_levels
        pytest.skip(str(e))
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 2, 32, 32) and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"scratch"}))
def test_every_strategy_trains_a_segmentation_head_and_only_what_it_says(name):
    """The contract of each strategy on a segmenter: the head always trains; a frozen encoder gets no
    gradient; adapters / norms / encoder train where the strategy says."""
    model = _segmenter("linear")
    strategy = create_strategy(name)
    groups = strategy.configure(model, lr=1e-3, weight_decay=0.0)
    if name == "unfreeze":  # the head trains alone in epoch 1; the top stage joins in epoch 2
        opt = torch.optim.AdamW(groups)
        for epoch in (1, 2):
            strategy.on_epoch_start(epoch, model, opt, [])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {f"head.{n}" for n, _ in model.head.named_parameters()} <= trainable
    loss = model(torch.randn(2, 1, 32, 32)).logsumexp(1).mean()
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable  # nothing frozen gets a gradient, and every trainable part is reached
    encoder = {n for n in trainable if n.startswith("backbone.")}
    if name == "frozen":
        assert not encoder
    elif name in ("lora", "ia3"):
        assert encoder and all(("lora_" in n) or ("ia3_" in n) for n in encoder)
    elif name == "ln_tune":
        assert encoder and all("norm" in n for n in encoder)
    else:
        assert encoder


def test_masks_move_with_the_images_under_augmentation():
    """A flip or crop of the image is the same flip or crop of its mask (nearest: no new labels)."""
    from medadapt.training.augment import Augment

    masks = torch.zeros(8, 32, 32, dtype=torch.long)
    masks[:, 4:20, 2:12] = 1
    masks[:, 22:30, 20:30] = 2
    images = (masks * 100).to(torch.uint8)[:, None]  # the image is its mask, brightened
    out, moved = Augment(hflip=True).pair(images, masks, torch.Generator().manual_seed(0))
    flipped = (out[:, 0] * 255).round().long() != images[:, 0].long()
    assert flipped.flatten(1).any(1).any() and torch.equal((out[:, 0] * 255).round().long() // 100, moved)
    aug = make_augment("light")
    out, moved = aug.pair(images, masks, torch.Generator().manual_seed(3))
    assert moved.dtype == masks.dtype and set(moved.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(moved, masks)  # something moved
    # the resampled image, read back as classes, is the moved mask but at a few edge pixels (bilinear blends)
    agree = ((out[:, 0] * 255 / 100).round().long() == moved).float().mean()
    assert agree > 0.97
    # the same generator state draws the same images with or without masks
    assert torch.equal(aug(images, torch.Generator().manual_seed(3)), out)


def test_fit_trains_a_segmenter_selects_on_val_dice_and_resumes_bit_for_bit(squares, tmp_path):
    train, val = load_dataset(squares, "train"), load_dataset(squares, "val")
    cfg = TrainConfig(lr=1e-2, epochs=4, batch_size=8, augment="light", seed=0, device="cpu")

    def run(out, kill_after=None):
        model = _segmenter("linear")

        def stop(epoch, epochs, record):
            if kill_after is not None and epoch == kill_after:
                raise KeyboardInterrupt

        return fit(model, create_strategy("full"), train, val, cfg=cfg, preprocess=_prep(model), out_dir=out,
                   resume=True, progress=stop)  # fmt: skip

    whole = run(tmp_path / "a")
    assert whole.metric == "val_dice" and "val_dice" in whole.history[0] and "val_auc" not in whole.history[0]
    best = max(whole.history, key=lambda r: selection_key(r, "val_dice"))
    assert whole.best_epoch == best["epoch"] and whole.best_val_score == best["val_dice"]
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill_after=2)
    resumed = run(tmp_path / "b")
    assert resumed.resumed_from == 2
    for k, v in whole.state.items():
        assert torch.equal(v, resumed.state[k]), k
    maps = predict(whole.model, load_dataset(squares, "test"), preprocess=_prep(whole.model))
    assert maps.shape == (6, 32, 32) and maps.dtype == np.uint8 and set(np.unique(maps)) <= {0, 1}


def test_select_on_and_loss_follow_the_task(squares):
    from medadapt.training.loop import _for_task, task_of

    assert _for_task("val_auc", "val_dice") == "val_dice" and _for_task("val_loss", "val_dice") == "val_loss"
    with pytest.raises(ConfigError, match="not measured on this task"):
        _for_task("val_dice", "val_auc")
    with pytest.raises(ConfigError, match="applies to segmentation"):
        task_of("binary", "dice")
    assert task_of("segmentation", "dice").loss_kind == "dice"
    with pytest.raises(ConfigError, match="--loss"):
        TrainConfig(loss="focal")


@pytest.mark.parametrize("loss", ["ce", "dice", "ce+dice"])
def test_each_loss_and_class_weights_train(squares, loss):
    train, val = load_dataset(squares, "train"), load_dataset(squares, "val")
    model = _segmenter("linear")
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=8, loss=loss, class_weights=loss != "dice", device="cpu")
    res = fit(model, create_strategy("frozen"), train, val, cfg=cfg, preprocess=_prep(model))
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] or loss == "dice"


def test_class_weights_of_masks_count_pixels():
    from medadapt.tasks import get_task

    masks = [np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 1]])]
    w = get_task("segmentation").mask_class_weights(masks, 2)
    assert torch.allclose(w, torch.tensor([8 / (2 * 6), 8 / (2 * 2)]))


def test_a_batch_of_mixed_mask_sizes_is_a_clear_error():
    from medadapt.data.transforms import collate

    samples = [{"image": torch.zeros(1, s, s, dtype=torch.uint8), "label": torch.zeros(1), "index": i,
                "mask": torch.zeros(s, s, dtype=torch.long)} for i, s in enumerate((8, 8, 16))]  # fmt: skip
    with pytest.raises(DataError, match="mixes mask sizes.*--size"):
        collate(samples, fit=lambda im: torch.zeros(1, 8, 8))


def test_medadapt_finetune_on_masks_saves_a_reloadable_segmenter(squares, tmp_path, monkeypatch):
    from medadapt.cli import main
    from medadapt.evaluation.segmentation import segmentation_metrics
    from medadapt.reporting.results import load_predictions
    from medadapt.saved import load_classifier

    out = tmp_path / "ft"
    args = ["finetune", "--dataset", squares, "--backbone", VIT, "--no-pretrained", "--head", "linear",
            "--strategy", "full", "--img-size", "32", "--lr", "0.01", "--epochs", "12", "--batch-size", "8",
            "--augment", "light", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    test = table[table["split"] == "test"].set_index("metric")["value"]
    assert {"dice", "iou", "dice_pooled", "iou_pooled", "hd95"} <= set(test.index) and test["dice"] > 0.6
    cell = out / "full-linear" / "seed0"
    saved = load_predictions(cell / "predictions" / "test.npz")
    assert saved["task"] == "segmentation" and saved["labels"].shape == saved["scores"].shape == (6, 32, 32)
    assert test["dice"] == pytest.approx(segmentation_metrics(saved["labels"].astype(int),
                                                              saved["scores"].astype(int), 2)["dice"])  # fmt: skip
    assert (cell / "figures" / "overlays_test.png").is_file()
    assert "val_dice" in pd.read_csv(cell / "history.csv").columns
    model, preprocess, info = load_classifier(cell)
    assert isinstance(model, Segmenter) and info.task == "segmentation"
    again = predict(model, load_dataset(squares, "test"), preprocess=preprocess)
    assert np.array_equal(again, saved["scores"])
    cost = table[table["split"] == "cost"].set_index("metric")["value"]
    assert cost["trainable_params"] > 0 and cost["peak_memory_bytes"] > 0


def test_a_classification_head_on_masks_and_a_segmentation_head_on_labels_are_clear_errors(squares, tmp_path):
    from medadapt.cli import main

    base = ["finetune", "--backbone", VIT, "--no-pretrained", "--img-size", "32", "--epochs", "1",
            "--out", str(tmp_path / "x")]  # fmt: skip
    assert main([*base, "--dataset", squares, "--head", "attention"]) == 2
    assert main([*base, "--dataset", squares, "--head", "native"]) == 2


def test_a_grid_runs_segmentation_probe_and_finetune_cells_and_the_report_reads_dice(
    squares, tmp_path, monkeypatch
):
    import yaml

    from medadapt.benchmark import run_benchmark
    from medadapt.reporting.compare import compare
    from medadapt.reporting.sources import load_sources

    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    grid = {
        "name": "seg",
        "datasets": [{"address": squares, "name": "squares"}],
        "backbones": [{"address": VIT, "name": "vit"}],
        "methods": [
            {"name": "linear", "probe": "linear"},
            {"name": "decoder", "probe": "decoder", "head_kwargs": {"width": 8, "stages": 2}},
            {"name": "full", "finetune": "full", "train": {"epochs": 2, "batch_size": 8}},
        ],
        "seeds": [0, 1],
        "settings": {"pretrained": False, "img_size": 32, "epochs": 4, "lrs": [1e-2], "batch_size": 8},
    }
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    summary = run_benchmark(tmp_path / "g.yaml", tmp_path / "out", workers=0)
    assert summary.ok and summary.counts == {"done": 6}
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    test = table[(table["split"] == "test") & (table["metric"] == "dice")]
    assert len(test) == 6 and test["value"].between(0, 1).all()
    result = compare(load_sources([tmp_path / "out"]), n_resamples=100)
    assert result.options.metric == "dice" and len(result.summary) == 3


def test_an_smp_unet_trains_through_its_native_decoder_under_scratch():
    pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    bb = create_backbone("smp:unet?encoder=resnet18&encoder_depth=3&decoder_channels=[16,8,4]", pretrained=False,
                         img_size=(32, 32), data_chans=1)  # fmt: skip
    model = build_segmenter(bb, "native", 3)
    groups = create_strategy("scratch").configure(model, lr=1e-3, weight_decay=0.0)
    trained = {id(p) for g in groups for p in g["params"]}
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    out.sum().backward()
    # the whole network trains, except the encoder stages past encoder_depth=3, which the output never reads
    assert trained == {id(p) for p in model.parameters() if p.grad is not None}
    assert all(p.grad is not None for p in model.head.parameters())
    assert {n.split(".")[2] for n, p in model.named_parameters() if id(p) not in trained} == {
        "layer3",
        "layer4",
    }
    with pytest.raises(ConfigError, match="needs a backbone with its own decoder"):
        build_segmenter(create_backbone(VIT, pretrained=False, img_size=(32, 32), data_chans=1), "native", 2)


def test_a_probe_cell_saves_a_segmenter_that_reloads_to_its_predictions(squares, tmp_path, monkeypatch):
    from medadapt.cli import main
    from medadapt.reporting.results import load_predictions
    from medadapt.saved import load_classifier

    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "p"
    args = ["probe", "--dataset", squares, "--backbone", VIT, "--no-pretrained", "--head", "multiscale",
            "--head-option", "levels=2", "--head-option", "stride_out=8", "--img-size", "32", "--lrs", "0.03",
            "--epochs", "5", "--batch-size", "8", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    cell = out / "multiscale" / "seed0"
    model, preprocess, info = load_classifier(cell)
    assert isinstance(model, Segmenter) and model.levels == 2 and info.head_kwargs["levels"] == 2
    again = predict(model, load_dataset(squares, "test"), preprocess=preprocess, autocast=False)
    saved = load_predictions(cell / "predictions" / "test.npz")["scores"]
    # the probe read float16 cached tokens; the reloaded model recomputes them in float32
    assert (again == saved).mean() > 0.99
