"""Where the repository and the project's virtualenvs are."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_DIR = REPO_ROOT / ".venv"
# The project's reference data (Instructure's schemas, MWAA's constraints), beside the repository.
SHARED_DIR = Path(os.environ.get("CD2_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()

# The DAP environment's interpreter: what the Makefile (and MWAA's startup script) export.
DAP_PYTHON = Path(os.environ.get("CD2_DAP_PYTHON", VENV_DIR / "dap" / "bin" / "python"))
DAP_BIN = DAP_PYTHON.parent
# The test tools' environment (locks/tools.txt), which holds the PostgreSQL server wheel.
TOOLS_BIN = Path(os.environ.get("CD2_TOOLS_BIN", VENV_DIR / "tools" / "bin"))
