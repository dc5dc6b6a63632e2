"""The peer of ``serve_load.py``: Label Studio (PyPI ``label-studio``) in its own virtualenv,
started with ``label-studio start`` and its defaults (SQLite in the data folder, Django's
threaded server) on 127.0.0.1, loaded through its REST API by the same clients as prefkit.

- Virtualenv: ``$PREFKIT_BENCH_CACHE`` (default ~/.cache/prefkit-bench)/label-studio-venv,
  created once with the interpreter prefkit runs on and ``pip install label-studio==VERSION``
  (:data:`VERSION`, override with SERVE_LOAD_LABEL_STUDIO_VERSION), reused while its marker
  file names that version.
- Server: a fresh data folder per run (``--data-dir``), an admin created at start
  (``--username/--password/--user-token``) in an organization with legacy API tokens on
  (``--enable-legacy-api-token``: ``Authorization: Token ...``), the PyPI version check off
  (loopback only); the process gets a clean environment (Label Studio reads plain HOST, PORT,
  DEBUG, ... variables too).
- Annotators: one Label Studio user per client, created in its database by a script run with
  the venv's Python (Django ORM, the way ``label-studio`` creates its default user), each with
  its own API token.
- Project: a pairwise-choice config (prompt, response A, response B, one of first / second /
  tie / both_bad), the same items imported as tasks (``POST /api/projects/{id}/import``).
- Load: label slot j goes to task j // 3 and client j % clients, so every task gets 3
  annotations from 3 different users (Label Studio's open-source edition does not lease tasks
  with an overlap). A submission is ``POST /api/tasks/{id}/annotations/`` with the choice as a
  ``choices`` result whose region id is the client's key; Label Studio takes no idempotency
  key, so a client that lost a response looks for that region id with
  ``GET /api/tasks/{id}/annotations/`` before sending the annotation again.
- Checks, on the project's JSON export (``GET /api/projects/{id}/export``): ``stored_all`` --
  every acknowledged annotation id is stored with the client's key as its region id (what
  ``agree`` needs from the peer); ``no_duplicates`` -- nothing stored that no client
  acknowledged, no task over 3 annotations, no task annotated twice by one user (reported, not
  required: under concurrent writes Label Studio 1.23 on SQLite answers 500 "database is
  locked" and its ``DatabaseIsLockedRetryMiddleware`` re-runs the whole request -- up to 15
  times, sleeping 1 s, 1.5 s, ... in between -- after the annotation was already committed, so
  one POST can store several copies).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from _serve_client import Http, Side, Stats, call, percentiles_ms, run_load
from _serve_prefkit import CHOICES, cpu_seconds, free_port

VERSION = os.environ.get("SERVE_LOAD_LABEL_STUDIO_VERSION", "1.23.2")
CACHE = Path(os.environ.get("PREFKIT_BENCH_CACHE", Path.home() / ".cache" / "prefkit-bench"))
VENV = CACHE / "label-studio-venv"
MARKER = ".prefkit-bench-ok"
CONFIG = """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Response A"/>
  <Text name="a" value="$a"/>
  <Header value="Response B"/>
  <Text name="b" value="$b"/>
  <Choices name="choice" toName="prompt" choice="single" showInLine="true">
    <Choice value="first"/>
    <Choice value="second"/>
    <Choice value="tie"/>
    <Choice value="both_bad"/>
  </Choices>
</View>"""
ADMIN = "bench-admin@example.com"

USERS_SCRIPT = r"""
import json, os, pathlib, sys
import label_studio
sys.path.insert(0, str(pathlib.Path(label_studio.__file__).parent))
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'label_studio.core.settings.label_studio')
from django.core.wsgi import get_wsgi_application
get_wsgi_application()
from organizations.models import Organization
from users.models import User
org = Organization.objects.first()
tokens = []
for i in range(int(sys.argv[1])):
    user = User.objects.create_user(email=f'annotator-{i:03d}@example.com', password=None)
    org.add_user(user)
    user.active_organization = org
    user.save(update_fields=['active_organization'])
    tokens.append(user.auth_token.key)
print(json.dumps(tokens))
"""


def ensure_venv(log: Callable[[str], None]) -> Path:
    """The venv's ``label-studio`` script, installing Label Studio first if needed."""
    marker = VENV / MARKER
    script = VENV / "bin" / "label-studio"
    if marker.exists() and marker.read_text().strip() == VERSION and script.exists():
        return script
    if VENV.exists():
        shutil.rmtree(VENV)
    CACHE.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    log(f"creating {VENV} and installing label-studio=={VERSION} (once; a few minutes)")
    steps = [[base, "-m", "venv", str(VENV)],
             [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
              "--disable-pip-version-check", f"label-studio=={VERSION}"]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot install Label Studio ({' '.join(cmd[-3:])} exited "
                               f"{proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    marker.write_text(VERSION)
    return script


def _clean_env(data: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({"LABEL_STUDIO_BASE_DATA_DIR": str(data),
                "LABEL_STUDIO_LATEST_VERSION_CHECK": "false", "PYTHONUNBUFFERED": "1"})
    return env


class LabelStudio:
    def __init__(self, script: Path, tmp: Path):
        self.script = script
        self.data = tmp / "ls-data"
        self.log = tmp / "label-studio.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None
        self.cpu_s = 0.0

    def start(self, timeout: float = 600.0) -> float:
        cmd = [str(self.script), "start", "--no-browser", "--internal-host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(self.data), "--username", ADMIN,
               "--password", secrets.token_hex(12), "--user-token", self.token,
               "--enable-legacy-api-token"]
        start = time.perf_counter()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=_clean_env(self.data))
        with httpx.Client(timeout=5.0) as client:
            while time.perf_counter() - start < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"label-studio exited ({self.proc.returncode}):\n"
                                       + self.log.read_text()[-3000:])
                try:
                    if client.get(self.base + "/health").status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        raise RuntimeError(f"label-studio did not answer in {timeout} s:\n"
                           + self.log.read_text()[-3000:])

    def users(self, n: int) -> list[str]:
        proc = subprocess.run([str(self.script.parent / "python"), "-c", USERS_SCRIPT, str(n)],
                              capture_output=True, text=True, env=_clean_env(self.data),
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"creating Label Studio users failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cpu_s = cpu_seconds(self.proc.pid) or 0.0
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def setup_project(base: str, token: str, items: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """A project with :data:`CONFIG` and the items as tasks: (project id, task ids in item
    order)."""
    with httpx.Client(base_url=base, headers={"authorization": f"Token {token}"},
                      timeout=300.0) as client:
        resp = client.post("/api/projects/", json={"title": "serve-load", "label_config": CONFIG})
        resp.raise_for_status()
        pid = resp.json()["id"]
        tasks = [{"prompt": it["prompt"], "a": it["responses"][0], "b": it["responses"][1]}
                 for it in items]
        for start in range(0, len(tasks), 2000):
            client.post(f"/api/projects/{pid}/import",
                        json=tasks[start:start + 2000]).raise_for_status()
        listed = list_tasks(client, pid)
    if len(listed) != len(items):
        raise RuntimeError(f"Label Studio holds {len(listed)} tasks, expected {len(items)}")
    return pid, [t["id"] for t in sorted(listed, key=lambda t: t["inner_id"])]


def list_tasks(client: httpx.Client, pid: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        resp = client.get("/api/tasks/", params={"project": pid, "page": page,
                                                 "page_size": 1000, "fields": "task_only"})
        if resp.status_code == 404:  # past the last page
            break
        resp.raise_for_status()
        batch = resp.json()["tasks"]
        out.extend(batch)
        if len(batch) < 1000:
            break
        page += 1
    return out


class LabelStudioSide(Side):
    """Fixed task lists; ``POST /api/tasks/{id}/annotations/``; lost responses are looked up
    (no idempotency key)."""

    loss_modes = ("discard",)
    idempotent = False

    def __init__(self, tokens: list[str], plan: list[list[int]]):
        self.tokens = tokens
        self.plan = plan

    def client(self, slot: int, base_url: str) -> Http:
        return Http(base_url, {"authorization": f"Token {self.tokens[slot]}"}, timeout=120.0)

    async def start(self, slot: int, http: Http, stats: Stats) -> Any:
        return (slot, 0) if self.plan[slot] else None

    def request(self, state: Any, key: str, rng: Any) -> tuple[str, dict]:
        slot, i = state
        region = {"id": key, "from_name": "choice", "to_name": "prompt", "type": "choices",
                  "value": {"choices": [rng.choice(CHOICES)]}}
        return (f"/api/tasks/{self.plan[slot][i]}/annotations/",
                {"result": [region], "lead_time": round(rng.uniform(2.0, 30.0), 3)})

    def parse(self, body: dict) -> tuple[Any, bool]:
        return body["id"], False

    async def advance(self, slot: int, http: Http, state: Any, body: dict | None,
                      stats: Stats) -> Any:
        slot, i = state
        return (slot, i + 1) if i + 1 < len(self.plan[slot]) else None

    async def after_error(self, slot: int, http: Http, state: Any, stats: Stats
                          ) -> Any:
        return await self.advance(slot, http, state, None, stats)

    async def lookup(self, http: Http, state: Any, key: str) -> Any:
        slot, i = state
        resp = await call(http, "GET", f"/api/tasks/{self.plan[slot][i]}/annotations/",
                          Stats(target=0), float("inf"))
        if resp.status_code != 200:
            return None
        for annotation in resp.json():
            if any(r.get("id") == key for r in annotation.get("result") or []):
                return annotation["id"]
        return None


def check_peer(base: str, token: str, pid: int, acked: list[tuple[Any, str]]) -> dict[str, Any]:
    """Read everything back with the project's JSON export (tasks with their annotations)."""
    with httpx.Client(base_url=base, headers={"authorization": f"Token {token}"},
                      timeout=600.0) as client:
        resp = client.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
        resp.raise_for_status()
        exported = resp.json()
        project = client.get(f"/api/projects/{pid}/").json()
    stored: dict[int, str | None] = {}
    per_task = Counter()
    users: dict[int, set] = {}
    n_stored = 0
    for task in exported:
        for annotation in task.get("annotations") or []:
            n_stored += 1
            regions = annotation.get("result") or [{}]
            stored[int(annotation["id"])] = regions[0].get("id")
            per_task[task["id"]] += 1
            users.setdefault(task["id"], set()).add(annotation.get("completed_by"))
    keys = {int(lid): key for lid, key in acked}
    out = {
        "acknowledged": len(acked),
        "acknowledged_distinct_ids": len(keys),
        "stored_annotations": n_stored,
        "project_total_annotations_number": project.get("total_annotations_number"),
        "lost": sum(lid not in stored for lid in keys),
        "stored_under_other_key": sum(lid in stored and stored[lid] != key
                                      for lid, key in keys.items()),
        "stored_not_acknowledged": len(set(stored) - set(keys)),
        "tasks_over_3": sum(n > 3 for n in per_task.values()),
        "tasks_with_a_user_twice": sum(len(users[t]) < n for t, n in per_task.items()),
    }
    out["stored_all"] = (out["lost"] == 0 and out["stored_under_other_key"] == 0
                         and len(keys) == len(acked))
    out["no_duplicates"] = (out["stored_not_acknowledged"] == 0 and out["tasks_over_3"] == 0
                            and out["tasks_with_a_user_twice"] == 0)
    if not out["no_duplicates"]:
        out["duplicates_note"] = (
            "extra copies of acknowledged annotations (same client key): Label Studio's "
            "DatabaseIsLockedRetryMiddleware (SQLite) re-runs a request that failed with "
            "'database is locked' after the annotation was committed, and a client retry after "
            "a 500 cannot be deduplicated (no idempotency key)")
    return out


def run_peer(*, items: list[dict[str, Any]], labels: int, clients: int, loss: float, seed: int,
             cap_s: float, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    script = ensure_venv(log)
    server = LabelStudio(script, tmp)
    try:
        startup_s = server.start()
        log(f"label-studio up in {startup_s:.1f} s")
        start = time.perf_counter()
        tokens = server.users(clients)
        pid, task_ids = setup_project(server.base, server.token, items)
        setup_s = time.perf_counter() - start
        plan: list[list[int]] = [[] for _ in range(clients)]
        for j in range(labels):
            plan[j % clients].append(task_ids[j // 3])
        client_cpu = time.process_time()
        cpu_before = cpu_seconds(server.proc.pid) or 0.0
        stats = asyncio.run(run_load(LabelStudioSide(tokens, plan), server.base,
                                     clients=clients, labels=labels, loss=loss, cap_s=cap_s,
                                     seed=seed))
        client_cpu = time.process_time() - client_cpu
        load_cpu = (cpu_seconds(server.proc.pid) or 0.0) - cpu_before
        checks = check_peer(server.base, server.token, pid, stats.acked)
    finally:
        server.stop()
    n = len(stats.acked)
    wall = stats.end - stats.start
    return {
        "name": f"label-studio {VERSION}",
        "server": "label-studio start (Django runserver, threaded), SQLite, defaults",
        "labels_acknowledged": n,
        "labels_per_s": round(n / wall, 1),
        "wall_s": round(wall, 2),
        **{f"submit_{k}": v for k, v in percentiles_ms(stats.latencies).items()},
        "submit_requests_ok": len(stats.latencies),
        "requests": stats.attempts,
        "retries": stats.retries,
        "lost_responses": {"discarded": stats.lost_discard},
        "recovered_by_lookup": stats.recovered_by_lookup,
        "errors": dict(stats.errors),
        "client_errors": stats.client_errors[:10],
        "capped": stats.capped,
        "kill_restart": None,
        "server_cpu_s": round(load_cpu, 2),
        "server_cpu_ms_per_label": round(1000 * load_cpu / max(n, 1), 3),
        "client_cpu_s": round(client_cpu, 2),
        "setup_s": round(setup_s, 2),
        "server_startup_s": round(startup_s, 2),
        "checks": checks,
    }
