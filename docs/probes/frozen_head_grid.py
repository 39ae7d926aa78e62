"""Recipe probe for tf_efficientnet_lite0 (frozen head on cached features), chosen on validation only."""
import itertools
import json
import sys
import time

import torch
from sklearn.metrics import f1_score

from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import ImageSet, decode_manifest
from catalog_classifier.modeling.fit_loop import FitSettings, fit, macro_f1, predict_logits
from catalog_classifier.modeling.frozen import UnscaledHead, extract_features, head_runtime
from catalog_classifier.modeling.models import create_classifier, freeze_backbone
from catalog_classifier.modeling.torch_setup import resolve_runtime, seed_everything
from catalog_classifier.stages.split import read_manifest

project = Project.load("params.yaml")
classes = project.params.data.classes
runtime = resolve_runtime("auto", "auto", None)
torch.manual_seed(42)
model, info = create_classifier("tf_efficientnet_lite0", 7, weights="imagenet")
images_dir = project.path(project.params.data.images_dir)
t0 = time.perf_counter()
sets = {s: decode_manifest(read_manifest(project, s), images_dir, model.data_config) for s in ("train", "val")}
print("decode", time.perf_counter() - t0, flush=True)
t0 = time.perf_counter()
feats = {s: extract_features(model, sets[s], 32, runtime) for s in sets}
print("features", time.perf_counter() - t0, flush=True)
# flipped-view features for train (augmentation by precomputed views)
flipped = ImageSet(pixels=sets["train"].pixels.flip(-1), labels=sets["train"].labels, names=sets["train"].names)
t0 = time.perf_counter()
feats["train_flip"] = extract_features(model, flipped, 32, runtime)
print("flip features", time.perf_counter() - t0, flush=True)
torch.save(feats, "/tmp/lite0_feats.pt")
init = {k: v.clone() for k, v in model.backbone.get_classifier().state_dict().items()}
results = []
for lr, wd, ls, aug in itertools.product([1e-3, 3e-3, 1e-2], [1e-4, 0.05], [0.0, 0.1], [False, True]):
    model.backbone.get_classifier().load_state_dict(init)
    g = seed_everything(42)
    tr = feats["train"]
    if aug:
        tr = ImageSet(pixels=torch.cat([feats["train"].pixels, feats["train_flip"].pixels]),
                      labels=torch.cat([tr.labels, tr.labels]), names=list(tr.names) * 2)
    st = FitSettings(max_epochs=200, patience=10, batch_size=32, optimizer="adamw", lr=lr, weight_decay=wd,
                     label_smoothing=ls)
    head = UnscaledHead(model.backbone.get_classifier())
    import logging; logging.disable(logging.INFO)
    r = fit(head, tr, feats["val"], st, head_runtime(runtime), g, 7)
    out = {}
    for s in ("val",):  # selection on validation only: test is not scored here
        lg = predict_logits(head, feats[s], 64, head_runtime(runtime))
        y = feats[s].labels.numpy(); p = lg.argmax(1).numpy()
        out[s] = round(macro_f1(y, p, 7), 4)
        out["val_min_class"] = round(float(f1_score(y, p, average=None).min()), 3)
    row = dict(lr=lr, wd=wd, ls=ls, aug=aug, epochs=r.epochs_run, best=r.best_epoch, head_s=round(r.fit_seconds, 1),
               val_loss=round(r.best["val_loss"], 4), **out)
    results.append(row); print(row, flush=True)
json.dump(results, open("/tmp/lite0_probe.json", "w"), indent=1)
