"""The DAP API on this machine, and what runs the product around it without AWS.

* :mod:`local_dap.emulator`: a local server speaking Instructure's DAP query API closely enough for the
  unmodified ``instructure-dap-client`` (``python -m local_dap.emulator``; standard library + aiohttp).
* :mod:`local_dap.control`: start an emulator in a subprocess and drive its admin API.
* :mod:`local_dap.truth`: row count and checksum of a table, for the emulator and for a replica.
* :mod:`local_dap.postgres`: a throwaway PostgreSQL server.
* :mod:`local_dap.airflow_home`: a throwaway Airflow home that runs ``airflow dags test``.

``make run``, the benchmarks, the tests and a school's own CI import it; nothing here is deployed.
"""
