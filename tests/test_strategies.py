"""Strategy contract tests on tiny random backbones (timm ViT and ResNet, HF DINOv2, open_clip ViT): offline, CPU.

For every strategy, family and head: exactly the intended parameters train and sit in the optimizer groups,
one AdamW run changes exactly those and leaves the rest bit-identical, and the group LRs / weight decays are
as specified. Then the strategy-specific behaviour: LLRD against timm's own helper, the unfreezing schedule
and its resume, LoRA / IA3 merging, target resolution errors, option validation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medadapt.backbones import BackboneAddress, create_backbone
from medadapt.errors import ConfigError
from medadapt.strategies import STRATEGIES, build_classifier, create_strategy
from medadapt.strategies._params import no_weight_decay_names

# layer scale 1 (not DINOv2's 1e-5): the random blocks then matter and adapters change the output
VIT = ("timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2&init_values=1.0", 28)
RESNET = ("timm:test_resnet?zero_init_last=false", 64)  # a random zero gamma would cut LoRA off
CONVNEXT = ("timm:convnext_tiny?depths=[1,1,1,1]&dims=[8,16,32,64]", 64)
# SigLIP's attention-pool (MAP) head makes the embedding; an attention head reads the tokens and skips it
SIGLIP = ("timm:vit_base_patch16_siglip_224?embed_dim=32&depth=2&num_heads=2", 32)
POOLING_ONLY = {"siglip": "backbone.model.attn_pool."}
OC_NAME = "mdstrat-vit"
OC_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 4, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
}
ALL = ["frozen", "full", "scratch", "differential", "llrd", "unfreeze", "lora", "ia3", "ln_tune"]
PEFT_LIKE = ["lora", "ia3", "ln_tune"]
LR, WD = 1e-3, 0.05


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        image_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=4,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf-dinov2")
    transformers.Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def open_clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{OC_NAME}.json").write_text(json.dumps(OC_CONFIG))
    open_clip.add_model_config(folder)
    return OC_NAME


def _backbone(family: str, request: pytest.FixtureRequest) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    if family == "hf_dinov2":
        folder = request.getfixturevalue("hf_folder")
        return create_backbone("hf:facebook/dinov2-small", weights=str(folder), img_size=16), 16
    if family == "open_clip":
        name = request.getfixturevalue("open_clip_name")
        return create_backbone(f"open_clip:{name}", pretrained=False, img_size=16), 16
    address, size = {"vit": VIT, "resnet": RESNET, "convnext": CONVNEXT, "siglip": SIGLIP}[family]
    return create_backbone(address, pretrained=False, img_size=size), size


def _classifier(family: str, request: pytest.FixtureRequest, head: str = "linear") -> tuple[nn.Module, int]:
    backbone, size = _backbone(family, request)
    torch.manual_seed(1)
    return build_classifier(backbone, head, 3), size


def _data(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, size, size, generator=g), torch.tensor([0, 1, 2, 0])


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, size: int, n: int = 2) -> None:
    x, y = _data(size)
    for _ in range(n):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def _names_in(groups: list[dict[str, Any]], model: nn.Module) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for g in groups for p in g["params"]]


def _norm_params(model: nn.Module) -> set[str]:
    kinds = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)
    return {
        f"{prefix}.{n}"
        for prefix, m in model.named_modules()
        if prefix.startswith("backbone.") and isinstance(m, kinds)
        for n, _ in m.named_parameters(recurse=False)
    }


def _expected(strategy: str, model: nn.Module, unused: str | None = None) -> set[str]:
    """The parameters ``strategy`` trains; ``unused``: the name prefix of a part the output does not use."""
    names = {n for n, _ in model.named_parameters() if unused is None or not n.startswith(unused)}
    head = {n for n in names if n.startswith("head.")}
    if strategy in ("frozen", "unfreeze"):
        return head
    if strategy == "lora":
        return head | {n for n in names if ".lora_A." in n or ".lora_B." in n}
    if strategy == "ia3":
        return head | {n for n in names if ".ia3_l." in n}
    if strategy == "ln_tune":
        return head | (_norm_params(model) & names)
    return names


CASES = [(s, f, h) for s in ALL for f in ("vit", "resnet") for h in ("linear", "attention")]
CASES += [(s, f, h) for s in PEFT_LIKE for f in ("hf_dinov2", "open_clip") for h in ("linear", "attention")]
CASES += [(s, "siglip", h) for s in ALL for h in ("linear", "attention")]


# ------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize(("strategy", "family", "head"), CASES)
def test_exactly_the_intended_parameters_train(strategy, family, head, request) -> None:
    if strategy in ("lora", "ia3"):
        pytest.importorskip("peft")
    model, size = _classifier(family, request, head)
    s = create_strategy(strategy)
    groups = s.configure(model, lr=LR, weight_decay=WD)
    expected = _expected(strategy, model, POOLING_ONLY.get(family) if head == "attention" else None)
    assert len(expected) > len([n for n in expected if n.startswith("head.")]) or strategy in (
        "frozen",
        "unfreeze",
    )

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    in_groups = _names_in(groups, model)
    assert trainable == expected
    assert len(in_groups) == len(set(in_groups)) and set(in_groups) == expected
    assert len({g["name"] for g in groups}) == len(groups)
    assert all(g["params"] for g in groups)

    optimizer = torch.optim.AdamW(groups)
    model.train()
    s.on_epoch_start(1, model, optimizer, [])
    before = _snapshot(model)
    _steps(model, optimizer, size)
    assert _changed(model, before) == expected


@pytest.mark.parametrize("strategy", ALL)
def test_no_weight_decay_on_biases_norms_and_1d(strategy, request) -> None:
    if strategy in ("lora", "ia3"):
        pytest.importorskip("peft")
    model, _ = _classifier("vit", request)
    groups = create_strategy(strategy).configure(model, lr=LR, weight_decay=WD)
    skip = no_weight_decay_names(model)
    assert {"backbone.model.pos_embed", "backbone.model.cls_token"} <= skip
    by_id = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            name = by_id[id(p)]
            exempt = p.ndim <= 1 or name in skip or ".ia3_l." in name
            assert g["weight_decay"] == (0.0 if exempt else WD), name
            assert g["name"].endswith("_no_decay") == exempt, name


@pytest.mark.parametrize("family", ["vit", "hf_dinov2", "open_clip"])
def test_token_and_position_embeddings_are_not_decayed_from_any_source(family, request) -> None:
    model, _ = _classifier(family, request)
    skip = no_weight_decay_names(model)
    embeddings = {
        n for n, _ in model.named_parameters() if any(k in n for k in ("cls", "position", "pos_embed"))
    }
    assert (
        embeddings and embeddings <= skip
    )  # timm and open_clip list them; HFBackbone lists them for transformers
    assert not any("patch" in n for n in skip)  # the patch projection is decayed as any matrix


def test_scratch_is_full_from_random_init() -> None:
    assert STRATEGIES.get("scratch").pretrained is False
    assert all(STRATEGIES.get(n).pretrained for n in STRATEGIES if n != "scratch")
    assert set(ALL) <= set(STRATEGIES.list())


@pytest.mark.parametrize("strategy", ["frozen", "full", "differential", "llrd", "unfreeze", "ln_tune"])
def test_export_without_adapters_is_the_model(strategy, request) -> None:
    model, _ = _classifier("vit", request)
    s = create_strategy(strategy)
    s.configure(model, lr=LR, weight_decay=WD)
    assert s.export(model) is model


@pytest.mark.parametrize("lr", [0.0, -1e-3])
def test_bad_lr_is_a_config_error(lr, request) -> None:
    model, _ = _classifier("vit", request)
    with pytest.raises(ConfigError, match="lr"):
        create_strategy("full").configure(model, lr=lr, weight_decay=WD)


# ------------------------------------------------------------------------------------------ frozen
def test_frozen_keeps_batchnorm_statistics(request) -> None:
    model, size = _classifier("resnet", request)
    s = create_strategy("frozen")
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    model.train()
    s.on_epoch_start(1, model, optimizer, [])
    buffers = {n: b.clone() for n, b in model.backbone.named_buffers()}
    _steps(model, optimizer, size)
    assert not model.backbone.training and model.head.training
    assert all(torch.equal(b, buffers[n]) for n, b in model.backbone.named_buffers())


@pytest.mark.parametrize("strategy", ["lora", "ia3", "ln_tune"])
def test_peft_strategies_leave_batchnorm_in_train_mode(strategy, request) -> None:
    """As the README says: batch statistics, updated running statistics, frozen BatchNorm weights."""
    if strategy != "ln_tune":
        pytest.importorskip("peft")
    model, size = _classifier("resnet", request)
    s = create_strategy(strategy)
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    model.train()
    s.on_epoch_start(1, model, optimizer, [])
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    _steps(model, optimizer, size, n=1)
    assert all(bn.training for bn in bns)
    assert all(not torch.equal(bn.running_mean, b) for bn, b in zip(bns, before))
    assert all(bn.weight.requires_grad == (strategy == "ln_tune") for bn in bns)


# ------------------------------------------------------------------------------------------ LRs
def _lr_of(groups: list[dict[str, Any]], model: nn.Module) -> dict[str, float]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)]: g["lr"] for g in groups for p in g["params"]}


def test_differential_uses_two_learning_rates(request) -> None:
    model, _ = _classifier("vit", request)
    groups = create_strategy("differential").configure(model, lr=1e-4, weight_decay=WD)
    lrs = _lr_of(groups, model)
    assert [lr for n, lr in lrs.items() if n.startswith("backbone.")] == pytest.approx(
        [1e-7] * (len(lrs) - 2)
    )
    assert {lr for n, lr in lrs.items() if n.startswith("head.")} == {1e-4}

    model, _ = _classifier("vit", request)
    groups = create_strategy("differential", encoder_lr=1e-5, head_lr=1e-2).configure(
        model, lr=1.0, weight_decay=0
    )
    assert sorted({g["lr"] for g in groups}) == [1e-5, 1e-2]


@pytest.mark.parametrize("family", ["vit", "resnet", "convnext", "hf_dinov2", "open_clip"])
def test_llrd_decays_from_head_to_stem(family, request) -> None:
    model, _ = _classifier(family, request)
    groups = create_strategy("llrd", decay=0.5).configure(model, lr=LR, weight_decay=WD)
    per_stage = {g["name"].removesuffix("_no_decay"): g["lr"] for g in groups}
    n = len(per_stage) - 1
    assert per_stage.pop("head") == LR
    lrs = [per_stage[f"stage{i}"] for i in range(n)]  # stem ... top
    assert lrs == sorted(lrs) and len(set(lrs)) == n
    for i, lr in enumerate(lrs):
        assert lr == pytest.approx(LR * 0.5 ** (n - i))


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_llrd_matches_timms_layer_decay(family, request) -> None:
    """Same LR and weight decay per parameter as timm's param_groups_layer_decay on the same timm model."""
    import timm
    from timm.optim import param_groups_layer_decay

    model, _ = _classifier(family, request)
    groups = create_strategy("llrd", decay=0.75).configure(model, lr=LR, weight_decay=WD)
    ours = {}
    by_id = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            ours[by_id[id(p)].replace("backbone.model.", "").replace("head.fc.", "head.")] = (
                g["lr"],
                g["weight_decay"],
            )

    address, size = {"vit": VIT, "resnet": RESNET}[family]
    parsed = BackboneAddress.parse(address)
    extra = {"img_size": size} if family == "vit" else {}
    ref_model = timm.create_model(parsed.name, num_classes=3, **parsed.kwargs, **extra)
    head = "head" if family == "vit" else "fc"
    ref_groups = param_groups_layer_decay(
        ref_model,
        weight_decay=WD,
        layer_decay=0.75,
        no_weight_decay_list=getattr(ref_model, "no_weight_decay", set)(),
    )
    by_id = {id(p): n.replace(f"{head}.", "head.") for n, p in ref_model.named_parameters()}
    ref = {by_id[id(p)]: (LR * g["lr_scale"], g["weight_decay"]) for g in ref_groups for p in g["params"]}
    assert ours.keys() == ref.keys()
    for key, (lr, wd) in ref.items():
        assert ours[key][0] == pytest.approx(lr) and ours[key][1] == wd, key


# ------------------------------------------------------------------------------------------ unfreeze
def _group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    return [g["name"].removesuffix("_no_decay") for g in optimizer.param_groups]


def _stage_names(model: nn.Module) -> list[set[str]]:
    from medadapt.strategies._params import backbone_stages

    return [set(s) for s in backbone_stages(model)]


@pytest.mark.parametrize("every", [1, 2])
def test_unfreeze_schedule_by_time(every, request) -> None:
    model, size = _classifier("resnet", request)
    stages = _stage_names(model)
    s = create_strategy("unfreeze", every=every, group_lr_scale=0.5)
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    for epoch in range(1, every * len(stages) + 3):
        model.train()
        s.on_epoch_start(epoch, model, optimizer, [])
        k = min(len(stages), (epoch - 1) // every)
        expected = head.union(*stages[len(stages) - k :])
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
        assert set(_names_in(optimizer.param_groups, model)) == expected
        before = _snapshot(model)
        _steps(model, optimizer, size, n=1 if k else 2)
        changed = _changed(model, before)
        assert changed <= expected and changed.isdisjoint(set().union(*stages[: len(stages) - k]))
    assert [e["epoch"] for e in s.schedule] == [1 + every * (i + 1) for i in range(len(stages))]
    assert [e["stage"] for e in s.schedule] == list(range(len(stages) - 1, -1, -1))
    assert {g["lr"] for g in optimizer.param_groups if g["name"].startswith("stage")} == {LR * 0.5}


def test_unfreeze_skips_a_top_group_the_head_does_not_use(request, caplog) -> None:
    """SigLIP's attention pool is its own top layer group; with an attention head it is no stage at all."""
    model, size = _classifier("siglip", request, "attention")
    stages = _stage_names(model)
    assert not any(n.startswith(POOLING_ONLY["siglip"]) for g in stages for n in g)
    s = create_strategy("unfreeze", every=1)
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    with caplog.at_level("WARNING"):
        for epoch in range(1, 4):
            model.train()
            s.on_epoch_start(epoch, model, optimizer, [])
            before = _snapshot(model)
            _steps(model, optimizer, size, n=1)
            if epoch > 1:  # the stages joined so far all train
                assert set().union(*stages[len(stages) - (epoch - 1) :]) <= _changed(model, before)
    assert not caplog.text  # no "stage was not in the optimizer" warnings
    assert [e["stage"] for e in s.schedule] == [len(stages) - 1, len(stages) - 2]


def test_unfreeze_keeps_frozen_stages_in_eval_mode(request) -> None:
    model, size = _classifier("resnet", request)
    s = create_strategy("unfreeze")
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    for epoch in (1, 2):
        model.train()
        s.on_epoch_start(epoch, model, optimizer, [])
    buffers = {n: b.clone() for n, b in model.backbone.model.layer1.named_buffers()}
    _steps(model, optimizer, size)
    assert not model.backbone.model.layer1.training and model.backbone.model.layer4.training
    assert all(torch.equal(b, buffers[n]) for n, b in model.backbone.model.layer1.named_buffers())


def test_unfreeze_keeps_dropout_on_in_the_stages_that_train() -> None:
    """Drop-path / dropout of a joined block stay on (as in full fine-tuning); those of frozen blocks are off."""
    bb = create_backbone(
        f"{VIT[0]}&depth=3&drop_path_rate=0.2&proj_drop_rate=0.1", pretrained=False, img_size=28
    )
    model = build_classifier(bb, "linear", 3)
    s = create_strategy("unfreeze", every=1)
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    for epoch in (1, 2):  # the top block joins at epoch 2
        model.train()
        s.on_epoch_start(epoch, model, optimizer, [])
    blocks = bb.model.blocks
    assert blocks[-1].training and blocks[-1].drop_path1.training and blocks[-1].mlp.drop1.training
    assert not blocks[0].training and not blocks[0].drop_path1.training and not blocks[0].mlp.drop1.training
    assert model.head.training


def test_unfreeze_on_plateau_counts_evaluations(request) -> None:
    """With eval_every > 1 the epochs between evaluations have no val_* entries and do not count."""
    model, _ = _classifier("vit", request)
    s = create_strategy("unfreeze", on_plateau=True, monitor="val_auc", patience=1)
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.9, "val_loss": 1.0, "val_auc": 0.7},
               {"epoch": 3, "train_loss": 0.8}]  # fmt: skip
    s.on_epoch_start(4, model, optimizer, history)
    assert s.schedule == []  # one evaluation: no plateau yet
    history += [{"epoch": 4, "train_loss": 0.7, "val_loss": 1.0, "val_auc": 0.6}]
    s.on_epoch_start(5, model, optimizer, history)
    assert [e["epoch"] for e in s.schedule] == [5]


def test_unfreeze_on_plateau(request) -> None:
    model, _ = _classifier("vit", request)
    s = create_strategy("unfreeze", on_plateau=True, monitor="val_auc", patience=1)
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    history: list[dict] = []
    aucs = [0.6, 0.7, 0.65, 0.8, 0.79, 0.78]
    unfrozen_at = []
    for epoch in range(1, len(aucs) + 2):
        n_before = len(s.schedule)
        s.on_epoch_start(epoch, model, optimizer, history)
        if len(s.schedule) > n_before:
            unfrozen_at.append(epoch)
        if epoch <= len(aucs):
            history.append({"epoch": epoch, "val_loss": 1.0, "val_auc": aucs[epoch - 1]})
    assert unfrozen_at == [4, 6]  # 0.65 after 0.7; then 0.79 after 0.8 (epochs since the last unfreeze)
    assert all(e["reason"] == "plateau" for e in s.schedule)
    assert s.direction == "max" and create_strategy("unfreeze").direction == "min"

    bad = create_strategy("unfreeze", on_plateau=True, monitor="val_f1")
    bad.configure(model, lr=LR, weight_decay=WD)
    with pytest.raises(ConfigError, match="val_f1.*val_auc"):
        bad.on_epoch_start(2, model, optimizer, history[:1])


def test_unfreeze_state_round_trips_into_a_fresh_run(request) -> None:
    model, size = _classifier("vit", request)
    s = create_strategy("unfreeze")
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    for epoch in (1, 2, 3):
        model.train()
        s.on_epoch_start(epoch, model, optimizer, [])
        _steps(model, optimizer, size, n=1)
    state = json.loads(json.dumps(s.state_dict()))  # plain data
    assert [e["epoch"] for e in state["schedule"]] == [2, 3]

    fresh, _ = _classifier("vit", request)
    fresh.load_state_dict(model.state_dict())
    resumed = create_strategy("unfreeze")
    resumed.load_state_dict(state)  # before configure, as the loop does
    groups = resumed.configure(fresh, lr=LR, weight_decay=WD)
    fresh_opt = torch.optim.AdamW(groups)
    fresh_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as if from a file: no shared tensors
    assert _group_names(fresh_opt) == _group_names(optimizer)
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    for epoch in (1, 2, 3):  # the loop replays the finished epochs' hooks: nothing is added twice
        resumed.on_epoch_start(epoch, fresh, fresh_opt, [])
    assert _group_names(fresh_opt) == _group_names(optimizer)

    for strat, m, opt in ((s, model, optimizer), (resumed, fresh, fresh_opt)):
        strat.on_epoch_start(4, m, opt, [])
        torch.manual_seed(3)
        _steps(m, opt, size, n=1)
    assert resumed.schedule == s.schedule and _group_names(fresh_opt) == _group_names(optimizer)
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q) and p.requires_grad == q.requires_grad, n


def test_unfreeze_state_added_after_configure_is_synced(request) -> None:
    model, _ = _classifier("vit", request)
    s = create_strategy("unfreeze")
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    s.load_state_dict({"schedule": [{"epoch": 2, "stage": 2, "reason": "every"}]})
    s.on_epoch_start(2, model, optimizer, [])
    assert _group_names(optimizer)[-1] == "stage2" and len(s.schedule) == 1


def test_unfreeze_state_errors(request) -> None:
    model, _ = _classifier("vit", request)
    s = create_strategy("unfreeze")
    with pytest.raises(ConfigError, match="schedule"):
        s.load_state_dict({"stages": 3})
    s.load_state_dict({"schedule": [{"epoch": 2, "stage": 7, "reason": "every"}]})
    with pytest.raises(ConfigError, match="does not fit"):
        s.configure(model, lr=LR, weight_decay=WD)


# ------------------------------------------------------------------------------------------ LoRA / IA3
def _randomize_adapters(model: nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n or ".ia3_l." in n:
                p.add_(torch.randn_like(p) * 0.2)


@pytest.mark.parametrize("strategy", ["lora", "ia3"])
@pytest.mark.parametrize("family", ["vit", "resnet", "hf_dinov2", "open_clip"])
def test_merged_adapters_equal_unmerged(strategy, family, request) -> None:
    pytest.importorskip("peft")
    from peft.tuners.tuners_utils import BaseTunerLayer

    plain, size = _classifier(family, request)
    keys = plain.state_dict().keys()
    model, _ = _classifier(family, request)
    s = create_strategy(strategy)
    s.configure(model, lr=LR, weight_decay=WD)
    _randomize_adapters(model)
    model.eval()
    x, _ = _data(size)
    with torch.no_grad():
        unmerged = model(x)
        merged_model = s.export(model)
        merged = merged_model(x)
        again = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmerged, plain.eval()(x))  # the adapters do change the function
    assert not any(isinstance(m, BaseTunerLayer) for m in merged_model.modules())
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged_model.named_parameters())
    assert merged_model.state_dict().keys() == keys  # loads into the plain classifier
    assert torch.equal(again, unmerged)  # the training model keeps its adapters


@pytest.mark.parametrize(
    ("family", "scope", "expected"),
    [
        ("vit", "qkv", {"attn.qkv"}),
        ("vit", "attn", {"attn.qkv", "attn.proj"}),
        ("vit", "all", {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}),
        ("hf_dinov2", "qkv", {"attention.q_proj", "attention.k_proj", "attention.v_proj"}),
        (
            "hf_dinov2",
            "attn",
            {"attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"},
        ),
        ("open_clip", "qkv", {"mlp.c_fc", "mlp.c_proj"}),
    ],
)
def test_lora_default_targets_per_family(family, scope, expected, request) -> None:
    pytest.importorskip("peft")
    from medadapt.strategies import resolve_targets

    backbone, _ = _backbone(family, request)
    if family == "hf_dinov2" and hasattr(
        backbone.model.encoder.layer[0].attention, "attention"
    ):  # transformers 4
        old = {"attention.q_proj": "attention.query", "attention.k_proj": "attention.key"}
        old |= {"attention.v_proj": "attention.value", "attention.o_proj": "output.dense"}
        expected = {old[e] for e in expected}
    targets = resolve_targets(backbone, scope=scope)
    assert {".".join(t.split(".")[-2:]) for t in targets} == expected
    assert len(targets) == 2 * len(expected)  # every block


@pytest.mark.parametrize(
    ("head", "pool_targets"),
    [("linear", {"attn_pool.q", "attn_pool.kv"}), ("attention", set())],
)
def test_lora_targets_the_attention_pool_only_when_the_head_uses_it(head, pool_targets, request) -> None:
    pytest.importorskip("peft")
    model, _ = _classifier("siglip", request, head)
    create_strategy("lora").configure(model, lr=LR, weight_decay=WD)
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    in_pool = {n.removeprefix("backbone.model.") for n in adapted if ".attn_pool." in n}
    assert in_pool == pool_targets
    assert {n for n in adapted if ".blocks." in n} == {f"backbone.model.blocks.{i}.attn.qkv" for i in (0, 1)}


def test_unreachable_parameters_are_found_by_autograd(request) -> None:
    from medadapt.strategies._params import unreachable_names

    linear, _ = _classifier("siglip", request)
    assert unreachable_names(linear) == set()
    model, _ = _classifier("siglip", request, "attention")
    pool = {n for n, _ in model.named_parameters() if n.startswith(POOLING_ONLY["siglip"])}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    assert pool and unreachable_names(model) == pool
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and model.training
    convnext, _ = _classifier("convnext", request, "attention")  # its final norm only feeds the embedding
    assert unreachable_names(convnext) == {"backbone.model.head.norm.weight", "backbone.model.head.norm.bias"}


def test_adapter_targets_the_head_does_not_use_are_an_error(request) -> None:
    pytest.importorskip("peft")
    model, _ = _classifier("siglip", request, "attention")
    with pytest.raises(ConfigError, match="does not depend on"):
        create_strategy("lora", target_modules=["attn_pool.kv"]).configure(model, lr=LR, weight_decay=WD)


def test_cnn_targets_are_ungrouped_convs_and_linears(request) -> None:
    pytest.importorskip("peft")
    from medadapt.strategies import resolve_targets

    backbone, _ = _backbone("convnext", request)
    targets = resolve_targets(backbone)
    layers = [m for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(targets) == sum(not isinstance(m, nn.Conv2d) or m.groups == 1 for m in layers)
    assert not any(t.endswith("conv_dw") for t in targets)


def test_lora_on_multihead_attention_when_asked(request) -> None:
    pytest.importorskip("peft")
    model, size = _classifier("open_clip", request)
    s = create_strategy("lora", target_modules=["attn"])
    groups = s.configure(model, lr=LR, weight_decay=WD)
    assert any("attn.lora_A" in n for n in _names_in(groups, model))
    _randomize_adapters(model)
    model.eval()
    x, _ = _data(size)
    with torch.no_grad():
        torch.testing.assert_close(s.export(model)(x), model(x), atol=1e-5, rtol=1e-5)


def test_unknown_target_modules_list_the_existing_names(request) -> None:
    pytest.importorskip("peft")
    model, _ = _classifier("vit", request)
    with pytest.raises(ConfigError, match=r"\['nope'\].*model\.blocks\.\*\.attn\.qkv"):
        create_strategy("lora", target_modules=["nope"]).configure(model, lr=LR, weight_decay=WD)
    with pytest.raises(ConfigError, match="LayerNorm"):
        create_strategy("lora", target_modules=["norm1"]).configure(model, lr=LR, weight_decay=WD)
    with pytest.raises(ConfigError, match="qkv"):
        create_strategy("ia3", target_modules="nope").configure(model, lr=LR, weight_decay=WD)


def test_user_targets_and_feedforward(request) -> None:
    pytest.importorskip("peft")
    model, _ = _classifier("vit", request)
    # a comma-separated string is a list (--option target_modules=mlp.fc1,mlp.fc2)
    s = create_strategy("ia3", target_modules="mlp.fc1, mlp.fc2", feedforward_modules="fc2")
    assert s.target_modules == ["mlp.fc1", "mlp.fc2"] and s.feedforward_modules == ["fc2"]
    names = _names_in(s.configure(model, lr=LR, weight_decay=WD), model)
    ia3 = [n for n in names if ".ia3_l." in n]
    assert len(ia3) == 4 and all(".mlp.fc" in n for n in ia3)
    fc2 = model.backbone.model.blocks[0].mlp.fc2
    assert fc2.ia3_l["default"].shape == (1, fc2.in_features)  # feed-forward: rescales its input


def test_adapters_cannot_be_added_twice(request) -> None:
    pytest.importorskip("peft")
    model, _ = _classifier("vit", request)
    create_strategy("lora").configure(model, lr=LR, weight_decay=WD)
    with pytest.raises(ConfigError, match="already"):
        create_strategy("lora").configure(model, lr=LR, weight_decay=WD)


def test_ln_tune_without_batchnorm_on_a_resnet_errors(request) -> None:
    model, _ = _classifier("resnet", request)
    with pytest.raises(ConfigError, match="batchnorm"):
        create_strategy("ln_tune", batchnorm=False).configure(model, lr=LR, weight_decay=WD)


def test_strategies_refuse_a_bare_backbone(request) -> None:
    backbone, _ = _backbone("vit", request)
    with pytest.raises(ConfigError, match="build_classifier"):
        create_strategy("full").configure(backbone, lr=LR, weight_decay=WD)


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("llrd", {"decay": 0}, "decay"),
        ("llrd", {"decay": 1.5}, "decay"),
        ("llrd", {"decay": "0.7"}, "decay"),
        ("differential", {"encoder_lr": -1e-7}, "encoder_lr"),
        ("differential", {"head_lr": 0}, "head_lr"),
        ("differential", {"encoder_lr_scale": 0}, "encoder_lr_scale"),
        ("unfreeze", {"every": 0}, "every"),
        ("unfreeze", {"every": 1.5}, "every"),
        ("unfreeze", {"patience": 0}, "patience"),
        ("unfreeze", {"mode": "up"}, "mode"),
        ("unfreeze", {"monitor": ""}, "monitor"),
        ("unfreeze", {"on_plateau": "yes"}, "on_plateau"),
        ("unfreeze", {"group_lr_scale": 0}, "group_lr_scale"),
        ("unfreeze", {"max_groups": 0}, "max_groups"),
        ("unfreeze", {"min_delta": -1}, "min_delta"),
        ("lora", {"r": 0}, "'r'"),
        ("lora", {"alpha": -1}, "alpha"),
        ("lora", {"dropout": 1.5}, "dropout"),
        ("lora", {"scope": "everything"}, "scope"),
        ("lora", {"target_modules": []}, "target_modules"),
        ("ia3", {"target_modules": [1]}, "target_modules"),
        ("ia3", {"feedforward_modules": [""]}, "feedforward_modules"),
        ("ln_tune", {"batchnorm": "no"}, "batchnorm"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(name, options, option) -> None:
    with pytest.raises(ConfigError, match=option):
        create_strategy(name, **options)


def test_max_groups_stops_unfreezing(request) -> None:
    model, _ = _classifier("resnet", request)
    s = create_strategy("unfreeze", max_groups=2)
    optimizer = torch.optim.AdamW(s.configure(model, lr=LR, weight_decay=WD))
    for epoch in range(1, 8):
        s.on_epoch_start(epoch, model, optimizer, [])
    assert [e["stage"] for e in s.schedule] == [4, 3]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_lazy_registration_names_its_class(name):
    """The registration lines in strategies/__init__.py say the name; the class must say the same."""
    assert STRATEGIES.get(name).name == name
