"""Durability and speed of ``prefkit serve`` under load, side by side with Label Studio.

prefkit: ``prefkit serve`` (uvicorn; one process, or ``--workers N`` processes sharing the port)
on a fresh store with 50 annotators and one pairwise campaign at overlap 3 (7,334 items: 10%
more label slots than labels, so that clients do not run out of items near the end). 50
concurrent simulated annotators (asyncio + one aiohttp session each, see ``_serve_client.py``;
no think time) lease an item with
``POST /api/campaigns/{id}/next`` and then loop on ``POST /api/campaigns/{id}/labels?next=true``
(answer + the next lease in one round trip) with a fresh idempotency key per label; ~5% of
first responses are "lost" (half thrown away after they arrive, half cut by a 1-30 ms client
timeout) and the request is sent again with the same key; connection errors and 5xx are retried
with the same key until acknowledged. After 40% of the labels (8,000 of 20,000) the server is
killed with SIGKILL (its whole process group: the supervisor and every worker), restarted on
the same store, and the clients retry through the outage.
Run on SQLite, and on PostgreSQL too when ``--postgres URL`` or PREFKIT_TEST_POSTGRES_URL is
given (a fresh schema per run, dropped afterwards).

Checks, read back from the store with SQL: every acknowledged idempotency key is stored under
the label id the client was given (0 lost), keys unique, one label per (item, annotator),
records == labels (0 duplicated), nothing stored that no client had acknowledged, no item over
its overlap and every item's label count consistent.

Figures: labels/s = acknowledged labels / (load wall seconds - the outage: SIGKILL until the
restarted server answers /healthz), also reported including the outage; submit latency
p50/p95/p99 over every successful (200/201) submit request, measured by the client; retries,
replays (responses the server marked ``replayed``) and the server's CPU time per label (from
the first server's readiness on, the restarted one's startup included: a figure that other
load on a shared machine disturbs less than wall time; PostgreSQL's own processes not counted).
``--profile-server PREFIX`` runs the server under cProfile in every thread
(``_serve_profiled.py``) to see where that CPU goes. With ``--workers N`` the server's CPU is
summed over its processes.

Peer (``_serve_label_studio.py``): Label Studio from PyPI in its own virtualenv (created once
under ~/.cache/prefkit-bench), ``label-studio start`` with its defaults (SQLite, Django's
threaded server) on a temporary data folder; a project with a pairwise-choice config, the same
items imported as tasks, and the same number of annotations posted with
``POST /api/tasks/{id}/annotations/`` by the same clients. Label Studio has no server-side
leasing with overlap in its open-source edition and no idempotency key, so (a) each client
gets a fixed list of tasks such that every task gets 3 annotations from 3 different users (50
users created in its database) and (b) a lost response is checked for with
``GET /api/tasks/{id}/annotations/`` before the annotation is sent again (only the
"discard" kind of loss: a timed-out request may still be running, and a retry could store it
twice). No kill/restart on the peer side. The comparison is of the write path under
concurrent load; prefkit's requests also lease the next item and check overlap. The peer's
wall-clock cap (``--peer-cap-s``, default 1 h) may end its run early on a slow machine: its
figures are then over the annotations it got through (``capped: true``).

``agree``: prefkit's checks pass on every backend and the peer stored every annotation it
acknowledged. Copies the peer stored beyond those are reported (``peer.checks``), not required:
under concurrent writes Label Studio on SQLite answers 500 "database is locked", and its
``DatabaseIsLockedRetryMiddleware`` re-runs such a request after the annotation was committed.

    python bench/serve_load.py [--quick] [--json] [--postgres URL] [--with-peer | --no-peer]

``--quick``: 2,000 labels, 10 clients (734 items), the peer skipped unless ``--with-peer``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402
from _serve_prefkit import make_items, run_backend  # noqa: E402

GOAL = {"p95_ms_max": 100, "labels_per_s_min": 500, "ratio_min": 3}


def log(message: str) -> None:
    print(f"[serve_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 labels, 10 clients; the peer only with --with-peer")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--postgres", default=os.environ.get("PREFKIT_TEST_POSTGRES_URL"),
                        help="also run on PostgreSQL (an SQLAlchemy URL; default "
                             "PREFKIT_TEST_POSTGRES_URL)")
    peer = parser.add_mutually_exclusive_group()
    peer.add_argument("--with-peer", action="store_true", help="run the peer in --quick too")
    peer.add_argument("--no-peer", action="store_true", help="skip the peer")
    parser.add_argument("--labels", type=int, help="labels to acknowledge (default 20,000; "
                                                   "--quick 2,000)")
    parser.add_argument("--clients", type=int, help="concurrent annotators (default 50; "
                                                    "--quick 10)")
    parser.add_argument("--loss", type=float, default=0.05,
                        help="probability that a client loses a response (default 0.05)")
    parser.add_argument("--cap-s", type=float, default=900.0,
                        help="wall-clock cap of each prefkit load run (s)")
    parser.add_argument("--peer-cap-s", type=float, default=3600.0,
                        help="wall-clock cap of the peer's load run (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1,
                        help="prefkit serve --workers: server processes (default 1)")
    parser.add_argument("--profile-server", type=Path, metavar="PREFIX",
                        help="run prefkit serve under cProfile (all threads); writes "
                             "PREFIX.<start>.prof per server process (the SIGKILLed one "
                             "writes nothing)")
    args = parser.parse_args()
    labels = args.labels or (2_000 if args.quick else 20_000)
    clients = args.clients or (10 if args.quick else 50)
    # 10% more label slots than labels: near the end clients still find items (7,334 for 20,000)
    n_items = -(-labels * 11 // 30)
    items = make_items(n_items, args.seed)
    common = {"items": items, "labels": labels, "clients": clients, "loss": args.loss,
              "seed": args.seed, "kill_fraction": 0.4, "workers": args.workers}
    result: dict = {"bench": "serve_load", "labels": labels, "clients": clients,
                    "items": n_items, "overlap": 3, "loss": args.loss}
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp_name:
        tmp = Path(tmp_name)
        runs = {}
        backends = [("sqlite", None)] + ([("postgresql", args.postgres)] if args.postgres
                                         else [])
        for backend, base in backends:
            log(f"prefkit on {backend}: {labels} labels, {clients} clients")
            (tmp / backend).mkdir()
            runs[backend] = run_backend(backend, base, tmp / backend, cap_s=args.cap_s,
                                        profile=args.profile_server, **common)
            r = runs[backend]
            log(f"prefkit {backend}: {r['labels_per_s']} labels/s, p95 {r['submit_p95_ms']} ms, "
                f"checks ok={r['checks']['ok']}")
        result["prefkit"] = {
            "labels_per_s": runs["sqlite"]["labels_per_s"],
            "submit_p50_ms": runs["sqlite"]["submit_p50_ms"],
            "submit_p95_ms": runs["sqlite"]["submit_p95_ms"],
            **runs,
        }
        run_peer = not args.no_peer and (not args.quick or args.with_peer)
        if run_peer:
            from _serve_label_studio import run_peer as peer_run

            log(f"peer: Label Studio, {labels} annotations, {clients} clients")
            (tmp / "peer").mkdir()
            try:
                result["peer"] = peer_run(items=items, labels=labels, clients=clients,
                                          loss=args.loss, seed=args.seed, cap_s=args.peer_cap_s,
                                          tmp=tmp / "peer", log=log)
            except Exception as exc:  # the peer failing is reported, not fatal
                result["peer"] = {"name": "label-studio", "error": f"{type(exc).__name__}: "
                                                                  f"{exc}"[:3000]}
        else:
            result["peer"] = {"name": "label-studio", "skipped": "--quick without --with-peer"
                              if args.quick else "--no-peer"}
    peer_rate = result["peer"].get("labels_per_s")
    result["ratio"] = (round(result["prefkit"]["labels_per_s"] / peer_rate, 2)
                       if peer_rate else None)
    checks = [r["checks"]["ok"] for r in runs.values()]
    if "labels_per_s" in result["peer"]:
        checks.append(result["peer"]["checks"]["stored_all"])
    result["agree"] = all(checks)
    sqlite = runs["sqlite"]
    result["goal"] = GOAL
    result["goal_met"] = {
        "p95": sqlite["submit_p95_ms"] is not None
        and sqlite["submit_p95_ms"] <= GOAL["p95_ms_max"],
        "labels_per_s": sqlite["labels_per_s"] >= GOAL["labels_per_s_min"],
        "ratio": None if result["ratio"] is None else result["ratio"] >= GOAL["ratio_min"],
        "p95_below_peer": (None if "submit_p95_ms" not in result["peer"] else
                           sqlite["submit_p95_ms"] < result["peer"]["submit_p95_ms"]),
    }
    result["machine"] = machine()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
