"""Cluster policies. Airflow imports this module from the plugins folder (on its path). The policies are
registered with its policy manager here, not left as module names for Airflow to collect, so they hold
also where another ``airflow_local_settings`` comes first on the path and runs this file (on MWAA its
own ``config/airflow_local_settings.py`` comes first: aws/amazon-mwaa-docker-images#627)."""

from airflow.policies import hookimpl
from airflow.settings import get_policy_plugin_manager

from cd2.instance_names import name_expanded_instance

POLICIES_NAME = "cd2"


class CD2Policies:
    @staticmethod
    @hookimpl
    def task_instance_mutation_hook(task_instance):
        name_expanded_instance(task_instance)


# The plugin loader imports every file in this folder again: register once.
if not get_policy_plugin_manager().has_plugin(POLICIES_NAME):
    get_policy_plugin_manager().register(CD2Policies, name=POLICIES_NAME)
