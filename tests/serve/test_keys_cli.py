"""`transferlab keys create|list|revoke` on the store."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from transferlab.serve.store import Store


def test_keys_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from transferlab.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["keys", "create", "bot", "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    raw = r.output.strip().splitlines()[-1]
    assert raw.startswith("tl_")
    r = runner.invoke(app, ["keys", "list", "--data-dir", str(tmp_path), "--json"])
    assert r.exit_code == 0 and '"bot"' in r.output and raw not in r.output
    assert runner.invoke(app, ["keys", "revoke", "1", "--data-dir", str(tmp_path)]).exit_code == 0
    assert Store(tmp_path).authenticate(raw) is None
    assert runner.invoke(app, ["keys", "revoke", "7", "--data-dir", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["serve", "--help"]).exit_code == 0
