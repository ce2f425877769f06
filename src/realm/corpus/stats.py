"""`BuildStats`: what a block build read, skipped and wrote."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SKIP_REASONS = {
    "malformed": "malformed input",
    "empty": "empty",
    "list_title": "list/index/outline title",
    "disambiguation": "disambiguation",
    "list_text": "mostly list lines",
}


@dataclass
class BuildStats:
    """What a build read, skipped and wrote (a Counter-like record; `summary` for people, `to_dict` for JSON)."""

    files: int = 0
    documents: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    sentences: int = 0
    long_sentences: int = 0
    words_cut: int = 0
    empty_sentences: int = 0
    titles_truncated: int = 0
    blocks: int = 0
    block_tokens: int = 0
    seconds: float = 0.0

    @property
    def documents_kept(self) -> int:
        return self.documents - sum(self.skipped.values())

    def merge(self, other: BuildStats) -> None:
        """Add ``other``'s counts (not its ``files`` or ``seconds``) to these, e.g. from a worker process."""
        for f in fields(self):
            if f.name == "skipped":
                self.skipped.update(other.skipped)
            elif f.name not in ("files", "seconds"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["skipped"] = dict(sorted(self.skipped.items()))
        return out

    def summary(self) -> str:
        """A few readable lines, e.g. for the CLI."""
        secs = max(self.seconds, 1e-9)
        lines = [
            f"read {self.documents:,} documents from {self.files:,} file(s) in {self.seconds:.1f} s "
            f"({self.documents / secs:,.0f} documents/s)"
        ]
        if self.skipped:
            parts = ", ".join(f"{n:,} {SKIP_REASONS.get(k, k)}" for k, n in self.skipped.most_common())
            lines.append(f"skipped {sum(self.skipped.values()):,} documents: {parts}")
        mean = self.block_tokens / self.blocks if self.blocks else 0.0
        lines.append(
            f"wrote {self.blocks:,} blocks from {self.documents_kept:,} documents and {self.sentences:,} "
            f"sentences ({mean:.1f} text wordpieces per block, {self.blocks / secs:,.0f} blocks/s)"
        )
        notes = [
            (self.long_sentences, "sentences longer than a block were split"),
            (self.words_cut, "words longer than a block were cut"),
            (self.titles_truncated, "titles were shortened"),
            (self.empty_sentences, "sentences without wordpieces were dropped"),
        ]
        lines += [f"{n:,} {what}" for n, what in notes if n]
        return "\n".join(lines)
