"""A local moto server standing in for AWS in tests: no request ever leaves the machine.

    from tests.support.moto_server import moto_server, aws_test_environment

    with moto_server() as endpoint_url:
        boto3.client("s3", endpoint_url=endpoint_url, **AWS_TEST_CLIENT_KWARGS)

``moto_server()`` starts ``moto_server`` from the tools virtualenv on a free loopback port, waits until
it answers, yields its endpoint URL and stops it afterwards. ``aws_test_environment(endpoint_url)`` gives
the environment variables that point boto3 (in this process or a child: Airflow, the deploy command) at
it with dummy credentials, so a missing ``endpoint_url`` can never reach real AWS with real credentials.
``reset(endpoint_url)`` empties every service's state between tests sharing one server.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from local_dap.processes import free_loopback_port, stop
from tests.support.paths import TOOLS_BIN

REGION = "us-east-1"
# Dummy credentials: moto accepts anything, and real AWS would refuse these.
AWS_TEST_CLIENT_KWARGS = {
    "region_name": REGION,
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


def aws_test_environment(endpoint_url: str) -> dict[str, str]:
    """Environment variables that send every AWS SDK call to ``endpoint_url`` with dummy credentials."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        # Honoured by botocore >= 1.31 for every service client.
        "AWS_ENDPOINT_URL": endpoint_url,
        # Never read ~/.aws of whoever runs the tests.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        # A developer's HTTP(S)_PROXY must not capture calls to the loopback server.
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(endpoint_url: str) -> bool:
    try:
        with _DIRECT.open(f"{endpoint_url}/moto-api/", timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def moto_server(startup_timeout: float = 30.0) -> Iterator[str]:
    """Run a moto server on a free loopback port; yield its endpoint URL (``http://127.0.0.1:PORT``)."""
    executable = TOOLS_BIN / "moto_server"
    if not executable.exists():
        raise FileNotFoundError(f"{executable} not found: install moto[server] into the tools virtualenv")
    port = free_loopback_port()
    endpoint_url = f"http://127.0.0.1:{port}"
    # The server logs every request: a file, not a pipe nobody reads, which would fill up and block it.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **aws_test_environment(endpoint_url)},
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while not _answers(endpoint_url):
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"moto_server exited: {log.read().decode(errors='replace')[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"moto_server did not answer on {endpoint_url} in {startup_timeout} s")
                time.sleep(0.1)
            yield endpoint_url
        finally:
            stop(process)


def reset(endpoint_url: str) -> None:
    """Forget every resource the server holds (moto's reset API)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    with _DIRECT.open(request, timeout=10):
        pass
