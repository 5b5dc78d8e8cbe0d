"""`ragloop` command line: argument parsing and exit codes only; the work lives in the stage modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from daemon.errors import RagloopError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragloop", description="Close the loop on a production RAG system's misses.")
    p.add_argument("-c", "--config", help="config file (default: $RAGLOOP_CONFIG, else ./config.toml if present)")
    sub = p.add_subparsers(dest="cmd", required=True)

    ing = sub.add_parser("ingest", help="read new feedback log lines once and print a summary")
    ing.add_argument("files", nargs="*", help="files to read instead of the configured ingest.paths")

    corpus = sub.add_parser("corpus", help="manage the chunks ragloop knows").add_subparsers(dest="corpus_cmd", required=True)
    load = corpus.add_parser("load", help="upsert chunks from a JSONL file")
    load.add_argument("file")
    load.add_argument("--merge", action="store_true", help="keep stored chunks that are absent from the file")

    quar = sub.add_parser("quarantine", help="see and replay bad log lines").add_subparsers(dest="q_cmd", required=True)
    ql = quar.add_parser("list", help="list unresolved quarantined lines")
    ql.add_argument("--limit", type=int, default=50)
    ql.add_argument("--json", action="store_true")
    qr = quar.add_parser("retry", help="re-validate quarantined lines (e.g. after loading missing chunks)")
    qr.add_argument("ids", nargs="*", type=int, help="quarantine ids (default: all unresolved)")

    st = sub.add_parser("status", help="counts of events, pairs, quarantine and log files")
    st.add_argument("--json", action="store_true", help="one JSON object, for scripts and monitoring")

    db = sub.add_parser("db", help="store schema").add_subparsers(dest="db_cmd", required=True)
    db.add_parser("upgrade", help="apply pending schema migrations (also done on every start)")
    db.add_parser("current", help="print the schema revision")
    return p


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    if os.environ.get("RAGLOOP_CONFIG"):
        return os.environ["RAGLOOP_CONFIG"]
    return "config.toml" if Path("config.toml").exists() else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except RagloopError as exc:
        print(f"ragloop: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from daemon.config import load_settings
    from daemon.logs import configure_logging
    from daemon.store import open_store

    settings = load_settings(_config_path(args.config))
    configure_logging(settings.log.level, settings.log.format)
    engine = open_store(settings.store_url, echo=settings.store.echo)
    handler = {"ingest": _ingest, "corpus": _corpus, "quarantine": _quarantine, "status": _status, "db": _db}
    return handler[args.cmd](args, settings, engine)


def _ingest(args, settings, engine) -> int:
    from daemon.ingest import ingest_once

    rep = ingest_once(engine, settings, args.files or None)
    d = rep.as_dict()
    print(f"read {d['lines']} lines from {d['files']} file(s): {d['events']} events "
          f"({d['misses']} misses, {d['hits']} hits), {d['quarantined']} quarantined")
    return 0


def _corpus(args, settings, engine) -> int:
    from daemon.corpus import load_corpus

    r = load_corpus(engine, args.file, merge=args.merge)
    print(f"{args.file}: {r.added} added, {r.changed} changed, {r.unchanged} unchanged, "
          f"{r.removed} removed, {r.restored} restored")
    return 0


def _quarantine(args, settings, engine) -> int:
    import sqlalchemy as sa

    from daemon.ingest import retry_quarantine
    from daemon.status import table
    from daemon.store import Quarantine

    if args.q_cmd == "retry":
        r = retry_quarantine(engine, settings, args.ids or None)
        print(f"{r['resolved']} line(s) now ingested, {r['still_bad']} still quarantined")
        return 0
    q = Quarantine.__table__
    with engine.connect() as conn:
        rows = conn.execute(sa.select(q).where(q.c.resolved_at.is_(None)).order_by(q.c.id).limit(args.limit)).mappings().all()
    if args.json:
        print(json.dumps([{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]))
    else:
        print(table(["id", "file", "line", "reason", "raw"],
                    [[r["id"], r["file"], r["line_no"], r["reason"][:70], r["raw"][:40]] for r in rows]))
    return 0


def _status(args, settings, engine) -> int:
    from daemon.status import collect_status, render_status

    s = collect_status(engine)
    print(json.dumps(s) if args.json else render_status(s))
    return 0


def _db(args, settings, engine) -> int:
    from daemon.store import current_revision, upgrade

    if args.db_cmd == "upgrade":
        upgrade(engine)
    print(current_revision(engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
