"""Which registered version is champion, as the one small function every server path resolves it through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from catalog_classifier.registry.versions import champion_version


@dataclass(frozen=True)
class ServedVersion:
    """A registered version and the URI that loads it: a version, never the alias, so what runs is fixed."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class NoChampion(FileNotFoundError):
    """The registered model has no champion alias (nothing has passed the gate yet)."""


def resolve_champion(client: Any, name: str) -> ServedVersion:
    """The champion of ``name`` now; raises :class:`NoChampion` when there is none."""
    version = champion_version(client, name)
    if version is None:
        raise NoChampion(f"registered model {name!r} has no champion yet: run `dvc repro` (promote stage) or "
                         "`catalog-classifier promote`")
    return ServedVersion(name, str(version))
