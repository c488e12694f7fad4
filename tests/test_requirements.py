"""requirements.txt installs cleanly on MWAA's own package set, the way MWAA installs it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mwaa_infra import bundle
from scripts.lock import MWAA_IMAGE_PACKAGES
from tests.support import venv
from tests.support.paths import REPO_ROOT, SHARED_DIR, TOOLS_BIN

STOCK_CONSTRAINTS = "https://raw.githubusercontent.com/apache/airflow/constraints-{v}/constraints-3.12.txt"
# The image's own install step (scripts/lock.py), less psycopg2: a source build that needs libpq headers,
# providing the same module as psycopg2-binary, which the postgres provider brings.
IMAGE_PACKAGES = [package for package in MWAA_IMAGE_PACKAGES if package != "psycopg2"]


def test_requirements_carries_the_stock_constraints_line_and_no_dap_client():
    text = (REPO_ROOT / "requirements.txt").read_text()
    constraint_lines = [line for line in text.splitlines() if re.search(r"-c |--constraint ", line)]
    assert constraint_lines == [f'--constraint "{STOCK_CONSTRAINTS.format(v="3.3.1")}"']
    assert "dap-client" not in text and "==" not in text


@pytest.mark.parametrize("version", ["3.3.1", "3.2.1"])
def test_requirements_install_on_mwaa_package_set_moves_no_pin(version: str, tmp_path: Path):
    constraints = SHARED_DIR / "mwaa" / f"constraints-{version}-3.12.txt"
    essential = SHARED_DIR / "mwaa" / f"mwaa-essential-constraints-{version}.txt"
    python = venv.create(tmp_path / "mwaa")
    packages = [package.format(version=version) for package in IMAGE_PACKAGES]
    # The image's own install step (uv resolves the same fully pinned set several times faster).
    subprocess.run(
        [str(TOOLS_BIN / "uv"), "pip", "install", "--quiet", "--python", str(python), "-c", str(constraints)]
        + packages,
        check=True,
    )
    image_set = venv.freeze(python)

    locked = venv.lock_pins(REPO_ROOT / "locks" / f"airflow-{version}.txt")
    locked.pop("psycopg2")
    assert {name: image_set.get(name) for name in locked} == locked, "locks/ differ from MWAA's set"

    # MWAA installs requirements.txt (as bundled for that version) with its essential pins as constraints. CI reaches PyPI only,
    # so the stock constraints URL is served from the same file in ../shared/mwaa.
    requirements = tmp_path / "requirements.txt"
    stock_url = STOCK_CONSTRAINTS.format(v=version)
    requirements.write_text(bundle.requirements_for(version).replace(stock_url, str(constraints)))
    assert str(constraints) in requirements.read_text()
    venv.pip(python, "install", "--quiet", "-c", str(essential), "-r", str(requirements))
    assert "No broken requirements found" in venv.pip(python, "check")
    assert venv.freeze(python) == image_set
