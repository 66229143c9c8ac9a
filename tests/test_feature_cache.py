"""Feature cache: correctness, hits, corruption, resume after a kill, bounded token storage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medadapt.backbones import create_backbone
from medadapt.data.base import MedicalDataset
from medadapt.data.transforms import Preprocess
from medadapt.features import cache as cache_mod
from medadapt.features import extract_features


class TinyDataset(MedicalDataset):
    def __init__(self, n: int = 10, seed: int = 0, split: str = "train") -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, 1, 20, 20), dtype=np.uint8)
        self.labels = rng.integers(0, 2, size=(n, 1)).astype(np.int64)
        self.name, self.split, self.task = "tiny", split, "binary"
        self.classes, self.n_channels = ["a", "b"], 1
        self.metadata = pd.DataFrame({"index": range(n)})

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i])


@pytest.fixture()
def setup():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        bb = create_backbone("timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2",
                             pretrained=False, img_size=28, data_chans=1)  # fmt: skip
    pre = Preprocess(size=(28, 28), mean=bb.spec.mean, std=bb.spec.std)
    return bb, pre, TinyDataset()


class Killed(Exception):
    pass


class CountingForward:
    def __init__(self, bb, fail_after: int | None = None):
        self.bb, self.calls, self.fail_after = bb, 0, fail_after
        self.orig = type(bb).forward_features.__get__(bb)

    def __call__(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Killed  # a kill in the middle of extraction
        return self.orig(x)


def test_features_match_direct_forward(setup, tmp_path):
    bb, pre, ds = setup
    fs = extract_features(bb, ds, pre, cache_dir=tmp_path, with_tokens=True, batch_size=4, autocast=False)
    x = pre(torch.from_numpy(ds.images))
    with torch.inference_mode():
        ref = bb.forward_features(x)
    np.testing.assert_allclose(fs.embeddings, ref.embedding.numpy(), atol=1e-5)
    np.testing.assert_allclose(fs.tokens, ref.tokens.numpy(), atol=2e-3, rtol=2e-3)  # stored as float16
    assert isinstance(fs.tokens, np.memmap) and fs.tokens.dtype == np.float16
    assert fs.grid == (2, 2) and np.array_equal(fs.labels, ds.labels)


def test_second_run_reads_the_cache(setup, tmp_path, monkeypatch):
    bb, pre, ds = setup
    first = extract_features(bb, ds, pre, cache_dir=tmp_path, batch_size=4)
    counter = CountingForward(bb)
    monkeypatch.setattr(bb, "forward_features", counter)
    second = extract_features(bb, ds, pre, cache_dir=tmp_path, batch_size=4)
    assert counter.calls == 0
    np.testing.assert_array_equal(first.embeddings, second.embeddings)


def test_key_changes_with_what_determines_features(setup, tmp_path):
    bb, pre, ds = setup
    key = cache_mod.cache_key(bb, pre, ds, autocast=True)
    assert cache_mod.cache_key(bb, Preprocess(size=(28, 28), mode="pad", mean=(0.0,), std=(1.0,)), ds,
                               autocast=True) != key  # fmt: skip
    assert cache_mod.cache_key(bb, pre, TinyDataset(seed=1), autocast=True) != key
    assert cache_mod.cache_key(bb, pre, ds, autocast=False) != key
    with torch.no_grad():
        bb.model.norm.weight.add_(1.0)
    assert cache_mod.cache_key(bb, pre, ds, autocast=True) != key  # weights digest


def test_key_records_the_precision_run_not_the_request(setup, tmp_path, monkeypatch):
    """Without native bf16 autocast is a no-op: --autocast on and off give one float32 entry; with it, two."""
    bb, pre, ds = setup
    import medadapt._device as device_mod

    for native, entries in ((False, 1), (True, 2)):
        monkeypatch.setattr(device_mod, "_native_bf16", lambda dev, native=native: native)
        root = tmp_path / str(native)
        for autocast in (True, False):
            extract_features(bb, ds, pre, cache_dir=root, batch_size=4, autocast=autocast)
        assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == entries


def test_corrupt_entry_is_rebuilt(setup, tmp_path, caplog):
    bb, pre, ds = setup
    good = extract_features(bb, ds, pre, cache_dir=tmp_path, batch_size=4)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    (entry / "embeddings.npy").write_bytes(b"\x93NUMPY truncated")
    again = extract_features(bb, ds, pre, cache_dir=tmp_path, batch_size=4)
    np.testing.assert_array_equal(good.embeddings, again.embeddings)
    assert "corrupt" in caplog.text


def test_tokens_requested_later_reextracts(setup, tmp_path):
    bb, pre, ds = setup
    assert extract_features(bb, ds, pre, cache_dir=tmp_path).tokens is None
    assert extract_features(bb, ds, pre, cache_dir=tmp_path, with_tokens=True).tokens is not None
    assert extract_features(bb, ds, pre, cache_dir=tmp_path).tokens is not None  # a superset serves


def test_resume_after_kill_matches_uninterrupted(setup, tmp_path, monkeypatch):
    bb, pre, ds = setup
    ref = extract_features(bb, ds, pre, cache_dir=tmp_path / "ref", with_tokens=True, batch_size=2)
    monkeypatch.setattr(cache_mod, "_SAVE_EVERY", 1)
    killer = CountingForward(bb, fail_after=3)  # 1 shape probe + 2 batches, then killed
    monkeypatch.setattr(bb, "forward_features", killer)
    with pytest.raises(Killed):
        extract_features(bb, ds, pre, cache_dir=tmp_path / "run", with_tokens=True, batch_size=2)
    assert any(p.name.endswith(".partial") for p in (tmp_path / "run").iterdir())
    counter = CountingForward(bb)
    monkeypatch.setattr(bb, "forward_features", counter)
    resumed = extract_features(bb, ds, pre, cache_dir=tmp_path / "run", with_tokens=True, batch_size=2)
    assert counter.calls == 1 + 3  # shape probe + the 3 batches not done before the kill
    np.testing.assert_array_equal(resumed.embeddings, ref.embeddings)
    np.testing.assert_array_equal(resumed.tokens, ref.tokens)


def test_state_digest_handles_scalar_buffers():
    """BatchNorm's 0-dim ``num_batches_tracked`` must hash like any tensor."""
    bn = torch.nn.BatchNorm1d(3)
    before = cache_mod.state_digest(bn)
    bn.num_batches_tracked += 1
    assert cache_mod.state_digest(bn) != before


def test_parallel_runs_needing_the_same_features_take_turns(setup, tmp_path):
    """Two runs (here threads; processes alike: flock) extracting one entry at once: one writes, both read it."""
    import threading

    bb, pre, ds = setup
    results, errors = [], []

    def run():
        try:
            results.append(extract_features(bb, ds, pre, cache_dir=tmp_path, batch_size=2, autocast=False))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    np.testing.assert_array_equal(results[0].embeddings, results[1].embeddings)
    assert not list(tmp_path.glob("*.partial"))


# ------------------------------------------------------------------------------- multi-level entries
class CountingLevels(CountingForward):
    def __init__(self, bb, fail_after: int | None = None):
        super().__init__(bb, fail_after)
        self.orig = type(bb).forward_levels.__get__(bb)

    def __call__(self, x, levels):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Killed
        return self.orig(x, levels)


def test_levels_are_written_memory_mapped_and_match_a_direct_forward(setup, tmp_path):
    import json

    bb, pre, ds = setup
    fs = extract_features(bb, ds, pre, cache_dir=tmp_path, levels=2, batch_size=4, autocast=False)
    x = pre(torch.from_numpy(ds.images))
    with torch.inference_mode():
        ref = bb.forward_levels(x, 2)
    assert len(fs.levels) == 2 and [g for _, g in fs.levels] == [(2, 2), (2, 2)]
    for (tokens, _), r in zip(fs.levels, ref):
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.float16 and tokens.shape == (10, 4, 32)
        np.testing.assert_allclose(tokens, r.tokens.numpy(), atol=2e-3, rtol=2e-3)
    assert fs.levels[-1][0] is fs.tokens and fs.grid == (2, 2)  # the last level is the tokens
    np.testing.assert_allclose(fs.embeddings, ref[-1].embedding.numpy(), atol=1e-5)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert sorted(p.name for p in entry.glob("tokens*.npy")) == ["tokens.npy", "tokens_l0.npy"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["levels"] == [{"file": "tokens_l0.npy", "grid": [2, 2], "shape": [10, 4, 32]},
                              {"file": "tokens.npy", "grid": [2, 2], "shape": [10, 4, 32]}]  # fmt: skip


def test_the_key_changes_only_when_levels_are_given(setup):
    """Entries extracted before levels existed keep their keys: the key of levels=None is the old formula."""
    import dataclasses
    import hashlib
    import json

    from medadapt import __version__

    bb, pre, ds = setup
    old = {"format": cache_mod._FORMAT, "version": __version__, "backbone": bb.spec.to_dict(),
           "weights": cache_mod.state_digest(bb), "preprocess": dataclasses.asdict(pre),
           "dataset": [ds.name, ds.split, len(ds), cache_mod._dataset_fingerprint(ds)], "autocast": True}  # fmt: skip
    old_key = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:24]
    assert cache_mod.cache_key(bb, pre, ds, autocast=True) == old_key
    assert cache_mod.cache_key(bb, pre, ds, autocast=True, levels=None) == old_key
    keys = {cache_mod.cache_key(bb, pre, ds, autocast=True, levels=k) for k in (1, 2)}
    assert len(keys) == 2 and old_key not in keys


def test_an_entry_without_the_requested_levels_is_not_a_hit(setup, tmp_path, monkeypatch):
    import json

    bb, pre, ds = setup
    plain = extract_features(bb, ds, pre, cache_dir=tmp_path, with_tokens=True, batch_size=4, autocast=False)
    assert plain.levels is None
    counter = CountingLevels(bb)
    monkeypatch.setattr(bb, "forward_levels", counter)
    first = extract_features(bb, ds, pre, cache_dir=tmp_path, levels=2, batch_size=4, autocast=False)
    assert counter.calls > 0 and len(first.levels) == 2
    calls = counter.calls
    again = extract_features(bb, ds, pre, cache_dir=tmp_path, levels=2, batch_size=4, autocast=False)
    assert counter.calls == calls and len(again.levels) == 2  # a hit
    entry = tmp_path / cache_mod.cache_key(bb, pre, ds, autocast=False, levels=2)
    meta = json.loads((entry / "meta.json").read_text())
    assert cache_mod._open_entry(entry, need_tokens=True, need_levels=3) is None  # other levels: no hit
    (entry / "meta.json").write_text(json.dumps({**meta, "levels": None}))
    assert cache_mod._open_entry(entry, need_tokens=True, need_levels=2) is None
    assert cache_mod._open_entry(entry, need_tokens=True) is not None


def test_levels_resume_after_kill_matches_uninterrupted(setup, tmp_path, monkeypatch):
    bb, pre, ds = setup
    ref = extract_features(bb, ds, pre, cache_dir=tmp_path / "ref", levels=2, batch_size=2)
    monkeypatch.setattr(cache_mod, "_SAVE_EVERY", 1)
    monkeypatch.setattr(bb, "forward_levels", CountingLevels(bb, fail_after=3))  # shape probe + 2 batches
    with pytest.raises(Killed):
        extract_features(bb, ds, pre, cache_dir=tmp_path / "run", levels=2, batch_size=2)
    counter = CountingLevels(bb)
    monkeypatch.setattr(bb, "forward_levels", counter)
    resumed = extract_features(bb, ds, pre, cache_dir=tmp_path / "run", levels=2, batch_size=2)
    assert counter.calls == 1 + 3  # shape probe + the 3 batches not done before the kill
    np.testing.assert_array_equal(resumed.embeddings, ref.embeddings)
    for (a, ga), (b, gb) in zip(resumed.levels, ref.levels):
        np.testing.assert_array_equal(a, b)
        assert ga == gb


def test_more_levels_than_the_backbone_has_is_a_config_error(setup, tmp_path):
    from medadapt.errors import ConfigError

    bb, pre, ds = setup
    with pytest.raises(ConfigError, match="levels must be an integer from 1 to 2"):
        extract_features(bb, ds, pre, cache_dir=tmp_path, levels=3)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


class MaskedTiny(TinyDataset):
    """A segmentation-style dataset: items carry a mask, counted as read."""

    def __init__(self) -> None:
        super().__init__()
        self.masks_read = 0

    def mask(self, i: int) -> torch.Tensor:
        self.masks_read += 1
        return torch.zeros(20, 20, dtype=torch.long)


def test_extraction_reads_images_not_masks(setup, tmp_path, monkeypatch):
    """Extraction never decodes a segmentation dataset's masks (fingerprint, shape probe, rows); a resumed
    extraction continues to the same features."""
    bb, pre, _ = setup
    ds = MaskedTiny()
    whole = extract_features(bb, ds, pre, cache_dir=tmp_path / "a", batch_size=4, autocast=False)
    assert ds.masks_read == 0
    monkeypatch.setattr(cache_mod, "_SAVE_EVERY", 1)
    counting = CountingForward(bb, fail_after=1)
    monkeypatch.setattr(bb, "forward_features", counting)
    with pytest.raises(Killed):
        extract_features(bb, ds, pre, cache_dir=tmp_path / "b", batch_size=4, autocast=False)
    monkeypatch.setattr(bb, "forward_features", counting.orig)
    resumed = extract_features(bb, ds, pre, cache_dir=tmp_path / "b", batch_size=4, autocast=False)
    np.testing.assert_array_equal(resumed.embeddings, whole.embeddings)
    assert ds.masks_read == 0
