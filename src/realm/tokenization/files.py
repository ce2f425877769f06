"""Reading and writing the port's tokenizer files, locally or from the Hugging Face Hub (`realm.files`).

Files: ``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json``
(must be empty: added tokens are not supported) and, for the fast tokenizer, ``tokenizer.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from realm.files import resolve_file

logger = logging.getLogger(__name__)

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"

# Order of transformers' `all_special_tokens` for this tokenizer.
SPECIAL_TOKEN_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Keys of the port's tokenizer_config.json we read, and keys we knowingly ignore.
_INIT_KEYS = {
    "do_lower_case",
    "do_basic_tokenize",
    "never_split",
    "tokenize_chinese_chars",
    "strip_accents",
    "model_max_length",
    "clean_up_tokenization_spaces",
    *SPECIAL_TOKEN_KEYS,
}
_IGNORED_KEYS = {
    "added_tokens_decoder",
    "additional_special_tokens",
    "auto_map",
    "extra_special_tokens",
    "full_tokenizer_file",
    "model_input_names",
    "name_or_path",
    "processor_class",
    "special_tokens_map_file",
    "split_special_tokens",
    "tokenizer_class",
    "tokenizer_file",
    "use_fast",
    "vocab_file",
}


def token_content(token: Any) -> str:
    """A special token given as a string or as a serialized ``AddedToken`` dict -> its string."""
    if isinstance(token, dict):
        return str(token["content"])
    return str(token)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def read_init_kwargs(files: dict[str, str | None], source: str) -> dict[str, Any]:
    """Constructor kwargs from ``tokenizer_config.json`` then ``special_tokens_map.json``."""
    init_kwargs: dict[str, Any] = {}
    config_path = files.get(TOKENIZER_CONFIG_FILE)
    if config_path:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        for key, value in config.items():
            if key in _INIT_KEYS:
                init_kwargs[key] = token_content(value) if key in SPECIAL_TOKEN_KEYS else value
            elif key in ("padding_side", "truncation_side"):
                init_kwargs[key] = value
            elif key not in _IGNORED_KEYS:
                logger.warning("%s: ignoring unknown tokenizer_config.json key %r", source, key)
        tokenizer_class = config.get("tokenizer_class")
        if tokenizer_class and tokenizer_class.removesuffix("Fast") not in (
            "RealmTokenizer",
            "BertTokenizer",
        ):
            logger.warning(
                "%s: tokenizer_class is %r, loading it as a REALM (BERT WordPiece) tokenizer",
                source,
                tokenizer_class,
            )
        _check_added_tokens(config.get("added_tokens_decoder") or {}, source)
    map_path = files.get(SPECIAL_TOKENS_MAP_FILE)
    if map_path:
        special = json.loads(Path(map_path).read_text(encoding="utf-8"))
        for key, value in special.items():
            if key in SPECIAL_TOKEN_KEYS:
                init_kwargs[key] = token_content(value)
            elif value:
                raise NotImplementedError(
                    f"{source}: special token {key!r} is not supported by REALM tokenizers"
                )
    added_path = files.get(ADDED_TOKENS_FILE)
    if added_path and json.loads(Path(added_path).read_text(encoding="utf-8")):
        raise NotImplementedError(
            f"{source}: added_tokens.json lists extra tokens; added tokens are not supported"
        )
    return init_kwargs


def _check_added_tokens(added: dict[str, Any], source: str) -> None:
    for idx, tok in added.items():
        if not tok.get("special", False):
            raise NotImplementedError(
                f"{source}: non-special added token {tok.get('content')!r} (id {idx}); added tokens are not supported"
            )


def resolve_files(
    name: str,
    wanted: Iterable[tuple[str, bool]],
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
) -> dict[str, str | None]:
    """Map each wanted file name to a local path (or ``None`` when an optional file is absent)."""
    wanted = list(wanted) + [
        (TOKENIZER_CONFIG_FILE, False),
        (SPECIAL_TOKENS_MAP_FILE, False),
        (ADDED_TOKENS_FILE, False),
    ]
    if os.path.isfile(name):
        raise NotADirectoryError(
            f"{name} is a file; from_pretrained expects the directory that holds vocab.txt and the config files"
        )
    found: dict[str, str | None] = {}
    for fname, _ in wanted:
        # Every file is optional here: the fast tokenizer needs vocab.txt *or* tokenizer.json.
        path = resolve_file(name, fname, optional=True, revision=revision, cache_dir=cache_dir, token=token)
        found[fname] = None if path is None else str(path)
    _require_one(found, wanted, name)
    return found


def _require_one(found: dict[str, str | None], wanted: list[tuple[str, bool]], source: str) -> None:
    """At least one of the required files must exist (the fast tokenizer needs vocab.txt *or* tokenizer.json)."""
    required = [fname for fname, req in wanted if req]
    if required and not any(found.get(fname) for fname in required):
        if os.path.isdir(source):
            paths = " or ".join(os.path.join(source, fname) for fname in required)
            raise FileNotFoundError(f"no vocabulary found: expected {paths}")
        raise FileNotFoundError(
            f"{source!r} is not a local directory, and the Hugging Face Hub repo of that name has none of "
            f"{', '.join(required)}"
        )
