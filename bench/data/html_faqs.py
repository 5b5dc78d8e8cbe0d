"""The examples' HTML sources: the Zsh, Django, R and SQLite FAQs, and manual pages on the same topics.

Each FAQ gives (question, answer) sections; each manual page gives (title, text) sections that only join
the corpus, as the reference text a helpdesk corpus holds beside its FAQs. Paths are inside the extracted
Debian packages zsh-doc, python-django-doc, r-doc-html and sqlite3-doc.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

ZSH = "usr/share/doc/zsh-common/html"
DJANGO = "usr/share/doc/python-django-doc/html"
R_MANUAL = "usr/share/doc/r-doc-html/manual"
SQLITE = "usr/share/doc/sqlite3"

# Pages on the FAQs' topics, chosen to keep the corpus near the Perl FAQ benchmark's size (~1,600 chunks:
# a corpus encode is a large part of a CPU cycle).
ZSH_MANUAL = ["Files", "Invocation", "Prompt-Expansion", "Redirection", "Arithmetic-Evaluation"]
DJANGO_MANUAL = ["topics/db/models", "topics/http/urls", "topics/settings", "topics/db/sql", "topics/migrations",
                 "howto/legacy-databases", "topics/templates", "howto/deployment/wsgi/index",
                 "howto/static-files/index"]
SQLITE_MANUAL = ["datatype3", "autoinc", "whentouse", "lang_createtable", "lang_transaction", "lang_vacuum"]
HEADING = re.compile(r"<h([1-4])\b[^>]*>(.*?)</h\1>", re.S | re.I)


def to_text(fragment: str) -> str:
    """HTML to plain text: block ends become paragraph breaks, tags are dropped, entities decoded."""
    fragment = re.sub(r"<(script|style)\b.*?</\1>", "", fragment, flags=re.S | re.I)
    fragment = re.sub(r'<a class="headerlink".*?</a>', "", fragment, flags=re.S)
    fragment = re.sub(r"</?(p|div|pre|li|ul|ol|dl|dt|dd|table|tr|blockquote|br)\b[^>]*>", "\n\n", fragment, flags=re.I)
    text = html.unescape(re.sub(r"<[^>]+>", "", fragment)).replace("\xa0", " ").replace("¶", "")
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paras if p)


def sections(page: str, start: str = "", end: str = "") -> list[tuple[str, str]]:
    """(heading, text up to the next heading) for every h1-h4 of ``page`` between the ``start`` and
    ``end`` markers (the page's main content, without its navigation)."""
    if start and start in page:
        page = page[page.index(start):]
    if end and end in page:
        page = page[:page.index(end)]
    heads = list(HEADING.finditer(page))
    out = []
    for n, m in enumerate(heads):
        body = page[m.end(): heads[n + 1].start() if n + 1 < len(heads) else len(page)]
        out.append((to_text(m.group(2)), to_text(body)))
    return out


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _questions(pairs: list[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    """FAQ sections whose heading, less its number (``prefix``), is a question."""
    out = []
    for title, body in pairs:
        title = re.sub(prefix, "", title).strip()
        if title.endswith("?"):
            out.append((title, body))
    return out


def sqlite_faq(page: str) -> list[tuple[str, str]]:
    """SQLite's FAQ is not sectioned: each question is a bold "(N) ...?" paragraph, its answer the blockquote."""
    found = re.findall(r"<p><b>\((\d+)\)\s*(.*?)</b></p>\s*<blockquote>(.*?)</blockquote>", page, re.S)
    return [(to_text(q), to_text(a)) for _, q, a in found]


def faq_sets(docs: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """(doc, [(question, answer)]) for each HTML FAQ."""
    zsh = [(t, b) for p in sorted((docs / ZSH).glob("FAQ0*.html")) for t, b in sections(_read(p))]
    out = [("zsh-faq", _questions(zsh, r"^\d+\.\d+:\s*"))]
    for p in sorted((docs / DJANGO / "faq").glob("*.html")):
        if p.stem != "index":
            pairs = sections(_read(p), 'class="yui-g"', 'class="sphinxsidebar"')
            out.append((f"django-faq/{p.stem}", _questions(pairs, r"^$")))
    r = sections(_read(docs / R_MANUAL / "R-FAQ.html"), 'class="chapter"')
    out.append(("r-faq", _questions(r, r"^\d+(\.\d+)+\s+")))
    out.append(("sqlite-faq", sqlite_faq(_read(docs / SQLITE / "faq.html"))))
    return out


def manual_sets(docs: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """(doc, [(section title, text)]) for each manual page that joins the corpus as reference text."""
    out = [(f"zsh-manual/{name}", sections(_read(docs / ZSH / f"{name}.html"))) for name in ZSH_MANUAL]
    out += [(f"django-docs/{name}", sections(_read(docs / DJANGO / f"{name}.html"), 'class="yui-g"',
                                             'class="sphinxsidebar"')) for name in DJANGO_MANUAL]
    out.append(("r-intro", sections(_read(docs / R_MANUAL / "R-intro.html"), 'class="chapter"')))
    out += [(f"sqlite-docs/{name}", sections(_read(docs / SQLITE / f"{name}.html"))) for name in SQLITE_MANUAL]
    return out
