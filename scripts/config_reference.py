"""Write docs/configuration.md from the configuration schema (`--check`: fail if stale)."""

from __future__ import annotations

import sys
from pathlib import Path

from agentmark_gw.gateway.config import reference

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

if __name__ == "__main__":
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != reference():
            sys.exit("docs/configuration.md is stale: run python scripts/config_reference.py")
        print("docs/configuration.md matches the configuration schema")
    else:
        TARGET.write_text(reference())
        print(f"wrote {TARGET}")
