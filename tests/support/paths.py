"""Where the shared reference data and the test-only tools are (the rest is in :mod:`local_dap.paths`)."""

from __future__ import annotations

import os
from pathlib import Path

from local_dap.paths import DAP_BIN, DAP_PYTHON, REPO_ROOT, TOOLS_BIN, VENV_DIR

__all__ = ["DAP_BIN", "DAP_PYTHON", "REPO_ROOT", "SHARED_DIR", "TOOLS_BIN", "VENV_DIR"]

SHARED_DIR = Path(os.environ.get("CD2_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
