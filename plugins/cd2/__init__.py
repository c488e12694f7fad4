"""Canvas Data 2 replica: Airflow hook and operators, and the child process that runs the DAP client.

Kept free of Airflow imports: the child process (``python -m cd2.dap_child``) runs in the DAP
virtualenv, where Airflow is not installed.
"""
