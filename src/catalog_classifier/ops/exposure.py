"""Which address a server may listen on: loopback always; any other only when the service authenticates clients.

Every service binds 127.0.0.1 by default (params, ``serve --host``). Another address is taken only when set
explicitly, and then a service that would answer anonymous requests from other machines is refused before
anything starts: a reachable port without authentication lets anyone read every run, register a version or move
the ``champion`` alias.
"""

from __future__ import annotations

import ipaddress


class ExposureError(ValueError):
    """A service would listen beyond loopback without authentication: permanent until the setting changes."""


def is_loopback(host: str) -> bool:
    """``host`` is reachable from this machine only (127.0.0.0/8, ::1, ``localhost``). A wildcard (0.0.0.0, ``::``,
    empty) or any other address or name is not: a name may resolve anywhere."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def require_loopback_or_auth(service: str, host: str, authentication: str | None, setting: str) -> None:
    """Refuse to expose ``service`` on ``host`` unless it is loopback or ``authentication`` names what checks its
    clients (e.g. ``scram-sha-256``); ``setting`` is where the address came from, for the message."""
    if is_loopback(host) or authentication:
        return
    raise ExposureError(
        f"{service} would listen on {host} ({setting}), reachable from other machines, and it has no "
        f"authentication: refused, nothing started. Keep 127.0.0.1 (the default) and reach it through an "
        f"authenticating, TLS-terminating proxy or an SSH tunnel (docs/security.md)")
