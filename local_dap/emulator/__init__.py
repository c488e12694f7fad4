"""A local emulator of Instructure's DAP query API that the real ``instructure-dap-client`` replicates from.

Run it with ``python -m local_dap.emulator``; drive it with ``local_dap.control.start_emulator``; compare
a replica with ``local_dap.truth.replica_truth``. Runs on the standard library and aiohttp only.
"""
