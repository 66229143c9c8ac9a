"""Knowledge distillation: the loss against its definition, the teacher, the objective in the loop, the run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from synthetic import write_fake_medmnist

from medadapt.backbones import create_backbone
from medadapt.cli import main
from medadapt.data import load_dataset
from medadapt.data.transforms import Preprocess
from medadapt.distill import DistillObjective, Teacher, combine_logits, distillation_loss, kd_loss
from medadapt.distill.report import ablation_table, best_distilled_arm, comparison_table, soft_target_table
from medadapt.errors import ConfigError
from medadapt.saved import ModelInfo, find_saved, load_classifier, save_classifier
from medadapt.strategies import build_classifier, create_strategy
from medadapt.training.loop import TrainConfig, fit

STUDENT = "timm:test_resnet"
TINY_VIT = "timm:vit_small_patch14_dinov2?embed_dim=32&depth=2&num_heads=2"


# ------------------------------------------------------------------------------------------------ the loss
def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("t", [1.0, 2.0, 5.0])
def test_kd_loss_is_t2_times_kl_teacher_to_student(t):
    g = torch.Generator().manual_seed(0)
    s, z = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) * 3
    p, q = _np_softmax(z.numpy() / t), _np_softmax(s.numpy() / t)
    expected = t * t * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = kd_loss(s, z, task="multiclass", temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the standard direction: KL(teacher || student), not the reverse
    reverse = t * t * np.mean(np.sum(q * (np.log(q) - np.log(p)), axis=1))
    assert abs(got.item() - reverse) > 1e-3


def test_binary_two_logit_kd_is_the_bernoulli_kl_of_the_logit_difference():
    g = torch.Generator().manual_seed(1)
    s, z, t = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g) * 2, 3.0
    p = torch.sigmoid((z[:, 1] - z[:, 0]) / t)
    q = torch.sigmoid((s[:, 1] - s[:, 0]) / t)
    bern = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * t * t
    assert kd_loss(s, z, task="binary", temperature=t).item() == pytest.approx(bern.item(), rel=1e-5)


def test_multilabel_kd_is_the_mean_bernoulli_kl_per_label_and_stable():
    s, z, t = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[1.5, 0.0, -2.0]]), 2.0
    p, q = torch.sigmoid(z / t), torch.sigmoid(s / t)
    expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * t * t
    assert kd_loss(s, z, task="multilabel", temperature=t).item() == pytest.approx(expected.item(), rel=1e-5)
    huge = kd_loss(torch.tensor([[-200.0]]), torch.tensor([[200.0]]), task="multilabel", temperature=1.0)
    assert torch.isfinite(huge) and huge.item() > 100


def test_kd_loss_zero_at_agreement_and_only_the_student_gets_gradients():
    z = torch.randn(4, 3)
    assert kd_loss(z.clone(), z, task="multiclass", temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, teacher, task="multiclass", temperature=2.0).backward()
    assert s.grad is not None and teacher.grad is None


def test_distillation_loss_weights_and_parts():
    g = torch.Generator().manual_seed(2)
    s, z = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    labels = torch.tensor([[0], [1], [2], [1], [0]])
    ce = F.cross_entropy(s, labels[:, 0])
    kd = kd_loss(s, z, task="multiclass", temperature=2.0)
    total, parts = distillation_loss(s, z, ce, task="multiclass", alpha=0.2, temperature=2.0)
    assert total.item() == pytest.approx(0.2 * ce.item() + 0.8 * kd.item(), rel=1e-6)
    assert set(parts) == {"task_loss", "kd_loss"} and parts["kd_loss"].item() == pytest.approx(kd.item())
    only_labels, _ = distillation_loss(s, z, ce, task="multiclass", alpha=1.0, temperature=2.0)
    assert only_labels.item() == pytest.approx(ce.item())


def test_bad_alpha_temperature_and_shapes_are_clear_errors():
    with pytest.raises(ConfigError, match="alpha"):
        DistillObjective(task="binary", alpha=1.5, cached=torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="temperature"):
        DistillObjective(task="binary", temperature=0, cached=torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="same classes"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 2), task="multiclass", temperature=1.0)


def test_ensemble_logits_are_the_mean_probability():
    g = torch.Generator().manual_seed(3)
    zs = [torch.randn(4, 3, generator=g) * 5 for _ in range(3)]
    mean = torch.stack([z.softmax(-1) for z in zs]).mean(0)
    torch.testing.assert_close(combine_logits(zs, "multiclass").softmax(-1), mean)
    mean_sig = torch.stack([z.sigmoid() for z in zs]).mean(0)
    torch.testing.assert_close(combine_logits(zs, "multilabel").sigmoid(), mean_sig)
    assert combine_logits(zs[:1], "multiclass") is zs[0]


# ------------------------------------------------------------------------------- teacher and objective
@pytest.fixture()
def data(tmp_path, monkeypatch):
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    return {
        s: load_dataset("medmnist:breastmnist", s, root=tmp_path / "data") for s in ("train", "val", "test")
    }


def _saved_teacher(folder, seed=0) -> Teacher:
    torch.manual_seed(seed)
    backbone = create_backbone(STUDENT, pretrained=False, img_size=28, data_chans=1)
    model = build_classifier(backbone, "linear", 2)
    prep = Preprocess(size=(28, 28), mean=backbone.spec.mean, std=backbone.spec.std)
    info = ModelInfo(backbone=STUDENT, head="linear", num_outputs=2, task="binary", img_size=28, data_chans=1,
                     channel_mode="sum", preprocess=vars(prep) | {"size": [28, 28]})  # fmt: skip
    save_classifier(folder, model, info)
    return model, prep


def test_saved_classifier_round_trips(tmp_path):
    model, prep = _saved_teacher(tmp_path / "m")
    loaded, prep2, info = load_classifier(tmp_path / "m")
    x = torch.randint(0, 255, (3, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(loaded(prep2(x)), model.eval()(prep(x)))
    assert info.task == "binary" and find_saved(tmp_path) == [tmp_path / "m"]
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(Exception, match="model.safetensors is missing"):
        load_classifier(tmp_path / "m")


def test_teacher_dataset_logits_match_its_forward_and_ensembles(tmp_path, data):
    _saved_teacher(tmp_path / "run" / "a" / "seed0", seed=0)
    _saved_teacher(tmp_path / "run" / "a" / "seed1", seed=1)
    teacher = Teacher.from_paths([tmp_path / "run"])
    assert len(teacher.members) == 2 and "ensemble of 2" in teacher.describe()
    logits, emb = teacher.dataset_logits(data["test"], cache_dir=tmp_path / "cache", autocast=False)
    images = torch.stack([data["test"][i]["image"] for i in range(len(data["test"]))])
    torch.testing.assert_close(logits, teacher.logits(images, autocast=False), atol=1e-5, rtol=1e-5)
    assert emb.shape[0] == len(data["test"])
    with pytest.raises(ConfigError, match="no saved model"):
        Teacher.from_paths([tmp_path / "nothing"])


def _fit(data, objective, out=None, **kw):
    torch.manual_seed(0)
    backbone = create_backbone(STUDENT, pretrained=False, img_size=28, data_chans=1)
    model = build_classifier(backbone, "linear", 2)
    prep = Preprocess(size=(28, 28), mean=backbone.spec.mean, std=backbone.spec.std)
    cfg = TrainConfig(**{"lr": 1e-3, "epochs": 2, "batch_size": 16, "seed": 0, "autocast": False, **kw})
    res = fit(model, create_strategy("scratch"), data["train"], data["val"], cfg=cfg, preprocess=prep,
              out_dir=out, objective=objective)  # fmt: skip
    return res


def test_cached_and_live_teacher_give_the_same_training(tmp_path, data, monkeypatch):
    _saved_teacher(tmp_path / "t")
    teacher = Teacher.from_paths([tmp_path / "t"])
    cached, _ = teacher.dataset_logits(data["train"], cache_dir=tmp_path / "cache", autocast=False)
    live = _fit(data, DistillObjective(task="binary", teacher=teacher, autocast=False))
    calls = []
    monkeypatch.setattr(Teacher, "logits", lambda *a, **k: calls.append(1))
    res = _fit(data, DistillObjective(task="binary", cached=cached))
    assert not calls  # with cached logits the teacher never runs during training
    # a live teacher needs the stored images (a mixed-size batch is refused); cached logits do not
    assert "--augment" in DistillObjective(task="binary", teacher=teacher).stored_images
    assert DistillObjective(task="binary", cached=cached).stored_images is None
    assert [r["train_kd_loss"] for r in res.history] == pytest.approx(
        [r["train_kd_loss"] for r in live.history], rel=1e-4
    )
    for r in res.history:  # both loss parts logged, and the total is their weighted sum
        assert r["train_loss"] == pytest.approx(
            0.2 * r["train_task_loss"] + 0.8 * r["train_kd_loss"], rel=1e-4
        )


def test_teacher_is_frozen_and_unchanged_by_distillation(tmp_path, data):
    _saved_teacher(tmp_path / "t")
    teacher = Teacher.from_paths([tmp_path / "t"])
    before = {k: v.clone() for k, v in teacher.members[0].model.state_dict().items()}
    _fit(data, DistillObjective(task="binary", teacher=teacher, autocast=False), augment="light")
    after = teacher.members[0].model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in teacher.members[0].model.parameters())


def test_resume_refuses_another_objective(tmp_path, data):
    cached = torch.randn(len(data["train"]), 2)
    _fit(data, DistillObjective(task="binary", alpha=0.2, cached=cached), out=tmp_path / "run")
    with pytest.raises(ConfigError):
        torch.manual_seed(0)
        backbone = create_backbone(STUDENT, pretrained=False, img_size=28, data_chans=1)
        model = build_classifier(backbone, "linear", 2)
        prep = Preprocess(size=(28, 28), mean=backbone.spec.mean, std=backbone.spec.std)
        cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=16, seed=0, autocast=False)
        fit(model, create_strategy("scratch"), data["train"], data["val"], cfg=cfg, preprocess=prep,
            out_dir=tmp_path / "run", resume=True,
            objective=DistillObjective(task="binary", alpha=0.5, cached=cached))  # fmt: skip


# ----------------------------------------------------------------------------------------------- reports
def _table():
    rows = []
    for seed, (s_auc, d_auc) in enumerate([(0.80, 0.84), (0.82, 0.85), (0.79, 0.84)]):
        for run, t, a, val, test in (("teacher", None, None, 0.9, 0.91), ("student", None, 1.0, 0.8, s_auc),
                                     ("distill-t2-a0.2", 2.0, 0.2, 0.85, d_auc),
                                     ("distill-t4-a0.2", 4.0, 0.2, 0.83, 0.99)):  # fmt: skip
            for split, v in (("val", val), ("test", test)):
                rows.append(
                    dict(run=run, seed=seed, split=split, metric="auc", value=v, temperature=t, alpha=a)
                )
    return pd.DataFrame(rows)


def test_reports_select_on_val_and_pair_by_seed():
    table = _table()
    assert best_distilled_arm(table) == "distill-t2-a0.2"  # not the one that is best on test
    comparison, tests = comparison_table(table, metrics=("auc",))
    assert list(comparison["model"]) == ["teacher", "student alone", "distilled (distill-t2-a0.2)"]
    assert comparison["test AUC"].iloc[1] == "0.803 ± 0.015"
    from scipy import stats

    expected = stats.ttest_rel([0.84, 0.85, 0.84], [0.80, 0.82, 0.79]).pvalue
    assert tests["p (paired t)"].iloc[0] == pytest.approx(expected)
    grid = ablation_table(table)
    assert grid.loc[2.0, 0.2] == pytest.approx(0.85) and grid.loc[4.0, 0.2] == pytest.approx(0.83)


def test_paired_test_drops_seeds_whose_metric_is_nan():
    table = _table()
    table.loc[(table["run"] == "student") & (table["seed"] == 1) & (table["split"] == "test"), "value"] = (
        np.nan
    )
    _, tests = comparison_table(table, metrics=("auc",))
    from scipy import stats

    assert tests["seeds"].iloc[0] == 2
    assert tests["p (paired t)"].iloc[0] == pytest.approx(stats.ttest_rel([0.84, 0.84], [0.80, 0.79]).pvalue)


# ------------------------------------------------------------------------------------------------ the run
def _distill(root, *extra):
    return ["distill", "--dataset", "medmnist:breastmnist", "--student", STUDENT, "--no-pretrained",
            "--data-root", str(root / "data"), "--epochs", "2", "--batch-size", "16",
            "--cache-dir", str(root / "cache"), *extra]  # fmt: skip


def test_an_offline_teacher_names_the_teacher_flags(tmp_path, monkeypatch, capsys):
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    args = _distill(tmp_path, "--teacher", "timm:vit_small_patch14_dinov2.lvd142m", "--teacher-img-size", "28",
                    "--seeds", "0", "--out", str(tmp_path / "out"))  # fmt: skip
    assert main(args) == 2  # no hub here: the teacher's pretrained weights are missing
    err = capsys.readouterr().err
    assert "teacher timm:vit_small_patch14_dinov2.lvd142m" in err
    assert "--teacher-weights" in err and "--teacher-no-pretrained" in err
    assert " --weights" not in err and " --no-pretrained" not in err


def test_distill_from_a_backbone_teacher_end_to_end(tmp_path, monkeypatch, capsys):
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    out = tmp_path / "out"
    args = _distill(tmp_path, "--teacher", TINY_VIT, "--teacher-no-pretrained", "--seeds", "0", "1",
                    "--temperatures", "1", "4", "--alphas", "0.5", "--out", str(out))  # fmt: skip
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    assert set(table["run"]) == {"teacher", "student", "distill-t1-a0.5", "distill-t4-a0.5"}
    assert sorted(table["seed"].unique()) == [0, 1]
    outputs = json.loads((out / "outputs.json").read_text())
    for name in outputs["tables"] + outputs["figures"]:
        assert (out / name).is_file(), name
    assert {"figures/tsne.png", "figures/ablation_val_auc.png"} <= set(outputs["figures"])
    assert any(f.startswith("figures/gradcam_") for f in outputs["figures"])
    assert "Paired across seeds" in (out / "comparison.md").read_text()
    assert "Teacher soft targets" in (out / "comparison.md").read_text()
    assert set(pd.read_csv(out / "teacher_targets.csv")["t"]) == {1.0, 4.0}
    assert (out / "teacher" / "linear" / "seed1" / "model.json").is_file()  # the probe teacher, per seed
    printed = capsys.readouterr().out
    assert "student alone" in printed and "figures:" in printed
    # the saved probe teacher is reused only when it is the one asked for
    assert main([*args, "--teacher-channel-mode", "repeat"]) == 2  # the distilled arms had another teacher
    assert "arm 'distill-t1-a0.5'" in capsys.readouterr().err
    # new arms (the existing ones are refused first, as above) reach the saved teacher's own check
    again = [*args, "--teacher-channel-mode", "repeat", "--no-figures", "--alphas", "0.9"]
    again[again.index("--teacher") + 1] = TINY_VIT.replace("embed_dim=32", "embed_dim=64")
    assert main(again) == 2
    err = capsys.readouterr().err
    assert (
        "holds a teacher probe made with other settings (backbone:" in err
        and "channel_mode: 'sum' there" in err
    )


def test_distill_from_a_finetune_run_directory(tmp_path, monkeypatch, capsys):
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    ft = ["finetune", "--dataset", "medmnist:breastmnist", "--backbone", STUDENT, "--no-pretrained",
          "--strategy", "scratch", "--data-root", str(tmp_path / "data"), "--epochs", "1",
          "--seeds", "0", "1", "--out", str(tmp_path / "teacher")]  # fmt: skip
    assert main(ft) == 0
    assert len(find_saved(tmp_path / "teacher")) == 2  # one saved model per seed
    out = tmp_path / "out"
    for seed in ("0", "1"):  # seeds run separately (e.g. in parallel) into one --out add up in the report
        args = _distill(tmp_path, "--teacher", str(tmp_path / "teacher"), "--no-figures", "--seeds", seed)
        assert main([*args, "--out", str(out)]) == 0
    table = pd.read_csv(out / "results.csv")
    assert "ensemble of 2" in table.query("run == 'teacher'")["backbone"].iloc[0]
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison["seeds"]) == [2, 2, 2]
    # a seed with other training settings would be pooled with them: refused before it runs
    args = _distill(
        tmp_path, "--teacher", str(tmp_path / "teacher"), "--no-figures", "--seeds", "2", "--lr", "0.5"
    )
    assert main([*args, "--out", str(out)]) == 2
    assert "arm 'student'" in capsys.readouterr().err and not (out / "student" / "seed2").exists()

    # --teacher-pairing seed: student seed S is taught by the teacher of seed S alone
    paired = tmp_path / "paired"
    args = _distill(tmp_path, "--teacher", str(tmp_path / "teacher"), "--teacher-pairing", "seed",
                    "--no-figures", "--no-baseline", "--seeds", "1", "--out", str(paired))  # fmt: skip
    assert main(args) == 0
    teacher_rows = pd.read_csv(paired / "results.csv").query("run == 'teacher' and split == 'test'")
    assert "single model" in teacher_rows["backbone"].iloc[0]
    own = pd.read_csv(tmp_path / "teacher" / "results.csv").query("seed == 1 and split == 'test'")
    for m in ("auc", "acc"):  # the seed-1 teacher's own test scores
        got, expected = (t.loc[t["metric"] == m, "value"].iloc[0] for t in (teacher_rows, own))
        assert got == pytest.approx(expected, abs=1e-6)
    missing = _distill(tmp_path, "--teacher", str(tmp_path / "teacher"), "--teacher-pairing", "seed",
                       "--no-figures", "--seeds", "5", "--out", str(tmp_path / "none"))  # fmt: skip
    assert main(missing) == 2
    assert "no teacher model of seed 5" in capsys.readouterr().err

    # a teacher of other classes (same count: benign/malignant vs normal/pneumonia) is refused
    write_fake_medmnist(tmp_path / "data", monkeypatch, flag="pneumoniamnist")
    other = _distill(
        tmp_path, "--teacher", str(tmp_path / "teacher"), "--no-figures", "--out", str(tmp_path / "o")
    )
    other[other.index("medmnist:breastmnist")] = "medmnist:pneumoniamnist"
    assert main(other) == 2
    assert "was trained on the classes ['malignant', 'normal, benign']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--teacher", "/no/such/run"], "no saved model"),
        (["--teacher", TINY_VIT, "--alpha", "1.5"], "--alpha must be in"),
        ([], "--teacher is required"),
    ],
)
def test_distill_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    write_fake_medmnist(tmp_path / "data", monkeypatch)
    assert main(_distill(tmp_path, "--out", str(tmp_path / "out"), *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_catalogue_alias_is_a_backbone_teacher_and_a_missing_path_is_not(tmp_path):
    from medadapt.config import DistillConfig
    from medadapt.distill.run import _is_backbone_address

    def is_backbone(*teacher):
        return _is_backbone_address(DistillConfig(dataset="medmnist:breastmnist", teacher=list(teacher)))

    assert is_backbone("dinov2_vitb14") and is_backbone(TINY_VIT)
    assert not is_backbone(str(tmp_path / "no_such_run")) and not is_backbone(str(tmp_path))
    assert not is_backbone(TINY_VIT, TINY_VIT)  # several teachers: saved runs to ensemble


def test_soft_target_table_matches_numpy():
    z = torch.tensor([[4.0, 0.0], [0.0, 0.5], [10.0, -10.0]])
    table = soft_target_table({"train": z}, task="binary", temperatures=[1.0, 4.0])
    for t in (1.0, 4.0):
        p = _np_softmax(z.numpy() / t)
        row = table[table["t"] == t].iloc[0]
        assert row["top-class probability"] == pytest.approx(p.max(1).mean(), rel=1e-5)
        assert row["entropy (nats)"] == pytest.approx((-(p * np.log(p)).sum(1)).mean(), rel=1e-5)
        assert row["share ≥ 0.99"] == pytest.approx((p.max(1) >= 0.99).mean())
    ml = soft_target_table({"val": torch.tensor([[0.0, 20.0]])}, task="multilabel", temperatures=[1.0]).iloc[
        0
    ]
    assert ml["top-class probability"] == pytest.approx(0.75)  # labels 0.5 and ~1.0
    assert ml["entropy (nats)"] == pytest.approx(np.log(2) / 2, rel=1e-4)
