"""Build the second real benchmark, from the Perl FAQ, the same way the examples were built.

Source: Debian's `perl-doc` package (fetched with `apt-get download` unless --docs points at an
extracted tree). The Perl FAQ (perlfaq1-9, ~300 questions written by people, each a `=head2` heading
with its answer) gives the questions; the answers and the sections of 17 core manual pages (perlsyn,
perlop, perlre, ...) make the corpus, so a question competes with reference text on the same topics.

Writes, next to this script, the same three files as bench/data/build_examples.py:
  corpus.jsonl     FAQ answers and manual sections, chunked to ~150 words
  questions.jsonl  every FAQ question with the chunk ids of its answer and its fixed half
                   ("traffic": production has seen it; "unseen": kept for the quality benchmarks)
  feedback.jsonl   a v1 log of the traffic questions as production (the packaged MiniLM) answered them

    python -m bench.data.build_perlfaq [--docs /path/to/extracted/root]
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.data.build_examples import build_benchmark, chunk, halves, slug

HERE = Path(__file__).resolve().parent / "perlfaq"

POD_DIR = "usr/share/perl/5.36.0/pod"
FAQS = [f"perlfaq{i}" for i in range(1, 10)]
MANUALS = ["perlintro", "perlsyn", "perldata", "perlop", "perlsub", "perlre", "perlretut", "perlreftut", "perldsc",
           "perllol", "perlopentut", "perlrequick", "perlmod", "perlootut", "perlobj",
           "perlstyle", "perltrap"]


def clean_pod(text: str) -> str:
    """POD markup to plain text: formatting codes unwrapped, commands dropped, paragraphs kept."""
    text = re.sub(r"X<+[^<>]*>+", "", text)  # index entries are not text
    text = re.sub(r"[A-Z]<<+\s(.*?)\s>>+", r"\1", text, flags=re.S)  # C<< $x->y >>
    for _ in range(4):  # nested codes, innermost first
        text = re.sub(r"E<([^<>]*)>", lambda m: {"gt": ">", "lt": "<", "verbar": "|", "sol": "/"}.get(m.group(1), ""),
                      text)
        text = re.sub(r"L<([^<>|]*)\|[^<>]*>", r"\1", text)
        text = re.sub(r"[A-Z]<([^<>]*)>", r"\1", text)
    lines = []
    for line in text.splitlines():
        if line.startswith("=item"):
            lines.append(line[5:].strip())
        elif not line.startswith("="):
            lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pod_sections(path: Path) -> list[tuple[str, str]]:
    """(title, body) for each `=head2` section (or `=head1`, where it has no `=head2`)."""
    out, title, buf = [], None, []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(r"^=head([12])\s+(.*)$", line)
        if m:
            if title is not None:
                out.append((title, clean_pod("\n".join(buf))))
            title, buf = clean_pod(m.group(2)).strip(), []
        elif title is not None:
            buf.append(line)
    if title is not None:
        out.append((title, clean_pod("\n".join(buf))))
    return [(t, b) for t, b in out if t not in ("NAME", "VERSION", "AUTHOR AND COPYRIGHT", "SEE ALSO")]


def build(docs: Path) -> tuple[list[dict], list[dict]]:
    pod = docs / POD_DIR
    corpus, questions, seen = [], [], set()

    def add(doc: str, title: str, body: str, min_words: int) -> list[str]:
        ids = []
        for i, text in enumerate(chunk(body)):
            cid = f"{doc}:{slug(title)}:{i}"
            if len(text.split()) >= min_words and cid not in seen:
                seen.add(cid)
                corpus.append({"id": cid, "text": text, "doc": doc, "metadata": {"section": title, "part": i}})
                ids.append(cid)
        return ids

    for doc in FAQS:
        for title, body in pod_sections(pod / f"{doc}.pod"):
            if title.endswith("?") and len(body.split()) >= 15:
                ids = add(doc, title, body, 1)
                if ids:
                    questions.append({"query": title, "expected_ids": ids, "doc": doc})
    for doc in MANUALS:
        for title, body in pod_sections(pod / f"{doc}.pod"):
            add(doc, title, body, 20)
    halves(questions)
    return corpus, questions


def main() -> None:
    build_benchmark(HERE, "perlfaq", ("perl-doc",), build, __doc__, "root of an extracted perl-doc package")


if __name__ == "__main__":
    main()
