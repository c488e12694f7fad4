"""Where the shared reference data and the test-only tools are (the rest is in :mod:`local_dap.paths`)."""

from __future__ import annotations

import os
from pathlib import Path

from local_dap.paths import DAP_BIN, DAP_PYTHON, REPO_ROOT, VENV_DIR

__all__ = ["DAP_BIN", "DAP_PYTHON", "REPO_ROOT", "SHARED_DIR", "TOOLS_BIN", "VENV_DIR"]

SHARED_DIR = Path(os.environ.get("CD2_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
# Test-only tools (ruff, moto server, cfn-lint, checkov) whose pins would clash with the runtime sets.
TOOLS_BIN = Path(os.environ.get("CD2_TOOLS_BIN", VENV_DIR / "tools" / "bin"))
