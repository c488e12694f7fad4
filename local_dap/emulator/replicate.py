"""Run the real ``SQLReplicator`` on one table, in its own process (the library keeps per-process state).

    DAP_API_URL=... DAP_CLIENT_ID=... DAP_CLIENT_SECRET=... DAP_CONNECTION_STRING=postgresql://... \\
        python -m local_dap.emulator.replicate init|sync|drop NAMESPACE TABLE

Prints one JSON line: ``{"ok": true}`` or ``{"ok": false, "error_type": ..., "message": ...}`` (exit 1).
Credentials and the connection string come from the environment, never argv.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from dap.api import DAPClient
from dap.integration.database import DatabaseConnection
from dap.replicator.sql import SQLDrop, SQLReplicator


async def replicate(action: str, namespace: str, table: str) -> None:
    connection = DatabaseConnection(os.environ["DAP_CONNECTION_STRING"])
    if action == "drop":
        await SQLDrop(connection).drop(namespace, table)
        return
    async with DAPClient(tracking=False) as session:
        replicator = SQLReplicator(session, connection)
        await replicator.version_upgrade()
        if action == "init":
            await replicator.initialize(namespace, table)
        else:
            await replicator.synchronize(namespace, table)


def main() -> int:
    action, namespace, table = sys.argv[1:4]
    try:
        asyncio.run(replicate(action, namespace, table))
    except BaseException as error:  # report whatever the library raised, by type
        leaf = error
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        print(json.dumps({"ok": False, "error_type": type(leaf).__name__, "message": str(leaf)[:2000]}))
        return 1
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
