"""Read this project's CloudFormation YAML templates in tests, short-form tags included.

``load_template`` turns ``!Ref X`` into ``{"Ref": "X"}`` and ``!Sub``/``!GetAtt``/... into their
``{"Fn::...": ...}`` long forms, with the loader the deploy uses (mwaa_infra.template). ``resolve``
evaluates the few intrinsic functions the secrets use, with the values a test gives for parameters and
resource attributes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mwaa_infra import template
from tests.support.paths import REPO_ROOT

TEMPLATES_DIR = REPO_ROOT / "mwaa_infra" / "templates"
TEMPLATE_PATHS = sorted(TEMPLATES_DIR.glob("*.yaml"))


def load_template(path: Path) -> dict[str, Any]:
    """The template as a dict, intrinsic functions in long form."""
    return template.load_template(path.read_text())


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
