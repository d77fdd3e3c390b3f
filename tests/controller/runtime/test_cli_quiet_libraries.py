"""``pharmatwin`` commands other than ``run`` keep the libraries' warnings off the terminal."""

from __future__ import annotations

from pathlib import Path


def test_tags_read_prints_no_library_warnings(tmp_path: Path) -> None:
    # asyncua's "close_secure_channel was called but connection is closed" (a WARNING) went to
    # the terminal on a failed `tags read`: only the libraries' ERRORs may show, as on run.
    # In a process of its own: pytest's log capture hides what Python prints without it.
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    site = root / "configs" / "sites" / "cstr-opcua.yaml"
    code = "import sys; from controller.runtime.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "PHARMATWIN_OPCUA_PASSWORD"}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run(
        [sys.executable, "-c", code, "tags", "read", str(site)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "no password was given" in done.stdout, done
    assert "close_secure_channel" not in done.stderr and done.stderr.strip() == "", done.stderr
