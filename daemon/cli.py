"""`ragloop` command line: argument parsing and exit codes only; the work lives in the stage modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from daemon.errors import RagloopError, RegistryError
from daemon.models.registry import EMBEDDER, KINDS, RERANKER


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragloop", description="Close the loop on a production RAG system's misses.")
    p.add_argument("-c", "--config", help="config file (default: $RAGLOOP_CONFIG, else ./config.toml if present)")
    p.add_argument("--version", action="version", version=f"ragloop {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)

    ing = sub.add_parser("ingest", help="read new feedback log lines once and print a summary")
    ing.add_argument("files", nargs="*", help="files to read instead of the configured ingest.paths")

    corpus = sub.add_parser("corpus", help="manage the chunks ragloop knows").add_subparsers(dest="corpus_cmd", required=True)
    load = corpus.add_parser("load", help="upsert chunks from a JSONL file")
    load.add_argument("file")
    load.add_argument("--merge", action="store_true", help="keep stored chunks that are absent from the file")

    sync = corpus.add_parser("sync", help="read chunk texts from an existing Qdrant collection's payloads")
    sync.add_argument("--from-qdrant", required=True, metavar="COLLECTION")
    sync.add_argument("--id-key", default="chunk_id", help="payload key of the chunk id (default: chunk_id; "
                      "the point id when absent)")
    sync.add_argument("--text-key", default="text", help="payload key of the chunk text (default: text)")
    sync.add_argument("--doc-key", default="doc", help="payload key of the document name (default: doc)")
    sync.add_argument("--merge", action="store_true", help="keep stored chunks that are absent from the collection")

    index = sub.add_parser("index", help="the Qdrant collections behind the alias").add_subparsers(dest="index_cmd", required=True)
    index.add_parser("build", help="embed the corpus with the serving embedder into a new collection and swap the alias")
    index.add_parser("rollback", help="point the alias back at the previous collection (and its embedder)")
    index.add_parser("list", help="collections ragloop built, and which one serves")

    se = sub.add_parser("search", help="rank chunks for queries as production does (ragloop_client on the manifest)")
    se.add_argument("queries", nargs="+", metavar="QUERY", help='one or more queries; "-" reads one per line from '
                    "stdin (the models load once)")
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--json", action="store_true", help="one JSON object per query")

    tr = sub.add_parser("train", help="fine-tune the embedder and/or reranker and register candidates")
    which = tr.add_mutually_exclusive_group()
    which.add_argument("--embedder", action="store_true", help="only the embedder")
    which.add_argument("--reranker", action="store_true", help="only the reranker")
    tr.add_argument("--max-steps", type=int, help="override train.<kind>.max_steps for this run")
    tr.add_argument("--adapter", action="store_true",
                    help="train a query adapter on the serving embedder instead of a full fine-tune (the default "
                         "when train.embedder.mode = \"adapter\")")

    run = sub.add_parser("run", help="the daemon: ingest, retrain and promote on schedule (systemd's ExecStart)")
    run.add_argument("--once", action="store_true", help="run every due stage once, then exit")
    sub.add_parser("check", help="exit 0 if the daemon's heartbeat is fresh, 1 if not (monitoring, ExecStartPost)")
    sy = sub.add_parser("synth", help="ask Claude for questions for chunks that have none yet (needs ANTHROPIC_API_KEY)")
    sy.add_argument("--limit", type=int, help="at most this many chunks (default: synth.batch_chunks)")
    sub.add_parser("cycle", help="one full pass: train embedder and reranker, gate, promote, re-index, manifest")
    pr = sub.add_parser("promote", help="operator override: make a version serve without the gate")
    pr.add_argument("kind", choices=KINDS)
    pr.add_argument("version", type=int)
    pr.add_argument("--force", action="store_true", required=True, help="required: skips the gate (logged as forced)")
    rb = sub.add_parser("rollback", help="back to the previous serving model (embedder: and its collection)")
    rb.add_argument("kind", nargs="?", default=EMBEDDER, choices=KINDS)
    sub.add_parser("models", help="model versions with their status and held-out metrics")
    ev = sub.add_parser("eval", help="score a version (default: what serves) on the held-out and guard sets")
    ev.add_argument("kind", nargs="?", choices=KINDS)
    ev.add_argument("version", nargs="?", type=int)

    quar = sub.add_parser("quarantine", help="see and replay bad log lines").add_subparsers(dest="q_cmd", required=True)
    ql = quar.add_parser("list", help="list unresolved quarantined lines")
    ql.add_argument("--limit", type=int, default=50)
    ql.add_argument("--json", action="store_true")
    qr = quar.add_parser("retry", help="re-validate quarantined lines (e.g. after loading missing chunks)")
    qr.add_argument("ids", nargs="*", type=int, help="quarantine ids (default: all unresolved)")

    rp = sub.add_parser("report", help="one self-contained HTML page: miss rate over time, held-out quality per "
                        "model version, the gate's decisions, the queries that still miss")
    rp.add_argument("-o", "--output", default="report.html", help="where to write the page (default: report.html)")
    rp.add_argument("--top-misses", type=int, default=25, help="how many still-missing queries to list")
    st = sub.add_parser("status", help="counts of events, pairs, quarantine and log files")
    st.add_argument("--json", action="store_true", help="one JSON object, for scripts and monitoring")

    db = sub.add_parser("db", help="store schema").add_subparsers(dest="db_cmd", required=True)
    db.add_parser("upgrade", help="apply pending schema migrations (also done on every start)")
    db.add_parser("current", help="print the schema revision")
    return p


# Commands that only read the store: without a config file they never create one (./state) by looking.
READS_ONLY = {"status", "models", "report", "check", "search", "eval"}


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    if os.environ.get("RAGLOOP_CONFIG"):
        return os.environ["RAGLOOP_CONFIG"]
    return "config.toml" if Path("config.toml").exists() else None


def _no_default_store(settings) -> bool:
    """No store URL configured and no SQLite file at the default place."""
    url = settings.store_url
    return not settings.store.url and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()


def _config_anywhere(parser: argparse.ArgumentParser) -> None:
    """Accept -c/--config after any subcommand too (`ragloop status -c FILE`), not only before it. SUPPRESS: a
    subcommand that is not given one leaves the one given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _config_anywhere(child)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ragloop")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    _config_anywhere(parser)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except RagloopError as exc:
        print(f"ragloop: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`ragloop search --json | head`): quiet, as a shell tool is; stdout points at
        # /dev/null so the interpreter's flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(args: argparse.Namespace) -> int:
    from daemon.config import load_settings
    from daemon.journal import configure_logging
    from daemon.store import open_store

    path = _config_path(args.config)
    settings = load_settings(path)
    configure_logging(settings.log.level, settings.log.format)
    if args.cmd == "run":
        from daemon.service import Daemon

        return Daemon(settings, path).run(once=args.once)
    if path is None and args.cmd in READS_ONLY and _no_default_store(settings):
        print(f"ragloop: no config file (none given with -c, $RAGLOOP_CONFIG unset, no config.toml in {Path.cwd()}) "
              f"and no store at {settings.state_dir / 'ragloop.db'}: pass -c /etc/ragloop/config.toml (the "
              "installed `ragloop` wrapper does), or run where your config.toml is", file=sys.stderr)
        return 2
    engine = open_store(settings.store_url, echo=settings.store.echo)
    from daemon.models import registry

    registry.relativize_paths(engine, settings)  # absolute model paths an older release stored
    handler = {"ingest": _ingest, "corpus": _corpus, "quarantine": _quarantine, "status": _status, "db": _db,
               "index": _index, "search": _search, "train": _train, "cycle": _cycle, "promote": _promote,
               "rollback": _rollback, "models": _models, "eval": _eval, "check": _check,
               "synth": _synth, "report": _report}
    try:
        return handler[args.cmd](args, settings, engine)
    finally:
        engine.dispose()  # return pooled connections now, not at garbage collection


def _ingest(args, settings, engine) -> int:
    from daemon.ingest import ingest_once

    rep = ingest_once(engine, settings, args.files or None)
    d = rep.as_dict()
    print(f"read {d['lines']} lines from {d['files']} file(s): {d['events']} events "
          f"({d['misses']} misses, {d['hits']} hits), {d['quarantined']} quarantined")
    return 0


def _corpus(args, settings, engine) -> int:
    from daemon.data import load_corpus
    from daemon.serve import sync_corpus_from_qdrant

    if args.corpus_cmd == "sync":
        source = f"qdrant:{args.from_qdrant}"
        r = sync_corpus_from_qdrant(engine, settings, args.from_qdrant, id_key=args.id_key, text_key=args.text_key,
                                    doc_key=args.doc_key, merge=args.merge)
    else:
        source = args.file
        r = load_corpus(engine, args.file, merge=args.merge)
    print(f"{source}: {r.added} added, {r.changed} changed, {r.unchanged} unchanged, "
          f"{r.removed} removed, {r.restored} restored")
    return 0


def _index(args, settings, engine) -> int:
    from daemon.observe import index_rows, table
    from daemon.serve import build_index, rollback_index

    if args.index_cmd == "build":
        r = build_index(engine, settings)
        print(f"alias {settings.qdrant.alias} -> {r.collection} (was {r.previous}); {r.chunks} chunks "
              f"in {r.seconds:.1f}s ({r.chunks_per_s:.1f}/s); dropped {r.dropped or 'none'}")
    elif args.index_cmd == "rollback":
        r = rollback_index(engine, settings)
        print(f"alias {settings.qdrant.alias} -> {r['collection']} (was {r['previous']}); "
              f"embedder v{r['embedder_version']} serving")
    else:
        print(table(["collection", "status", "embedder", "points", "created", "swapped"], index_rows(engine)))
    return 0


def _train(args, settings, engine) -> int:
    from daemon.train import run_job

    kinds = [EMBEDDER] if args.embedder else [RERANKER] if args.reranker else list(KINDS)
    for kind in kinds:
        if args.max_steps is not None:
            getattr(settings.train, kind).max_steps = args.max_steps
        adapter = args.adapter or settings.train.embedder.mode == "adapter"
        r = run_job(engine, settings, kind, mode="adapter" if adapter and kind == EMBEDDER else "full")
        t = r.training
        print(f"{kind} v{r.version} (candidate) at {r.path}: {t['steps']} steps on {t['device']}/{t['precision']} "
              f"from {t['base']}, {t['pairs']['total']} pairs, final loss {t['final_loss']}, {t['duration_s']:.0f}s")
    return 0


def _report(args, settings, engine) -> int:
    from daemon.observe import build_report

    out = Path(args.output)
    page = build_report(engine, top_misses=args.top_misses)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise RagloopError(f"cannot write the report to {out}: {exc.strerror}; pass -o with a writable path") from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained: open it in any browser)")
    return 0


def _check(args, settings, engine) -> int:
    from daemon.service import check_health

    ok, why = check_health(engine, settings)
    print(why)
    return 0 if ok else 1


def _synth(args, settings, engine) -> int:
    from daemon.ingest import run_synthesis

    r = run_synthesis(engine, settings, args.limit)
    print(f"{r.done} chunk(s) got {r.questions} questions, {r.empty} empty, {r.failed} failed, of {r.chunks}; "
          f"{r.input_tokens + r.output_tokens} tokens, ~${r.cost_usd:.4f}" + (f"; stopped: {r.stopped}" if r.stopped else ""))
    return 0


def _cycle(args, settings, engine) -> int:
    from daemon.service import run_cycle

    r = run_cycle(engine, settings)
    if r.skipped:
        print(f"cycle skipped: {r.skipped}")
    for d in r.decisions:
        print(f"{d['kind']} v{d['version']}: {d['outcome']} ({d['reason']})")
    print(f"cycle took {r.duration_s:.0f}s on {r.train_pairs} train pairs")
    return 0


def _promote(args, settings, engine) -> int:
    from daemon.serve import force_promote

    force_promote(engine, settings, args.kind, args.version)
    print(f"{args.kind} v{args.version} is serving (forced)")
    return 0


def _rollback(args, settings, engine) -> int:
    from daemon.serve import rollback

    r = rollback(engine, settings, args.kind)
    print(json.dumps(r))
    return 0


def _models(args, settings, engine) -> int:
    from daemon.observe import model_rows, table

    print(table(["kind", "version", "status", "base", "heldout hit@1", "hit@10", "mrr@10", "created"], model_rows(engine)))
    return 0


def _eval(args, settings, engine) -> int:
    from daemon.gate import Evaluator, summary
    from daemon.models import load_embedder, load_reranker, registry
    from daemon.observe import table

    emb = registry.ensure_base_embedder(engine, settings)
    rr = registry.serving(engine, RERANKER)
    if args.version is not None:
        chosen = registry.get_version(engine, args.kind or EMBEDDER, args.version)
        if chosen is None:
            raise RegistryError(f"no {args.kind or EMBEDDER} version {args.version}; `ragloop models` lists the "
                                "versions there are")
        emb, rr = (chosen, rr) if chosen["kind"] == EMBEDDER else (emb, chosen)
    ev = Evaluator(engine, settings)
    model = load_embedder(registry.model_path(settings, emb), settings.train.device)
    key = registry.vector_key(emb)
    rows = [[f"embedder v{emb['version']}", n, *m.values()] for n, m in summary(ev.embedder_scores(key, model)).items()]
    if rr is not None:
        piped = summary(ev.pipeline_scores(key, model, load_reranker(registry.model_path(settings, rr), settings.train.device, settings.train.trust_remote_code)))
        rows += [[f"+ reranker v{rr['version']}", n, *m.values()] for n, m in piped.items()]
    print(table(["model", "set", "hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10", "queries"], rows))
    return 0


def _search(args, settings, engine) -> int:
    from ragloop_client import ManifestError, Retriever

    from daemon.observe import table
    from daemon.serve import IndexBuildError

    if not settings.manifest_path.exists():
        raise IndexBuildError("nothing is indexed yet: run `ragloop index build`")
    try:
        device = None if settings.train.device == "auto" else settings.train.device
        client = Retriever(settings.manifest_path, device=device, watch=False)
    except ManifestError as exc:
        raise IndexBuildError(str(exc)) from None
    with client:
        queries = (line.strip() for line in sys.stdin) if args.queries == ["-"] else iter(args.queries)
        for query in filter(None, queries):
            r = client.search(query, args.k)
            if args.json:
                print(json.dumps({"query": query, "version": r.version, "hits": [
                    {"rank": i + 1, "chunk_id": h.chunk_id, "score": round(h.score, 4), "doc": h.payload.get("doc"),
                     "text": h.text} for i, h in enumerate(r.hits)]}), flush=True)
                continue
            print(f"{query}  ({r.version})")
            print(table(["rank", "score", "chunk", "text"],
                        [[i + 1, f"{h.score:.3f}", h.chunk_id, " ".join(h.text.split())[:60]] for i, h in enumerate(r.hits)]),
                  flush=True)
    return 0


def _quarantine(args, settings, engine) -> int:
    from daemon.ingest import quarantined, retry_quarantine
    from daemon.observe import table

    if args.q_cmd == "retry":
        r = retry_quarantine(engine, settings, args.ids or None)
        print(f"{r['resolved']} line(s) now ingested, {r['still_bad']} still quarantined")
        return 0
    rows = quarantined(engine, args.limit)
    if args.json:
        print(json.dumps([{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]))
    else:
        print(table(["id", "file", "line", "reason", "raw"],
                    [[r["id"], r["file"], r["line_no"], r["reason"][:70], r["raw"][:40]] for r in rows]))
    return 0


def _status(args, settings, engine) -> int:
    from daemon.observe import collect_status, render_status

    s = collect_status(engine, settings)
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
