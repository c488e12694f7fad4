"""Airflow operators of the cd2 package: thin wrappers over :class:`cd2.hooks.dap.DapHook`."""
