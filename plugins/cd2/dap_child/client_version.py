"""The installed DAP client's version: every patch of the client applies only to versions it was verified on,
and only while its environment switch leaves it on."""

from __future__ import annotations

import logging
import os
from importlib import metadata

logger = logging.getLogger(__name__)

CLIENT_DISTRIBUTION = "instructure-dap-client"


def installed_version() -> str | None:
    """The installed ``instructure-dap-client`` version, or None when it is not installed."""
    try:
        return metadata.version(CLIENT_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def switched_on(setting: str) -> bool:
    """Whether the environment variable ``setting`` leaves a patch on: on unless ``0``/``false``/``no``/``off``."""
    return os.environ.get(setting, "1").strip().lower() not in {"0", "false", "no", "off"}


def verified_version(patch: str, verified: frozenset[str], otherwise: str) -> str | None:
    """The installed client version when ``patch`` was verified on it; else None, after one warning that
    names the version, the verified ones and what happens ``otherwise``."""
    version = installed_version()
    if version in verified:
        return version
    logger.warning(
        "%s not installed: %s %s is not a verified version (%s); %s",
        patch,
        CLIENT_DISTRIBUTION,
        version,
        ", ".join(sorted(verified)),
        otherwise,
    )
    return None
