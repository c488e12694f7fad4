"""The main stack's template for a list of Canvas instances (mwaa_infra.instances).

CloudFormation has no loops, so the resources of every instance but ``default`` are generated here.
cd2.yaml is the single-instance template and is sent as it is when ``default`` is the only instance, so a
single-instance stack never changes. For any other list it is loaded, and:

- each instance but ``default`` gets copies of the default instance's secrets and failed-runs alarm,
  under its own names; its connection names its own database and takes the password of the one
  application role from ``airflow/connections/cd2_postgres`` by dynamic reference;
- the MWAA configuration gains ``cd2.instances``;
- the output ``Instances`` records the list, which a later deploy without ``--instances`` keeps.

The copies live in the main stack rather than in a stack per instance: they share its key, topic and
cluster by Ref, and an update of the one stack adds or removes them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from mwaa_infra.instances import DEFAULT, DEFAULT_INSTANCES, Instance, instances_spec

# The largest template CloudFormation takes inline (TemplateBody), in bytes.
TEMPLATE_BODY_LIMIT = 51_200
INSTANCES_OUTPUT = "Instances"
# The default instance's resources that every other instance gets a copy of.
PER_INSTANCE = ("DapConnectionSecret", "PostgresConnectionSecret", "Cd2ConfigSecret", "FailedRunsAlarm")
# The default instance's names in those resources (and the command that fills its DAP secret).
_DEFAULT_NAMES = re.compile(r"\b(dap_default|cd2_postgres|cd2_config|cd2_replica|set-dap-credentials)\b")
_FUNCTIONS = ("Base64", "Cidr", "Equals", "FindInMap", "GetAZs", "If", "ImportValue", "Join", "Not", "And")
_FUNCTIONS += ("Or", "Select", "Split", "Sub", "GetAtt")


class _Loader(yaml.SafeLoader):
    pass


def _construct(tag: str):
    def construct(loader: yaml.Loader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if tag == "Ref":
            return {"Ref": value}
        if tag == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        if tag == "Condition":
            return {"Condition": value}
        return {f"Fn::{tag}": value}

    return construct


for _tag in (*_FUNCTIONS, "Ref", "Condition"):
    _Loader.add_constructor(f"!{_tag}", _construct(_tag))


def load_template(text: str) -> dict[str, Any]:
    """A YAML template as a dict, short-form intrinsic functions (``!Ref X``) in long form."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def main_template_body(text: str, instances: tuple[Instance, ...]) -> str:
    """cd2.yaml's ``text`` unchanged for the default instance alone, else with every instance's resources."""
    if instances == DEFAULT_INSTANCES:
        return text
    template = load_template(text)
    resources = template["Resources"]
    for instance in instances:
        if instance.name != DEFAULT:
            for logical_id in PER_INSTANCE:
                resources[logical_id + instance.logical_id_suffix] = _copy_for(
                    instance, resources[logical_id]
                )
    for options in _configuration_options(resources["Environment"]):
        options["cd2.instances"] = ",".join(instance.name for instance in instances)
    template["Outputs"][INSTANCES_OUTPUT] = {
        "Description": "The Canvas instances (NAME=DATABASE) deployed; a deploy without --instances keeps them.",
        "Value": instances_spec(instances),
    }
    body = yaml.safe_dump(template, sort_keys=False)
    if len(body.encode()) > TEMPLATE_BODY_LIMIT:
        raise ValueError(
            f"the main template for {len(instances)} instances is {len(body.encode())} bytes, over the "
            f"{TEMPLATE_BODY_LIMIT} CloudFormation takes inline: deploy fewer instances per environment"
        )
    return body


def _copy_for(instance: Instance, resource: dict[str, Any]) -> dict[str, Any]:
    """A default instance's resource with ``instance``'s names (a connection: its database, no new password)."""
    names = {
        "dap_default": instance.dap_connection,
        "cd2_postgres": instance.postgres_connection,
        "cd2_config": instance.variable,
        "cd2_replica": instance.dag_id,
        "set-dap-credentials": f"set-dap-credentials --instance {instance.name}",
    }
    copy = json.loads(_DEFAULT_NAMES.sub(lambda match: names[match.group()], json.dumps(resource)))
    generate = copy["Properties"].pop("GenerateSecretString", None)
    if generate is not None:
        text, variables = generate["SecretStringTemplate"]["Fn::Sub"]
        key = generate["GenerateStringKey"]
        connection = json.loads(text) | {"schema": instance.database}
        connection[key] = "{{resolve:secretsmanager:${PostgresConnectionSecret}:SecretString:" + key + "}}"
        copy["Properties"]["SecretString"] = {"Fn::Sub": [json.dumps(connection), variables]}
    return copy


def _configuration_options(environment: dict[str, Any]) -> list[dict[str, Any]]:
    """The MWAA environment's option mappings: both branches of an Fn::If, or the one mapping."""
    options = environment["Properties"]["AirflowConfigurationOptions"]
    return options["Fn::If"][1:] if "Fn::If" in options else [options]
