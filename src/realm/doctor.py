"""`realm doctor`: the environment report a bug report needs (versions, CPU, optional extras, browser, cache).

from realm.doctor import environment_report
print(environment_report().summary())
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from realm.modeling.inference import CPU_FLAGS, cpu_flags  # noqa: F401  (re-exported: realm doctor lists them)

# Debian's paths; the browser test (tests/test_web.py) drives exactly these.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_INSTALL = "apt-get install chromium chromium-driver"

# Optional packages: (shown name, import name, distribution names to read the version from, what uses it).
OPTIONAL = (
    ("faiss", "faiss", ("faiss-cpu", "faiss-gpu", "faiss"), "faiss extra: FAISS indexes"),
    ("fastapi", "fastapi", ("fastapi",), "serve extra: realm serve"),
    ("uvicorn", "uvicorn", ("uvicorn",), "serve extra: realm serve"),
    (
        "fastapi-offline",
        "fastapi_offline",
        ("fastapi-offline", "fastapi_offline"),
        "serve extra: /docs offline",
    ),
    ("huggingface_hub", "huggingface_hub", ("huggingface_hub", "huggingface-hub"), "hub extra: hub ids"),
    ("spacy", "spacy", ("spacy",), "spacy extra: salient spans"),
    ("bm25s", "bm25s", ("bm25s",), "BM25 baseline"),
    ("matplotlib", "matplotlib", ("matplotlib",), "plots"),
    ("onnxruntime", "onnxruntime", ("onnxruntime",), "onnx extra: realm export onnx"),
    ("onnxscript", "onnxscript", ("onnxscript",), "onnx extra: realm export onnx"),
    ("selenium", "selenium", ("selenium",), "test extra: browser test"),
)


@dataclass(frozen=True)
class EnvironmentReport:
    """What `environment_report()` found.

    Attributes:
        realm_version, realm_path: the imported package's version and where it was imported from.
        python, platform: interpreter version and OS.
        torch_version, torch_threads, torch_cpu_capability: torch's build, intra-op threads, and the
            vector instruction set its CPU kernels chose (e.g. "AVX512").
        cpu_count: logical CPUs.
        cpu_flags: each of `CPU_FLAGS` -> present; None when /proc/cpuinfo is not readable ("unknown").
        extras: each optional package -> its version, or None when it is not installed.
        chromium, chromedriver: the browser test's binaries: their `--version` line, or None when absent.
        cache_dir: the demo cache (`$REALM_CACHE/demo` or `~/.cache/realm/demo`).
        cache_bytes, cache_files: its size and file count (0 when it does not exist).
    """

    realm_version: str
    realm_path: str
    python: str
    platform: str
    torch_version: str
    torch_threads: int
    torch_cpu_capability: str
    cpu_count: int | None
    cpu_flags: dict[str, bool] | None
    extras: dict[str, str | None]
    chromium: str | None
    chromedriver: str | None
    cache_dir: str
    cache_bytes: int
    cache_files: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A short plain-text report, one fact per line, to paste into a bug report."""
        if self.cpu_flags is None:
            flags = "unknown (no /proc/cpuinfo)"
        else:
            flags = " ".join(
                f"{name}:{'yes' if present else 'no'}" for name, present in self.cpu_flags.items()
            )
        cache = (f"{self.cache_dir} ({_size(self.cache_bytes)} in {self.cache_files:,} files)"
                 if self.cache_files else f"{self.cache_dir} (empty or not created yet)")  # fmt: skip
        installed = [f"{name} {version}" for name, version in self.extras.items() if version]
        missing = [name for name, version in self.extras.items() if not version]
        rows = [
            ("realm-lm", f"{self.realm_version} ({self.realm_path})"),
            ("python", f"{self.python} on {self.platform}"),
            (
                "torch",
                f"{self.torch_version}, {self.torch_threads} threads, CPU kernels {self.torch_cpu_capability}",
            ),
            ("cpu", f"{self.cpu_count} logical CPUs; {flags}"),
            ("extras", ", ".join(installed) + (f"; not installed: {', '.join(missing)}" if missing else "")),
            ("chromium", self.chromium or f"{CHROMIUM} not found"),
            ("chromedriver", self.chromedriver or f"{CHROMEDRIVER} not found"),
        ]
        if not (self.chromium and self.chromedriver):
            rows.append(("", f"(the browser test skips; enable it with: {BROWSER_INSTALL})"))
        rows.append(("demo cache", cache))
        lines = [f"{label:<12} {value}" for label, value in rows]
        return "\n".join(lines)


def environment_report() -> EnvironmentReport:
    """Collect the report. Reads files and package metadata only; imports torch but no optional package."""
    import torch

    import realm
    from realm.demo import default_cache_dir

    cache = default_cache_dir()
    cache_bytes, cache_files = directory_size(cache)
    return EnvironmentReport(
        realm_version=realm.__version__,
        realm_path=str(Path(realm.__file__).resolve().parent),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        platform=platform.platform(),
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        torch_cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
        cpu_count=os.cpu_count(),
        cpu_flags=cpu_flags(),
        extras={name: package_version(module, dists) for name, module, dists, _ in OPTIONAL},
        chromium=_binary_version(CHROMIUM),
        chromedriver=_binary_version(CHROMEDRIVER),
        cache_dir=str(cache),
        cache_bytes=cache_bytes,
        cache_files=cache_files,
    )


def package_version(module: str, dists: tuple[str, ...]) -> str | None:
    """The installed version of an importable module (None: not importable), without importing it."""
    if importlib.util.find_spec(module) is None:
        return None
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "installed (version unknown)"


def directory_size(root: Path) -> tuple[int, int]:
    """(bytes, files) under `root`, symbolic links not followed; (0, 0) when it does not exist."""
    total = count = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:  # removed while we walk
                continue
            count += 1
    return total, count


def _binary_version(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{path} (does not run: {err})"
    first = (out.stdout or out.stderr).strip().splitlines()
    return f"{path}: {first[0]}" if first else str(path)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def version_line() -> str:
    """`realm --version`: realm-lm's version with Python's and torch's (torch read from metadata)."""
    import realm

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"realm-lm {realm.__version__} (Python {platform.python_version()}, torch {torch_version}; {sys.executable})"
