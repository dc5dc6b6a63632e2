"""prefkit's side of ``serve_load.py``: the store and campaign set up through the Python service
API, ``prefkit serve`` as a subprocess on 127.0.0.1 (killed with SIGKILL once mid-run and
restarted on the same store), the clients' protocol, and the checks on the store afterwards.

PostgreSQL runs get a fresh schema (``CREATE SCHEMA``, reached through libpq's
``options=-csearch_path=...`` in the URL), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from _serve_client import Http, Side, Stats, call, percentiles_ms, run_load

HERE = Path(__file__).parent
CHOICES = ("first", "second", "tie", "both_bad")
OVERLAP = 3
WORDS = ("the", "model", "answers", "with", "a", "short", "list", "of", "steps", "and", "one",
         "example", "each;", "then", "it", "checks", "result", "against", "question", "explains",
         "why", "answer", "is", "correct")


def make_items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` pairwise items: a prompt and two responses of ~40-80 words (deterministic)."""
    import random

    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    return [{"prompt": f"Question {i}: {text(8, 20)}?",
             "responses": [text(40, 80), text(40, 80)]} for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Store: URL, setup, checks
# ---------------------------------------------------------------------------------------------


def pg_schema_url(base: str, schema: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(base)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)


def pg_schema(base: str, schema: str, action: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(base)
    try:
        with engine.begin() as conn:
            if action == "create":
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            else:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        engine.dispose()


def setup_store(url: str, items: list[dict[str, Any]], annotators: int) -> tuple[int, list[str]]:
    """A fresh store with ``annotators`` annotators and one pairwise campaign (overlap 3) on
    ``items``: (campaign id, tokens)."""
    from prefkit.data.store import FeedbackStore
    from prefkit.serve.service import add_annotator, create_campaign
    from prefkit.serve.tasks import TaskSettings

    with FeedbackStore(url) as store:
        tokens = [add_annotator(store, f"annotator-{i:03d}") for i in range(annotators)]
        campaign = create_campaign(store, "serve-load", TaskSettings(task="pairwise"), items,
                                   overlap=OVERLAP)
    return campaign.id, tokens


def check_store(url: str, campaign_id: int, acked: list[tuple[Any, str]]) -> dict[str, Any]:
    """0 lost, 0 duplicated, overlap respected -- read back from the store with SQL."""
    import sqlalchemy as sa

    from prefkit.data.app_schema import ITEMS, LABELS
    from prefkit.data.store import RECORDS, FeedbackStore

    with FeedbackStore(url, create=False) as store:
        def read(conn: Any) -> tuple:
            labels = conn.execute(sa.select(
                LABELS.c.id, LABELS.c.idempotency_key, LABELS.c.item_id, LABELS.c.annotator_id,
                LABELS.c.record_id).where(LABELS.c.campaign_id == campaign_id)).all()
            items = conn.execute(sa.select(ITEMS.c.id, ITEMS.c.n_labels, ITEMS.c.full).where(
                ITEMS.c.campaign_id == campaign_id)).all()
            records = conn.execute(sa.select(sa.func.count()).select_from(RECORDS)).scalar_one()
            linked = conn.execute(sa.select(sa.func.count()).select_from(LABELS).join(
                RECORDS, RECORDS.c.id == LABELS.c.record_id).where(
                LABELS.c.campaign_id == campaign_id)).scalar_one()
            return labels, items, records, linked

        labels, items, records, linked = store.read(read)
    stored = {row.idempotency_key: row.id for row in labels}
    acked_keys = [key for _, key in acked]
    per_item = Counter(row.item_id for row in labels)
    pairs = Counter((row.item_id, row.annotator_id) for row in labels)
    out = {
        "acknowledged": len(acked),
        "acknowledged_distinct_keys": len(set(acked_keys)),
        "stored_labels": len(labels),
        "stored_records": records,
        "labels_with_record": linked,
        "lost": sum(key not in stored for key in acked_keys),
        "label_id_differs_from_ack": sum(key in stored and stored[key] != lid
                                         for lid, key in acked),
        "duplicated": (len(labels) - len(stored)) + sum(n - 1 for n in pairs.values())
        + abs(records - len(labels)),
        "stored_not_acknowledged": len(set(stored) - set(acked_keys)),
        "items_over_overlap": sum(n > OVERLAP for n in per_item.values()),
        "items_count_mismatch": sum(row.n_labels != per_item.get(row.id, 0)
                                    or bool(row.full) != (row.n_labels >= OVERLAP)
                                    for row in items),
    }
    out["ok"] = (out["lost"] == 0 and out["duplicated"] == 0
                 and out["acknowledged_distinct_keys"] == out["acknowledged"]
                 and out["label_id_differs_from_ack"] == 0
                 and out["stored_not_acknowledged"] == 0 and out["items_over_overlap"] == 0
                 and out["items_count_mismatch"] == 0 and linked == len(labels))
    return out


# ---------------------------------------------------------------------------------------------
# The server process
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (None when it is gone)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (the worker processes of ``prefkit
    serve --workers N``)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0
    return sum(cpu_seconds(p) or 0.0 for p in (pid, *(c.pid for c in children)))


class Server:
    """``prefkit serve`` on the store, 127.0.0.1:``port``, rate limits out of the way. With
    ``profile``, the process runs under ``_serve_profiled.py`` (cProfile in every thread)."""

    def __init__(self, url: str, port: int, log: Path, profile: Path | None = None,
                 workers: int = 1):
        self.url, self.port, self.log = url, port, log
        self.profile = profile
        self.workers = workers
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.cpu_s = 0.0

    def start(self) -> None:
        script = Path(sys.executable).parent / "prefkit"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "prefkit.cli"]
        if self.profile is not None:
            cmd = [sys.executable, str(HERE / "_serve_profiled.py"),
                   f"{self.profile}.{self.starts}.prof"]
        cmd += ["serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--rate", "100000", "--burst", "100000", "--workers", str(self.workers)]
        env = {**os.environ, "PREFKIT_STORE": self.url}
        with open(self.log, "a") as log:
            # its own session: a SIGKILL of the process group takes every worker down at once
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        self.starts += 1

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prefkit serve exited ({self.proc.returncode}):\n"
                               + self.log.read_text()[-3000:])

    def wait_ready(self, timeout: float = 120.0) -> float:
        start = time.perf_counter()
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() - start < timeout:
                self._check_alive()
                try:
                    if client.get(self.base + "/healthz").status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"prefkit serve did not answer in {timeout} s")

    async def wait_ready_async(self, timeout: float = 120.0) -> float:
        start = time.perf_counter()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.perf_counter() - start < timeout:
                self._check_alive()
                try:
                    if (await client.get(self.base + "/healthz")).status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.02)
        raise RuntimeError(f"prefkit serve did not answer in {timeout} s after the restart")

    def _account(self) -> None:
        if self.proc is not None:
            self.cpu_s += tree_cpu_seconds(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL to the server's process group (the supervisor and every worker): no
        shutdown, no flush, in-flight requests cut."""
        assert self.proc is not None
        self._account()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._account()
        self.proc.send_signal(signal.SIGTERM)  # uvicorn's supervisor stops its workers
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The clients' protocol
# ---------------------------------------------------------------------------------------------


class PrefkitSide(Side):
    """Lease with ``POST .../next``, then ``POST .../labels?next=true`` (label + next lease in
    one round trip); a replay (same idempotency key) answers 200 with the first label id."""

    loss_modes = ("discard", "timeout")
    idempotent = True

    def __init__(self, campaign_id: int, tokens: list[str]):
        self.cid = campaign_id
        self.tokens = tokens

    def client(self, slot: int, base_url: str) -> Http:
        return Http(base_url, {"authorization": f"Bearer {self.tokens[slot]}"}, timeout=60.0)

    async def start(self, slot: int, http: Http, stats: Stats) -> Any:
        resp = await call(http, "POST", f"/api/campaigns/{self.cid}/next", stats, stats.deadline)
        if resp.status_code != 200:
            raise RuntimeError(f"POST next: {resp.status_code} {resp.text[:300]}")
        found = resp.json()["assignment"]
        stats.ran_out += found is None
        return found

    def request(self, state: Any, key: str, rng: Any) -> tuple[str, dict]:
        return (f"/api/campaigns/{self.cid}/labels?next=true",
                {"assignment_id": state["assignment_id"], "idempotency_key": key,
                 "answer": {"choice": rng.choice(CHOICES)},
                 "seconds": round(rng.uniform(2.0, 30.0), 3)})

    def parse(self, body: dict) -> tuple[Any, bool]:
        return body["label_id"], bool(body["replayed"])

    async def advance(self, slot: int, http: Http, state: Any, body: dict | None,
                      stats: Stats) -> Any:
        following = body.get("next") if body else None
        return following if following is not None else await self.start(slot, http, stats)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def run(backend: str, url: str, *, items: list[dict[str, Any]], labels: int, clients: int,
        loss: float, seed: int, cap_s: float, kill_fraction: float | None, tmp: Path,
        profile: Path | None = None, workers: int = 1) -> dict[str, Any]:
    """Set up, serve (``workers`` processes), load (with one SIGKILL + restart), stop,
    check."""
    start = time.perf_counter()
    campaign_id, tokens = setup_store(url, items, clients)
    setup_s = time.perf_counter() - start
    server = Server(url, free_port(), tmp / f"prefkit-{backend}.log",
                    None if profile is None else profile.with_name(f"{profile.name}-{backend}"),
                    workers=workers)
    server.start()
    startup_s = server.wait_ready()
    cpu_ready = tree_cpu_seconds(server.proc.pid)  # imports and startup, not the load
    kill_at = None if kill_fraction is None else int(labels * kill_fraction)
    outage: dict[str, Any] = {}

    async def monitor(stats: Stats) -> None:
        if kill_at is None:
            return
        while len(stats.acked) < kill_at:
            await asyncio.sleep(0.005)
        t_kill = time.perf_counter()
        outage["killed_at_acknowledged"] = len(stats.acked)
        outage["in_flight_at_kill"] = stats.claimed - len(stats.acked)
        server.kill()
        server.start()
        await server.wait_ready_async()
        outage["downtime_s"] = round(time.perf_counter() - t_kill, 3)

    client_cpu = time.process_time()
    stats = asyncio.run(run_load(PrefkitSide(campaign_id, tokens), server.base, clients=clients,
                                 labels=labels, loss=loss, cap_s=cap_s, seed=seed,
                                 monitor=monitor))
    client_cpu = time.process_time() - client_cpu
    server.stop()
    server_cpu = server.cpu_s - cpu_ready  # the restarted process's startup counts
    checks = check_store(url, campaign_id, stats.acked)
    wall = stats.end - stats.start
    down = outage.get("downtime_s", 0.0)
    n = len(stats.acked)
    return {
        "backend": backend,
        "workers": workers,
        "labels_acknowledged": n,
        "labels_per_s": round(n / (wall - down), 1),
        "labels_per_s_including_outage": round(n / wall, 1),
        "wall_s": round(wall, 2),
        **{f"submit_{k}": v for k, v in percentiles_ms(stats.latencies).items()},
        "submit_requests_ok": len(stats.latencies),
        "requests": stats.attempts,
        "retries": stats.retries,
        "replayed": stats.replayed,
        "lost_responses": {"discarded": stats.lost_discard, "timed_out": stats.lost_timeout},
        "replay_id_mismatch": stats.replay_id_mismatch,
        "errors": dict(stats.errors),
        "client_errors": stats.client_errors[:10],
        "capped": stats.capped,
        "clients_out_of_items": stats.ran_out,
        "kill_restart": outage or None,
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_ms_per_label": round(1000 * server_cpu / max(n, 1), 3),
        "client_cpu_s": round(client_cpu, 2),
        "setup_s": round(setup_s, 2),
        "server_startup_s": round(startup_s, 2),
        "checks": checks,
    }


def run_backend(backend: str, base_url: str | None, tmp: Path, **kwargs: Any) -> dict[str, Any]:
    """``sqlite`` (a file in ``tmp``) or ``postgresql`` (a fresh schema on ``base_url``)."""
    if backend == "sqlite":
        return run(backend, str(tmp / "feedback.db"), tmp=tmp, **kwargs)
    schema = f"prefkit_bench_{uuid.uuid4().hex[:10]}"
    pg_schema(base_url, schema, "create")
    try:
        return run(backend, pg_schema_url(base_url, schema), tmp=tmp, **kwargs)
    finally:
        pg_schema(base_url, schema, "drop")
