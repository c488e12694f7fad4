"""The MWAA bundle: reproducible byte for byte, complete, and loadable by Airflow as MWAA lays it out."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from mwaa_infra import bundle
from tests.support.paths import REPO_ROOT

LOCK = REPO_ROOT / "locks" / "dap.txt"


def _digests(folder: Path) -> dict[str, str]:
    return {p.as_posix(): bundle.sha256_of(folder / p) for p in bundle.bundle_files(folder)}


def test_second_build_is_byte_identical(built_bundle: Path, tmp_path: Path) -> None:
    again = tmp_path / "dist"
    bundle.build_bundle(again)
    assert _digests(again) == _digests(built_bundle)
    assert {"plugins.zip", "requirements.txt", "startup.sh", "dags/cd2_replica.py"} <= set(_digests(again))


def test_rebuilding_into_the_same_folder_drops_deleted_dag_files(built_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    bundle.build_bundle(out)
    (out / "dags" / "removed_since.py").write_text("stale")
    bundle.build_bundle(out)
    assert _digests(out) == _digests(built_bundle)


def test_plugins_zip_entries_are_sorted_dated_1980_and_rw_r__r__(built_bundle: Path) -> None:
    with zipfile.ZipFile(built_bundle / "plugins.zip") as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 for info in infos} == {0o100644}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_plugins_zip_has_the_plugins_packages_at_its_root(built_bundle: Path) -> None:
    with zipfile.ZipFile(built_bundle / "plugins.zip") as archive:
        names = set(archive.namelist())
    expected = {
        path.relative_to(REPO_ROOT / "plugins").as_posix()
        for path in bundle.source_files(REPO_ROOT / "plugins")
    }
    assert "cd2/__init__.py" in expected
    assert {
        "cd2_status_plugin.py",
        "cd2/status_page/__init__.py",
    } <= expected  # the status page and its registration
    # Keeps Airflow's plugin loader from importing every module of cd2/ as a top-level plugin.
    assert ".airflowignore" in expected
    assert expected <= names


def test_plugins_zip_has_locked_wheels_for_both_architectures_and_the_lock(built_bundle: Path) -> None:
    packages = bundle.read_lock(LOCK)
    with zipfile.ZipFile(built_bundle / "plugins.zip") as archive:
        assert archive.read("dap_wheels/dap.txt") == LOCK.read_bytes()
        wheels = {
            Path(name).name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if name.endswith(".whl")
        }
    allowed = {h for package in packages for h in package.hashes}
    assert set(wheels.values()) <= allowed, "a bundled wheel is not in the hashed lock"
    for architecture in bundle.ARCHITECTURES:
        covered = {
            bundle.normalize_name(name.split("-")[0])
            for name in wheels
            if bundle.wheel_fits(name, architecture)
        }
        assert covered == {package.name for package in packages}, architecture
    assert any(n.endswith("_x86_64.whl") for n in wheels)
    assert any(n.endswith("_aarch64.whl") for n in wheels)


def test_dags_folder_and_top_level_files_are_copies(built_bundle: Path) -> None:
    assert (built_bundle / "requirements.txt").read_bytes() == (REPO_ROOT / "requirements.txt").read_bytes()
    assert (built_bundle / "startup.sh").read_bytes() == (
        REPO_ROOT / "mwaa_infra" / "startup.sh"
    ).read_bytes()
    assert (built_bundle / "dags" / "cd2_replica.py").read_bytes() == (
        REPO_ROOT / "dags" / "cd2_replica.py"
    ).read_bytes()
    assert "--constraint" in (built_bundle / "requirements.txt").read_text()


def test_airflowignore_lists_what_is_not_a_dag_file(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    (dags / "helpers").mkdir(parents=True)
    (dags / "my_dag.py").write_text("from airflow.sdk import dag\n")
    (dags / "notes.md").write_text("# notes\n")
    (dags / "util.py").write_text("def helper(): ...\n")
    (dags / "helpers" / "shared.py").write_text("from airflow.sdk import dag\n")
    bundle.build_dags_folder(dags, tmp_path / "out")
    ignored = [line for line in (tmp_path / "out" / ".airflowignore").read_text().splitlines()[1:]]
    assert ignored == ["helpers/shared.py", "notes.md", "util.py"]


def test_dagbag_loads_cd2_replica_from_the_unpacked_bundle(
    built_bundle: Path, unpacked_plugins: Path, tmp_path: Path
) -> None:
    """MWAA's layout: plugins.zip unpacked onto sys.path, the bundled DAGs folder as the DAGs folder."""
    dags_folder = built_bundle / "dags"
    script = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(dags_folder)!r})\n"
        "print(json.dumps({'dag_ids': sorted(bag.dag_ids), 'errors': {str(k): str(v) for k, v in"
        " bag.import_errors.items()}, 'modules': sorted(m.__file__ or '' for m in sys.modules.values()"
        " if m.__name__ == 'cd2' or m.__name__.startswith('cd2.'))}))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(unpacked_plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        # Only what MWAA puts on sys.path: the unpacked plugins and the DAGs folder, not this repository.
        "PYTHONPATH": os.pathsep.join([str(unpacked_plugins), str(dags_folder)]),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["errors"] == {}
    assert "cd2_replica" in loaded["dag_ids"]
    assert loaded["modules"] and all(m.startswith(str(unpacked_plugins)) for m in loaded["modules"])
