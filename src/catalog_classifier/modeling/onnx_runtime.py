"""The classifier exported to ONNX and run by ONNX Runtime: export, parity against PyTorch, and a classifier that
predicts through it with the same decoding, calibration and output rows as the PyTorch one.

The graph holds the whole :class:`~catalog_classifier.modeling.models.Classifier` (normalisation included), so it
takes RGB floats in [0, 1], NCHW, with a dynamic batch axis; a deployer needs only ``model.onnx``, the class list
and the preprocessing in ``model_config.json``, not the training stack. The model is rebuilt with timm's
``exportable=True`` (layers traceable without data-dependent Python) and the trained weights loaded into it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from catalog_classifier.modeling.models import Classifier, DataConfig
from catalog_classifier.modeling.prediction import (
    ONNX_FILE,
    ImageClassifier,
    _file_loader,
)
from catalog_classifier.ops.io import atomic_path

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def exportable_copy(model: Classifier, config: dict[str, Any]) -> Classifier:
    """The same network and weights, built with ``exportable=True``."""
    backbone = timm.create_model(config["model_name"], pretrained=False, num_classes=len(config["classes"]),
                                 exportable=True)
    copy = Classifier(backbone, DataConfig.from_dict(config))
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def export_onnx(model: Classifier, config: dict[str, Any], target: Path) -> Path:
    """Write ``target`` (atomically): the classifier as an ONNX graph, opset 17, dynamic batch axis.

    Traced with a batch of 2 (a batch of 1 lets the exporter fold the batch axis away) by the TorchScript-based
    exporter (``dynamo=False``), which needs no onnxscript and gives a graph ONNX Runtime optimises fully.
    """
    exportable = exportable_copy(model, config)
    height, width = config["input_size"]
    example = torch.rand(2, 3, height, width)
    with atomic_path(target) as tmp, torch.no_grad():
        torch.onnx.export(exportable, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    return target


def onnx_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with every graph optimisation, ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Without these ORT keeps an arena grown to the largest batch and a memory plan per input shape: measured
    # 2.2 GB resident at the first batch of 64, growing with every run (`make bench-predict`).
    # ORT's arena is kept (without it every run pays page faults: 2.5x slower here), but no memory plan per input
    # shape, which grew resident memory with every batch (2.15 -> 2.59 GB over 1,000 rows, `make bench-predict`).
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxImageClassifier(ImageClassifier):
    """:class:`ImageClassifier` whose forward pass is ONNX Runtime on ``model.onnx`` (calibration, top-3 and
    review flags unchanged; the PyTorch module is kept only for :meth:`ImageClassifier.probabilities_for_files`
    callers that want it and is never run here)."""

    runtime_name = "onnx"

    def __init__(self, base: ImageClassifier, onnx_file: Path, run_batch: int) -> None:
        super().__init__(base.model, base.config, base.settings, base.calibration)
        self.onnx_file = onnx_file
        self.session = onnx_session(onnx_file, self.runtime.threads)
        # ORT's arena grows to the largest batch it ran: smaller runs bound memory at little cost per image.
        self.run_batch = run_batch

    def _logits(self, pixels: np.ndarray) -> torch.Tensor:
        batch_size = self.run_batch
        outputs = []
        for start in range(0, len(pixels), batch_size):
            images = pixels[start:start + batch_size].astype(np.float32) * np.float32(1.0 / 255.0)
            outputs.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])
        return torch.from_numpy(np.concatenate(outputs).astype(np.float32))


def with_onnx(classifier: ImageClassifier, directory: Path, scratch: Path, run_batch: int) -> OnnxImageClassifier:
    """The classifier on ONNX Runtime: ``directory``'s ``model.onnx`` when the version carries one, else one
    exported from its weights into ``scratch``."""
    onnx_file = directory / ONNX_FILE
    if not onnx_file.is_file():
        onnx_file = export_onnx(classifier.model, classifier.config, scratch / ONNX_FILE)
        log.info("exported %s (the registered version carries no %s)", onnx_file, ONNX_FILE)
    return OnnxImageClassifier(classifier, onnx_file, run_batch)


def parity(reference: ImageClassifier, candidate: ImageClassifier, paths: Sequence[Path]) -> dict[str, Any]:
    """Top-1 agreement and the largest logit difference of two classifiers on the same (readable) image files."""
    pixels = np.stack([reference._decode(_file_loader(path)) for path in paths])
    expected = reference._logits(pixels).float().numpy()
    got = candidate._logits(pixels).float().numpy()
    agree = expected.argmax(1) == got.argmax(1)
    return {"n_images": len(paths), "top1_agreement": float(agree.mean()),
            "n_disagree": int((~agree).sum()), "max_abs_logit_diff": float(np.abs(expected - got).max())}


def export_classifier_dir(directory: Path) -> Path:
    """Add ``model.onnx`` to a classifier folder (``write_classifier_dir``'s), from its own (safetensors) weights."""
    classifier = ImageClassifier.from_dir(directory)
    return export_onnx(classifier.model, classifier.config, directory / ONNX_FILE)
