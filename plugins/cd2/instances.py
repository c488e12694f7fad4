"""The Canvas instances a deployment replicates, from the ``[cd2] instances`` configuration option.

An instance ``NAME`` is the DAG ``cd2_replica_NAME`` with the connections ``dap_NAME`` and
``cd2_postgres_NAME``, the Variable ``cd2_config_NAME``, the asset alias ``cd2_replica_NAME_tables`` and
its own ``[cd2_NAME]`` options over ``[cd2]``'s. The instance ``default`` (and an empty list) keeps the
single-instance names: ``cd2_replica``, ``dap_default``, ``cd2_postgres``, ``cd2_config``, ``[cd2]``.

Read from configuration only (no database or secrets call), so the DAG file, the cluster policy, the
status page and the local harness all build the same descriptions at parse time. Each instance writes
its own database (:func:`shared_databases` finds two that do not); the API budget of every instance is
kept in the first instance's database, keyed by client id, so instances that share a client id share
its budget whatever databases they write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from airflow.configuration import conf

from cd2 import dag_names
from cd2.hooks.dap import DapHook
from cd2.settings import SECTION, DagSettings, SettingsError, read_settings

DEFAULT_INSTANCE = "default"
INSTANCES_OPTION = "instances"
_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Instance:
    """One Canvas instance: the names of its DAG, connections, Variable, options and assets.

    ``budget_conn_id`` is the connection whose database keeps the API budget (the first instance's).
    """

    name: str
    budget_conn_id: str

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_INSTANCE

    def _named(self, base: str) -> str:
        return base if self.is_default else f"{base}_{self.name}"

    @property
    def dag_id(self) -> str:
        return self._named(dag_names.DAG_ID)

    @property
    def config_variable(self) -> str:
        return self._named(dag_names.CONFIG_VARIABLE)

    @property
    def dap_conn_id(self) -> str:
        return DapHook.default_conn_name if self.is_default else f"dap_{self.name}"

    @property
    def postgres_conn_id(self) -> str:
        return postgres_conn_id(self.name)

    @property
    def section(self) -> str:
        return self._named(SECTION)

    @property
    def tables_alias(self) -> str:
        """The asset alias the instance's table tasks attach their events to."""
        return f"{self.dag_id}_tables"

    @cached_property
    def settings(self) -> DagSettings:
        """``[cd2]``'s options, overridden by this instance's section; each validated."""
        return read_settings() if self.is_default else read_settings(self.section, fallback=SECTION)


def postgres_conn_id(name: str) -> str:
    """The target database connection of instance ``name``."""
    base = DapHook.default_postgres_conn_name
    return base if name == DEFAULT_INSTANCE else f"{base}_{name}"


def instance_names(text: str) -> list[str]:
    """The names in an ``[cd2] instances`` value, checked; ``["default"]`` when it names none."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    seen: dict[str, str] = {}
    for name in names:
        if not _NAME.fullmatch(name):
            raise SettingsError(
                f"[{SECTION}] {INSTANCES_OPTION} = {text!r}: instance name {name!r} may hold only letters, "
                "digits and underscores"
            )
        if name.lower() in seen:
            raise SettingsError(
                f"[{SECTION}] {INSTANCES_OPTION} = {text!r} names instance {name!r} twice "
                f"(as {seen[name.lower()]!r}; names differing only in case share one options section)"
            )
        seen[name.lower()] = name
    return names or [DEFAULT_INSTANCE]


def instances_from(text: str) -> list[Instance]:
    """The instances an ``[cd2] instances`` value names, in its order (the first keeps the API budget)."""
    names = instance_names(text)
    return [Instance(name, postgres_conn_id(names[0])) for name in names]


def configured_instances() -> list[Instance]:
    """Every instance this deployment's ``[cd2] instances`` option names."""
    return instances_from(conf.get(SECTION, INSTANCES_OPTION, fallback=""))


def instance_of_dag(dag_id: str) -> Instance | None:
    """The configured instance whose DAG is ``dag_id``, if any."""
    return next((i for i in configured_instances() if i.dag_id == dag_id), None)


def shared_databases(targets: dict[str, tuple[str, int, str]], instance: str | None = None) -> list[str]:
    """Each pair of instances (with ``instance``, if given) whose targets (``{name: (host, port,
    database)}``) are one database, in a sentence naming both instances and the database."""
    problems = []
    writers: dict[tuple[str, int, str], list[str]] = {}
    for name, (host, port, database) in targets.items():
        key = (host.lower(), port, database)
        for other in writers.get(key, []):
            if instance in (None, name, other):
                problems.append(
                    f"instances {other!r} and {name!r} both write database {database!r} on {host}:{port}: "
                    "each instance needs its own database (one server can hold several)"
                )
        writers.setdefault(key, []).append(name)
    return problems
