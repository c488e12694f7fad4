"""The Canvas instances one deployment serves, and the names of each one's DAG, connections and Variable.

Instance ``NAME`` is DAG ``cd2_replica_NAME``, connections ``dap_NAME`` and ``cd2_postgres_NAME``, Variable
``cd2_config_NAME``, and writes its own database (``cd2_name`` unless given). Instance ``default`` keeps
the single-instance names: ``cd2_replica``, ``dap_default``, ``cd2_postgres``, ``cd2_config``, database
``cd2`` (the cluster's own, from the stack's static template). The deploy takes the list as
``NAME[=DATABASE],...``; its order is Airflow's ``[cd2] instances`` (the first instance's database also
holds the API budget of all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mwaa_infra.database import IDENTIFIER

DEFAULT = "default"
DEFAULT_DATABASE = "cd2"
NAME = re.compile(r"^[A-Za-z0-9_]{1,63}$")


@dataclass(frozen=True)
class Instance:
    """One Canvas instance: its name and the database its DAG writes."""

    name: str
    database: str

    @property
    def _suffix(self) -> str:
        return "" if self.name == DEFAULT else f"_{self.name}"

    @property
    def dag_id(self) -> str:
        return f"cd2_replica{self._suffix}"

    @property
    def dap_connection(self) -> str:
        return f"dap_{self.name}"

    @property
    def postgres_connection(self) -> str:
        return f"cd2_postgres{self._suffix}"

    @property
    def variable(self) -> str:
        return f"cd2_config{self._suffix}"

    @property
    def logical_id_suffix(self) -> str:
        """What CloudFormation logical IDs of this instance's resources end with (``ce_east``: ``CeEast``)."""
        return "".join(part[:1].upper() + part[1:] for part in self.name.split("_"))


DEFAULT_INSTANCES = (Instance(DEFAULT, DEFAULT_DATABASE),)


def parse_instances(text: str) -> tuple[Instance, ...]:
    """``NAME[=DATABASE],...`` as instances; empty is the default instance alone. ValueError names the fault."""
    instances = []
    for entry in filter(None, (entry.strip() for entry in text.split(","))):
        name, _, database = (part.strip() for part in entry.partition("="))
        check_name(name)
        database = database or (DEFAULT_DATABASE if name == DEFAULT else f"cd2_{name.lower()}")
        if not IDENTIFIER.match(database):
            raise ValueError(
                f"instance {name}: database {database!r} is not a plain lower-case SQL identifier"
            )
        if name == DEFAULT and database != DEFAULT_DATABASE:
            raise ValueError(
                f"instance {DEFAULT} writes database {DEFAULT_DATABASE}; give {database} to another"
            )
        instances.append(Instance(name, database))
    for index, instance in enumerate(instances):
        for earlier in instances[:index]:
            if earlier.name == instance.name:
                raise ValueError(f"instance {instance.name} is listed twice")
            if earlier.database == instance.database:
                raise ValueError(
                    f"instances {earlier.name} and {instance.name} both write database {instance.database}:"
                    " each instance needs its own"
                )
            if earlier.logical_id_suffix == instance.logical_id_suffix:
                raise ValueError(
                    f"instances {earlier.name} and {instance.name} differ only in case or underscores: rename one"
                )
    return tuple(instances) or DEFAULT_INSTANCES


def check_name(name: str) -> None:
    """Refuse (ValueError, naming it) an instance name other than 1 to 63 letters, digits, underscores."""
    if not NAME.match(name):
        raise ValueError(f"instance name {name!r}: only letters, digits and underscore (1 to 63 of them)")


def instances_spec(instances: tuple[Instance, ...]) -> str:
    """The list as ``parse_instances`` reads it, every database spelled out."""
    return ",".join(f"{instance.name}={instance.database}" for instance in instances)
