"""The demo's stage runner: each stage cached under `cache/<stage>/` and skipped when its `done.json` carries
the fingerprint of its inputs and settings; a stage whose settings changed starts again from an empty
directory. Before a stage that has work to do, its time estimate (`realm.demo.estimates`) is passed on."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realm.atomic import atomic_write_text
from realm.demo.estimates import StageEstimate, estimate, load_average

DONE_NAME = "done.json"
KEY_NAME = "stage_key.json"


@dataclass
class StageReport:
    name: str
    seconds: float
    skipped: bool
    info: dict[str, Any]



def fingerprint(key: Any) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_key(path: Path) -> str:
    """A cheap identity of a local input: resolved path, size and modification time."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class Stages:
    """Runs stages in order, skipping those already done with the same fingerprint; before a stage that
    has work to do, passes its time estimate (`realm.demo.estimates`) to `on_estimate`."""

    def __init__(
        self,
        cache: Path,
        on_stage: Callable[[StageReport], None] | None,
        on_estimate: Callable[[StageEstimate], None] | None = None,
        config: Any = None,
    ) -> None:
        self.cache = cache
        self.on_stage = on_stage
        self.on_estimate, self.config = on_estimate, config
        self.articles = 0  # set once the corpus is read: the estimates scale with it
        self.reports: list[StageReport] = []

    def run(self, name: str, key: dict[str, Any], work: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any], str]:
        directory = self.cache / name
        key_print = fingerprint({"stage": name, **key})
        started = time.perf_counter()
        done = directory / DONE_NAME
        if done.is_file():
            record = json.loads(done.read_text())
            if record.get("fingerprint") == key_print:
                return self._report(name, started, True, record["info"], directory, key_print)
        started_key = directory / KEY_NAME
        if directory.exists() and (not started_key.is_file() or started_key.read_text() != key_print):
            shutil.rmtree(directory)  # other settings: what is there cannot be resumed
        if self.on_estimate is not None and self.config is not None:
            guess = estimate(name, self.config, self.articles, directory.exists(), load_average())
            if guess is not None:
                self.on_estimate(guess)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(started_key, key_print)
        info = work(directory)
        info["seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_text(done, json.dumps({"fingerprint": key_print, "info": info}, indent=2) + "\n")
        return self._report(name, started, False, info, directory, key_print)

    def _report(self, name: str, started: float, skipped: bool, info: dict[str, Any], directory: Path,
                fingerprint: str) -> tuple[Path, dict[str, Any], str]:  # fmt: skip
        report = StageReport(name, time.perf_counter() - started, skipped, info)
        self.reports.append(report)
        if self.on_stage is not None:
            self.on_stage(report)
        return directory, info, fingerprint
