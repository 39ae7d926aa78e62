"""The MLflow model registry side of promotion: versions, the ``challenger``/``champion`` aliases, tags, rollback.

Registry stages are deprecated in MLflow; aliases are the pointer a server or ``predict`` follows
(``models:/<name>@champion``). The order in which champions held the alias is kept in a registered-model tag
(``champion_history``, oldest first), so ``rollback`` knows where to go back and the history survives it.

Every read-decide-write sequence runs under the registry lock (:mod:`catalog_classifier.registry.locking`:
a file lock beside the sqlite database, or a PostgreSQL advisory lock every clone shares): two ``promote``
commands started together are serialised, each decides against the champion that is current once it holds the
lock, and the registry ends with exactly one champion and a consistent history.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow is imported by the functions that use it: the CLI imports this module at start
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
LAST_EVENT_TAG = "last_champion_event"
# sha256 of the served classifier's files (weights, config, settings, calibration, training manifest)
CLASSIFIER_TAG = "classifier_sha256"


class RegistryError(RuntimeError):
    """A registry action cannot be done as asked (nothing to roll back to, lock not obtained...)."""


class RegistryLockTimeout(RegistryError):
    """Another promote or rollback holds the registry lock: transient, the same command can succeed later."""


class RegistryLockUnavailable(RegistryError):
    """The registry lock's database cannot be reached: transient, like an unreachable tracking server."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _missing(err: MlflowException) -> bool:
    return err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version of a registered model; empty when the model is not registered yet."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if _missing(err):
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def champion_version(client: MlflowClient, name: str) -> str | None:
    return aliases(client, name).get(CHAMPION)


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """Versions that became champion, oldest first (rolled-back ones removed)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as err:
        if _missing(err):
            return []
        raise
    return [str(version) for version in json.loads(tags.get(HISTORY_TAG, "[]"))]


def ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if not _missing(err):
            raise
        client.create_registered_model(name, description=description)


def register_challenger(client: MlflowClient, name: str, model_uri: str, run_id: str,
                        tags: dict[str, str], model_id: str | None = None) -> ModelVersion:
    """A new version of the registered model, given the ``challenger`` alias (moved from the previous one).

    ``model_id`` is the logged model behind a ``models:/m-…`` source: an MLflow server refuses such a source
    without it (the local sqlite store does not check)."""
    ensure_registered_model(client, name, "Product-photo classifier; alias champion serves, challenger is the "
                                          "latest candidate. Versions carry the gate's decision in tags.")
    version = client.create_model_version(name=name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def registered_version(client: MlflowClient, name: str, run_id: str, fingerprint: str) -> ModelVersion | None:
    """The newest version of ``name`` registered from ``run_id`` with these exact classifier files (tag
    ``CLASSIFIER_TAG``), or None: what makes the pipeline's promote stage idempotent."""
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    same = [version for version in versions if (version.tags or {}).get(CLASSIFIER_TAG) == fingerprint]
    return max(same, key=lambda version: int(version.version)) if same else None


def tag_value(text: str) -> Any:
    """A tag written by :func:`version_tags` read back: numbers, lists and dicts from JSON, "None" as None."""
    if text == "None":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def version_tags(decision: dict[str, Any], context: dict[str, str]) -> dict[str, str]:
    """Flat string tags: the decision, its reason, every figure compared, and where the model came from."""
    tags = {"decision": "promoted" if decision["promote"] else "rejected", "reason": decision["reason"][:5000],
            **context}
    for key, value in decision["figures"].items():
        tags[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
    return tags


def record_decision(client: MlflowClient, name: str, version: str, promote: bool, tags: dict[str, str]) -> None:
    """Write the decision on the version; on promotion move ``champion`` and extend the history.

    The alias moves before the history grows: a crash in between leaves a champion missing from the history, which a
    rollback still handles (it restores the history's last entry, the champion before). History first, a rollback
    would "restore" the version that never held the alias."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if not promote:
        return
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    history = [item for item in champion_history(client, name) if item != version] + [version]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(name, LAST_EVENT_TAG,
                                    f"{now()} promote: champion {previous or 'none'} -> {version}")
    if previous:
        client.set_model_version_tag(name, version, "previous_champion", previous)


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Move ``champion`` back to the version that held it before; returns (from, to). History keeps the rest.

    The history is written before the alias moves: a crash in between leaves ``champion`` on the version being
    rolled back with a history that already ends at its predecessor, so the next rollback restores that
    predecessor. (Alias first, the next rollback would read the old history, whose last entry is the version just
    demoted, and restore it.) A promotion writes in the other order, for the same reason."""
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"registered model {name!r} has no champion to roll back")
    history = champion_history(client, name)
    if history and history[-1] == current:
        history = history[:-1]
    if not history:
        raise RegistryError(f"{name!r} v{current} is the first champion: there is no previous champion to restore")
    target = history[-1]
    stamp = now()
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(name, LAST_EVENT_TAG, f"{stamp} rollback: champion {current} -> {target}")
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, current, "rolled_back_at", stamp)
    client.set_model_version_tag(name, current, "rolled_back_to", target)
    client.set_model_version_tag(name, target, "restored_at", stamp)
    return current, target
