"""Print the SHA-256 of what the lock is resolved from.

The inputs are the dependency tables of ``pyproject.toml`` (runtime, extras, build system) and
``requirements-build.in``. ``scripts/upgrade-deps`` writes this hash into the lock's header;
``scripts/bootstrap`` refuses a lock whose recorded hash differs, so a dependency added to
``pyproject.toml`` without re-locking fails loudly instead of installing something unlocked.
Standard library only: it runs before the virtual environment exists.
"""

import hashlib
import json
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
with open(root / "pyproject.toml", "rb") as fh:
    pyproject = tomllib.load(fh)
inputs = {
    "requires-python": pyproject["project"].get("requires-python"),
    "dependencies": pyproject["project"].get("dependencies", []),
    "optional-dependencies": pyproject["project"].get("optional-dependencies", {}),
    "build-system": pyproject.get("build-system", {}).get("requires", []),
    "build.in": [
        line.strip()
        for line in (root / "requirements-build.in").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ],
}
sys.stdout.write(hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest() + "\n")
