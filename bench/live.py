"""A month of production in an hour: ragloop beside a real service, learning from that service's own misses.

    python -m bench.live --benchmark examples --days 14 [--queries 100] [--set train.embedder.max_steps=40]

All real parts, each its own process. **Production** is the reference service (examples/rag_service.py:
ragloop_client's Retriever and FeedbackLog) answering each simulated day's traffic over HTTP: questions of the
benchmark's "traffic" half drawn with repeats (a few popular ones asked often, a long tail; new questions appear
day by day), each answered by whatever serves *now*; the "unseen" half is never asked. A label (the chunks that
answer) reaches the service's /feedback for most answers, later than the answer (the same day, or the next);
the rest never come. **The daemon** is `ragloop run` with its real scheduler: cycles start when
`schedule.min_new_pairs` new train pairs arrived, and promotions reach the service by its hot reload.
**Operations happen**: the real logrotate rotates the service's log daily (create + compress); on the middle
day 10% of the chunks are edited, some added and some removed (`ragloop corpus load`); the daemon is SIGKILLed
once during a cycle's training and restarted; an operator runs `ragloop rollback embedder` once after a
promotion, and the next cycle carries on from there.

A simulated day ends when the daemon has read every line and finished any cycle the day's traffic started. Per
day it prints production's miss rate and hit@1 on that day's traffic (what users experienced), what serves on the
unseen half (hit@1/5/10, MRR@10, scored with a client of its own, as production ranks), the day's gate decisions,
cycle wall time, the daemon's RSS, disk by part, store rows, lines written against lines stored, and failed
queries. At the end, what serves is compared per unseen question with the one-shot script trained on the same
traffic (bench/loop_quality.py's peer), `ragloop report` of the run is written, with a chart of the days, and the
last line is machine-readable.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.benchmarks import DIRS, REPO

RAGLOOP = [sys.executable, "-m", "daemon.cli"]


# -- the simulated world ----------------------------------------------------------------------------

def load_benchmark(arg: str) -> tuple[str, Path, list[dict], list[dict]]:
    """(name, folder, traffic questions, unseen questions): a known name or any folder with corpus.jsonl and
    questions.jsonl ({"query", "expected_ids"}; a "half" of "traffic"/"unseen", else split by hash)."""
    folder = DIRS.get(arg) or Path(arg)
    questions = [json.loads(x) for x in (folder / "questions.jsonl").read_text().splitlines() if x.strip()]
    for q in questions:
        q.setdefault("half", "unseen" if hashlib.sha256(q["query"].encode()).digest()[0] < 128 else "traffic")
    return (arg if arg in DIRS else folder.name, folder, [q for q in questions if q["half"] == "traffic"],
            [q for q in questions if q["half"] == "unseen"])


class Traffic:
    """Which questions users ask on each day: a popularity order (Zipf, s=1), new questions appearing daily.

    A question appears on a day because someone asks it: each new one is asked that day, and the rest of the
    day's questions are drawn by popularity (with repeats) from all that have appeared. The first day opens
    with ``first_share`` of the pool; the rest appear evenly until day ``growth_days`` (default: the last day).
    """

    def __init__(self, pool: list[dict], days: int, seed: int, first_share: float = 0.4,
                 growth_days: int | None = None):
        self.rng = random.Random(seed)
        self.pool = pool[:]
        self.rng.shuffle(self.pool)  # the order questions appear in, and their popularity rank
        self.growth_days = max(1, min(days, growth_days or days))
        self.first = max(1, int(len(pool) * first_share))

    def available(self, day: int) -> list[dict]:
        grow = (len(self.pool) - self.first) / max(1, self.growth_days - 1)
        return self.pool[: min(len(self.pool), self.first + int(grow * (day - 1)))]

    def draw(self, day: int, n: int) -> list[dict]:
        qs = self.available(day)
        new = qs[len(self.available(day - 1)):] if day > 1 else qs
        rest = self.rng.choices(qs, weights=[1 / (i + 1) for i in range(len(qs))], k=max(0, n - len(new)))
        day_qs = new[:n] + rest
        self.rng.shuffle(day_qs)
        return day_qs


def change_corpus(src: Path, dst: Path, answers: set[str], seed: int) -> dict[str, int]:
    """A corpus update: 10% of the chunks edited, 3% added (near-duplicates), 3% of non-answers removed."""
    rng = random.Random(seed)
    rows = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    edited = rng.sample(range(len(rows)), len(rows) // 10)
    for i in edited:
        rows[i]["text"] += " (Revised: see also the related entries in this section.)"
    removable = [i for i, r in enumerate(rows) if r["id"] not in answers and i not in edited]
    removed = set(rng.sample(removable, min(len(removable), len(rows) * 3 // 100)))
    added = [dict(rows[i], id=f"{rows[i]['id']}:copy") for i in rng.sample(range(len(rows)), len(rows) * 3 // 100)]
    kept = [r for i, r in enumerate(rows) if i not in removed] + added
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return {"edited": len(edited), "added": len(added), "removed": len(removed)}


# -- the processes ----------------------------------------------------------------------------------

class Daemon:
    """`ragloop run` as a child, its JSON log followed for its stage and cycles."""

    def __init__(self, cfg: Path, log: Path):
        self.cfg, self.log, self.proc, self.offset = cfg, log, None, 0
        self.stage, self.cycles, self.kills = "starting", [], 0

    def start(self) -> None:
        self.proc = subprocess.Popen([*RAGLOOP, "-c", str(self.cfg), "run"], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)

    def poll(self) -> None:
        """Read the log's new lines: the stage it is in and the cycles it finished."""
        with open(self.log, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a third-party line that is not JSON (the journal issue counts them)
            if ev.get("event") == "service.stage":
                self.stage = ev["stage"]
            elif ev.get("event") == "service.cycle":
                self.cycles.append(ev)
        if self.proc.poll() is not None and self.stage != "killed":
            raise RuntimeError(f"the daemon exited with {self.proc.returncode}; see {self.log}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the daemon and its training child: a power cut
        self.proc.wait()
        self.kills += 1
        self.stage = "killed"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=300)


class Service:
    """examples/rag_service.py on the manifest, logging to ``log``."""

    def __init__(self, manifest: Path, log: Path, err: Path):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "rag_service.py"), "--manifest",
                                      str(manifest), "--log", str(log), "--port", "0", "--device", "cpu"],
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = ""
        while "serving" not in line:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("the reference service exited at start")
        self.url = line.split("http://", 1)[1].split()[0]
        self.err = open(err, "w")
        threading.Thread(target=shutil.copyfileobj, args=(self.proc.stderr, self.err), daemon=True).start()

    def search(self, query: str) -> dict:
        q = urllib.parse.quote(query)
        with urllib.request.urlopen(f"http://{self.url}/search?q={q}&k=10", timeout=60) as r:
            return json.loads(r.read())

    def label(self, request_id: str, expected_ids: list[str]) -> None:
        body = json.dumps({"request_id": request_id, "expected_ids": expected_ids}).encode()
        req = urllib.request.Request(f"http://{self.url}/feedback", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 204

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://{self.url}/healthz", timeout=60) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.err.close()


def ragloop(cfg: Path, *args: str) -> str:
    out = subprocess.run([*RAGLOOP, "-c", str(cfg), *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"ragloop {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def logrotate(logs: Path, state: Path) -> None:
    conf = logs.parent / "logrotate.conf"
    conf.write_text(f"{logs}/service.jsonl {{\n  create 0640\n  rotate 1000\n  compress\n  delaycompress\n"
                    "  missingok\n  notifempty\n}\n")
    subprocess.run(["logrotate", "-f", "-s", str(state), str(conf)], check=True)


def lines_written(logs: Path) -> int:
    n = 0
    for f in logs.glob("service.jsonl*"):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rb") as fh:
            n += sum(1 for _ in fh)
    return n


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1) if path.exists() else 0.0


# -- the run ----------------------------------------------------------------------------------------

def config_text(work: Path, args: argparse.Namespace, day_s: float) -> str:
    """The daemon's config.toml: the defaults but for the simulated clock, and --set overrides."""
    tables: dict[str, dict[str, object]] = {
        "": {"state_dir": str(work / "state")},
        "log": {"level": "info", "format": "json"},
        "ingest": {"paths": [str(work / "logs" / "service.jsonl*")], "label_wait_s": 3 * day_s},
        "schedule": {"ingest_interval_s": 2.0, "check_interval_s": 3.0, "min_new_pairs": args.min_new_pairs,
                     "min_cycle_interval_s": 0.0},
        "retention": {"keep_rejected_days": day_s / 86400},  # one simulated day
        "train.reranker": {"min_pairs": 10**9} if args.kinds == ["embedder"] else {},
        "service": {"heartbeat_interval_s": 5.0},
    }
    for item in args.set:
        key, _, value = item.partition("=")
        table, _, name = key.rpartition(".")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        tables.setdefault(table, {})[name] = parsed
    out = []
    for table, values in tables.items():
        if values:
            out.append(f"[{table}]" if table else "")
            out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="examples", help=f"{' or '.join(DIRS)}, or a folder with corpus.jsonl "
                    "and questions.jsonl")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--queries", type=int, default=100, help="questions asked per day (with repeats; each new "
                    "question is asked the day it appears)")
    ap.add_argument("--growth-days", type=int, default=None, help="the day the last of the traffic questions "
                    "appears (default: the last day); the first day opens with 40%% of them")
    ap.add_argument("--label-share", type=float, default=0.8, help="share of answers whose label ever arrives")
    ap.add_argument("--min-new-pairs", type=int, default=40, help="schedule.min_new_pairs: a cycle's trigger")
    ap.add_argument("--kinds", nargs="+", choices=("embedder", "reranker"), default=["embedder"],
                    help="what the daemon trains (embedder: the reranker's min_pairs is set out of reach)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help='a config override, JSON value, e.g. train.embedder.max_steps=40 (repeatable)')
    ap.add_argument("--kill-day", type=int, default=None, help="SIGKILL the daemon during the first cycle's "
                    "training from this day on (default: day 3; 0: never)")
    ap.add_argument("--rollback-day", type=int, default=None, help="`ragloop rollback embedder` at the end of the "
                    "first day from this one on that follows a promotion (default: 60%% of the days; 0: never)")
    ap.add_argument("--corpus-day", type=int, default=None, help="the day the corpus changes (default: the middle "
                    "day; 0: never)")
    ap.add_argument("--force-promote-day", type=int, default=0, help="on this day, if the gate promoted nothing yet, an "
                    "operator ships the newest candidate with `ragloop promote embedder N --force` (the CI variant: "
                    "a few training steps on a tiny corpus cannot earn a promotion); 0: never")
    ap.add_argument("--no-script", action="store_true", help="skip the one-shot script peer at the end")
    ap.add_argument("--out", type=Path, default=None, help="folder for the report, chart and per-day JSON "
                    "(default bench/out/live-<benchmark>)")
    ap.add_argument("--work", type=Path, default=None, help="keep the run's state here (default: a temp folder)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if shutil.which("logrotate") is None:
        ap.error("logrotate is not installed (apt-get install logrotate)")
    kill_day = 3 if args.kill_day is None else args.kill_day
    rollback_day = max(2, round(args.days * 0.6)) if args.rollback_day is None else args.rollback_day
    corpus_day = max(1, (args.days + 1) // 2) if args.corpus_day is None else args.corpus_day
    name, folder, pool, unseen = load_benchmark(args.benchmark)
    out = args.out or REPO / "bench" / "out" / f"live-{name}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = None if args.work else tempfile.TemporaryDirectory()
    work = (args.work or Path(tmp.name)).resolve()  # logrotate takes absolute paths only
    try:
        return run(args, name, folder, pool, unseen, work, out, kill_day, rollback_day, corpus_day)
    finally:
        if tmp is not None:
            tmp.cleanup()


def run(args, name, folder, pool, unseen, work, out, kill_day, rollback_day, corpus_day) -> int:
    from daemon.config import load_settings
    from daemon.models import score
    from daemon.observe import build_report, collect_status
    from daemon.store import open_store
    from ragloop_client import Retriever

    t_start = time.monotonic()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cfg = work / "config.toml"
    cfg.write_text(config_text(work, args, day_s=120.0))
    settings = load_settings(cfg)
    corpus_file = work / "corpus.jsonl"
    shutil.copyfile(folder / "corpus.jsonl", corpus_file)
    ragloop(cfg, "corpus", "load", str(corpus_file))
    ragloop(cfg, "index", "build")
    print(f"live: {name}, {args.days} days, {args.queries} questions a day from {len(pool)} (new ones appearing "
          f"daily), {len(unseen)} unseen, labels for {args.label_share:.0%}; config {cfg}:\n{cfg.read_text()}",
          flush=True)
    daemon = Daemon(cfg, work / "daemon.log")
    daemon.start()
    service = Service(settings.manifest_path, logs / "service.jsonl", work / "service.err")
    engine = open_store(settings.store_url, migrate=False)
    unseen_client = Retriever(settings.manifest_path, device="cpu", watch=False)
    traffic = Traffic(pool, args.days, args.seed, growth_days=args.growth_days)
    rng = random.Random(args.seed + 1)
    days, later_labels, failed, wrong, asked = [], [], 0, {}, []
    pending_kill, rolled_back, decisions_seen = kill_day > 0, False, 0
    try:
        for day in range(1, args.days + 1):
            t_day = time.monotonic()
            for rid, ids in later_labels:  # yesterday's late labels
                service.label(rid, ids)
            later_labels = []
            questions = traffic.draw(day, args.queries)
            with ThreadPoolExecutor(4) as pool_ex:
                answers = list(pool_ex.map(lambda q: _ask(service, q), questions))
            failed += sum(a is None for a in answers)
            hits = hit1 = repeats = repeat_misses = 0
            versions = set()
            asked_before = set(wrong)
            for q, a in zip(questions, answers):
                if a is None:
                    continue
                ids = [h["chunk_id"] for h in a["hits"]]
                hit = bool(set(q["expected_ids"]) & set(ids))
                hits += hit
                if q["query"] in asked_before:  # asked on an earlier day: what learning from traffic can fix
                    repeats += 1
                    repeat_misses += not hit
                hit1 += bool(ids) and ids[0] in q["expected_ids"]
                versions.add(a["version"])
                if q["query"] not in wrong:
                    asked.append(q)
                    wrong[q["query"]] = next((i for i in ids if i not in q["expected_ids"]), ids[-1] if ids else None)
                r = rng.random()
                if r < args.label_share / 2:
                    service.label(a["request_id"], q["expected_ids"])
                elif r < args.label_share:
                    later_labels.append((a["request_id"], q["expected_ids"]))
            answered = sum(a is not None for a in answers)
            logrotate(logs, work / "logrotate.state")
            ops = []
            if day == corpus_day:
                answers_ids = {i for q in pool + unseen for i in q["expected_ids"]}
                changed = change_corpus(corpus_file, corpus_file.with_name("corpus-v2.jsonl"), answers_ids, args.seed)
                shutil.move(corpus_file.with_name("corpus-v2.jsonl"), corpus_file)
                ragloop(cfg, "corpus", "load", str(corpus_file))
                ops.append("corpus changed ({edited} edited, {added} added, {removed} removed)".format(**changed))
            cycle_s, killed = _settle(daemon, engine, settings, logs, pending_kill and day >= kill_day)
            if killed:
                pending_kill = False
                ops.append("daemon SIGKILLed in training, restarted")
                cycle_s += _settle(daemon, engine, settings, logs, False)[0]
            if day == args.force_promote_day and not any(
                    d["outcome"] in ("promote", "forced") for d in _decisions(engine, 0)):
                newest = _newest_candidate(engine)
                if newest is not None:
                    ragloop(cfg, "promote", "embedder", str(newest), "--force")
                    ops.append(f"operator forced embedder v{newest} into service")
            new_decisions = _decisions(engine, decisions_seen)
            decisions_seen += len(new_decisions)
            if (not rolled_back and rollback_day and day >= rollback_day
                    and any(d["outcome"] in ("promote", "forced") for d in _decisions(engine, 0))):
                ragloop(cfg, "rollback", "embedder")
                rolled_back = True
                ops.append("operator rollback of the embedder")
            unseen_client.reload()
            results = [unseen_client.search(q["query"], k=10) for q in unseen]
            sv = score([r.ids for r in results], [set(q["expected_ids"]) for q in unseen]).mean()
            st = collect_status(engine, settings)
            stored = _stored_lines(engine)
            disk = dict(st["disk_mb"] or {}, logs=folder_mb(logs))
            rec = {"day": day, "asked": len(questions), "answered": answered,
                   "miss_rate": round(1 - hits / answered, 4) if answered else None,
                   "hit1": round(hit1 / answered, 4) if answered else None, "served_by": sorted(versions),
                   "repeat_miss_rate": round(repeat_misses / repeats, 4) if repeats else None, "repeats": repeats,
                   "unseen": {m: round(sv[m], 4) for m in ("hit@1", "hit@5", "hit@10", "mrr@10")},
                   "serving": unseen_client.version, "service_version": service.health()["version"],
                   "decisions": new_decisions, "cycle_s": round(cycle_s, 1),
                   "daemon_rss_mb": round(daemon.rss_mb(), 1), "disk_mb": disk,
                   "rows": {"events": st["events"] + st["unlabeled"], "unlabeled": st["unlabeled"],
                            "labels_joined": st["labels"]["joined"], "labels_waiting": st["labels"]["waiting"],
                            "pairs": sum(sum(o.values()) for o in st["pairs"].values())},
                   "lines_written": lines_written(logs), "lines_stored": stored, "failed_queries": failed,
                   "ops": ops, "wall_s": round(time.monotonic() - t_day, 1)}
            days.append(rec)
            _print_day(rec)
        for rid, ids in later_labels:  # the last day's late labels, then everything read
            service.label(rid, ids)
        _settle(daemon, engine, settings, logs, False)
        final_written, final_stored = lines_written(logs), _stored_lines(engine)
    finally:
        unseen_client.close()
        service.stop()
        daemon.stop()
    script = None
    if not args.no_script:
        script = _script_peer(engine, asked, wrong, unseen, work, results)
    (out / "days.json").write_text(json.dumps(days, indent=1))
    (out / "report.html").write_text(build_report(engine), encoding="utf-8")
    (out / "days.svg").write_text(chart(days, name))
    engine.dispose()
    print("\n" + by_version(days))
    promotions = sum(d["outcome"] in ("promote", "forced") for r in days for d in r["decisions"])
    rss = [r["daemon_rss_mb"] for r in days]
    growth = (max(rss[1:]) / rss[1] - 1) if len(rss) > 1 else 0.0
    # Before its first cycle the daemon has loaded no model (~170-190 MB); the growth that says whether memory
    # leaks over many cycles is measured from the end of the first day with a gate decision (a cycle that waited
    # for held-out queries loads none).
    first = next((i for i, r in enumerate(days) if r["decisions"]), None)
    growth_cycles = (max(rss[first:]) / rss[first] - 1) if first is not None else 0.0
    state_mb = [r["disk_mb"].get("total", 0.0) for r in days]
    last = days[-1]
    script_part = (f"script_hit1={script['hit@1']:.3f} script_mrr10={script['mrr@10']:.3f} ") if script else ""
    print(f"\nwrote {out / 'days.json'}, {out / 'report.html'}, {out / 'days.svg'}")
    print(f"benchmark={name} days={args.days} miss_rate_day1={days[0]['miss_rate']:.3f} "
          f"miss_rate_last={last['miss_rate']:.3f} repeat_miss_rate_day2={days[1]['repeat_miss_rate'] if len(days) > 1 else None} "
          f"repeat_miss_rate_last={last['repeat_miss_rate']} promotions={promotions} cycles={len(daemon.cycles)} "
          f"serving_hit1={last['unseen']['hit@1']:.3f} serving_mrr10={last['unseen']['mrr@10']:.3f} {script_part}"
          f"lines_written={final_written} events_stored={final_stored['events']} labels_stored={final_stored['labels']} "
          f"quarantined={final_stored['quarantined']} failed_queries={failed} rss_growth={growth:.3f} "
          f"rss_growth_after_first_cycle={growth_cycles:.3f} "
          f"state_mb_last={state_mb[-1]:.1f} state_mb_peak={max(state_mb):.1f} kills={daemon.kills} "
          f"rollback={int(rolled_back)} wall_s={time.monotonic() - t_start:.0f}")
    return 0


def _ask(service: Service, q: dict) -> dict | None:
    try:
        return service.search(q["query"])
    except Exception as exc:  # a failed query is a finding, counted, not a crash of the benchmark
        print(f"  failed query {q['query'][:60]!r}: {exc}", flush=True)
        return None


def _stored_lines(engine) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        n = {k: conn.scalar(sa.text(sql)) for k, sql in (
            ("events", "SELECT count(*) FROM feedback_events"), ("labels", "SELECT count(*) FROM feedback_labels"),
            ("quarantined", "SELECT count(*) FROM quarantine WHERE resolved_at IS NULL"))}
    return {**n, "total": sum(n.values())}


def _decisions(engine, after: int) -> list[dict]:
    import sqlalchemy as sa

    from daemon.store import decision_figures

    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, candidate_version, outcome, reason, figures FROM gate_decisions "
                                    "ORDER BY id")).all()[after:]
    return [{"kind": k, "candidate": v, "outcome": o, "gain": decision_figures(f).get("gain"), "reason": r}
            for k, v, o, r, f in rows]


def _newest_candidate(engine) -> int | None:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT max(version) FROM model_versions WHERE kind = 'embedder' AND status IN "
                                   "('candidate', 'rejected', 'undecided')"))


def _settle(daemon: Daemon, engine, settings, logs: Path, kill: bool) -> tuple[float, bool]:
    """Wait until the daemon has stored every line written and finished the cycles they made due.

    Returns (seconds spent in cycles, whether it was SIGKILLed in training (``kill``) and restarted)."""
    written, deadline = lines_written(logs), time.monotonic() + 4 * 3600
    quiet = settings.schedule.check_interval_s + settings.schedule.ingest_interval_s + 3
    cycle_s, started, calm_since = 0.0, None, None
    while True:
        assert time.monotonic() < deadline, "the daemon did not settle in 4 hours"
        daemon.poll()
        now = time.monotonic()
        busy = daemon.stage not in ("idle", "starting")
        if kill and daemon.stage.startswith("training"):
            print(f"  SIGKILL the daemon during {daemon.stage!r}; restarting it", flush=True)
            daemon.kill()
            daemon.start()
            daemon.stage = "starting"
            return cycle_s + (now - started if started else 0.0), True
        if busy and started is None:
            started = now
        elif not busy and started is not None:
            cycle_s, started = cycle_s + now - started, None
        caught_up = _stored_lines(engine)["total"] >= written
        calm_since = (calm_since or now) if caught_up and not busy else None
        if calm_since is not None and now - calm_since >= quiet:
            return cycle_s, False
        time.sleep(0.5)


def _print_day(r: dict) -> None:
    u = r["unseen"]
    rep = "-" if r["repeat_miss_rate"] is None else f"{r['repeat_miss_rate']:.3f}"
    print(f"day {r['day']:2d}: production miss rate {r['miss_rate']:.3f} ({rep} on {r['repeats']} repeated questions) "
          f"hit@1 {r['hit1']:.3f} on {r['answered']} answers ({', '.join(r['served_by'])}) | unseen hit@1 {u['hit@1']:.3f} hit@5 {u['hit@5']:.3f} "
          f"hit@10 {u['hit@10']:.3f} mrr@10 {u['mrr@10']:.3f} ({r['serving']}) | cycles {r['cycle_s']:.0f}s, "
          f"daemon {r['daemon_rss_mb']:.0f} MB, state {r['disk_mb'].get('total', 0):.0f} MB (models "
          f"{r['disk_mb'].get('models', 0):.0f}, qdrant {r['disk_mb'].get('qdrant', 0):.0f}, cache "
          f"{r['disk_mb'].get('cache', 0):.0f}, store {r['disk_mb'].get('store', 0):.0f}, logs {r['disk_mb']['logs']:.0f}) "
          f"| lines {r['lines_written']} written, {r['lines_stored']['total']} stored | failed {r['failed_queries']} "
          f"| {r['wall_s']:.0f}s", flush=True)
    for d in r["decisions"]:
        gain = "" if d["gain"] is None else f" ({d['gain']:+.4f})"
        print(f"        gate: {d['kind']} v{d['candidate']} -> {d['outcome']}{gain}: {d['reason'][:160]}", flush=True)
    for op in r["ops"]:
        print(f"        operations: {op}", flush=True)


def _script_peer(engine, asked: list[dict], wrong: dict, unseen: list[dict], work: Path, results) -> dict:
    """The one-shot script on every question production was asked (its top wrong chunk as the negative),
    against what serves, per unseen question."""
    from bench.loop_quality import print_paired, script_unseen
    from daemon.models import Corpus, Scores, pick_device, score

    corpus = Corpus(engine)
    seen = [q for q in asked if wrong.get(q["query"]) in corpus.text_of
            and all(p in corpus.text_of for p in q["expected_ids"])]
    script = script_unseen(corpus, seen, wrong, unseen, work / "script", pick_device("auto"))
    serving = score([r.ids for r in results], [set(q["expected_ids"]) for q in unseen])
    print(f"\none-shot script on the {len(seen)} questions production was asked, on the {len(unseen)} unseen:")
    print_paired(Scores(serving.per_query), script, "what serves - the one-shot script")
    return script.mean()


def by_version(days: list[dict]) -> str:
    """Production's answers pooled by the model that served them (whole days; a day's traffic is answered before
    its cycle, so one version serves a day), with 95% Wilson intervals: what users experienced under each."""
    from daemon.observe import wilson

    runs: list[tuple[str, list[dict]]] = []
    for r in days:
        v = ", ".join(r["served_by"])
        if runs and runs[-1][0] == v:
            runs[-1][1].append(r)
        else:
            runs.append((v, [r]))
    lines = ["production by serving version (consecutive days pooled; 95% Wilson intervals):",
             "| days | serving | answers | miss rate | hit@1 |", "| --- | --- | --- | --- | --- |"]
    for v, rs in runs:
        n = sum(r["answered"] for r in rs)
        miss = round(sum(r["miss_rate"] * r["answered"] for r in rs))
        hit1 = round(sum(r["hit1"] * r["answered"] for r in rs))
        (ml, mh), (hl, hh) = wilson(miss, n), wilson(hit1, n)
        span = f"{rs[0]['day']}" if len(rs) == 1 else f"{rs[0]['day']}-{rs[-1]['day']}"
        lines.append(f"| {span} | {v} | {n} | {miss / n:.3f} [{ml:.3f}, {mh:.3f}] | {hit1 / n:.3f} [{hl:.3f}, {hh:.3f}] |")
    return "\n".join(lines)


def chart(days: list[dict], name: str) -> str:
    """An SVG of the days: production's miss rates, hit@1, and the state directory and daemon memory, with what
    happened each day."""
    w, left, right, n = 780, 60, 24, len(days)
    pct, mb = (lambda v: f"{v:.1%}"), (lambda v: f"{v:,.0f}")  # noqa: E731
    panels = [("production miss rate", pct, [("miss_rate", "#d62728", "that day's traffic"),
                                             ("repeat_miss_rate", "#ff7f0e", "repeated questions")]),
              ("hit@1", pct, [("hit1", "#1f77b4", "production, that day's traffic"),
                              ("unseen", "#17becf", "what serves, on the unseen half")]),
              ("MB at the end of the day", mb, [("state", "#7f7f7f", "state directory"),
                                                ("models", "#bcbd22", "of which models"),
                                                ("rss", "#e377c2", "daemon RSS")])]
    keys = {"unseen": lambda r: r["unseen"]["hit@1"], "state": lambda r: r["disk_mb"].get("total"),
            "models": lambda r: r["disk_mb"].get("models"), "rss": lambda r: r.get("daemon_rss_mb")}
    value = lambda r, k: keys[k](r) if k in keys else r.get(k)  # noqa: E731
    x = lambda d: left + (d - 1) * (w - left - right) / max(1, n - 1)  # noqa: E731
    ph, gap, top = 150, 56, 64
    bottom = top + len(panels) * ph + (len(panels) - 1) * gap
    h = bottom + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14">bench/live.py on {name}: {n} simulated days beside a live service</text>']
    events = [(r["day"], label, color) for r in days for on, color, label in (
        (any(d["outcome"] == "promote" for d in r["decisions"]), "#2ca02c", "promoted"),
        (any(d["outcome"] == "forced" for d in r["decisions"]), "#2ca02c", "forced"),
        (any("rollback" in o for o in r["ops"]), "#8c564b", "rollback"),
        (any("SIGKILL" in o for o in r["ops"]), "#000000", "kill"),
        (any("corpus" in o for o in r["ops"]), "#9467bd", "corpus")) if on]
    for i, (day, label, color) in enumerate(events):
        out.append(f'<line x1="{x(day):.1f}" x2="{x(day):.1f}" y1="{top - 6}" y2="{bottom}" stroke="{color}" '
                   f'stroke-dasharray="3,3"/><text x="{x(day) + 3:.1f}" y="{34 + 11 * (i % 2)}" fill="{color}" '
                   f'font-size="10">{label}</text>')
    for pi, (title, fmt, series) in enumerate(panels):
        y0 = top + pi * (ph + gap)
        vals = [value(r, k) for r in days for k, _, _ in series if value(r, k) is not None]
        if fmt is mb:
            lo, hi = 0.0, max(1.0, max(vals, default=1.0) * 1.1)
        elif pi == 0:
            lo, hi = 0.0, max(0.05, max(vals, default=0.05) * 1.25)
        else:
            lo, hi = max(0.0, min(vals, default=0.0) - 0.05), min(1.0, max(vals, default=1.0) + 0.05)
        y = lambda v: y0 + (1 - (v - lo) / (hi - lo)) * ph  # noqa: E731
        out.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        for j in range(5):
            v = lo + (hi - lo) * j / 4
            out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e6e6e6"/>'
                       f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
        for i, (key, color, label) in enumerate(series):
            pts = [(x(r["day"]), y(value(r, key))) for r in days if value(r, key) is not None]
            out.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" fill="none" '
                       f'stroke="{color}" stroke-width="2"/>')
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"/>' for a, b in pts]
            out.append(f'<rect x="{left + 200 + i * 180}" y="{y0 - 17}" width="12" height="3" fill="{color}"/>'
                       f'<text x="{left + 216 + i * 180}" y="{y0 - 12}" font-size="11">{label}</text>')
    out += [f'<text x="{x(r["day"]):.1f}" y="{bottom + 16}" text-anchor="middle">{r["day"]}</text>' for r in days]
    out.append(f'<text x="{(w + left) / 2:.0f}" y="{bottom + 32}" text-anchor="middle">simulated day</text></svg>')
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
