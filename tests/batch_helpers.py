"""A real served model, tiny: shared by the batch prediction and batch-label flow tests."""

from __future__ import annotations

from pathlib import Path

CLASSES = ["Baby Care", "Watches", "Computers"]


def save_served_model(folder: Path, batch_size: int) -> Path:
    """A timm test network (random, seeded) as a classifier folder of data files (safetensors + JSON, what a
    registered version holds), with a hand-made calibration; ``predict --model-uri`` takes the folder."""
    import torch

    from catalog_classifier.modeling.models import create_classifier, save_classifier
    from catalog_classifier.modeling.prediction import InferenceSettings, write_classifier_dir

    torch.manual_seed(0)
    model, _ = create_classifier("test_efficientnet", len(CLASSES), image_size=32)
    weights = folder / "train" / "model.pt"
    weights.parent.mkdir(parents=True)
    save_classifier(model, "test_efficientnet", CLASSES, weights)
    settings = InferenceSettings(batch_size=batch_size, channels_last=False, bf16=False, num_threads=1)
    autolabel = folder / "autolabel.json"
    autolabel.write_text('{"temperature": 1.0, "target_precision": 0.9, "reachable": true, "threshold": 0.34}')
    return write_classifier_dir(weights, folder / "classifier", settings, autolabel)


def load_folder(folder: Path):  # noqa: ANN201 - the classifier of a folder save_served_model wrote
    from catalog_classifier.modeling.prediction import ImageClassifier

    return ImageClassifier.from_dir(folder)
