"""The installed DAP client's version: every patch of the client applies only to versions it was verified on."""

from __future__ import annotations

from importlib import metadata

CLIENT_DISTRIBUTION = "instructure-dap-client"


def installed_version() -> str | None:
    """The installed ``instructure-dap-client`` version, or None when it is not installed."""
    try:
        return metadata.version(CLIENT_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
