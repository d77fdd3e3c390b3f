"""Rewrite the golden masters of tests/hil/test_simulate.py after an intended change.

    python tests/hil/regen_golden.py [SCENARIO ...]      (default: every shipped scenario)

Not a test: review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import sys

from test_simulate import GOLDEN, STEPS, run_short, trajectory


def main(names: list[str]) -> None:
    for name in names or sorted(STEPS):
        path = GOLDEN / f"{name}.json"
        path.write_text(json.dumps(trajectory(run_short(name)), indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
