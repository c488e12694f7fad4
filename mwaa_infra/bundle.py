"""Build the MWAA bundle in ``dist/``: the DAGs folder, plugins.zip, requirements.txt and startup.sh.

The same sources give byte-identical files, so S3 object versions change only when content does:

- ``dist/dags/``: the repository's ``dags/`` folder, plus an ``.airflowignore`` naming every file that is
  not a DAG file (a top-level ``.py`` file that mentions both "airflow" and "dag", Airflow's own test).
- ``dist/plugins.zip``: the ``plugins/`` packages at the zip root, and under ``dap_wheels/`` the DAP
  environment's wheels for CPython 3.12 on manylinux x86_64 and aarch64 with a copy of their hashed lock
  (``dap_wheels/dap.txt``), which startup.sh installs offline. Entries are sorted, dated 1980-01-01 and
  have fixed permissions.
- ``dist/requirements.txt``: the repository's requirements.txt, its constraints line naming the target
  Airflow version (``--airflow-version``, default 3.3.1).
- ``dist/startup.sh``: ``mwaa_infra/startup.sh``.

Wheels are downloaded once into a cache folder (``build/wheels``) and reused while they match the lock.

Usage: ``python -m mwaa_infra.bundle [--out dist] [--lock locks/dap.txt] [--wheel-cache build/wheels]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # a regular file, rw-r--r--
ARCHITECTURES = ("x86_64", "aarch64")
MWAA_GLIBC_MINOR = 34  # Amazon Linux 2023
DEFAULT_AIRFLOW_VERSION = "3.3.1"
WHEELS_FOLDER = "dap_wheels"
LOCK_NAME = "dap.txt"
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


@dataclass(frozen=True)
class LockedPackage:
    """One ``name==version`` line of a hashed lock and its allowed sha256 hashes."""

    name: str
    version: str
    hashes: frozenset[str]


def manylinux_platforms(architecture: str) -> list[str]:
    """Every manylinux platform tag an MWAA host of ``architecture`` accepts, newest first.

    pip does not widen an explicit ``--platform`` to older glibc tags, so they are all listed, as pip
    would list them on that host.
    """
    tags = [f"manylinux_2_{minor}" for minor in range(MWAA_GLIBC_MINOR, 4, -1)]
    tags += ["manylinux2014", "manylinux2010", "manylinux1"]
    return [f"{tag}_{architecture}" for tag in tags]


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(lock_path: Path) -> list[LockedPackage]:
    """Parse a pip hashed requirements file (``name==version --hash=sha256:...``, continuation lines)."""
    text = re.sub(r"\\\s*\n", " ", lock_path.read_text())
    packages = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if not match:
            continue
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        if not hashes:
            raise ValueError(f"{lock_path}: {match.group(1)} has no --hash=sha256 (the lock must be hashed)")
        packages.append(LockedPackage(normalize_name(match.group(1)), match.group(2), hashes))
    if not packages:
        raise ValueError(f"{lock_path}: no name==version lines")
    return packages


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_fits(wheel_name: str, architecture: str) -> bool:
    """Whether a wheel's platform tag installs on CPython 3.12 manylinux ``architecture``."""
    platform_tag = wheel_name[: -len(".whl")].split("-")[-1]
    tags = platform_tag.split(".")
    return platform_tag == "any" or any(
        t.startswith("manylinux") and t.endswith(f"_{architecture}") for t in tags
    )


def locked_wheels(packages: list[LockedPackage], wheel_cache: Path) -> dict[str, list[Path]]:
    """For each architecture, the cached wheels whose hashes the lock allows; missing ones are absent."""
    by_hash: dict[str, Path] = {}
    for wheel in sorted(wheel_cache.glob("*.whl")) if wheel_cache.is_dir() else []:
        by_hash[sha256_of(wheel)] = wheel
    found: dict[str, list[Path]] = {}
    for architecture in ARCHITECTURES:
        found[architecture] = []
        for package in packages:
            found[architecture] += [
                by_hash[h]
                for h in sorted(package.hashes)
                if h in by_hash and wheel_fits(by_hash[h].name, architecture)
            ]
    return found


def download_wheels(lock_path: Path, wheel_cache: Path) -> list[Path]:
    """Ensure the cache holds a locked wheel of every package for both architectures; return them all.

    pip runs only when something is missing, so a second bundle needs no network.
    """
    packages = read_lock(lock_path)
    wheel_cache.mkdir(parents=True, exist_ok=True)
    found = locked_wheels(packages, wheel_cache)
    for architecture in ARCHITECTURES:
        if {normalize_name(w.name.split("-")[0]) for w in found[architecture]} == {p.name for p in packages}:
            continue
        platforms = [f"--platform={tag}" for tag in manylinux_platforms(architecture)] + ["--platform=any"]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
        command += ["--only-binary=:all:", "--no-deps", "--require-hashes", "--implementation=cp"]
        command += ["--python-version=3.12", "--abi=cp312", "--abi=abi3", "--abi=none", *platforms]
        command += ["--dest", str(wheel_cache), "--requirement", str(lock_path)]
        subprocess.run(command, check=True)
    found = locked_wheels(packages, wheel_cache)
    for architecture in ARCHITECTURES:
        names = {normalize_name(w.name.split("-")[0]) for w in found[architecture]}
        missing = sorted(p.name for p in packages if p.name not in names)
        if missing:
            raise RuntimeError(f"no locked cp312 manylinux {architecture} wheel for: {', '.join(missing)}")
    return sorted(set(found["x86_64"]) | set(found["aarch64"]), key=lambda w: w.name)


def source_files(folder: Path) -> list[Path]:
    """Files under ``folder`` that belong in the bundle (no caches, no compiled Python), sorted."""
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not EXCLUDED_PARTS.intersection(relative.parts) and path.suffix != ".pyc":
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def is_dag_file(relative: Path, content: bytes) -> bool:
    """A top-level Python file that Airflow's safe-mode heuristic would parse as a DAG file."""
    lowered = content.lower()
    return (
        len(relative.parts) == 1 and relative.suffix == ".py" and b"airflow" in lowered and b"dag" in lowered
    )


def build_dags_folder(dags_source: Path, dags_out: Path) -> None:
    """Copy the DAGs folder and write an ``.airflowignore`` listing everything that is not a DAG file."""
    if dags_out.exists():
        shutil.rmtree(dags_out)
    dags_out.mkdir(parents=True)
    ignored: list[str] = []
    own_ignore = dags_source / ".airflowignore"
    if own_ignore.is_file():
        ignored += [line for line in own_ignore.read_text().splitlines() if line.strip()]
    for path in source_files(dags_source):
        relative = path.relative_to(dags_source)
        if relative.as_posix() == ".airflowignore":
            continue
        content = path.read_bytes()
        target = dags_out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        if not is_dag_file(relative, content):
            ignored.append(relative.as_posix())
    header = "# Written by mwaa_infra/bundle.py: files in this folder that are not DAG files.\n"
    (dags_out / ".airflowignore").write_text(header + "".join(f"{line}\n" for line in ignored))


def write_deterministic_zip(zip_path: Path, entries: dict[str, Path]) -> None:
    """Write ``entries`` (archive name -> file) sorted, with fixed timestamps and permissions."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            info.create_system = 3  # Unix, so the permission bits below are honoured when unpacked
            info.external_attr = FILE_MODE << 16
            # Wheels are zips already: storing them avoids recompressing megabytes for nothing.
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".whl") else zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name].read_bytes(), compresslevel=9)


def build_plugins_zip(plugins_source: Path, wheels: list[Path], lock_path: Path, zip_path: Path) -> None:
    """plugins.zip: the plugins packages at the root, the DAP wheels and their lock under dap_wheels/."""
    entries = {path.relative_to(plugins_source).as_posix(): path for path in source_files(plugins_source)}
    entries.update({f"{WHEELS_FOLDER}/{wheel.name}": wheel for wheel in wheels})
    entries[f"{WHEELS_FOLDER}/{LOCK_NAME}"] = lock_path
    write_deterministic_zip(zip_path, entries)


def requirements_for(airflow_version: str, repo_root: Path = REPO_ROOT) -> str:
    """requirements.txt for MWAA ``airflow_version``: the stock constraints line of that version."""
    text = (repo_root / "requirements.txt").read_text()
    if not re.fullmatch(r"\d+\.\d+\.\d+", airflow_version):
        raise ValueError(f"not an Airflow version: {airflow_version!r}")
    return re.sub(r"/constraints-\d+\.\d+\.\d+/", f"/constraints-{airflow_version}/", text)


def build_bundle(
    out_dir: Path,
    *,
    airflow_version: str = DEFAULT_AIRFLOW_VERSION,
    repo_root: Path = REPO_ROOT,
    lock_path: Path | None = None,
    wheel_cache: Path | None = None,
) -> list[Path]:
    """Write the whole bundle into ``out_dir``; return the files written, relative to it, sorted."""
    lock_path = lock_path or repo_root / "locks" / "dap.txt"
    wheel_cache = wheel_cache or repo_root / "build" / "wheels"
    requirements = repo_root / "requirements.txt"
    for required in (lock_path, requirements, repo_root / "dags", repo_root / "plugins"):
        if not required.exists():
            raise FileNotFoundError(f"the bundle needs {required}")
    wheels = download_wheels(lock_path, wheel_cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_dags_folder(repo_root / "dags", out_dir / "dags")
    build_plugins_zip(repo_root / "plugins", wheels, lock_path, out_dir / "plugins.zip")
    (out_dir / "requirements.txt").write_text(requirements_for(airflow_version, repo_root))
    shutil.copyfile(repo_root / "mwaa_infra" / "startup.sh", out_dir / "startup.sh")
    return bundle_files(out_dir)


def bundle_files(out_dir: Path) -> list[Path]:
    """The files of a built bundle, relative to ``out_dir``, in upload order (sorted)."""
    names = ["plugins.zip", "requirements.txt", "startup.sh"]
    files = [Path(name) for name in names if (out_dir / name).is_file()]
    files += [path.relative_to(out_dir) for path in source_files(out_dir / "dags")]
    return sorted(files, key=lambda p: p.as_posix())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--lock", type=Path, default=None, help="hashed DAP lock (default locks/dap.txt)")
    parser.add_argument("--wheel-cache", type=Path, default=None, help="wheel cache (default build/wheels)")
    parser.add_argument("--airflow-version", default=DEFAULT_AIRFLOW_VERSION, help="MWAA's Airflow version")
    args = parser.parse_args(argv)
    files = build_bundle(
        args.out, airflow_version=args.airflow_version, lock_path=args.lock, wheel_cache=args.wheel_cache
    )
    for relative in files:
        path = args.out / relative
        print(f"{sha256_of(path)}  {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
