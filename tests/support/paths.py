"""Where the repository, the shared reference data, the virtualenvs and the test-only tools are."""

from __future__ import annotations

from local_dap.paths import DAP_BIN, DAP_PYTHON, REPO_ROOT, SHARED_DIR, TOOLS_BIN, VENV_DIR

__all__ = ["DAP_BIN", "DAP_PYTHON", "REPO_ROOT", "SHARED_DIR", "TOOLS_BIN", "VENV_DIR"]
