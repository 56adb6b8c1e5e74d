"""Regenerate the checked-in Python stubs from protos/.

Usage: python scripts/generate_protos.py [--check]

The stubs live in python/agentmark_gw/protocol/ and are never edited by hand.
`--check` regenerates into a temporary folder and exits non-zero when the
checked-in files differ, so a .proto change without regenerated stubs fails
the test suite (tests/test_protocol_stubs.py runs it).

grpcio-tools writes absolute imports (`from agentmark.runner.v1 import ...`);
the top-level name `agentmark` belongs to AgentMark's own Python packages, so
the import is rewritten to a relative one. The descriptor keeps its full proto
path, which keeps it unique in protobuf's global descriptor pool.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_FILE = "agentmark/runner/v1/runner.proto"
OUT_DIR = ROOT / "python" / "agentmark_gw" / "protocol"
GENERATED = ("runner_pb2.py", "runner_pb2.pyi", "runner_pb2_grpc.py")


def generate(into: Path) -> None:
    """Write the stubs, flattened and with relative imports, into `into`."""
    from grpc_tools import protoc  # imported late: only this script needs it

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_ROOT / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = Path(tmp) / Path(PROTO_FILE).parent
        for name in GENERATED:
            text = (produced / name).read_text()
            text = text.replace("from agentmark.runner.v1 import runner_pb2", "from . import runner_pb2")
            (into / name).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if stubs are stale")
    options = parser.parse_args()
    if not options.check:
        generate(OUT_DIR)
        print(f"wrote {', '.join(GENERATED)} to {OUT_DIR.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = [n for n in GENERATED if (fresh / n).read_text() != _read(OUT_DIR / n)]
    if stale:
        print(f"stale generated stubs: {', '.join(stale)}; run scripts/generate_protos.py")
        return 1
    print("generated stubs match protos/")
    return 0


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


if __name__ == "__main__":
    sys.exit(main())
