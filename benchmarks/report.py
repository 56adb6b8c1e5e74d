"""Turn a pytest-benchmark JSON file into the ratio table of benchmarks/README.md.

    .venv/bin/python -m pytest benchmarks/test_core_micro.py --benchmark-only --benchmark-json=/tmp/micro.json
    .venv/bin/python benchmarks/report.py /tmp/micro.json

Medians, because these machines are noisy; ratios are each implementation's
median over the Rust median, measured in the same run.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["extra_info"]["impl"]] = bench["stats"]["median"]
    machine = data["machine_info"]
    print(f"{data['datetime'][:10]}, {machine.get('cpu', {}).get('brand_raw', machine['processor'])}, "
          f"Python {machine['python_version']}\n")
    print("| benchmark | rust | python twin | ratio | other route | ratio |")
    print("|---|---:|---:|---:|---|---:|")
    for group, medians in groups.items():
        rust = medians["rust"]
        twin = medians.get("python-twin")
        others = [(k, v) for k, v in medians.items() if k not in ("rust", "python-twin")]
        row = [group, _time(rust), _time(twin) if twin else "", f"{twin / rust:.1f}×" if twin else ""]
        if others:
            name, value = others[0]
            row += [f"{name} {_time(value)}", f"{value / rust:.1f}×"]
        else:
            row += ["", ""]
        print("| " + " | ".join(row) + " |")


def _time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} µs"


if __name__ == "__main__":
    main(sys.argv[1])
