"""The one typed loader of ``params.yaml``.

Every stage, flow and test reads configuration through :func:`load_params`, so a typo in a key, a negative
epoch count or split fractions that do not add up are rejected before any work starts, with the key named.
"""

from __future__ import annotations

import copy
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"
# The shared registry lock's PostgreSQL URL, password included, comes from here; it wins over registry.lock_url.
REGISTRY_LOCK_URL_ENV = "CATALOG_REGISTRY_LOCK_URL"
TUNE_STORAGE_ENV = "CATALOG_TUNE_STORAGE"  # a whole tune.storage URL (with its password), read when a study opens


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names the offending key."""


# A frozen backbone trains its head on features cached once per image: there is no image left to augment.
FROZEN_AUGMENT_MESSAGE = ("train.augment applies to images only: with train.freeze_backbone the head trains on "
                          "cached features; set one of them to false")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_fraction(value: Any) -> float:
    """Accept 0.5, "1/6" or "0.1666" so ratios like 2/3 can be written exactly."""
    try:
        return float(Fraction(str(value)))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{value!r} is not a number or a fraction a/b") from err


class DataParams(_Strict):
    catalogue: Path
    images_dir: Path
    classes: list[str] = Field(min_length=2)

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("class names must be unique")
        return classes


class SplitFractions(_Strict):
    train: float
    val: float
    test: float

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        return _as_fraction(value)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        for name in ("train", "val", "test"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        total = self.train + self.val + self.test
        if abs(total - 1) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:.6f}")
        return self


class NearDuplicateParams(_Strict):
    """Bit thresholds of the two 64-bit perceptual hashes: a pair within BOTH is one near-duplicate group."""

    max_dhash_bits: int = Field(ge=0, le=64)
    max_phash_bits: int = Field(ge=0, le=64)


class SplitParams(_Strict):
    out_dir: Path
    seed: int
    fractions: SplitFractions
    near_duplicates: NearDuplicateParams

    def rule(self) -> dict[str, Any]:
        """What decides the draw: a previous assignment made under another rule is redrawn, never kept."""
        return {"seed": self.seed, "fractions": self.fractions.model_dump(),
                "near_duplicates": self.near_duplicates.model_dump()}


class CrossValidationParams(_Strict):
    """Repeated stratified k-fold over train+val for models whose fit is cheap (a head on frozen features)."""

    folds: int = Field(ge=2)
    repeats: int = Field(ge=1)


class UncertaintyParams(_Strict):
    """Percentile bootstrap intervals of every macro-F1 and the gate's paired difference."""

    confidence: float = Field(gt=0, lt=1)
    bootstrap_resamples: int = Field(ge=100)
    seed: int


class RecipeOverrides(_Strict):
    """train.* values that replace the defaults for one kind of model (unset: keep train.*'s value)."""

    freeze_backbone: bool | None = None
    max_epochs: int | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    optimizer: Literal["adamw", "sgd"] | None = None
    lr: float | None = Field(default=None, gt=0)
    backbone_lr_ratio: float | None = Field(default=None, gt=0, le=1)
    warmup_epochs: int | None = Field(default=None, ge=0)
    schedule: Literal["constant", "cosine"] | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    augment: bool | None = None

    def set_values(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump().items() if value is not None}


class TrainParams(_Strict):
    out_dir: Path
    history_dir: Path
    seed: int
    weights: Literal["imagenet", "none"]
    # Local weights files live under weights_dir, a dependency of every train stage (dvc.yaml), so replacing a
    # file retrains; weights_files paths are relative to the project root and must lie under it.
    weights_dir: Path = Path("weights")
    weights_files: dict[str, Path] = Field(default_factory=dict)
    allow_random_fallback: bool
    image_size: int | None = Field(default=None, gt=0)
    max_epochs: int = Field(gt=0)
    patience: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    optimizer: Literal["adamw", "sgd"]
    lr: float = Field(gt=0)
    backbone_lr_ratio: float = Field(default=1.0, gt=0, le=1)  # backbone lr = lr x this (head: lr)
    warmup_epochs: int = Field(default=0, ge=0)  # linear warm-up of the lr over these epochs
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up: constant, or cosine decay to 0
    weight_decay: float = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    augment: bool
    freeze_backbone: bool
    channels_last: Literal["auto"] | bool
    bf16: Literal["auto"] | bool
    num_threads: int | None = Field(default=None, gt=0)
    cv: CrossValidationParams = Field(default_factory=lambda: CrossValidationParams(folds=5, repeats=2))
    # Replaces the values above for a model that got ImageNet weights (random-init models keep train.*).
    pretrained: RecipeOverrides = Field(default_factory=RecipeOverrides)

    @model_validator(mode="after")
    def _weights_files_under_weights_dir(self) -> TrainParams:
        for model, path in self.weights_files.items():
            if path.is_absolute() or ".." in path.parts or not path.is_relative_to(self.weights_dir):
                raise ValueError(
                    f"weights_files.{model}: {path} must be a relative path under train.weights_dir "
                    f"({self.weights_dir}/), which the train stages depend on: copy the file there")
        return self

    def recipe_for(self, weights_used: str) -> TrainParams:
        """These params with ``pretrained`` applied when the model got ImageNet weights."""
        if weights_used != "imagenet":
            return self
        return self._merged(self.pretrained)

    def _merged(self, overrides: RecipeOverrides) -> TrainParams:
        # Validated like params.yaml itself (a recipe may not combine what train.* may not); the result carries no
        # recipe of its own, so validating it does not recurse.
        return TrainParams.model_validate({**self.model_dump(), **overrides.set_values(), "pretrained": {}})

    @model_validator(mode="after")
    def _augment_needs_images(self) -> TrainParams:
        if self.augment and self.freeze_backbone:
            raise ValueError(FROZEN_AUGMENT_MESSAGE)
        if self.pretrained.set_values():
            try:
                self._merged(self.pretrained)
            except ValidationError as err:
                message = str(err.errors()[0]["msg"]).removeprefix("Value error, ")
                raise ValueError(f"train.pretrained (merged into train.*): {message}") from None
        return self


class EvaluateParams(_Strict):
    out_dir: Path
    batch_size: int = Field(gt=0)
    latency_warmup: int = Field(ge=0)
    latency_repeats: int = Field(gt=0)


class AutolabelParams(_Strict):
    """Auto-labelling: calibrated confidence (temperature fitted on validation) and a threshold per target precision.

    The threshold is the lowest calibrated confidence at which a one-sided ``bound_confidence`` lower bound of the
    precision on the calibration predictions (out-of-fold or val) reaches ``target_precision``; test only reports.
    Every row sent to review carries a split-conformal prediction set at ``set_alpha``
    (:mod:`catalog_classifier.modeling.conformal`), fitted on the same calibration predictions.
    """

    target_precision: float = Field(gt=0, lt=1)
    ece_bins: int = Field(ge=2, le=100)  # equal-width confidence bins of the expected calibration error
    interval_confidence: float = Field(gt=0, lt=1)  # of the precision and coverage intervals reported on test
    # One-sided level of the Clopper-Pearson lower bound of precision the threshold must reach the target with.
    bound_confidence: float = Field(default=0.95, gt=0, lt=1)
    # Conformal prediction sets of the review queue: the true label is in a row's set with probability >= 1 - this
    set_alpha: float = Field(default=0.05, gt=0, lt=1)


class CompareParams(_Strict):
    out_json: Path
    out_md: Path
    out_summary: Path  # the pipeline's one DVC metrics file: what `dvc exp show` puts beside the params


class ShapParams(_Strict):
    max_evals: int = Field(ge=8)
    blur_fraction: float = Field(gt=0, le=1)


class FaithfulnessParams(_Strict):
    n_images: int = Field(gt=0)
    steps: int = Field(ge=2)
    random_grid: int = Field(ge=2)
    baseline: Literal["image_mean", "grey"]  # deletion filler and insertion start, shared by every method
    bootstrap_resamples: int = Field(ge=100)  # paired bootstrap of AUC differences against random


class ExplainParams(_Strict):
    out_dir: Path
    images: list[str] = Field(default_factory=list)
    n_correct: int = Field(ge=0)
    n_wrong: int = Field(ge=0)
    seed: int
    batch_size: int = Field(gt=0)
    bf16: Literal["auto"] | bool
    target_layers: dict[str, str] = Field(min_length=1)
    shap: ShapParams
    faithfulness: FaithfulnessParams

class BenchParams(_Strict):
    """``make bench``: speed of the project's loops against a naive baseline and the machine's peak."""

    out_dir: Path
    models: list[str] = Field(default_factory=list)  # empty: the pipeline's models
    n_images: int = Field(gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    warmup_steps: int = Field(ge=1)
    measure_steps: int = Field(ge=1)
    inference_batch_sizes: list[int] = Field(min_length=1)
    latency_warmup: int = Field(ge=0)
    latency_repeats: int = Field(ge=1)
    naive_num_workers: int = Field(ge=0)
    matmul_size: int = Field(gt=0)
    matmul_repeats: int = Field(ge=1)
    compile: bool
    compile_timeout_s: float = Field(gt=0)
    fit_epochs: int | None = Field(default=None, gt=0)
    frozen: bool
    frozen_max_images: int | None = Field(default=None, gt=0)
    predict_images: int = Field(gt=0)
    predict_target_img_s: float = Field(gt=0)
    seed: int
    # make bench-stack: MLflow log_batch latency, the stack's server on PostgreSQL against a local sqlite store
    stack_log_calls: int = Field(ge=2)
    stack_log_metrics: int = Field(ge=1)
    stack_log_warmup: int = Field(ge=0)

    @field_validator("inference_batch_sizes")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(size <= 0 for size in sizes):
            raise ValueError("batch sizes must be positive")
        return sizes


class MlflowParams(_Strict):
    tracking_uri: str
    artifact_root: Path
    experiment: str
    # Runs show the split manifests as datasets named <dataset_name>-train, -val, -test.
    dataset_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # MLflow's own system metrics (CPU, memory, disk, network) on training runs, one sample every this many
    # seconds; null turns them off. Each logged point is the mean of system_metrics_samples samples.
    system_metrics_interval_s: float | None = Field(gt=0)
    system_metrics_samples: int = Field(ge=1)


class FloatRange(_Strict):
    """A float search range; ``log`` samples uniformly in log space (learning rates, weight decay)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class TuneSpace(_Strict):
    """The hyper-parameters a trial samples; each maps onto the ``train`` key of the same name."""

    lr: FloatRange
    weight_decay: FloatRange
    batch_size: list[int] = Field(min_length=1)
    label_smoothing: FloatRange
    augment: list[bool] = Field(min_length=1)
    freeze_backbone: list[bool] = Field(min_length=1)
    # Sampled for fine-tuning trials only (a frozen backbone does not learn): backbone lr = lr x this; null: 1.
    backbone_lr_ratio: FloatRange | None = None

    @model_validator(mode="after")
    def _valid_values(self) -> TuneSpace:
        if self.lr.low <= 0 or self.weight_decay.low < 0:
            raise ValueError("lr must stay above 0 and weight_decay at or above 0")
        if self.label_smoothing.low < 0 or self.label_smoothing.high >= 1:
            raise ValueError("label_smoothing must stay within [0, 1)")
        if any(size <= 0 for size in self.batch_size):
            raise ValueError("batch sizes must be positive")
        ratio = self.backbone_lr_ratio
        if ratio is not None and not 0 < ratio.low < ratio.high <= 1:
            raise ValueError("backbone_lr_ratio must stay within (0, 1]")
        return self


class PrunerParams(_Strict):
    type: Literal["median", "hyperband", "none"]
    n_startup_trials: int = Field(default=5, ge=0)  # median: finished trials before any pruning
    n_warmup_steps: int = Field(default=0, ge=0)  # median: epochs every trial runs before it may be pruned
    min_resource: int = Field(default=1, gt=0)  # hyperband: epochs of the smallest bracket
    reduction_factor: int = Field(default=3, ge=2)  # hyperband


class TrialPoint(_Strict):
    """A configuration to try before the sampler's own picks; keys left out are sampled."""

    model: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    label_smoothing: float | None = None
    augment: bool | None = None
    freeze_backbone: bool | None = None
    backbone_lr_ratio: float | None = None


# Optuna storages the shared-study lock knows (a sqlite file on one machine, PostgreSQL across machines).
TUNE_STORAGE_SCHEMES = ("sqlite", "postgresql")


class TuneBenchParams(_Strict):
    """``catalog-classifier bench-tune``: a tiny fixed study timed with 1..N workers, and the storage cost per trial."""

    model: str = Field(min_length=1)  # the one candidate of the timed study's family
    image_size: int = Field(ge=16)
    max_epochs: int = Field(gt=0)
    n_trials: int = Field(gt=0)  # finished trials of each timed study
    workers: list[int] = Field(min_length=1)  # one timed study per entry
    threads_per_worker: int | None = Field(default=None, gt=0)  # null: cores // workers (the machine shared evenly)
    storage_trials: int = Field(gt=0)  # trivial-objective trials per storage for the overhead figure
    storage_reports: int = Field(ge=0)  # intermediate values reported per trivial trial (epochs of a real one)

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, workers: list[int]) -> list[int]:
        if any(count <= 0 for count in workers):
            raise ValueError("worker counts must be positive")
        return workers

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        import timm

        if not timm.is_model(model):
            raise ValueError(f"unknown timm model name {model!r}")
        return model


class TuneParams(_Strict):
    out_dir: Path
    # Optuna's database, never MLflow's: a sqlite file path (relative to the project root), sqlite:///PATH or
    # postgresql://USER:PASSWORD@HOST:PORT/DB. ${VAR} is replaced from the environment, and CATALOG_TUNE_STORAGE,
    # when set, replaces the whole value: passwords stay out of this file.
    storage: str = Field(min_length=1)
    study_prefix: str = Field(min_length=1)
    experiment: str = Field(min_length=1)  # MLflow experiment of the studies (kept apart from pipeline runs)
    seed: int
    n_trials: int = Field(gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    max_epochs: int = Field(gt=0)
    heartbeat_s: int = Field(gt=0)
    stale_retries: int = Field(ge=0)  # a trial whose worker died (heartbeat gone) is queued again this many times
    lock_timeout_s: float = Field(gt=0)  # wait for the storage lock (study set-up, trial claims) at most this long
    pruner: PrunerParams
    families: dict[str, list[str]] = Field(min_length=1)
    space: TuneSpace
    baseline: bool  # a new study's first trial uses the current train.* values: the bar to beat
    enqueue: list[TrialPoint] = Field(default_factory=list)
    bench: TuneBenchParams

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, storage: str) -> str:
        # The shape only: ${VAR} parts and CATALOG_TUNE_STORAGE are resolved when a study is opened.
        scheme = storage.split("://", 1)[0].split("+", 1)[0] if "://" in storage else "sqlite"
        if scheme not in TUNE_STORAGE_SCHEMES:
            raise ValueError(f"{scheme}:// is not supported; use a sqlite file (path or sqlite:///PATH) "
                             "or postgresql://USER:PASSWORD@HOST:PORT/DB")
        return storage

    @field_validator("families")
    @classmethod
    def _known_family_models(cls, families: dict[str, list[str]]) -> dict[str, list[str]]:
        import timm

        for family, models in families.items():
            if not models:
                raise ValueError(f"family {family!r} lists no model")
            unknown = [name for name in models if not timm.is_model(name)]
            if unknown:
                raise ValueError(f"family {family!r}: unknown timm model name(s): {', '.join(unknown)}")
        return families

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")


class OrchestrationParams(_Strict):
    """Prefect settings (flows/): stage retries, the retraining schedule and the local server."""

    task_retries: int = Field(ge=0)
    retry_delay_s: float = Field(ge=0)
    retrain_cron: str
    timezone: str
    deployment: str = Field(min_length=1)
    server_host: str = Field(min_length=1)
    server_port: int = Field(gt=0, lt=65536)
    push_outputs: bool

    @field_validator("retrain_cron")
    @classmethod
    def _five_cron_fields(cls, cron: str) -> str:
        # Shape only: Prefect validates the expression itself when the deployment is served; importing
        # Prefect here would cost every stage seconds of start-up.
        fields = cron.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(field) for field in fields):
            raise ValueError(f"{cron!r} is not a five-field cron expression (minute hour day month weekday)")
        return cron

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, timezone: str) -> str:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {timezone!r}") from None
        return timezone

    def api_url(self) -> str:
        return f"http://{self.server_host}:{self.server_port}/api"

class StackParams(_Strict):
    """``make stack``: the team setup on one machine (PostgreSQL, an MLflow server on it, a Prefect server on it, a
    ``process`` work pool and one worker). The Prefect server listens on ``orchestration.server_host/server_port``,
    where the flows already look for one."""

    dir: Path  # databases, artifacts, logs, pid files (relative: to the project root)
    host: str = Field(min_length=1)  # PostgreSQL and MLflow listen here
    postgres_port: int = Field(gt=0, lt=65536)
    mlflow_port: int = Field(gt=0, lt=65536)
    mlflow_workers: int = Field(ge=1)  # uvicorn workers of the MLflow server
    work_pool: str = Field(min_length=1)
    worker_name: str = Field(min_length=1)
    startup_timeout_s: float = Field(gt=0)  # per service: a cold Prefect server on 2 busy cores is slow
    # Exported to MLflow clients (stack env, the worker): a server whose database is down answers 500, which MLflow
    # retries with exponential back-off (7 tries, ~4 minutes by default); these bound that wait.
    mlflow_http_retries: int = Field(ge=0)
    mlflow_http_timeout_s: int = Field(gt=0)
    repository: str | None  # git URL the deployments clone; null: this clone itself (file://<project root>)
    branch: str | None  # branch the deployments run; null: the branch checked out when `make deploy` runs

    @field_validator("host")
    @classmethod
    def _no_scheme(cls, host: str) -> str:
        if "/" in host or ":" in host:
            raise ValueError(f"{host!r}: a host name or IPv4 address, without scheme or port")
        return host


class RegistryParams(_Strict):
    """Promotion rule and registry location: which registered model, and what a challenger must prove."""

    model_name: str = Field(min_length=1)
    min_delta: float = Field(ge=0, le=1)
    class_f1_floor: float = Field(ge=0, le=1)
    out_json: Path
    lock_timeout_s: float = Field(gt=0)
    # The PostgreSQL database whose advisory lock serialises promoters of a shared registry (registry/locking.py);
    # null: CATALOG_REGISTRY_LOCK_URL, else the file lock of the embedded sqlite store.
    lock_url: str | None = None
    # Share of the gate's test images the challenger must auto-label at autolabel.target_precision (0: no rule).
    min_coverage: float = Field(ge=0, le=1)

    @field_validator("lock_url")
    @classmethod
    def _lock_url_without_secret(cls, url: str | None) -> str | None:
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
            raise ValueError(f"{parts.scheme or 'no scheme'}: the registry lock is a PostgreSQL advisory lock, "
                             "give a postgresql://USER@HOST:PORT/DB URL")
        if parts.password is not None:
            # params.yaml is committed: a password there is a leaked secret.
            raise ValueError(f"no password in params.yaml: leave it out (libpq reads PGPASSWORD or ~/.pgpass) or "
                             f"put the whole URL in {REGISTRY_LOCK_URL_ENV}")
        return url

    @field_validator("model_name")
    @classmethod
    def _uri_safe(cls, name: str) -> str:
        # The name is part of models:/<name>@champion URIs, where these characters have a meaning.
        if any(char in name for char in "/@:#?") or name != name.strip():
            raise ValueError(f"{name!r}: a registered model name may not contain / @ : # ? or edge spaces")
        return name


class BatchPredictParams(_Strict):
    """``catalog-classifier predict --input``: how the streaming batch prediction decodes ahead of the model (the
    batch size and threads are the model's own, stored with it)."""

    decode_workers: int = Field(default=2, ge=1, le=64)  # threads decoding and resizing images
    prefetch_batches: int = Field(default=2, ge=1, le=16)  # batches decoded ahead of the forward pass (memory bound)
    # The forward pass: torch, onnx (ONNX Runtime on the exported graph), or auto: the faster one on this machine
    # as `catalog-classifier bench-predict` measured it (<bench.out_dir>/predict.json), torch until it has run.
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    # Images per ONNX Runtime call: its memory arena grows to the largest call (peak RSS 2.2 GB at 64, 1.4 GB at 16
    # on EfficientNet-Lite0, `make bench-predict`); the model batch still groups the decoded images.
    onnx_batch: int = Field(default=16, ge=1, le=1024)
    bench_rows: list[int] = Field(default_factory=lambda: [10_000], min_length=1)  # bench-predict: rows per run
    # bench-predict: images streamed in process per runtime (decode threads + forward): decides the batch runtime
    bench_stream_images: int = Field(default=1050, ge=1)
    # make bench-batch-label: the batch-label flow on a catalogue of this many rows, once per worker count
    bench_label_rows: int = Field(default=4000, ge=1)
    bench_label_workers: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    # flows/batch_label.py: shards of a catalogue on a Dask cluster (prefect-dask)
    shard_rows: int = Field(default=5000, ge=1)  # rows per shard task (thousands: never one task per image)
    dask_workers: int = Field(default=2, ge=1)  # worker processes of the local cluster
    dask_scheduler: str | None = None  # an existing scheduler's address (tcp://host:8786); null: a local cluster
class ServeBenchParams(_Strict):
    """``make bench-serve``: the load test of the served champion (engine and reference side by side)."""

    clients: list[int] = Field(min_length=1)  # concurrent clients per level, each sending one image per request
    requests_per_level: int = Field(gt=0)     # answered requests that end a level ...
    max_seconds_per_level: float = Field(gt=0)  # ... or this much time, whichever comes first
    warmup_requests: int = Field(ge=0)       # untimed requests first (model warm-up, first batches)
    n_images: int = Field(gt=0)              # distinct real test images the clients cycle through
    startup_timeout_s: float = Field(gt=0)   # per server
    rounds: int = Field(default=3, gt=0)     # every level this many times, engines alternating: a spread, not a point
    target_clients: int = Field(default=8, gt=0)     # issue #27's targets at this level: the engine answers at
    target_speedup: float = Field(default=2.0, gt=0)  # >= this many times the reference's requests/s in every
    target_p99_ms: float = Field(default=200, gt=0)   # round, with p99 <= this over all rounds' requests


class ServeParams(_Strict):
    """The HTTP endpoint of the champion (``make serve``): batching and the limits every request meets."""

    engine: Literal["ray", "mlflow"]         # ray: Ray Serve with adaptive batching; mlflow: mlflow models serve
    max_batch_size: int = Field(gt=0)        # images in one forward pass, gathered across concurrent requests
    batch_wait_ms: float = Field(ge=0)       # how long the first queued image waits for others to join its batch
    max_body_bytes: int = Field(gt=0)        # larger bodies: 413, refused from Content-Length or while streaming
    max_rows: int = Field(gt=0)              # images per request; more: 413
    max_pixels: int = Field(gt=0)            # width x height declared by an image's header; more: that row's error
    deadline_s: float = Field(gt=0)          # a request still unanswered then: 504, its images leave the queue
    max_in_flight: int = Field(gt=0)         # requests inside the server at once; more: 503 + Retry-After
    retry_after_s: int = Field(ge=1)
    reload_poll_s: float = Field(gt=0)       # how often the server reads the champion alias (a move switches)
    switch_timeout_s: float = Field(default=300, gt=0)  # loading a new champion beside the served one, at most
    concurrent_batches: int = Field(default=2, gt=0)  # forward passes the replica runs at once, a thread each
    forward_threads: int | None = Field(default=None, gt=0)  # intra-op threads per pass; null: cores // batches
    throughput_optimized: bool = True        # Ray Serve's throughput mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1)
    bench: ServeBenchParams


class ReportParams(_Strict):
    """``catalog-classifier report``: the self-contained HTML page of the latest run."""

    out_dir: Path
    max_image_width: int = Field(ge=200)  # px: bigger figures are downscaled before they are embedded
    png_max_kb: int = Field(gt=0)  # a figure whose PNG is bigger (photos, heatmaps) is embedded as JPEG instead
    jpeg_quality: int = Field(ge=30, le=95)


class Params(_Strict):
    data: DataParams
    split: SplitParams
    models: list[str] = Field(min_length=1)
    train: TrainParams
    evaluate: EvaluateParams
    autolabel: AutolabelParams
    compare: CompareParams
    explain: ExplainParams
    uncertainty: UncertaintyParams
    mlflow: MlflowParams
    tune: TuneParams

    orchestration: OrchestrationParams

    stack: StackParams

    registry: RegistryParams

    serve: ServeParams

    bench: BenchParams

    report: ReportParams

    batch_predict: BatchPredictParams = Field(default_factory=BatchPredictParams)

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        import timm  # imported here: loading params must not pay for torch unless models are checked

        unknown = [name for name in models if not timm.is_model(name)]
        if unknown:
            raise ValueError(f"unknown timm model name(s): {', '.join(unknown)}")
        if len(set(models)) != len(models):
            raise ValueError("model names must be unique")
        return models

    @model_validator(mode="after")
    def _stack_ports_distinct(self) -> Params:
        ports = {"stack.postgres_port": self.stack.postgres_port, "stack.mlflow_port": self.stack.mlflow_port,
                 "orchestration.server_port": self.orchestration.server_port}
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"the stack's ports must differ: {', '.join(f'{k}={v}' for k, v in ports.items())}")
        return self

    @model_validator(mode="after")
    def _weights_files_name_models(self) -> Params:
        known = set(self.models) | {name for names in self.tune.families.values() for name in names}
        unknown = sorted(set(self.train.weights_files) - known)
        if unknown:
            raise ValueError(f"train.weights_files names {', '.join(unknown)}, which is not in models "
                             f"({', '.join(self.models)}) nor in any tune family")
        return self


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"override {dotted_key}: '{part}' is not a section of params.yaml")
        node = node[part]
    node[leaf] = value


def _override_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ParamsError(f"override {key}: value {value!r} is not valid YAML (quote it if it is a string)") from None


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``{"train.lr": 0.1}``-style overrides applied (values parsed as YAML)."""
    tree = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, _override_value(key, value))
    return tree


def _format_errors(err: ValidationError, source: Path) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: Path = Path(PARAMS_FILE)) -> Params:
    """Validate an already-loaded params tree."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def read_raw_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameters file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 ({err.reason}); re-save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must contain a mapping of sections")
    return raw


def load_params(path: Path | str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Load, override and validate ``params.yaml``."""
    return parse_params(apply_overrides(read_raw_params(path), overrides), Path(path))
