"""Where each stage's files live, derived from params only (dvc.yaml templates the same keys)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog_classifier.config.params import PARAMS_FILE, Params, load_params


@dataclass(frozen=True)
class Project:
    """A project root and its validated params; every path is resolved against the root."""

    root: Path
    params: Params

    @classmethod
    def load(cls, params_file: Path | str = PARAMS_FILE, overrides: dict | None = None) -> Project:
        params_path = Path(params_file).resolve()
        return cls(root=params_path.parent, params=load_params(params_path, overrides))

    def path(self, relative: Path | str) -> Path:
        relative = Path(relative)
        return relative if relative.is_absolute() else self.root / relative

    # split
    def split_dir(self) -> Path:
        return self.path(self.params.split.out_dir)

    def manifest(self, split: str) -> Path:
        return self.split_dir() / f"{split}.csv"

    def quality_report(self) -> Path:
        return self.split_dir() / "quality.json"

    def split_assignment(self) -> Path:
        """Every image's split, kept by the next split (committed, so a fresh clone keeps it too)."""
        return self.split_dir() / "assignment.json"

    # train
    def weights_file(self, model: str) -> Path | None:
        """The local ImageNet weights file configured for ``model`` (train.weights_files), resolved; else None."""
        relative = self.params.train.weights_files.get(model)
        return None if relative is None else self.path(relative)

    def spread(self, model: str) -> Path:
        """Seed-spread measurement of ``model`` (catalog-classifier spread), beside the models' folder."""
        return self.path(self.params.train.out_dir).parent / "spread" / f"{model}.json"

    def model_dir(self, model: str) -> Path:
        return self.path(self.params.train.out_dir) / model

    def weights(self, model: str) -> Path:
        return self.model_dir(model) / "model.pt"

    def history(self, model: str) -> Path:
        return self.path(self.params.train.history_dir) / f"{model}.csv"

    def train_metrics(self, model: str) -> Path:
        return self.model_dir(model) / "train_metrics.json"

    def cv_summary(self, model: str) -> Path:
        """Cross-validation of the model's recipe on train+val (or why it was skipped)."""
        return self.model_dir(model) / "cv.json"

    def oof_predictions(self, model: str) -> Path:
        """Out-of-fold logits of the cross-validation (header only when it was skipped)."""
        return self.model_dir(model) / "oof_predictions.csv"

    def run_record(self, model: str) -> Path:
        return self.model_dir(model) / "run.json"

    # evaluate
    def eval_dir(self, model: str) -> Path:
        return self.path(self.params.evaluate.out_dir) / model

    def eval_metrics(self, model: str) -> Path:
        return self.eval_dir(model) / "metrics.json"

    # tune (tune.storage may be a database URL: catalog_classifier.tuning.storage resolves it)
    def tune_dir(self, family: str) -> Path:
        return self.path(self.params.tune.out_dir) / family

    def best_params(self, family: str) -> Path:
        return self.tune_dir(family) / "best_params.yaml"

    def tune_summary(self, family: str) -> Path:
        return self.tune_dir(family) / "summary.json"

    def eval_predictions(self, model: str) -> Path:
        return self.eval_dir(model) / "predictions.csv"

    def autolabel(self, model: str) -> Path:
        """Temperature, review threshold and coverage at the target precision (written by evaluate)."""
        return self.eval_dir(model) / "autolabel.json"

    # explain
    def explain_dir(self, model: str) -> Path:
        return self.path(self.params.explain.out_dir) / model

    def explain_figures(self, model: str) -> Path:
        return self.explain_dir(model) / "figures"

    def explain_metrics(self, model: str) -> Path:
        return self.explain_dir(model) / "metrics.json"

    def explain_summary(self, model: str) -> Path:
        return self.explain_dir(model) / "summary.json"


    # compare / promote
    def comparison(self) -> Path:
        return self.path(self.params.compare.out_json)

    def summary_metrics(self) -> Path:
        return self.path(self.params.compare.out_summary)

    def promotion_report(self) -> Path:
        return self.path(self.params.registry.out_json)

    # report
    def report_dir(self) -> Path:
        return self.path(self.params.report.out_dir)

    def report_page(self) -> Path:
        return self.report_dir() / "index.html"
