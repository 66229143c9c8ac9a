"""Probe heads: registry, output shapes, the timm building blocks, kNN voting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import AttentionPoolLatent
from timm.models.vision_transformer import Block

from medadapt.errors import ConfigError, UnknownNameError
from medadapt.heads import (
    HEADS,
    AttentionPoolHead,
    KNNHead,
    LinearHead,
    create_head,
    default_num_heads,
    knn_scores,
)

DIM, TOKENS, BATCH = 32, 6, 5


def _inputs(key: str, rng: np.random.Generator, n: int = BATCH) -> torch.Tensor:
    if key == "tokens":
        return torch.from_numpy(rng.standard_normal((n, TOKENS, DIM)).astype(np.float16))
    return torch.from_numpy(rng.standard_normal((n, DIM)).astype(np.float32))


def _build(name: str, num_outputs: int, rng: np.random.Generator) -> torch.nn.Module:
    head = create_head(name, DIM, num_outputs)
    if name == "knn":
        labels = rng.integers(0, num_outputs, 40)
        head.fit(rng.standard_normal((40, DIM)), np.eye(num_outputs)[labels])
    return head.eval()


def test_registry_lists_heads_and_suggests_names() -> None:
    assert HEADS.list() == ["attention", "knn", "linear"]
    with pytest.raises(UnknownNameError, match="did you mean 'linear'"):
        HEADS.get("linaer")


@pytest.mark.parametrize("num_outputs", [2, 7])
@pytest.mark.parametrize("name", HEADS.list())
def test_output_shape_and_finite(name: str, num_outputs: int) -> None:
    rng = np.random.default_rng(0)
    head = _build(name, num_outputs, rng)
    with torch.no_grad():
        out = head(_inputs(head.input_key, rng))
    assert out.shape == (BATCH, num_outputs)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["linear", "attention"])
def test_logits_are_float32_under_bf16_autocast(name: str) -> None:
    """bf16 logits would tie scores that AUC must rank: the heads' last product stays in float32."""
    rng = np.random.default_rng(0)
    head = _build(name, 2, rng)
    x = _inputs(head.input_key, rng)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
        assert head.fc(torch.zeros(1, head.fc.in_features)).dtype == torch.bfloat16  # what the head avoids
    assert out.dtype == torch.float32
    if name == "linear":  # nothing else in it runs in bf16: the same numbers as without autocast
        with torch.no_grad():
            torch.testing.assert_close(out, head(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", HEADS.list())
def test_head_declares_its_contract(name: str) -> None:
    cls = HEADS.get(name)
    assert cls.input_key in ("embeddings", "tokens")
    assert cls.outputs in ("logits", "scores")
    assert isinstance(cls.trainable, bool)


def test_attention_head_uses_timm_blocks_and_latent_pool() -> None:
    head = AttentionPoolHead(DIM, 3, depth=2)
    assert sum(isinstance(m, Block) for m in head.modules()) == 2
    assert any(isinstance(m, AttentionPoolLatent) for m in head.modules())
    assert isinstance(head.proj, torch.nn.Identity)  # width defaults to min(D, 256) = D here


def test_attention_head_default_is_the_map_head() -> None:
    """Default: the learned-query pooling alone (SigLIP's MAP head), no self-attention block before it."""
    head = AttentionPoolHead(DIM, 3)
    assert not any(isinstance(m, Block) for m in head.modules())
    assert sum(isinstance(m, AttentionPoolLatent) for m in head.modules()) == 1


def test_attention_head_projects_wide_tokens() -> None:
    head = AttentionPoolHead(512, 3, depth=0)
    assert head.proj.out_features == 256
    assert head(torch.zeros(2, 4, 512, dtype=torch.float16)).shape == (2, 3)


@pytest.mark.parametrize(("width", "heads"), [(32, 1), (256, 4), (384, 6), (200, 2)])
def test_default_num_heads_divides_width(width: int, heads: int) -> None:
    assert default_num_heads(width) == heads
    assert width % default_num_heads(width) == 0


def test_attention_head_rejects_bad_num_heads() -> None:
    with pytest.raises(ConfigError, match="divisible by num_heads=5"):
        AttentionPoolHead(DIM, 2, num_heads=5)


def test_linear_head_standardizes_with_train_statistics() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((100, DIM)) * 50 + 7).astype(np.float32)
    head = LinearHead(DIM, 2).standardize_with(x)
    z = (torch.from_numpy(x) - head.mean) / head.std
    assert torch.allclose(z.mean(0), torch.zeros(DIM), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(DIM), atol=1e-4)
    assert "mean" in head.state_dict() and "std" in head.state_dict()


def test_knn_one_neighbour_returns_its_label() -> None:
    bank = np.eye(4, DIM)
    head = KNNHead(DIM, 2, k=1).fit(bank, np.eye(2)[[0, 1, 1, 0]])
    scores = head(torch.from_numpy(bank * 3.0).float())  # cosine: the scale does not matter
    assert scores.argmax(1).tolist() == [0, 1, 1, 0]
    assert torch.allclose(scores.sum(1), torch.ones(4))


def test_knn_scores_chunked_equals_unchunked_for_every_k() -> None:
    rng = np.random.default_rng(1)
    bank = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((50, DIM))).float(), dim=1)
    targets = torch.from_numpy(np.eye(3)[rng.integers(0, 3, 50)]).float()
    queries = torch.from_numpy(rng.standard_normal((17, DIM))).float()
    full = knn_scores(queries, bank, targets, ks=(1, 5, 80))
    chunked = knn_scores(queries, bank, targets, ks=(1, 5, 80), max_elements=60)
    for k in (1, 5, 80):
        assert torch.allclose(full[k], chunked[k], atol=1e-6)
    assert torch.allclose(full[80].sum(1), torch.ones(17), atol=1e-5)  # k > bank: the whole bank votes


def test_knn_multilabel_is_weighted_average_of_labels() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, (30, 4))
    head = KNNHead(DIM, 4, k=30, temperature=1e6).fit(rng.standard_normal((30, DIM)), labels)
    scores = head(torch.from_numpy(rng.standard_normal((3, DIM))).float())
    # a huge temperature makes the weights uniform: the score is the label frequency over the bank
    assert torch.allclose(scores, torch.from_numpy(labels.mean(0)).float().expand(3, 4), atol=1e-4)


def test_knn_needs_a_bank() -> None:
    with pytest.raises(ConfigError, match="fit"):
        KNNHead(DIM, 2)(torch.zeros(1, DIM))


def test_knn_unknown_labels_cast_no_vote():
    """nan (unknown, e.g. CheXpert U-Ignore) labels are left out of the neighbours' average, per label."""
    import torch.nn.functional as F

    from medadapt.heads.knn import knn_scores

    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    targets = torch.tensor([[1.0, float("nan")], [0.0, float("nan")], [1.0, 1.0]])
    scores = knn_scores(torch.tensor([[1.0, 0.0]]), bank, targets, ks=(2,), temperature=1e9)[2]
    assert scores[0, 0].item() == pytest.approx(0.5)  # two known votes, 1 and 0, equal weights
    assert scores[0, 1].item() == pytest.approx(1.0)  # nobody of the two knows it: the bank's rate (1/1)


@pytest.mark.parametrize("name", ["linear", "attention", "knn"])
def test_a_lazy_head_registration_agrees_with_its_class(name):
    """heads/__init__.py registers heads by module path with ``trainable=`` (read before torch is imported)."""
    from medadapt.heads import HEADS

    assert HEADS.meta(name)["trainable"] == HEADS.get(name).trainable


def test_lazy_registry_entries_import_on_first_get_only():
    from medadapt._registry import Registry
    from medadapt.errors import ConfigError, UnknownNameError

    reg = Registry("thing")
    reg.register_lazy("od", "collections:OrderedDict", kind="mapping")
    assert "od" in reg and list(reg) == ["od"] and reg.meta("od") == {"kind": "mapping"}
    import collections

    assert reg.get("od") is collections.OrderedDict and len(reg) == 1
    with pytest.raises(ConfigError, match="already registered"):
        reg.register_lazy("od", "collections:Counter")
    with pytest.raises(UnknownNameError, match="did you mean 'od'"):
        reg.meta("odd")


def test_a_head_registered_directly_is_still_checked_by_configs(monkeypatch):
    """An extension may register a class itself (no meta): configs read ``trainable`` from the class."""
    from medadapt.config import FinetuneConfig
    from medadapt.heads import HEADS, LinearHead

    class Fitted(LinearHead):
        trainable = False

    monkeypatch.setattr(HEADS, "_entries", {**HEADS._entries, "fitted": Fitted})
    monkeypatch.setattr(HEADS, "_meta", {**HEADS._meta, "fitted": {}})
    with pytest.raises(Exception, match="--head 'fitted' is not valid"):
        FinetuneConfig(dataset="medmnist:breastmnist", backbone="timm:resnet18", head="fitted")
