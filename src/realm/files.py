"""Finding a model's files: in a local directory, or on the Hugging Face hub when given a hub id.

The one resolver of the package: checkpoints, configs, tokenizers and block records all go through
`resolve_file`. The hub client is an optional dependency, imported only when a hub id is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_INSTALL_HINT = "pip install 'realm-lm[hub]'"
# What the hub client raises for a file the repository does not have (the name changed across versions).
_MISSING_ENTRY_ERRORS = {"EntryNotFoundError", "RemoteEntryNotFoundError"}


def resolve_file(
    name_or_path: str | os.PathLike[str],
    filename: str,
    *,
    optional: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path | None:
    """Find `filename` inside a local directory, or download it from the hub when `name_or_path` is a hub id.

    Args:
        name_or_path: a local directory, or a hub repository id such as "google/realm-orqa-nq-openqa".
        filename: the file inside it.
        optional: return None instead of raising when the file does not exist.
        revision, cache_dir, token: passed to the hub client (ignored for a local directory).
    Raises:
        FileNotFoundError: the file (or the directory) does not exist, or the hub client is not installed.
        NotADirectoryError: `name_or_path` is a file.
    """
    directory = Path(name_or_path)
    if directory.is_dir():
        path = directory / filename
        if path.is_file():
            return path
        if optional:
            return None
        raise FileNotFoundError(f"{path} does not exist")
    if directory.exists():
        raise NotADirectoryError(f"{directory} is a file; pass the directory that holds {filename}")
    if not looks_like_hub_id(str(name_or_path)):
        raise FileNotFoundError(f"{directory} does not exist")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FileNotFoundError(
            f"{name_or_path} is not a local directory; to download it from the Hugging Face hub, "
            f"install the hub extra: {HUB_INSTALL_HINT}"
        ) from None
    try:
        downloaded = hf_hub_download(
            repo_id=str(name_or_path), filename=filename, revision=revision, cache_dir=cache_dir, token=token
        )
    except Exception as err:  # the hub client raises many types; all mean "not available"
        if optional and type(err).__name__ in _MISSING_ENTRY_ERRORS:
            return None
        raise FileNotFoundError(f"could not get {filename} from {name_or_path}: {err}") from err
    return Path(downloaded)


def looks_like_hub_id(name: str) -> bool:
    """"org/name" or "name"; not an absolute, home-relative or dotted path."""
    return not (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1)
