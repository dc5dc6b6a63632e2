"""`prefkit serve ...` on the command line: running the app (a real uvicorn server on
127.0.0.1), people and tokens, campaigns from every kind of items file, bad files (exit 2 naming
the file, nothing stored), list / stats / close / export with --json, and the export
re-imported by `prefkit store import` into identical records."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.data.app_schema import ANNOTATORS, ITEMS
from prefkit.data.io import read_records
from prefkit.data.records import record_id, to_dict
from prefkit.data.store import FeedbackStore
from prefkit.serve import service as svc
from serve_fixtures import bearer, count_rows

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "prefkit" / "examples"


@pytest.fixture(autouse=True)
def no_store_env(monkeypatch):
    monkeypatch.delenv("PREFKIT_STORE", raising=False)


def cli(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output)
    return result


def cli_json(*args, code: int = 0) -> dict:
    return json.loads(cli(*args, "--json", code=code).stdout)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def items_of(db: Path, name: str) -> list[dict]:
    with FeedbackStore(db) as store:
        campaign = svc.get_campaign(store, name)
        rows = store.read(lambda c: c.execute(
            sa.select(ITEMS.c.payload, ITEMS.c.source_id, ITEMS.c.role)
            .where(ITEMS.c.campaign_id == campaign.id).order_by(ITEMS.c.position)).all())
    return [{**orjson.loads(p), "source_id": s, "role": r} for p, s, r in rows]


def n_campaigns(db: Path) -> int:
    if not db.exists():
        return 0
    with FeedbackStore(db) as store:
        return len(svc.list_campaigns(store))


# ---------------------------------------------------------------------------------------------
# Running the app
# ---------------------------------------------------------------------------------------------


def test_serve_needs_a_db():
    result = cli("serve", code=2)
    assert "--db is needed" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_the_app_on_loopback(tmp_path):
    db = tmp_path / "live.db"
    admin = cli_json("serve", "add-annotator", "root", "--role", "admin", "--db", db)["token"]
    alice = cli_json("serve", "add-annotator", "alice", "--db", db)["token"]
    rows = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(2)]
    cli("serve", "campaign", "create", "live", "--task", "pairwise", "--items",
        write_jsonl(tmp_path / "c.jsonl", rows), "--db", db)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefkit.cli", "serve", "--db", str(db), "--port", str(port),
         "--max-body-kb", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # up to ~30 s for the server to start on busy cores
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            assert server.poll() is None, server.stdout.read().decode()
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/api/campaigns").status_code == 401
            assert client.get("/api/campaigns",
                              headers=bearer(alice)).json()[0]["name"] == "live"
            a = client.post("/api/campaigns/1/next", headers=bearer(alice)).json()["assignment"]
            body = {"assignment_id": a["assignment_id"], "idempotency_key": "k",
                    "answer": {"choice": "tie"}}
            first = client.post("/api/campaigns/1/labels", json=body, headers=bearer(alice))
            again = client.post("/api/campaigns/1/labels", json=body, headers=bearer(alice))
            assert (first.status_code, again.status_code) == (201, 200)
            assert "unsafe-inline" not in first.headers["content-security-policy"]
            assert client.post("/api/campaigns", headers=bearer(alice),
                               json={}).status_code == 403
            big = json.dumps({**body, "answer": {"choice": "tie", "rationale": "x" * 2000}})
            assert client.post("/api/campaigns/1/labels", content=big,
                               headers=bearer(alice)).status_code == 413

            def chunks():
                for start in range(0, len(big), 256):
                    yield big[start:start + 256].encode()

            streamed = client.post("/api/campaigns/1/labels", content=chunks(),
                                   headers={**bearer(alice), "Content-Type": "application/json"})
            assert streamed.status_code == 413
            labels = client.get("/api/campaigns/1/labels", headers=bearer(admin)).json()
            assert [r["outcome"] for r in labels] == ["tie"]
    finally:
        server.terminate()
        server.wait(30)
    with FeedbackStore(db) as store:
        assert store.count() == count_rows(store, "labels") == 1


# ---------------------------------------------------------------------------------------------
# People
# ---------------------------------------------------------------------------------------------


def test_add_annotator_prints_a_token_once_stored_hashed(tmp_path):
    db = tmp_path / "p.db"
    result = cli("serve", "add-annotator", "alice", "--db", db)
    token = result.stdout.strip().splitlines()[-1]
    assert result.output.count(token) == 1
    assert "shown once" in result.output
    out = cli_json("serve", "add-annotator", "bob", "--role", "admin", "--db", db)
    assert set(out) == {"name", "role", "token"}
    assert (out["name"], out["role"]) == ("bob", "admin")
    with FeedbackStore(db) as store:
        assert svc.authenticate(store, token).name == "alice"
        assert svc.authenticate(store, out["token"]).role == "admin"
        hashes = store.read(lambda c: c.execute(
            sa.select(ANNOTATORS.c.token_hash).order_by(ANNOTATORS.c.id)).scalars().all())
    assert hashes == [svc.hash_token(token), svc.hash_token(out["token"])]
    raw = db.read_bytes()
    assert token.encode() not in raw and out["token"].encode() not in raw
    # the same name twice: bad input, the first token still works
    error = cli_json("serve", "add-annotator", "alice", "--db", db, code=2)
    assert error["ok"] is False and "alice" in error["error"] and "exists" in error["error"]
    assert cli_json("serve", "add-annotator", "x", "--role", "root", "--db", db,
                    code=2)["ok"] is False
    people = cli_json("serve", "annotators", "--db", db)["annotators"]
    assert [(p["name"], p["role"], p["revoked"]) for p in people] == [
        ("alice", "annotator", False), ("bob", "admin", False)]


def test_revoke(tmp_path):
    db = tmp_path / "r.db"
    token = cli_json("serve", "add-annotator", "alice", "--db", db)["token"]
    assert cli_json("serve", "revoke", "alice", "--db", db) == {"revoked": "alice"}
    with FeedbackStore(db) as store:
        assert svc.authenticate(store, token) is None
    error = cli_json("serve", "revoke", "alice", "--db", db, code=2)
    assert "no active annotator 'alice'" in error["error"]
    assert cli_json("serve", "annotators", "--db", db)["annotators"][0]["revoked"] is True
    # a store that does not exist is not created by revoke
    missing = tmp_path / "none.db"
    cli("serve", "revoke", "alice", "--db", missing, code=2)
    assert not missing.exists()


# ---------------------------------------------------------------------------------------------
# Campaigns from files
# ---------------------------------------------------------------------------------------------


def test_campaign_from_pairs_file(tmp_path):
    db = tmp_path / "c.db"
    guidelines = tmp_path / "g.md"
    guidelines.write_text("# Pick the **better** answer\n", encoding="utf-8")
    out = cli_json("serve", "campaign", "create", "pairs", "--task", "pairwise", "--items",
                   EXAMPLES / "pairs.jsonl", "--overlap", "3", "--strength", "--rationale",
                   "required", "--no-tie", "--guidelines", guidelines, "--annotators",
                   "alice, bob", "--lease-minutes", "2", "--db", db)
    records = list(read_records(EXAMPLES / "pairs.jsonl"))
    assert out["items"] == len(records) and out["overlap"] == 3 and out["task"] == "pairwise"
    assert out["annotators"] == ["alice", "bob"]
    assert out["settings"] == {
        "task": "pairwise", "allow_tie": False, "allow_both_bad": True, "strength": True,
        "rationale": "required", "scales": {}, "k": 2, "matchmaking": "order",
        "lease_seconds": 120.0}
    items = items_of(db, "pairs")
    assert [i["prompt"] for i in items] == [r.prompt for r in records]
    assert [i["responses"] for i in items] == [[r.response_a, r.response_b] for r in records]
    assert [i["source_id"] for i in items] == [r.id for r in records]
    with FeedbackStore(db) as store:
        assert svc.get_campaign(store, "pairs").guidelines == guidelines.read_text()


def test_campaign_from_rankings_file(tmp_path):
    db = tmp_path / "c.db"
    out = cli_json("serve", "campaign", "create", "rk", "--task", "ranking", "--items",
                   EXAMPLES / "rankings.jsonl", "--limit", "2", "--db", db)
    records = list(read_records(EXAMPLES / "rankings.jsonl"))[:2]
    assert out["items"] == 2
    assert [i["responses"] for i in items_of(db, "rk")] == [r.responses for r in records]


def alpaca_files(tmp_path: Path, models: list[str], prompts: list[str]) -> list[Path]:
    paths = []
    for m in models:
        path = tmp_path / f"{m}.json"
        path.write_text(json.dumps([{"instruction": p, "output": f"{m} says {n}",
                                     "generator": m, "dataset": "test"}
                                    for n, p in enumerate(prompts)]))
        paths.append(path)
    return paths


def test_campaign_from_alpaca_eval_outputs_one_file_per_model(tmp_path):
    db = tmp_path / "c.db"
    prompts = ["sort: 3 1 2", "add: 2 2", "name a colour"]
    files = alpaca_files(tmp_path, ["sft", "dpo", "ppo"], prompts)
    args = [a for f in files for a in ("--items", f)]
    out = cli_json("serve", "campaign", "create", "arena", "--task", "arena", *args,
                   "--k", "3", "--matchmaking", "ucb", "--db", db)
    assert out["items"] == 3 and out["settings"]["k"] == 3
    pool = items_of(db, "arena")
    assert [i["role"] for i in pool] == ["pool"] * 3
    assert [i["prompt"] for i in pool] == prompts
    assert pool[1]["models"] == ["sft", "dpo", "ppo"]
    assert pool[1]["responses"] == ["sft says 1", "dpo says 1", "ppo says 1"]
    # two models' outputs make pairwise items; three do not
    cli_json("serve", "campaign", "create", "pw", "--task", "pairwise", *args[:4], "--db", db)
    assert [i["responses"] for i in items_of(db, "pw")][0] == ["sft says 0", "dpo says 0"]
    error = cli_json("serve", "campaign", "create", "pw3", "--task", "pairwise", *args,
                     "--db", db, code=2)
    assert "sft.json" in error["error"] and "3 responses" in error["error"]
    assert n_campaigns(db) == 2


def test_campaign_from_candidate_rows(tmp_path):
    db = tmp_path / "c.db"
    rows = [{"prompt": "p1", "responses": ["x", "y", "z"], "models": ["m1", "m2", "m3"]},
            {"prompt": [{"role": "user", "content": "p2"}], "responses": ["u", "x"],
             "models": ["m1", "m2"], "id": "src-2"},
            {"prompt": "p3", "outputs": {"m2": "w", "m3": "v"}}]
    path = write_jsonl(tmp_path / "cand.jsonl", rows)
    out = cli_json("serve", "campaign", "create", "a", "--task", "arena", "--items", path,
                   "--db", db)
    assert out["items"] == 3 and out["overlap"] == 1
    pool = items_of(db, "a")
    assert [i["models"] for i in pool] == [["m1", "m2", "m3"], ["m1", "m2"], ["m2", "m3"]]
    assert [i["prompt_id"] for i in pool] == ["1", "2", "3"]
    assert pool[1]["source_id"] == "src-2" and pool[1]["prompt"] == rows[1]["prompt"]
    # a one-response task: one item per distinct (prompt, response), custom scales
    out = cli_json("serve", "campaign", "create", "r", "--task", "rating", "--items", path,
                   "--scales", "helpfulness=0:4,safety=1:7", "--overlap", "2", "--db", db)
    assert out["items"] == 7
    assert out["settings"]["scales"] == {"helpfulness": [0.0, 4.0], "safety": [1.0, 7.0]}
    assert [i["responses"] for i in items_of(db, "r")] == [["x"], ["y"], ["z"], ["u"], ["x"],
                                                          ["w"], ["v"]]
    error = cli_json("serve", "campaign", "create", "bad", "--task", "rating", "--items", path,
                     "--scales", "helpfulness=high", "--db", db, code=2)
    assert "--scales" in error["error"]
    error = cli_json("serve", "campaign", "create", "a", "--task", "arena", "--items", path,
                     "--db", db, code=2)
    assert "exists" in error["error"]
    assert n_campaigns(db) == 2


def test_bad_item_files_name_the_file_and_store_nothing(tmp_path):
    db = tmp_path / "c.db"
    cli("serve", "campaign", "create", "keep", "--task", "pairwise", "--items",
        EXAMPLES / "pairs.jsonl", "--db", db)
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"prompt": "p", "responses": ["a", "b"]}\n'
                         '{"prompt": "q", "responses": ["a", "b"]\n')
    no_models = write_jsonl(tmp_path / "no_models.jsonl",
                            [{"prompt": "p", "responses": ["a", "b"]}])
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "responses": ["a", "b"]},
                                                 {"prompt": "q", "responses": ["c", "c"]}])
    no_prompt = write_jsonl(tmp_path / "no_prompt.jsonl",
                            [{"prompt": "p", "responses": ["a", "b"]},
                             {"prompt": "", "responses": ["a", "b"]}])
    cases = [
        (["--task", "pairwise", "--items", EXAMPLES / "rankings.jsonl"],
         ["rankings.jsonl", "item 1", "4 responses", "pairwise"]),
        (["--task", "pairwise", "--items", EXAMPLES / "pairs.jsonl", "--items",
          EXAMPLES / "rankings.jsonl"], ["rankings.jsonl", "item 1", "4 responses"]),
        (["--task", "pairwise", "--items", malformed], ["malformed.jsonl:2", "malformed_json"]),
        (["--task", "pairwise", "--items", tmp_path / "missing.jsonl"],
         ["missing.jsonl", "no such file"]),
        (["--task", "arena", "--items", no_models], ["no_models.jsonl", "item 1", "model"]),
        (["--task", "pairwise", "--items", same], ["same.jsonl", "item 2", "response_b"]),
        (["--task", "pairwise", "--items", no_prompt], ["no_prompt.jsonl:2", "prompt"]),
        (["--task", "pairwise", "--items", EXAMPLES / "bad.jsonl"], ["bad.jsonl:2"]),
        (["--task", "essay", "--items", EXAMPLES / "pairs.jsonl"], ["essay"]),
    ]
    for args, needles in cases:
        error = cli_json("serve", "campaign", "create", "new", *args, "--db", db, code=2)
        assert error["ok"] is False
        for needle in needles:
            assert needle in error["error"], (args, error["error"])
        assert n_campaigns(db) == 1
    # the plain message goes to the terminal with exit code 2 as well
    result = cli("serve", "campaign", "create", "new", "--task", "pairwise", "--items",
                 malformed, "--db", db, code=2)
    assert "malformed.jsonl:2" in result.output
    assert not (tmp_path / "fresh.db").exists()
    cli("serve", "campaign", "create", "new", "--task", "pairwise", "--items", malformed,
        "--db", tmp_path / "fresh.db", code=2)
    assert n_campaigns(tmp_path / "fresh.db") == 0


# ---------------------------------------------------------------------------------------------
# list / stats / close / export, and the export re-imported
# ---------------------------------------------------------------------------------------------


def labelled_store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A store with a finished pairwise campaign (overlap 2, three people) and a ranking
    campaign with one label."""
    db = tmp_path / "done.db"
    rows = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"], "id": f"src-{i}"}
            for i in range(4)]
    cli("serve", "campaign", "create", "prefs", "--task", "pairwise", "--strength", "--items",
        write_jsonl(tmp_path / "p.jsonl", rows), "--overlap", "2", "--db", db)
    cli("serve", "campaign", "create", "ranks", "--task", "ranking", "--items",
        EXAMPLES / "rankings.jsonl", "--db", db)
    tokens = {n: cli_json("serve", "add-annotator", n, "--db", db)["token"]
              for n in ("alice", "bob", "carol")}
    with FeedbackStore(db) as store:
        prefs = svc.get_campaign(store, "prefs")
        choices = ["first", "second", "tie", "both_bad"]
        for n, name in enumerate(tokens):
            who = svc.authenticate(store, tokens[name])
            k = 0
            while (a := svc.next_assignment(store, prefs, who)) is not None:
                choice = choices[(n + k) % 4]
                answer = {"choice": choice, "rationale": f"{name} {k}",
                          **({"strength": 1 + k % 3} if choice in ("first", "second") else {})}
                svc.submit_label(store, prefs, who, a.id, answer, f"{name}-{k}", 1.5 + k)
                k += 1
        ranks = svc.get_campaign(store, "ranks")
        who = svc.authenticate(store, tokens["alice"])
        a = svc.next_assignment(store, ranks, who)
        svc.submit_label(store, ranks, who, a.id, {"tiers": [[1, 3], [0], [2]]}, "rank-1")
    return db, tokens


def test_list_stats_close_json(tmp_path):
    db, _ = labelled_store(tmp_path)
    listed = cli_json("serve", "campaign", "list", "--db", db)["campaigns"]
    assert [(c["name"], c["task"], c["status"]) for c in listed] == [
        ("prefs", "pairwise", "open"), ("ranks", "ranking", "open")]
    assert listed[0]["progress"] == {"items": 4, "complete": 4, "labels": 8,
                                     "per_annotator": listed[0]["progress"]["per_annotator"]}
    per = listed[0]["progress"]["per_annotator"]
    assert sum(per.values()) == 8 and set(per) <= {"alice", "bob", "carol"}
    assert listed[1]["progress"] == {"items": 3, "complete": 1, "labels": 1,
                                     "per_annotator": {"alice": 1}}
    stats = cli_json("serve", "campaign", "stats", "prefs", "--db", db)
    with FeedbackStore(db) as store:
        records = [label.record for label in
                   svc.campaign_labels(store, svc.get_campaign(store, "prefs"))]
    assert stats["progress"]["labels"] == len(records) == 8
    rows = {r["name"]: r for r in stats["annotators"]}
    for name, n in Counter(r.annotator.id for r in records).items():
        assert rows[name]["labels"] == n
        spent = sorted(r.metadata["seconds"] for r in records if r.annotator.id == name)
        mid = len(spent) // 2
        median = spent[mid] if len(spent) % 2 else (spent[mid - 1] + spent[mid]) / 2
        assert rows[name]["median_seconds"] == pytest.approx(median)
    assert set(stats["agreement"]) >= {"krippendorff_alpha_nominal", "fleiss_kappa"}
    assert stats["agreement"]["fleiss_items_used"] == 4
    # close, reopen
    assert cli_json("serve", "campaign", "close", "prefs", "--db", db) == {
        "campaign": "prefs", "status": "closed"}
    assert [c["status"] for c in cli_json("serve", "campaign", "list", "--db",
                                          db)["campaigns"]] == ["closed", "open"]
    assert cli_json("serve", "campaign", "close", "prefs", "--reopen", "--db", db)[
        "status"] == "open"
    assert "no campaign 'nope'" in cli_json("serve", "campaign", "close", "nope", "--db", db,
                                            code=2)["error"]
    assert "no campaign" in cli_json("serve", "campaign", "stats", "nope", "--db", db,
                                     code=2)["error"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_reimports_to_identical_records(tmp_path, suffix):
    db, _ = labelled_store(tmp_path)
    with FeedbackStore(db) as store:
        originals = {c: {record_id(label.record): to_dict(label.record)
                         for label in svc.campaign_labels(store, svc.get_campaign(store, c))}
                     for c in ("prefs", "ranks")}
    for name, expected in originals.items():
        out = tmp_path / f"{name}{suffix}"
        report = cli_json("serve", "campaign", "export", name, "--out", out, "--db", db)
        assert report["campaign"] == name and report["format"] == "prefkit"
        assert report["written"] == len(expected)
        fresh = tmp_path / f"fresh-{name}.db"
        cli("store", "import", out, "--db", fresh)
        with FeedbackStore(fresh) as store:
            again = {record_id(r): to_dict(r) for r in store.iter_records()}
        assert again == expected
        assert all(rid.startswith("serve-c") for rid in again)
    prefs = originals["prefs"].values()
    assert {"tie", "both_bad"} < {r["outcome"] for r in prefs}
    assert {r["outcome"] for r in prefs} & {"a", "b"}
    assert all(r["metadata"]["source_id"].startswith("src-") for r in prefs)


def test_export_to_every_format_that_holds_the_records(tmp_path):
    from prefkit.serve.pages import export_formats

    db, _ = labelled_store(tmp_path)
    with FeedbackStore(db) as store:
        campaign = svc.get_campaign(store, "prefs")
        formats = export_formats(campaign)
        decisive = sum(1 for label in svc.campaign_labels(store, campaign)
                       if label.record.outcome.value in ("a", "b"))
    assert {"prefkit", "trl-preference"} <= set(formats)
    written = {}
    for fmt in formats:
        out = tmp_path / f"prefs-{fmt}.jsonl"
        if fmt == "rewardbench":  # needs a subset per record, which labels do not have
            error = cli_json("serve", "campaign", "export", "prefs", "--out", out,
                             "--format", fmt, "--db", db, code=2)
            assert "holds none of its 8 labels (dropped: 8 no subset)" in error["error"]
            assert not out.exists()
            continue
        report = cli_json("serve", "campaign", "export", "prefs", "--out", out, "--format",
                          fmt, "--db", db)
        # what a format cannot hold is counted by reason, never silently lost
        assert report["written"] + sum(report["dropped"].values()) == 8, (fmt, report)
        assert len(out.read_text().splitlines()) == report["written"]
        written[fmt] = report["written"]
    assert written["prefkit"] == 8
    assert written["trl-preference"] == decisive  # ties have no chosen / rejected
    error = cli_json("serve", "campaign", "export", "prefs", "--out", tmp_path / "x.jsonl",
                     "--format", "nope", "--db", db, code=2)
    assert "nope" in error["error"]


@pytest.mark.slow
def test_serve_with_two_worker_processes(tmp_path):
    """`--workers 2`: two processes answer on one port; 8 people label concurrently through
    both, and the store holds every label once with the overlap kept."""
    import concurrent.futures

    db = tmp_path / "workers.db"
    tokens = [cli_json("serve", "add-annotator", f"p{i}", "--db", db)["token"] for i in range(8)]
    rows = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(12)]
    cli("serve", "campaign", "create", "w", "--task", "pairwise", "--overlap", "2", "--items",
        write_jsonl(tmp_path / "w.jsonl", rows), "--db", db)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefkit.cli", "serve", "--db", str(db), "--port", str(port),
         "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            assert server.poll() is None, server.stdout.read().decode()
        # the supervisor and two workers
        import psutil

        assert len(psutil.Process(server.pid).children(recursive=True)) >= 2

        def label_all(token: str) -> int:
            done = 0
            # a new connection per request: the kernel spreads them over both workers
            while True:
                reply = httpx.post(f"{base}/api/campaigns/1/next", headers=bearer(token),
                                   timeout=30).json()["assignment"]
                if reply is None:
                    return done
                body = {"assignment_id": reply["assignment_id"],
                        "idempotency_key": f"{token[:8]}-{done}",
                        "answer": {"choice": "first"}}
                assert httpx.post(f"{base}/api/campaigns/1/labels", json=body,
                                  headers=bearer(token), timeout=30).status_code == 201
                done += 1

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            done = list(pool.map(label_all, tokens))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    assert sum(done) == 24  # 12 items x overlap 2
    with FeedbackStore(db) as store:
        count = store.read(lambda c: c.execute(sa.text(
            "SELECT item_id, COUNT(*), COUNT(DISTINCT annotator_id) FROM labels GROUP BY item_id"
        )).all())
    assert len(count) == 12 and all(n == 2 and people == 2 for _, n, people in count)
