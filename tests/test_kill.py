"""A finetune process killed with SIGKILL (no clean-up runs) resumes to the result of an uninterrupted run.

The loop tests interrupt ``fit`` with an exception; this kills a real ``medadapt finetune`` process at
whatever point it has reached, possibly while it writes a checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from medmnist import INFO
from synthetic import write_fake_medmnist

from medadapt.cli import main
from medadapt.reporting.results import load_predictions
from medadapt.training.checkpoint import CHECKPOINT_NAME

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL")

TINY_VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"
EPOCHS = 12
#: The CLI in a fresh process, with the md5 the fake dataset file needs (the fixture patches it only here).
DRIVER = (
    "import sys; from medmnist import INFO; INFO['breastmnist']['MD5'] = sys.argv[1]; "
    "from medadapt.cli import main; sys.exit(main(sys.argv[2:]))"
)


def _command(data, out, *extra):
    md5 = hashlib.md5((data / "breastmnist.npz").read_bytes()).hexdigest()
    assert INFO["breastmnist"]["MD5"] == md5
    return [sys.executable, "-c", DRIVER, md5, "finetune", "--dataset", "medmnist:breastmnist", "--backbone", TINY_VIT,
            "--no-pretrained", "--data-root", str(data), "--strategy", "full", "--epochs", str(EPOCHS),
            "--schedule", "multistep", "--milestones", "4", "8", "--augment", "natural", "--out", str(out), *extra]  # fmt: skip


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # every process alike, so their float sums are too


def _epoch(path) -> int:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["epoch"]
    except FileNotFoundError:  # not written yet (and atomic writes: a partial file would fail the test)
        return 0


def test_a_killed_finetune_process_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_fake_medmnist(data, monkeypatch, n=(64, 16, 16))
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the processes below (OMP_NUM_THREADS=1), so that float sums agree bitwise
    try:
        assert main(_command(data, ref)[4:]) == 0  # the uninterrupted run, in this process
    finally:
        torch.set_num_threads(threads)

    proc = subprocess.Popen(
        _command(data, cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = cut / "full-linear" / "seed0" / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while _epoch(checkpoint) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _epoch(checkpoint)
    assert 3 <= killed_at < EPOCHS and not (checkpoint.parent / "model.json").exists()

    # a kill during a checkpoint write leaves its temporary file (as large as the checkpoint); resuming removes it
    stale = checkpoint.parent / f".{CHECKPOINT_NAME}.k1ll3d.tmp"
    stale.write_bytes(b"partial")
    resumed = subprocess.run(_command(data, cut, "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(checkpoint, weights_only=True)["epoch"] == EPOCHS
    assert not list(checkpoint.parent.glob(".*.tmp")), "a temporary file of a killed write is left"
    rows = [pd.read_csv(d / "results.csv").query("split != 'cost'") for d in (ref, cut)]
    pd.testing.assert_frame_equal(rows[0], rows[1])  # every val / test metric, to the last bit
    for split in ("val", "test"):
        a, b = (
            load_predictions(d / "full-linear" / "seed0" / "predictions" / f"{split}.npz") for d in (ref, cut)
        )
        np.testing.assert_array_equal(a["scores"], b["scores"])
