"""A connector loads only its transport: the signing stack and aiohttp stay out (issue 18)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One module per transport, or one package (connectors/sftp/, ...): each loads on its own.
CONNECTORS = sorted(
    f"connectors.{path.stem}"
    for path in (ROOT / "connectors").iterdir()
    if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
)
HEAVY = ("pyhanko", "aiohttp")


@pytest.mark.parametrize("module", ["connectors", *CONNECTORS])
def test_importing_a_connector_does_not_load_signing_or_aiohttp(module: str) -> None:
    # A fresh interpreter: this test process has long since imported everything.
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
