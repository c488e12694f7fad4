"""Fixtures of the MWAA deployment tests: one bundle, its unpacked plugins, a moto server, checkov."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from mwaa_infra import bundle
from tests.support import moto_server as moto
from tests.support.paths import REPO_ROOT, TOOLS_BIN


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dist/`` built once from this repository (wheels from the shared build/wheels cache)."""
    out = tmp_path_factory.mktemp("dist")
    bundle.build_bundle(out)
    return out


@pytest.fixture(scope="session")
def unpacked_plugins(built_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plugins.zip unpacked as MWAA unpacks it into /usr/local/airflow/plugins."""
    folder = tmp_path_factory.mktemp("plugins")
    with zipfile.ZipFile(built_bundle / "plugins.zip") as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty moto server; boto3 in this process points at it with dummy credentials."""
    moto.reset(moto_endpoint)
    for name, value in moto.aws_test_environment(moto_endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_endpoint


@pytest.fixture(scope="session")
def checkov_report() -> dict:
    """checkov's JSON report over mwaa_infra/, run once per session (it takes a few seconds)."""
    result = subprocess.run(
        [
            str(TOOLS_BIN / "checkov"),
            "-d",
            str(REPO_ROOT / "mwaa_infra"),
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), f"checkov did not run:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    return {"reports": report if isinstance(report, list) else [report], "returncode": result.returncode}
