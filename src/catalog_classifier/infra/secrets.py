"""Secrets in owner-only files: generated once, read back only when nobody else could have read or changed them.

A secret lives in one file, mode 0600, in a folder of mode 0700; it never goes in params.yaml, git, a log line, a
traceback or a command line (clients get it through the environment, from the file). Rotation: delete the file
and restart what uses it (docs/security.md).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


class SecretFileError(PermissionError):
    """A secret file is readable or writable by others than its owner, or empty: refused, not used."""


def read_secret(path: Path) -> str:
    """The secret in ``path``, refused when the file is open to group or others (0600 or stricter only)."""
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise SecretFileError(f"{path} is mode {stat.S_IMODE(mode):04o}: a secret file must be readable by its "
                              f"owner only (chmod 600 {path})")
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise SecretFileError(f"{path} is empty")
    return value


def ensure_secret(path: Path, nbytes: int = 24) -> str:
    """The secret in ``path``, generated (url-safe random, ``nbytes`` of entropy) and written 0600 if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret(path)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(nbytes) + "\n")
    return read_secret(path)
