"""A local emulator of Instructure's DAP query API that the real ``instructure-dap-client`` replicates from.

Run it with ``python -m tests.dap_emulator``; drive it from tests with ``fixture.start_emulator``; compare
a replica with ``truth.replica_truth``. Runs on the standard library and aiohttp only.
"""
