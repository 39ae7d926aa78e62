"""Full fine-tuning probe of tf_efficientnet_lite0 (ImageNet from the wheel), validation only."""
import json
import logging
import sys
import time

import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.modeling.fit_loop import FitSettings, fit
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.torch_setup import resolve_runtime, seed_everything
from catalog_classifier.stages.split import read_manifest

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
project = Project.load("params.yaml")
runtime = resolve_runtime("auto", "auto", None)
g = seed_everything(42)
model, info = create_classifier("tf_efficientnet_lite0", 7, weights="imagenet")
d = project.path(project.params.data.images_dir)
tr = decode_manifest(read_manifest(project, "train"), d, model.data_config)
va = decode_manifest(read_manifest(project, "val"), d, model.data_config)
st = FitSettings(max_epochs=int(sys.argv[1]), patience=3, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.05,
                 label_smoothing=0.1, augment=True, backbone_lr_ratio=0.1, warmup_epochs=1, schedule="cosine")
r = fit(model, tr, va, st, runtime, g, 7)
out = dict(settings=st.__dict__, epochs=r.epochs_run, best=r.best_epoch, fit_s=round(r.fit_seconds, 1),
           fit_cpu_s=round(r.fit_cpu_seconds, 1), best_val_f1=round(r.best["val_f1_macro"], 4),
           best_val_loss=round(r.best["val_loss"], 4), history=r.history)
json.dump(out, open("/work/notes/finetune_probe.json", "w"), indent=1)
print({k: v for k, v in out.items() if k != "history"})
