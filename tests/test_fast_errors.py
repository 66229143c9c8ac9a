"""A bad flag, YAML file, value, dataset address or data path fails before torch (or timm) is imported: in
a fraction of a second (about 0.1 s, or 0.5 s once the dataset layer is imported to check a dataset)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = {
    "unknown flag": ["probe", "--bogus"],
    "YAML syntax": ["probe", "--config", "{bad_yaml}"],
    "unknown YAML key": ["probe", "--config", "{bad_key}"],
    "missing config": ["probe", "--config", "/nonexistent.yaml"],
    "bad probe value": ["probe", "--dataset", "csv:x.csv", "--backbone", "timm:resnet18", "--epochs", "0"],
    "bad finetune value": ["finetune", "--dataset", "x", "--backbone", "y", "--lrs", "-1"],
    "distill without teacher": ["distill", "--dataset", "x", "--backbone", "y"],
    "missing CSV": ["probe", "--dataset", "csv:/nonexistent/labels.csv", "--backbone", "timm:resnet18"],
    "unknown dataset kind": ["probe", "--dataset", "cvs:/x.csv", "--backbone", "timm:resnet18"],
    "MedMNIST flag typo": ["finetune", "--dataset", "medmnist:breastmnst", "--backbone", "timm:resnet18"],
    "bad dataset option": ["probe", "--dataset", "csv:{bad_key}?voi=bogus", "--backbone", "timm:resnet18"],
    "unknown head": [
        "probe",
        "--dataset",
        "csv:{bad_key}",
        "--backbone",
        "timm:resnet18",
        "--head",
        "lineer",
    ],
    "unknown strategy": [
        "finetune",
        "--dataset",
        "csv:{bad_key}",
        "--backbone",
        "timm:resnet18",
        "--strategy",
        "lroa",
    ],
    "bad training setting": [
        "finetune",
        "--dataset",
        "csv:{bad_key}",
        "--backbone",
        "timm:resnet18",
        "--epochs",
        "0",
    ],
    "unknown augmentation": [
        "finetune",
        "--dataset",
        "csv:{bad_key}",
        "--backbone",
        "timm:resnet18",
        "--augment",
        "x",
    ],
    "distillation weight": [
        "distill",
        "--dataset",
        "csv:{bad_key}",
        "--backbone",
        "timm:resnet18",
        "--teacher",
        "x",
        "--alpha",
        "2",
    ],
    "bad strategy option": [
        "finetune",
        "--dataset",
        "csv:{bad_key}",
        "--backbone",
        "timm:resnet18",
        "--strategy",
        "lora",
        "--option",
        "r=-1",
    ],
    "unknown backbone source": ["probe", "--dataset", "csv:{bad_key}", "--backbone", "timn:resnet18"],
    "file where a folder belongs": [
        "distill",
        "--dataset",
        "chexpert:{bad_key}",
        "--backbone",
        "timm:resnet18",
        "--teacher",
        "x",
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_without_importing_torch(case, tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    (tmp_path / "key.yaml").write_text("epochz: 3\n")
    argv = [a.format(bad_yaml=tmp_path / "bad.yaml", bad_key=tmp_path / "key.yaml") for a in CASES[case]]
    code = (
        "import sys\nfrom medadapt.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
        "print('RESULT', code, sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")][-1]
    assert result == "RESULT 2 []", (result, out.stderr)
    assert "Traceback" not in out.stderr and "error" in out.stderr
