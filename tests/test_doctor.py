"""`realm doctor` and `realm --version`: the report against what this interpreter and the files say."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path

import pytest
import torch

import realm
from realm.cli import main
from realm.doctor import CHROMEDRIVER, CHROMIUM, CPU_FLAGS, cpu_flags, environment_report, package_version


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REALM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_report_names_this_interpreter(cache_root: Path) -> None:
    report = environment_report()
    assert report.realm_version == realm.__version__
    assert Path(report.realm_path) == Path(realm.__file__).resolve().parent
    assert report.python.endswith(platform.python_version())
    assert report.torch_version == torch.__version__
    assert report.torch_threads == torch.get_num_threads()
    assert report.torch_cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert report.cpu_count == os.cpu_count()
    import fastapi

    assert report.extras["fastapi"] == fastapi.__version__  # the test extra installs it
    assert (report.chromium is None) == (not CHROMIUM.exists())
    assert (report.chromedriver is None) == (not CHROMEDRIVER.exists())
    if report.chromium:
        assert "Chromium" in report.chromium
    text = report.summary()
    assert torch.__version__ in text and f"{report.torch_threads} threads" in text


def test_cache_size_is_the_files_under_realm_cache(cache_root: Path, tmp_path: Path) -> None:
    empty = environment_report()
    assert Path(empty.cache_dir) == cache_root / "demo"
    assert (empty.cache_bytes, empty.cache_files) == (0, 0) and "not created yet" in empty.summary()

    sizes = {"wheels/a.whl": 1000, "index/index/chunk_00000.npy": 4096, "done.json": 17, "index/b/c/d.bin": 0}
    for name, size in sizes.items():
        path = cache_root / "demo" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"y" * 100_000)
    (cache_root / "demo" / "linked").symlink_to(outside, target_is_directory=True)  # not followed
    (cache_root / "other").mkdir()
    (cache_root / "other" / "not-demo.bin").write_bytes(b"z" * 50)  # outside the demo cache

    report = environment_report()
    assert report.cache_bytes == sum(sizes.values()) == 5113
    assert report.cache_files == len(sizes)
    assert f"{report.cache_dir} (5.0 KiB in 4 files)" in report.summary()


def test_cpu_flags_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n"
    )
    flags = cpu_flags(info)
    assert flags == {f: f in {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"} for f in CPU_FLAGS}
    assert cpu_flags(tmp_path / "absent") is None
    info.write_text("processor\t: 0\n")  # no flags line
    assert cpu_flags(info) is None
    if Path("/proc/cpuinfo").is_file() and "flags" in Path("/proc/cpuinfo").read_text():
        real = cpu_flags()
        assert real is not None and set(real) == set(CPU_FLAGS)


def test_package_version_without_importing() -> None:
    assert package_version("torch", ("torch",)) == importlib.metadata.version("torch")
    assert package_version("realm_no_such_module", ("realm-no-such-dist",)) is None
    assert package_version("json", ("no-such-dist",)) == "installed (version unknown)"


def test_cli_doctor_and_version(cache_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torch        {torch.__version__}" in out and str(cache_root / "demo") in out
    assert main(["doctor", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["torch_version"] == torch.__version__ and record["cache_dir"] == str(cache_root / "demo")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(
        f"realm-lm {realm.__version__} (Python {platform.python_version()}"
    )
