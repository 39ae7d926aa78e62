"""Second recipe probe (frozen lite0 head): stronger weight decay; validation only. Uses /tmp/lite0_feats.pt."""
import itertools
import json
import logging

import torch
from sklearn.metrics import f1_score

from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.modeling.fit_loop import FitSettings, fit, macro_f1, predict_logits
from catalog_classifier.modeling.frozen import UnscaledHead, head_runtime
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.torch_setup import resolve_runtime, seed_everything

logging.disable(logging.INFO)
feats = torch.load("/tmp/lite0_feats.pt", weights_only=False)
runtime = head_runtime(resolve_runtime("auto", "auto", None))
torch.manual_seed(42)
model, _ = create_classifier("tf_efficientnet_lite0", 7, weights="imagenet")
init = {k: v.clone() for k, v in model.backbone.get_classifier().state_dict().items()}
for lr, wd, aug, bs in itertools.product([0.003, 0.01, 0.03], [0.05, 0.2, 0.5, 1.0], [False, True], [32]):
    model.backbone.get_classifier().load_state_dict(init)
    g = seed_everything(42)
    tr = feats["train"]
    if aug:
        tr = ImageSet(pixels=torch.cat([tr.pixels, feats["train_flip"].pixels]), labels=torch.cat([tr.labels, tr.labels]),
                      names=list(tr.names) * 2)
    st = FitSettings(max_epochs=300, patience=10, batch_size=bs, optimizer="adamw", lr=lr, weight_decay=wd)
    head = UnscaledHead(model.backbone.get_classifier())
    r = fit(head, tr, feats["val"], st, runtime, g, 7)
    lg = predict_logits(head, feats["val"], 64, runtime)
    y, p = feats["val"].labels.numpy(), lg.argmax(1).numpy()
    print(dict(lr=lr, wd=wd, aug=aug, bs=bs, epochs=r.epochs_run, best=r.best_epoch, head_s=round(r.fit_seconds, 1),
               val_loss=round(r.best["val_loss"], 4), val=round(macro_f1(y, p, 7), 4),
               val_min_class=round(float(f1_score(y, p, average=None).min()), 3)), flush=True)
