"""The DAP child process: runs one action of the DAP client for one table, in the DAP virtualenv.

Imports nothing from Airflow. Started as ``python -m cd2.dap_child <action> ...`` by
:class:`cd2.hooks.dap.DapHook`.
"""
