"""train.freeze_backbone: the train stage fits the head alone on cached features and saves a servable model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch
import yaml
from conftest import tiny_params

from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.modeling.fit_loop import FitSettings
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import create_classifier, load_classifier
from catalog_classifier.modeling.torch_setup import Runtime
from catalog_classifier.ops.io import read_json
from catalog_classifier.stages.train import run_train

FP32 = Runtime(threads=1, channels_last=False, bf16=False)


def _tiny_set(n: int, seed: int) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return ImageSet(pixels, torch.arange(3).repeat(n // 3), [f"{seed}-{i}" for i in range(n)])


def test_fit_model_frozen_times_features_and_head_and_leaves_the_backbone_alone() -> None:
    torch.manual_seed(0)
    model, _ = create_classifier("resnet10t", 3, image_size=32)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items() if not k.startswith("fc.")}
    head_before = model.backbone.get_classifier().weight.detach().clone()
    settings = FitSettings(max_epochs=2, patience=2, batch_size=4, optimizer="adamw", lr=0.05, weight_decay=0.0)

    result = fit_model(model, _tiny_set(9, 1), _tiny_set(6, 2), settings, FP32, torch.Generator().manual_seed(3),
                       3, frozen_backbone=True)

    assert result.epochs_run == 2 and len(result.history) == 2
    assert not torch.equal(model.backbone.get_classifier().weight, head_before)
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone_before.items())  # BatchNorm statistics included
    # Only the head is trainable afterwards (what the tune objective and the stage rely on).
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"backbone.fc.weight",
                                                                                  "backbone.fc.bias"}


def test_train_stage_in_frozen_mode_saves_a_model_whose_backbone_is_the_initial_one(
        tmp_path: Path, tiny_pipeline: Path) -> None:
    # The shared tiny pipeline's data and splits, a fresh output folder, freeze_backbone on.
    root = tmp_path / "frozen"
    root.mkdir()
    (root / "data").symlink_to(tiny_pipeline / "data")
    shutil.copytree(tiny_pipeline / "artifacts" / "splits", root / "artifacts" / "splits")
    params = tiny_params(freeze_backbone=True, max_epochs=2, patience=2)
    params["train"]["cv"] = {"folds": 3, "repeats": 2}  # 5 images per class in train+val (some in one group)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    project = Project.load(root / "params.yaml")

    metrics = run_train(project, "resnet10t")

    saved, _ = load_classifier(project.weights("resnet10t"))
    torch.manual_seed(params["train"]["seed"])
    initial, _ = create_classifier("resnet10t", len(params["data"]["classes"]), weights="none", image_size=32)
    saved_state, initial_state = saved.backbone.state_dict(), initial.backbone.state_dict()
    assert all(torch.equal(saved_state[k], v) for k, v in initial_state.items() if not k.startswith("fc."))
    assert not torch.equal(saved_state["fc.weight"], initial_state["fc.weight"])
    recorded = read_json(project.train_metrics("resnet10t"))
    assert recorded == metrics and recorded["epochs_run"] == 2 and recorded["fit_time_s"] > 0
    # The head was also cross-validated on train+val: one out-of-fold row per image per repeat.
    cv = read_json(project.cv_summary("resnet10t"))
    folds, repeats = params["train"]["cv"]["folds"], params["train"]["cv"]["repeats"]
    assert cv["used"] and len(cv["fold_f1_macro"]) == folds * repeats
    assert recorded["cv_f1_macro_mean"] == cv["f1_macro_mean"]
    oof = pd.read_csv(project.oof_predictions("resnet10t"))
    manifests = pd.concat([pd.read_csv(root / "artifacts" / "splits" / f"{name}.csv") for name in ("train", "val")])
    assert cv["n_images"] == len(manifests) and len(oof) == repeats * len(manifests)
    assert sorted(oof.loc[oof["repeat"] == 0, "image"]) == sorted(manifests["image"])


def test_frozen_fit_refuses_augmentation_instead_of_scrambling_cached_features() -> None:
    """augment_batch on (B, D) features flips feature order and rolls rows past their targets: refuse it."""
    import pytest

    torch.manual_seed(0)
    model, _ = create_classifier("resnet10t", 3, image_size=32)
    settings = FitSettings(max_epochs=1, patience=1, batch_size=4, optimizer="adamw", lr=0.05, weight_decay=0.0,
                           augment=True)
    with pytest.raises(ValueError, match="train.augment applies to images only"):
        fit_model(model, _tiny_set(9, 1), _tiny_set(6, 2), settings, FP32, torch.Generator().manual_seed(3), 3,
                  frozen_backbone=True)


def test_params_reject_augment_with_a_frozen_backbone(tmp_path: Path) -> None:
    import pytest

    from catalog_classifier.config.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match="train.augment applies to images only"):
        parse_params(tiny_params(freeze_backbone=True, augment=True))
    assert parse_params(tiny_params(freeze_backbone=True, augment=False)).train.freeze_backbone
