"""An anchor file that holds bytes but no complete anchor line is named for what it holds
(its size, no complete line), not called empty, and the incomplete-line warning is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.runtime.audit import AuditTrail
from controller.runtime.audit_chain import AuditMismatch
from controller.runtime.audit_keys import KEY_ENV
from controller.runtime.audit_verify import verify_file


@pytest.mark.parametrize("content", [b"just some text, no nl", b"\xff\xfe\x00bad\xc3\x28"])
def test_an_anchor_file_without_a_complete_line_is_not_called_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    db = tmp_path / "audit.db"
    trail = AuditTrail(db, anchor_key=None)
    trail.record("config.load", "site", reason="test")
    trail.close()
    anchor = tmp_path / "given.anchor"
    anchor.write_bytes(content)
    with pytest.raises(AuditMismatch) as info:
        verify_file(db, anchor_file=anchor)
    text = str(info.value)
    assert "is empty" not in text, text
    assert f"holds {len(content)} bytes but no complete anchor line" in text, text
    assert "is incomplete" in text, text
