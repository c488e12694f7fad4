"""``python -m cd2.dap_child.patches``: how each patch fits the installed client, as JSON (changes nothing).

``moved`` gives the fingerprint found for each name whose code differs from the verified one.
"""

import json

from cd2.dap_child.patches import REGISTRY, installed_version

version = installed_version()
report = [
    {
        "name": patch.name,
        "kind": patch.kind,
        "switch": patch.switch,
        "verified": sorted(patch.verified),
        "misfit": patch.misfit(version),
        "moved": patch.moved(),
    }
    for patch in REGISTRY
]
print(json.dumps({"client": version, "patches": report}, indent=2))
