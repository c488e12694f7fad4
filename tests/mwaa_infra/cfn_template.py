"""Read this project's CloudFormation YAML templates in tests, short-form tags included.

``load_template`` turns ``!Ref X`` into ``{"Ref": "X"}`` and ``!Sub``/``!GetAtt``/... into their
``{"Fn::...": ...}`` long forms. ``resolve`` evaluates the few intrinsic functions the secrets use, with
the values a test gives for parameters and resource attributes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO_ROOT

TEMPLATES_DIR = REPO_ROOT / "mwaa_infra" / "templates"
TEMPLATE_PATHS = sorted(TEMPLATES_DIR.glob("*.yaml"))

_FUNCTIONS = ("Base64", "Cidr", "Equals", "FindInMap", "GetAZs", "If", "ImportValue", "Join", "Not", "And")
_FUNCTIONS += ("Or", "Select", "Split", "Sub", "GetAtt")


class _CfnLoader(yaml.SafeLoader):
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
    _CfnLoader.add_constructor(f"!{_tag}", _construct(_tag))


def load_template(path: Path) -> dict[str, Any]:
    """The template as a dict, intrinsic functions in long form."""
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass


def resolve(node: Any, values: dict[str, Any]) -> Any:
    """Evaluate Ref, GetAtt, Sub and Join with ``values`` (keys: parameter names, "Resource.Attribute")."""
    if isinstance(node, dict) and len(node) == 1:
        ((function, argument),) = node.items()
        if function == "Ref":
            return values[argument]
        if function == "Fn::GetAtt":
            return values[".".join(argument)]
        if function == "Fn::Join":
            separator, items = argument
            return separator.join(resolve(items, values))
        if function == "Fn::Sub":
            text, local = (argument, {}) if isinstance(argument, str) else argument
            scope = {**values, **{name: resolve(value, values) for name, value in local.items()}}
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(scope[m.group(1)]), text)
    if isinstance(node, dict):
        return {key: resolve(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, values) for item in node]
    return node


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """``{logical id: resource}`` of one type."""
    return {name: r for name, r in template["Resources"].items() if r["Type"] == resource_type}
