"""The README's commands and the `realm` entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from realm.cli import main
from realm.demo import TOY_CORPUS, run_tiny_demo

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks[:2] for line in block.strip().splitlines()]


def test_ci_runs_the_readme_test_command() -> None:
    main_job, test_command = readme_commands()
    assert "realm demo" in main_job and "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_demo_runs_end_to_end_with_evidence() -> None:
    result = run_tiny_demo("who was a pioneer of computer science ?")
    assert len(result.evidence) == 3
    assert all(ev.text == TOY_CORPUS[ev.block_id] for ev in result.evidence)
    assert len({ev.block_id for ev in result.evidence}) == 3
    assert result.answer and all(word in " ".join(TOY_CORPUS) for word in result.answer.split())
    probs = [ev.retrieval_probability for ev in result.evidence]
    assert all(0 < p < 1 for p in probs) and sum(probs) <= 1 + 1e-6
    assert probs == sorted(probs, reverse=True)  # best block first


def test_console_script_prints_answer_and_evidence() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "realm.cli", "demo", "--question", "what is the capital of france ?"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "question: what is the capital of france ?" in out
    assert re.search(r"answer:\s+'.+'", out)
    assert len(re.findall(r"^\s+\d\. block \d", out, flags=re.M)) == 3


def test_cli_rejects_unknown_commands(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(["nope"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
