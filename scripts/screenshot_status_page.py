"""Screenshot the status page (plugins/cd2/status_page/) inside the Airflow UI: docs/status-page.png.

Starts the real-scheduler deployment (local_dap.deployment) against a throwaway PostgreSQL and the DAP
emulator, runs the DAG twice (every table, then one after the emulator's clock moved), signs in and
takes the picture with headless Chromium. Chromium cannot type into the login form, so a one-shot local
server hands it the UI's ``_token`` cookie (cookies are per host, not per port) and redirects it to the
page; the token never reaches argv or the picture.

The emulator's data is dated 2026-01-01, so under the default 12 h bound every table is stale; two tables
get a wider bound here to show both kinds of row. Run it with the Airflow environment's interpreter::

    .venv/airflow-3.3.1/bin/python scripts/screenshot_status_page.py [--out docs/status-page.png] [--bare]
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import subprocess
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local_dap.airflow_home import dap_connection, postgres_connection  # noqa: E402
from local_dap.control import start_emulator  # noqa: E402
from local_dap.deployment import TOKEN_COOKIE, Deployment  # noqa: E402
from local_dap.paths import REPO_ROOT  # noqa: E402
from local_dap.postgres import temporary_server  # noqa: E402
from local_dap.processes import free_loopback_port  # noqa: E402

TABLES = ["canvas.accounts", "canvas.courses", "canvas.enrollments", "canvas.users", "catalog.products"]
WIDE_BOUND = {"canvas.users": 10_000, "canvas.accounts": 10_000}  # hours: more than the data's age
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "Chromium is needed: on Debian/Ubuntu `sudo apt-get install -y chromium`, or put it on PATH."


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def cookie_handoff(token: str, target: str) -> tuple[http.server.HTTPServer, str]:
    """A local server whose every answer sets the ``_token`` cookie and redirects to ``target``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Set-Cookie", f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax")
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    port = free_loopback_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}/"


def screenshot(chromium: str, url: str, out: Path, *, width: int, height: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        f"--window-size={width},{height}", "--virtual-time-budget=20000", f"--screenshot={out}", url,
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "status-page.png")
    parser.add_argument("--bare", action="store_true", help="the page alone, not inside the Airflow UI")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=620)
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    with ExitStack() as stack:
        server = stack.enter_context(temporary_server())
        emulator = stack.enter_context(start_emulator(rows=40))
        target = server.create_database("cd2_status_screenshot")
        connections = {
            "dap_default": dap_connection(emulator),
            "cd2_postgres": postgres_connection(target),
            "aws_default": {"conn_type": "aws"},
        }
        config = {"namespaces": ["canvas", "catalog"], "include": TABLES, "freshness_hours": WIDE_BOUND}
        print("Starting the deployment (api-server, scheduler, dag-processor) ...", flush=True)
        airflow = stack.enter_context(Deployment.start(server, connections=connections, config=config))
        airflow.unpause()
        for conf in ({}, {"tables": ["canvas.users"]}):
            run_id = airflow.trigger(conf=conf)
            print(f"Run {run_id}: {airflow.wait_for_run(run_id, timeout=900)}", flush=True)
            emulator.advance(changes=15)
        page = "cd2-status/" if args.bare else "plugin/cd2-status"
        handoff, url = cookie_handoff(airflow.token(), f"{airflow.api_url}/{page}")
        stack.callback(handoff.shutdown)
        screenshot(chromium, url, args.out, width=args.width, height=args.height)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
