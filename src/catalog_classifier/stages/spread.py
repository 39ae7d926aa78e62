"""Spread action: one model's recipe under several seeds (val and test macro-F1), for the README and the report.

Not a DVC stage: it measures the noise of training, which a reader needs beside every comparison, but no stage
consumes it. Output: ``<train.out_dir>/../spread/<model>.json`` via :meth:`Project.spread`.
"""

from __future__ import annotations

import logging
from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.data.splitting import SPLITS
from catalog_classifier.modeling.fit_loop import settings_from
from catalog_classifier.modeling.models import Classifier, WeightsInfo, create_classifier
from catalog_classifier.modeling.seed_spread import seed_spread, spread_seeds
from catalog_classifier.modeling.torch_setup import resolve_runtime
from catalog_classifier.ops.io import write_json

log = logging.getLogger(__name__)


def run_spread(project: Project, model_name: str, n_seeds: int) -> dict[str, Any]:
    params = project.params
    train_params = params.train
    runtime = resolve_runtime(train_params.channels_last, train_params.bf16, train_params.num_threads)

    def create() -> tuple[Classifier, WeightsInfo]:  # the library builds a fresh model per seed
        return create_classifier(model_name, len(params.data.classes), weights=train_params.weights,
                                 weights_file=project.weights_file(model_name),
                                 allow_fallback=train_params.allow_random_fallback,
                                 image_size=train_params.image_size)

    probe, weights = create()
    recipe = train_params.recipe_for(weights.used)
    images_dir = project.path(params.data.images_dir)
    images = {split: decode_manifest(read_manifest(project, split), images_dir, probe.data_config)
              for split in SPLITS}
    summary = seed_spread(create, images, settings_from(recipe), recipe.freeze_backbone, runtime,
                          spread_seeds(train_params.seed, n_seeds), len(params.data.classes),
                          params.evaluate.batch_size)
    summary.update(model=model_name, weights_used=weights.used, weights_source=weights.source,
                   threads=runtime.threads, bf16=runtime.bf16)
    write_json(project.spread(model_name), summary)
    print(f"{model_name}: {n_seeds} seeds, val macro-F1 {summary['val']['mean']:.4f} ± {summary['val']['std']:.4f} "
          f"[{summary['val']['min']:.4f}, {summary['val']['max']:.4f}], test {summary['test']['mean']:.4f} ± "
          f"{summary['test']['std']:.4f} [{summary['test']['min']:.4f}, {summary['test']['max']:.4f}]")
    return summary
