"""The one place where the JSON files we read are checked field by field before anything uses them.

Every manifest and config is parsed JSON, written by us or edited by hand, and read by code that indexes
into it. A field of the wrong type (`"count": "3000"`), a missing one, or a file that is not an object at
all would otherwise surface later as a `TypeError` or `KeyError` far from the file. `check_fields` turns
each of those into one `SchemaError` sentence naming the file, the key, the value found and what is
expected. The specs of the block store manifest, the index manifest and the sparse index manifest live
here; `RealmConfig` uses `check_value` for `config.json`.

This module imports nothing of the package, so every floor can call it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SchemaError(ValueError):
    """A JSON file (manifest, config) whose content does not have the expected shape."""


@dataclass(frozen=True)
class Field:
    """What one key must hold.

    Args:
        kind: "int", "float" (ints accepted), "str", "bool", "dict", "list", "sha256" (64 hex digits,
            optionally after "sha256:").
        required: the key must be present.
        nullable: null is accepted.
        minimum: for numbers, the smallest value accepted.
        choices: for strings, the values accepted.
        items: for lists, a `Field` every item must satisfy, or a spec (dict of Fields) every item (an
            object) must satisfy.
        spec: for dicts, the spec of its keys.
    """

    kind: str
    required: bool = True
    nullable: bool = False
    minimum: float | None = None
    choices: tuple[str, ...] | None = None
    items: Field | Mapping[str, Field] | None = None
    spec: Mapping[str, Field] | None = None


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "dict": "a JSON object",
    "list": "a JSON list",
    "sha256": "a sha256 digest (64 hex digits)",
}


def _expected(field: Field) -> str:
    words = _KIND_WORDS[field.kind]
    if field.minimum is not None:
        words += f" >= {field.minimum:g}"
    if field.choices is not None:
        words = "one of " + ", ".join(repr(c) for c in field.choices)
    if field.nullable:
        words += " or null"
    return words


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "sha256":
        if not isinstance(value, str):
            return False
        digest = value.removeprefix("sha256:")
        return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    raise ValueError(f"unknown field kind {kind!r}")


def check_value(source: str, key: str, value: Any, field: Field, fix: str = "") -> None:
    """Raise a `SchemaError` naming `source`, `key`, `value` and the expectation unless `value` fits `field`."""
    if value is None and field.nullable:
        return
    problem = not _type_ok(field.kind, value)
    if not problem and field.minimum is not None and value < field.minimum:
        problem = True
    if not problem and field.choices is not None and value not in field.choices:
        problem = True
    if problem:
        shown = json.dumps(value) if _jsonable(value) else repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise SchemaError(f"{source}: {key} is {shown}; expected {_expected(field)}{fix}")
    if field.kind == "dict" and field.spec is not None:
        check_fields(source, value, field.spec, prefix=f"{key}.", fix=fix)
    if field.kind == "list" and field.items is not None:
        for i, item in enumerate(value):
            if isinstance(field.items, Field):
                check_value(source, f"{key}[{i}]", item, field.items, fix)
            else:
                check_value(source, f"{key}[{i}]", item, Field("dict", spec=field.items), fix)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def check_fields(
    source: str, data: Any, spec: Mapping[str, Field], *, prefix: str = "", fix: str = ""
) -> dict[str, Any]:
    """Check a parsed JSON object against `spec` (keys not in the spec are left alone); return it.

    Args:
        source: the file, for the message.
        data: the parsed JSON.
        spec: key -> `Field`.
        prefix: put before each key in messages (for nested objects).
        fix: appended to every message (e.g. "; rebuild it with: ...").
    """
    if not isinstance(data, dict):
        where = f"{prefix.rstrip('.')} is" if prefix else "the file holds"
        shown = json.dumps(data) if _jsonable(data) else repr(data)
        raise SchemaError(f"{source}: {where} {shown[:40]}; expected a JSON object{fix}")
    for key, field in spec.items():
        if key not in data:
            if field.required:
                raise SchemaError(f"{source}: the key {prefix}{key} is missing; expected {_expected(field)}{fix}")
            continue
        check_value(source, prefix + key, data[key], field, fix)
    return data


def read_json_object(path: str | os.PathLike[str], what: str, fix: str = "") -> dict[str, Any]:
    """Read a JSON file that must hold an object; errors name the file, `what` it should be, and `fix`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SchemaError(f"{path}: not UTF-8 text (byte {err.start}); expected {what}{fix}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise SchemaError(f"{path}: not valid JSON ({err}); expected {what}{fix}") from None
    if not isinstance(data, dict):
        raise SchemaError(
            f"{path}: holds {json.dumps(data)[:40]}; expected {what} (a JSON object){fix}"
        )
    return data


# ------------------------------------------------------------------------------------------- the specs

_SPECIAL_IDS = {name: Field("int", minimum=0) for name in ("cls", "sep", "pad")}

STORE_SEGMENT = {
    "file": Field("str"),
    "num_blocks": Field("int", minimum=0),
    "num_batches": Field("int", minimum=0),
    "bytes": Field("int", minimum=0),
    "sha256": Field("sha256"),
}

STORE_MANIFEST = {
    "format": Field("str"),
    "format_version": Field("int", minimum=1),
    "num_blocks": Field("int", minimum=0),
    "num_documents": Field("int", minimum=0),
    "token_dtype": Field("str", choices=("uint16", "int32")),
    "batch_rows": Field("int", minimum=1),
    "max_block_tokens": Field("int", minimum=3, nullable=True),
    "tokenizer": Field(
        "dict",
        spec={
            "fingerprint": Field("sha256"),
            "vocab_size": Field("int", minimum=1),
            "special_ids": Field("dict", spec=_SPECIAL_IDS),
        },
    ),
    "segments": Field("list", items=STORE_SEGMENT),
    "fingerprint": Field("sha256"),
    "source_fingerprint": Field("str", required=False, nullable=True),
}

INDEX_MANIFEST = {
    "format": Field("str", required=False),
    "version": Field("int", required=False, minimum=1),
    "count": Field("int", minimum=0),
    "dim": Field("int", minimum=1),
    "dtype": Field("str", choices=("float32", "float16")),
    "index": Field("dict", required=False),
    "store_fingerprint": Field("str", required=False, nullable=True),
    "embedder_fingerprint": Field("str", required=False, nullable=True),
    "embedder_weights_fingerprint": Field("sha256", required=False, nullable=True),
}

SPARSE_MANIFEST = {
    "format": Field("str"),
    "version": Field("int", minimum=1),
    "kind": Field("str", choices=("bm25",)),
    "count": Field("int", minimum=0),
    "store_fingerprint": Field("sha256"),
    "tokenization": Field("dict"),
    "bm25": Field("dict", required=False),
}


def check_store_manifest(data: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Every field a `BlockStore` reads, and that the segments add up to `num_blocks`."""
    fix = "; the store is damaged: rebuild it with `realm blocks build`"
    manifest = check_fields(str(source), data, STORE_MANIFEST, fix=fix)
    total = sum(entry["num_blocks"] for entry in manifest["segments"])
    if total != manifest["num_blocks"]:
        raise SchemaError(f"{source}: the segments hold {total} blocks but num_blocks is {manifest['num_blocks']}{fix}")
    names = [entry["file"] for entry in manifest["segments"]]
    bad = [n for n in names if "/" in n or "\\" in n or n.startswith(".") or not n.endswith(".arrow")]
    if bad or len(set(names)) != len(names):
        raise SchemaError(f"{source}: segment file names {bad or names} are not plain, distinct .arrow names{fix}")
    return manifest


def check_index_manifest(data: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Every field an index reads (count, dim, dtype, ...) before `IndexManifest` is built from them."""
    return check_fields(str(source), data, INDEX_MANIFEST, fix="; rebuild the index with `realm index build`")


def check_sparse_manifest_fields(data: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Every field a sparse (BM25) index reads."""
    return check_fields(
        str(source), data, SPARSE_MANIFEST, fix="; rebuild it with `realm index build-sparse`"
    )


