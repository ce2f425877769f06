"""The README's commands and the `realm` entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks[:2] for line in block.strip().splitlines()]


def test_ci_runs_the_readme_test_command() -> None:
    main_job, test_command = readme_commands()
    assert "realm demo" in main_job and "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    # CI makes the browser tests mandatory (they skip without Chromium elsewhere).
    assert "export REALM_REQUIRE_BROWSER=1" in ci[: ci.index(test_command)]


def test_cli_rejects_unknown_commands(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(["nope"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
