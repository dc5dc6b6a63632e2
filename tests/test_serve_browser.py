"""``prefkit serve`` in headless Chromium (issue 13's browser checks).

One live server for the module (uvicorn in a thread on 127.0.0.1, a fresh SQLite store) and one
browser (Debian's ``chromium`` driven by Playwright with its executable path); people and
campaigns are made through :mod:`prefkit.serve.service`, and every check looks at what the
browser shows *and* at the stored records:

- an annotator signs in and labels every task type (pairwise with strength, tie, both bad and a
  rationale; K = 3 ranking with a tie; HelpSteer ratings; binary; critique; an arena battle),
  once keyboard-only (``page.keyboard``: the shortcuts of :mod:`prefkit.serve.pages`) and once
  by mouse; the records name the right response once the recorded display order is undone, and
  the time spent is recorded; skip and undo;
- the admin creates a campaign by uploading a file, sees progress and the agreement statistics
  (equal to ``campaign_stats``), and downloads the export, which reads back to the stored
  records;
- untrusted content (``tests/xss_corpus.py``) stays inert text: no dialog, no request off the
  app, no script but ``/static/app.js``, no event-handler attribute, the CSP header is sent and
  the page's own script works under it;
- the annotation page fits 1200 px and 480 px windows;
- the README's screenshots (``docs/images/serve-*.png``, rewritten with
  ``PREFKIT_UPDATE_SCREENSHOTS=1``) are taken.

Skipped without Playwright or without a ``chromium`` binary.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefkit.data.io import read_records
from prefkit.data.records import Outcome, to_dict
from prefkit.data.store import FeedbackStore
from prefkit.serve import service as svc
from prefkit.serve.items import candidate_items, fit_task
from prefkit.serve.pages import agreement_name
from prefkit.serve.security import CSP
from prefkit.serve.stats import campaign_stats
from prefkit.serve.tasks import HELPSTEER_SCALES, TaskSettings
from serve_fixtures import serve_in_thread
from xss_corpus import HOSTILE_TEXTS

pytestmark = pytest.mark.slow  # ~40 s of Chromium: `make test` and CI run it, the quick loop not

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)")

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
"""Where the README's screenshots go when ``PREFKIT_UPDATE_SCREENSHOTS=1`` (otherwise into the
test's temporary folder, so a test run leaves the working tree as it was)."""


def _chromium() -> str | None:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


# --- the live server and the browser -----------------------------------------------------------


class Live:
    """The running app: its base URL, its store and a few helpers to set it up."""

    def __init__(self, url: str, store: FeedbackStore):
        self.url = url
        self.store = store
        self.tokens: dict[str, str] = {}

    def person(self, name: str, role: str = "annotator") -> svc.Person:
        if name not in self.tokens:
            self.tokens[name] = svc.add_annotator(self.store, name, role)
        person = svc.authenticate(self.store, self.tokens[name])
        assert person is not None
        return person

    def campaign(self, name: str, task: str, rows: list[dict[str, Any]], *,
                 annotators: list[str] | None, overlap: int = 1, guidelines: str = "",
                 **settings: Any) -> svc.Campaign:
        task_settings = TaskSettings(task=task, **settings)
        items = fit_task(candidate_items(name, rows), task_settings)
        return svc.create_campaign(self.store, name, task_settings, items, overlap=overlap,
                                   guidelines=guidelines, annotators=annotators)

    def labels(self, campaign: svc.Campaign, who: str | None = None) -> list[svc.StoredLabel]:
        return [label for label in svc.campaign_labels(self.store, campaign)
                if who is None or label.annotator == who]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    from prefkit.serve.app import ServeSettings, create_app

    store = FeedbackStore(tmp_path_factory.mktemp("serve") / "feedback.db")
    # generous rate limits: the browser is one client making many quick requests (the limits
    # themselves are tested with the REST API)
    app = create_app(store, ServeSettings(rate=1000.0, burst=1000.0))
    try:
        with serve_in_thread(app) as base:
            yield Live(base, store)
    finally:
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Watch:
    """What a browser context did that it should not: dialogs, console errors (CSP violations
    among them), page errors, requests to anything but the app."""

    def __init__(self, context: Any, base: str):
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.base = base
        # on the context, so every listener is in place before its first page navigates
        context.on("request", lambda r: self.requests.append(r.url))
        context.route(lambda url: not url.startswith(base + "/"), self._block)
        context.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        context.on("console", lambda m: self.console.append(f"{m.type}: {m.text}")
                   if m.type in ("error", "warning") else None)
        context.on("weberror", lambda e: self.errors.append(str(e.error)))

    def _block(self, route: Any) -> None:
        self.foreign.append(route.request.url)
        route.abort()

    def clean(self) -> None:
        assert self.dialogs == []
        assert self.errors == []
        assert [m for m in self.console if "Content Security Policy" in m] == []
        assert [m for m in self.console if m.startswith("error")] == []
        assert self.foreign == []
        assert [u for u in self.requests if not u.startswith(self.base + "/")] == []


@pytest.fixture
def visit(live, browser) -> Iterator[Callable[..., tuple[Any, Watch]]]:
    """``visit(name, width=1200)``: a fresh browser context signed in as ``name`` (typing the
    token at /login, keyboard only) and its :class:`Watch`; the watch must stay clean."""
    contexts = []

    def open_as(name: str | None, width: int = 1200, height: int = 900) -> tuple[Any, Watch]:
        context = browser.new_context(base_url=live.url,
                                      viewport={"width": width, "height": height})
        contexts.append(context)
        watch = Watch(context, live.url)
        page = context.new_page()
        if name is not None:
            page.goto("/login")
            # autofocus: Chromium applies it at a rendering update after the load event, so
            # wait for it (a page that never focuses the field fails after the timeout)
            page.wait_for_function("document.activeElement && "
                                   "document.activeElement.id === 'token'", timeout=5000)
            page.keyboard.type(live.tokens[name])
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert page.locator(".who").inner_text().startswith(name)
        return page, watch

    yield open_as
    for context in contexts:
        context.close()


# --- reading and driving the annotation page ------------------------------------------------


def go(page: Any, path: str) -> Any:
    response = page.goto(path)
    assert response is not None and response.ok, (path, response and response.status)
    return response


def shown(page: Any, texts: list[str]) -> list[str]:
    """Which of ``texts`` each response box shows, in display order."""
    boxes = page.eval_on_selector_all("section.response", "ss => ss.map(s => s.innerText)")
    out = []
    for box in boxes:
        found = [t for t in texts if t in box]
        assert len(found) == 1, (box, texts)
        out.append(found[0])
    return out


def submit(page: Any, action: Callable[[], None]) -> None:
    """Run ``action`` (a key press or click that submits) and wait for the next page."""
    page.wait_for_timeout(15)  # an annotator reads for a moment (seconds > 0 at 10 ms grain)
    with page.expect_navigation():
        action()
    assert page.locator(".error").count() == 0, page.locator(".error").inner_text()


def tab_to(page: Any, selector: str, limit: int = 60) -> None:
    """Press Tab until the focused element matches ``selector``."""
    for _ in range(limit):
        if page.evaluate("s => !!document.activeElement && document.activeElement.matches(s)",
                         selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def new_label(live: Live, campaign: svc.Campaign, who: str, before: int) -> svc.StoredLabel:
    labels = live.labels(campaign, who)
    assert len(labels) == before + 1
    label = labels[-1]
    assert label.seconds is not None and 0 < label.seconds < 120
    assert label.record.metadata["seconds"] == pytest.approx(label.seconds, abs=1e-3)
    return label


def check_order(label: svc.StoredLabel, responses: list[Any], seen: list[str]) -> None:
    """The recorded display order is the order the browser showed the responses in."""
    assert [responses[i] for i in label.record.metadata["shown"]] == seen


# --- 1. an annotator labels every task type ----------------------------------------------------

HOW = ["keyboard", "mouse"]


def _pairwise_rows(tag: str, n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"Question {tag} {i}: what is {i} + {i}?",
             "responses": [f"{tag}-answer-{i}-alpha", f"{tag}-answer-{i}-beta"]}
            for i in range(n)]


@pytest.mark.parametrize("how", HOW)
def test_pairwise(live, visit, how):
    name = f"pw-{how}"
    live.person(name)
    rows = _pairwise_rows(name, 4)
    campaign = live.campaign(f"pairwise {how}", "pairwise", rows, annotators=[name],
                             strength=True, guidelines="Prefer **correct** answers.")
    page, watch = visit(name)
    go(page, f"/c/{campaign.id}")
    # (choice, strength, rationale) per item, items come in file order
    plan = [("first", 2, None), ("tie", None, None), ("both_bad", None, None),
            ("second", 3, "B is right; 2 + 2 = 4 (u s y n are not shortcuts here)")]
    keys = {"first": "1", "second": "2", "tie": "3", "both_bad": "4"}
    for n, (choice, strength, rationale) in enumerate(plan):
        row = rows[n]
        assert row["prompt"] in page.locator("section.prompt").inner_text()
        seen = shown(page, row["responses"])
        # the item on screen counts as open
        assert page.locator("#progress").inner_text() == f"{n} labelled · {4 - n} open"
        if how == "keyboard":
            if rationale:
                page.keyboard.press("r")
                assert page.evaluate("document.activeElement.id") == "rationale"
                page.keyboard.type(rationale)
                page.keyboard.press("Escape")
                assert page.evaluate("document.activeElement.id") != "rationale"
            if strength:
                page.keyboard.press("qwe"[strength - 1])
            submit(page, lambda c=choice: page.keyboard.press(keys[c]))
        else:
            if rationale:
                page.locator("#rationale").click()
                page.locator("#rationale").fill(rationale)
            if strength:
                page.locator(f'input[name="strength"][value="{strength}"]').click()
            submit(page, lambda c=choice: page.locator(f'button[value="{c}"]').click())
        label = new_label(live, campaign, name, n)
        record = label.record
        assert (record.response_a, record.response_b) == tuple(row["responses"])
        check_order(label, row["responses"], seen)
        if choice in ("first", "second"):
            winner = seen[0 if choice == "first" else 1]
            assert record.outcome is (Outcome.A if winner == row["responses"][0] else Outcome.B)
            assert record.strength == strength
        else:
            assert record.outcome is (Outcome.TIE if choice == "tie" else Outcome.BOTH_BAD)
            assert record.strength is None
        assert record.rationale == rationale
    assert page.locator("#all-done").is_visible()
    assert page.locator("#progress").inner_text() == "4 labelled · 0 open"
    watch.clean()


@pytest.mark.parametrize("how", HOW)
def test_ranking_k3(live, visit, how):
    name = f"rk-{how}"
    live.person(name)
    rows = [{"prompt": f"Rank the summaries {i}",
             "responses": [f"{name}-summary-{i}-{x}" for x in ("one", "two", "three")]}
            for i in range(2)]
    campaign = live.campaign(f"ranking {how}", "ranking", rows, annotators=[name])
    page, watch = visit(name)
    go(page, f"/c/{campaign.id}")
    for n, ranks in enumerate([(2, 1, 3), (1, 2, 1)]):  # ranks by display position; a tie
        seen = shown(page, rows[n]["responses"])
        if how == "keyboard":
            for position, rank in enumerate(ranks):
                tab_to(page, f'select[data-rank="{position}"]')
                page.keyboard.press(str(rank))
            assert page.eval_on_selector_all("select[data-rank]", "ss => ss.map(s => s.value)"
                                             ) == [str(r) for r in ranks]
            submit(page, lambda: page.keyboard.press("Enter"))
        else:
            for position, rank in enumerate(ranks):
                page.locator(f'select[data-rank="{position}"]').select_option(str(rank))
            submit(page, lambda: page.locator("button.primary").click())
        label = new_label(live, campaign, name, n)
        check_order(label, rows[n]["responses"], seen)
        record = label.record
        assert record.responses == rows[n]["responses"]
        expected = [{seen[p] for p in range(3) if ranks[p] == r} for r in sorted(set(ranks))]
        assert [{record.responses[i] for i in tier} for tier in record.tiers] == expected
    assert page.locator("#all-done").is_visible()
    watch.clean()


@pytest.mark.parametrize("how", HOW)
def test_rating_helpsteer(live, visit, how):
    name = f"rt-{how}"
    live.person(name)
    rows = [{"prompt": "Explain recursion briefly.",
             "responses": [f"{name}: a function that calls itself on a smaller input."]}]
    campaign = live.campaign(f"rating {how}", "rating", rows, annotators=[name])
    assert campaign.settings.scales == HELPSTEER_SCALES
    page, watch = visit(name)
    go(page, f"/c/{campaign.id}")
    scores = {"helpfulness": 3, "correctness": 4, "coherence": 0, "complexity": 1,
              "verbosity": 2}
    if how == "keyboard":
        for attribute, value in scores.items():
            tab_to(page, f'input[name="score.{attribute}"]')
            if value == 0:
                page.keyboard.press(" ")
            for _ in range(value):
                page.keyboard.press("ArrowRight")
        submit(page, lambda: page.keyboard.press("Enter"))
    else:
        for attribute, value in scores.items():
            page.locator(f'input[name="score.{attribute}"][value="{value}"]').click()
        submit(page, lambda: page.locator("button.primary").click())
    record = new_label(live, campaign, name, 0).record
    assert record.kind == "rating" and record.response == rows[0]["responses"][0]
    assert record.scores == {k: float(v) for k, v in scores.items()}
    assert record.scales == HELPSTEER_SCALES
    assert page.locator("#all-done").is_visible()
    watch.clean()


@pytest.mark.parametrize("how", HOW)
def test_binary_and_critique(live, visit, how):
    name = f"bc-{how}"
    live.person(name)
    rows = [{"prompt": f"Say hello ({i})", "responses": [f"{name}-hello-{i}"]} for i in range(2)]
    binary = live.campaign(f"binary {how}", "binary", rows, annotators=[name])
    critique = live.campaign(f"critique {how}", "critique", rows[:1], annotators=[name])
    page, watch = visit(name)
    go(page, f"/c/{binary.id}")
    for n, good in enumerate([True, False]):
        assert rows[n]["responses"][0] in page.locator("section.response").inner_text()
        if how == "keyboard":
            submit(page, lambda g=good: page.keyboard.press("y" if g else "n"))
        else:
            submit(page, lambda g=good: page.locator(
                "button.good" if g else "button.bad").click())
        record = new_label(live, binary, name, n).record
        assert record.kind == "binary" and record.desirable is good
        assert record.response == rows[n]["responses"][0]
    assert page.locator("#all-done").is_visible()

    go(page, f"/c/{critique.id}")
    text = "Too terse: 1) no greeting name, 2) no punctuation. (s, u, y keys typed here)"
    if how == "keyboard":
        page.keyboard.press("r")
        assert page.evaluate("document.activeElement.id") == "critique"
        page.keyboard.type(text)
        submit(page, lambda: page.keyboard.press("Control+Enter"))
    else:
        page.locator("#critique").click()
        page.locator("#critique").fill(text)
        submit(page, lambda: page.locator("button.primary").click())
    record = new_label(live, critique, name, 0).record
    assert record.kind == "critique" and record.text == text
    assert record.metadata["response"] == rows[0]["responses"][0]
    assert page.locator("#all-done").is_visible()
    watch.clean()


@pytest.mark.parametrize("how", HOW)
def test_arena_battle(live, visit, how):
    name = f"ar-{how}"
    live.person(name)
    models = ["model-x", "model-y", "model-z"]
    voice = {m: f"voice{j}" for j, m in enumerate(models)}  # texts never name their model
    rows = [{"prompt": f"Write a haiku {i}",
             "responses": [f"{name}-haiku-{i}-in-{voice[m]}" for m in models],
             "models": models} for i in range(3)]
    campaign = live.campaign(f"arena {how}", "arena", rows, annotators=[name])
    page, watch = visit(name)
    go(page, f"/c/{campaign.id}")
    for n, choice in enumerate(["first", "second", "tie"]):
        body = page.locator("main").inner_text()
        assert not any(m in body for m in models)  # blind: no model names
        texts = [t for row in rows for t in row["responses"]]
        seen = shown(page, texts)
        assert len(seen) == 2
        if how == "keyboard":
            submit(page, lambda c=choice: page.keyboard.press(
                {"first": "1", "second": "2", "tie": "3"}[c]))
        else:
            submit(page, lambda c=choice: page.locator(f'button[value="{c}"]').click())
        record = new_label(live, campaign, name, n).record
        assert record.kind == "battle"
        by_text = {record.metadata["response_a"]: "a", record.metadata["response_b"]: "b"}
        assert set(by_text) == set(seen)
        assert [by_text[t] for t in seen] == ["ab"[i] for i in record.metadata["shown"]]
        for side in "ab":  # the text shown is the named model's output
            model = getattr(record, f"model_{side}")
            assert record.metadata[f"response_{side}"].endswith(f"-in-{voice[model]}")
        if choice == "tie":
            assert record.outcome is Outcome.TIE
        else:
            winner = seen[0 if choice == "first" else 1]
            assert record.outcome is Outcome(by_text[winner])
    go(page, f"/c/{campaign.id}/leaderboard")
    board = page.locator("#leaderboard tbody").inner_text()
    assert all(m in board for m in models)
    assert "3 votes" in page.locator(".hint").inner_text()
    watch.clean()


@pytest.mark.parametrize("how", HOW)
def test_skip_and_undo(live, visit, how):
    name = f"su-{how}"
    live.person(name)
    rows = _pairwise_rows(name, 3)
    campaign = live.campaign(f"skip undo {how}", "pairwise", rows, annotators=[name])
    page, watch = visit(name)
    url = f"{live.url}/c/{campaign.id}"
    go(page, url)

    def press(key: str, selector: str) -> None:
        if how == "keyboard":
            submit(page, lambda: page.keyboard.press(key))
        else:
            submit(page, lambda: page.locator(selector).click())

    assert rows[0]["prompt"] in page.locator("section.prompt").inner_text()
    press("s", 'button[data-key="s"]')  # skip item 0
    assert rows[1]["prompt"] in page.locator("section.prompt").inner_text()
    seen = shown(page, rows[1]["responses"])
    press("1", 'button[value="first"]')
    assert len(live.labels(campaign, name)) == 1
    assert rows[2]["prompt"] in page.locator("section.prompt").inner_text()
    press("u", 'button[data-key="u"]')  # undo: item 1 again, in the same order
    assert page.url == url  # redirected: a reload does not undo again
    assert live.labels(campaign, name) == []
    assert rows[1]["prompt"] in page.locator("section.prompt").inner_text()
    assert shown(page, rows[1]["responses"]) == seen
    page.reload()
    assert rows[1]["prompt"] in page.locator("section.prompt").inner_text()
    press("2", 'button[value="second"]')
    label = new_label(live, campaign, name, 0)
    check_order(label, rows[1]["responses"], seen)
    assert label.record.outcome is (Outcome.A if seen[1] == rows[1]["responses"][0]
                                    else Outcome.B)
    press("1", 'button[value="first"]')  # item 2; the skipped item 0 never comes back
    assert page.locator("#all-done").is_visible()
    assert [label.record.prompt for label in live.labels(campaign, name)] == [
        rows[1]["prompt"], rows[2]["prompt"]]
    watch.clean()


# --- 2. the admin: create by upload, progress, agreement, export ---------------------------------


def _agreement_answers(n_items: int) -> dict[str, list[str]]:
    """Display-order-free answers (by item order, mapped to display positions below)."""
    return {
        "ad-1": ["a", "a", "b", "tie", "a", "b"][:n_items],
        "ad-2": ["a", "b", "b", "tie", "a", "a"][:n_items],
        "ad-3": ["a", "a", "b", "both_bad", "b", "b"][:n_items],
    }


def _answer(outcome: str, shown_order: list[int]) -> dict[str, str]:
    if outcome in ("tie", "both_bad"):
        return {"choice": outcome}
    item_index = 0 if outcome == "a" else 1
    return {"choice": "first" if shown_order[0] == item_index else "second"}


def label_all(live: Live, campaign: svc.Campaign, answers: dict[str, list[str]]) -> None:
    """Each annotator labels every item through the service (what the pages call)."""
    for n, (name, outcomes) in enumerate(answers.items()):
        person = live.person(name)
        for k in range(len(outcomes)):
            assignment = svc.next_assignment(live.store, campaign, person)
            assert assignment is not None
            item = int(assignment.prompt.rsplit(" ", 1)[-1])  # "... Item {i}"
            order = [0 if r.endswith("alpha") else 1 for r in assignment.responses]
            svc.submit_label(live.store, campaign, person, assignment.id,
                             _answer(outcomes[item], order), f"{campaign.id}-{name}-{k}",
                             seconds=3.0 + n + k)


def test_admin_creates_campaign_sees_agreement_and_exports(live, visit, tmp_path):
    live.person("admin", "admin")
    answers = _agreement_answers(6)
    for name in answers:
        live.person(name)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(
        json.dumps({"prompt": f"Which answer is better? Item {i}",
                    "responses": [f"upload-{i}-alpha", f"upload-{i}-beta"]}) + "\n"
        for i in range(6)))
    page, watch = visit("admin")
    assert page.url == f"{live.url}/admin"
    form = page.locator("#create-campaign")
    form.locator('input[name="name"]').fill("Uploaded pairs")
    form.locator('select[name="task"]').select_option("pairwise")
    form.locator('input[name="overlap"]').fill("3")
    form.locator('input[name="file"]').set_input_files(str(items))
    form.locator('textarea[name="guidelines"]').fill("# Guidelines\nPick the *better* one.")
    form.locator('input[name="annotators"]').fill(", ".join(answers))
    submit(page, lambda: form.locator('button[type="submit"]').click())
    campaign = svc.get_campaign(live.store, "Uploaded pairs")
    assert page.url == f"{live.url}/admin/c/{campaign.id}"
    assert (campaign.task, campaign.overlap, campaign.annotators) == (
        "pairwise", 3, list(answers))
    assert campaign.guidelines.startswith("# Guidelines")
    go(page, "/admin")
    row = page.locator("#campaigns tbody tr", has_text="Uploaded pairs")
    assert "0 / 6" in row.inner_text()

    label_all(live, campaign, answers)
    go(page, "/admin")
    cells = row.locator("td").all_inner_texts()
    assert cells[1:6] == ["pairwise", "3", "6 / 6", "18", "open"]

    go(page, f"/admin/c/{campaign.id}")
    stats = campaign_stats(live.store, campaign)
    progress = page.locator("#progress p").inner_text()
    assert progress.startswith("6 of 6 items have their 3 label(s); 18 labels in all")
    table = page.locator("#per-annotator tbody tr")
    assert table.count() == 3
    for n, expected in enumerate(stats["annotators"]):
        cells = table.nth(n).locator("td").all_inner_texts()
        assert cells[0] == expected["name"] and cells[1] == str(expected["labels"])
        assert cells[3] == f"{expected['median_seconds']:.1f}"
        assert cells[4].startswith(f"{expected['majority_agreement']:.2f}")
    shown_stats = dict(zip(page.locator("#agreement dt").all_inner_texts(),
                           page.locator("#agreement dd").all_inner_texts(), strict=True))
    assert set(shown_stats) == {agreement_name(key) for key in stats["agreement"]}
    for key, value in stats["agreement"].items():
        assert shown_stats[agreement_name(key)] == (f"{value:.3f}" if isinstance(value, float)
                                                     else str(value))
    alpha = stats["agreement"]["krippendorff_alpha_nominal"]
    assert -1 < alpha < 1  # a real, non-trivial agreement

    with page.expect_download() as info:
        page.locator("#export").get_by_role("link", name="prefkit", exact=True).click()
    download = info.value
    assert download.suggested_filename == "Uploaded_pairs-prefkit.jsonl"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    stored = [to_dict(label.record) for label in live.labels(campaign)]
    assert len(stored) == 18
    assert [to_dict(r) for r in read_records(path)] == stored
    watch.clean()


# --- 3. untrusted content stays text ---------------------------------------------------------

# a lone surrogate cannot be stored (no file holds one; the API answers 422): U+FFFD instead
HOSTILE = ["".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in t)
           for t in HOSTILE_TEXTS]
CVE_2025_25296 = next(t for t in HOSTILE if "<Choice value=" in t)
JS_LINK = next(t for t in HOSTILE if t.startswith("[click](javascript:"))
HOSTILE_NAME = "<script>alert('campaign')</script><img src=x onerror=alert(1)>"
SPOT_CHECKS = [
    "<script>alert(document.domain)</script>",
    "<img src=x onerror=alert(document.domain)>",
    "[click](javascript:alert(document.domain))",
    "<svg onload=alert(document.domain)>",
    '<Choice value="<img src=x onerror=alert(document.cookie)>"/>',
    "{{7*7}}",
]
# everything on the page but the app's own elements
DOM_REPORT = """() => {
  const all = [...document.querySelectorAll('*')];
  return {
    scripts: [...document.scripts].map(s => s.getAttribute('src')),
    handlers: all.flatMap(e => [...e.attributes].filter(a => /^on/i.test(a.name))
                                 .map(a => e.tagName + ' ' + a.name)),
    foreign: all.filter(e => ['IFRAME', 'OBJECT', 'EMBED', 'IMG', 'SVG', 'svg', 'MATH', 'math',
                              'VIDEO', 'AUDIO', 'BASE', 'STYLE', 'FRAME', 'SOURCE', 'MARQUEE']
                              .includes(e.tagName)).map(e => e.tagName),
    links: [...document.querySelectorAll('link')].map(l => l.getAttribute('href')),
    metas: [...document.querySelectorAll('meta')].filter(m => m.httpEquiv).length,
    styled: all.filter(e => e.hasAttribute('style')).length,
    forms: [...document.forms].map(f => f.getAttribute('action')),
    hrefs: [...document.querySelectorAll(
                 'section.prompt a, section.response a, #guidelines a')]
             .map(a => a.getAttribute('href')),
    appHrefs: [...document.querySelectorAll('a')].map(a => a.getAttribute('href')),
  };
}"""


def check_inert(page: Any) -> None:
    report = page.evaluate(DOM_REPORT)
    assert report["scripts"] == ["/static/app.js"]
    assert report["handlers"] == []
    assert report["foreign"] == []
    assert report["links"] == ["/static/app.css"]
    assert report["metas"] == 0 and report["styled"] == 0
    assert all(a.startswith("/") and not a.startswith("//") for a in report["forms"])
    assert all(h.split(":", 1)[0] in ("http", "https", "mailto") for h in report["hrefs"])
    assert all(h.startswith(("/", "http:", "https:", "mailto:")) and not h.startswith("//")
               for h in report["appHrefs"])


def test_untrusted_content_is_inert(live, visit):
    name = "<svg onload=alert('annotator')>"
    live.person(name)
    live.person("admin", "admin")
    half = len(HOSTILE) // 2
    rows = [
        {"prompt": [{"role": "user", "content": t} for t in HOSTILE],
         "responses": [[{"role": t if i % 7 == 0 else "assistant", "content": t}
                        for i, t in enumerate(HOSTILE[:half])],
                       [{"role": "assistant", "content": t} for t in HOSTILE[half:]]]},
        {"prompt": CVE_2025_25296, "responses": [HOSTILE[0], JS_LINK]},
    ]
    campaign = live.campaign(HOSTILE_NAME, "pairwise", rows, annotators=[name], overlap=1,
                             guidelines="\n\n".join(HOSTILE[:60]))
    arena = live.campaign(HOSTILE_NAME + " arena", "arena", [
        {"prompt": HOSTILE[0], "responses": [HOSTILE[18], HOSTILE[21]],
         "models": ["<script>alert('model')</script>", "<img src=x onerror=alert('m')>"]}],
        annotators=[name])

    page, watch = visit(name)
    response = go(page, f"/c/{campaign.id}")
    csp = response.headers.get("content-security-policy")
    assert csp == CSP and "script-src 'self'" in csp and "unsafe-inline" not in csp
    check_inert(page)
    text = page.locator("main").inner_text()
    for payload in SPOT_CHECKS:
        assert payload in text, payload
    assert HOSTILE_NAME in page.locator("h1").inner_text()
    assert page.title().startswith(HOSTILE_NAME)
    assert name in page.locator(".who").inner_text()
    # the page's own script runs under the CSP: g opens the guidelines, 1 submits
    assert page.locator("#guidelines").get_attribute("open") is None
    page.keyboard.press("g")
    assert page.locator("#guidelines").get_attribute("open") is not None
    assert "<script>alert(document.domain)</script>" in page.locator(
        "#guidelines").inner_text()
    submit(page, lambda: page.keyboard.press("1"))
    label = live.labels(campaign, name)[-1]
    assert label.record.prompt == rows[0]["prompt"]
    assert label.seconds > 0
    check_inert(page)  # item 2: plain strings
    text = page.locator("main").inner_text()
    assert CVE_2025_25296 in text and HOSTILE[0] in text and JS_LINK in text
    submit(page, lambda: page.keyboard.press("4"))
    go(page, f"/c/{arena.id}")
    check_inert(page)
    submit(page, lambda: page.keyboard.press("2"))
    go(page, f"/c/{arena.id}/leaderboard")
    check_inert(page)
    assert "<script>alert('model')</script>" in page.locator("#leaderboard").inner_text()
    go(page, "/")
    check_inert(page)
    assert HOSTILE_NAME in page.locator("main").inner_text()
    watch.clean()

    admin, admin_watch = visit("admin")
    for path in ("/admin", f"/admin/c/{campaign.id}", f"/admin/c/{arena.id}"):
        go(admin, path)
        check_inert(admin)
        assert HOSTILE_NAME in admin.locator("main").inner_text()
    go(admin, "/admin")
    assert name in admin.locator("#annotators").inner_text()
    admin_watch.clean()
    # nothing was refused by the route either: every request went to the app
    assert all(u.startswith(live.url + "/") for u in watch.requests + admin_watch.requests)

    # the watch sees what it looks for: an inline script is refused by the CSP (reported on
    # the console), so even markup that got through would not run
    admin.evaluate("""() => { const s = document.createElement('script');
                              s.textContent = 'alert("inline")'; document.body.append(s); }""")
    admin.wait_for_timeout(100)
    assert admin_watch.dialogs == []
    assert any("Content Security Policy" in m for m in admin_watch.console)


# --- 4. layout --------------------------------------------------------------------------------

LONG_TOKEN = "unbroken" * 60
WIDE_CODE = "```python\nrow = [" + ", ".join(str(10**9 + i) for i in range(40)) + "]\n```"
# elements reaching past the window that no horizontally scrolling box holds
SPILLS = """() => {
  const out = [];
  for (const e of document.querySelectorAll('body *')) {
    if (e.getBoundingClientRect().right <= window.innerWidth + 1) continue;
    let box = e.parentElement;
    while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX))
      box = box.parentElement;
    if (!box) out.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : ''));
  }
  return out;
}"""


@pytest.mark.parametrize("width", [1200, 480])
def test_layout_fits(live, visit, width):
    name = f"layout-{width}"
    live.person(name)
    live.person("admin", "admin")
    rows = [{"prompt": f"Long link https://example.com/{LONG_TOKEN} and {LONG_TOKEN}",
             "responses": [f"Here:\n\n{WIDE_CODE}\n\nand `{LONG_TOKEN}` inline.",
                           f"| a | b |\n|---|---|\n| {LONG_TOKEN} | {LONG_TOKEN} |\n\n"
                           f"{LONG_TOKEN}"]}]
    campaign = live.campaign(f"layout {width} " + "x" * 150, "pairwise", rows,
                             annotators=[name], strength=True,
                             guidelines=f"{LONG_TOKEN}\n\n{WIDE_CODE}")
    ranking = live.campaign(f"layout ranking {width}", "ranking", [
        {"prompt": LONG_TOKEN, "responses": [WIDE_CODE, LONG_TOKEN, "short"]}],
        annotators=[name])
    page, watch = visit(name, width=width)
    go(page, "/")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for path in (f"/c/{campaign.id}", f"/c/{ranking.id}"):
        go(page, path)
        if path == f"/c/{campaign.id}":
            page.keyboard.press("g")  # the guidelines open, with their own long lines
            assert page.locator("#guidelines").get_attribute("open") is not None
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path
        assert page.evaluate(SPILLS) == [], path
        pre = page.locator("section.response pre").first
        box = pre.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
        assert pre.evaluate("p => p.scrollWidth > p.clientWidth")  # scrolls in its own box
    admin, admin_watch = visit("admin", width=width)
    for path in ("/admin", f"/admin/c/{campaign.id}"):
        go(admin, path)
        assert admin.evaluate("document.documentElement.scrollWidth") <= width, path
        assert admin.evaluate(SPILLS) == [], path
    watch.clean()
    admin_watch.clean()


# --- 5. screenshots for the README --------------------------------------------------------------

SHOT_GUIDELINES = """Compare the two answers to the prompt.

- Prefer the answer that is **correct**; then the one that is clearer.
- Choose *Tie* when both are equally good, *Both are bad* when neither is acceptable.
"""
SHOT_PROMPT = "How do I read a JSON Lines file in Python, one record at a time?"
SHOT_RESPONSES = [
    "Open the file and parse each line with `json.loads`:\n\n"
    "```python\nimport json\n\nwith open(\"data.jsonl\") as f:\n    for line in f:\n"
    "        record = json.loads(line)\n        print(record[\"prompt\"])\n```\n\n"
    "Each line is one JSON object, so memory stays flat however big the file is.",
    "Use `pandas.read_json(\"data.jsonl\", lines=True)`. It loads the whole file into a "
    "DataFrame, which is convenient for small files but reads everything into memory at once.",
]


def test_screenshots_for_readme(live, visit, tmp_path):
    import os

    import numpy as np

    images = IMAGES if os.environ.get("PREFKIT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    images.mkdir(parents=True, exist_ok=True)
    live.person("alice")
    live.person("admin", "admin")
    pairwise = live.campaign("Helpfulness, round 1", "pairwise",
                             [{"prompt": SHOT_PROMPT, "responses": SHOT_RESPONSES}] * 1,
                             annotators=["alice"], strength=True, guidelines=SHOT_GUIDELINES)
    page, watch = visit("alice", width=1100, height=800)
    go(page, f"/c/{pairwise.id}")
    page.screenshot(path=str(images / "serve-annotate.png"), full_page=True)

    # an arena with votes from simulated voters of known strengths
    models = ["llama-3-8b-sft", "llama-3-8b-dpo", "qwen2-7b-instruct", "mistral-7b-v0.3",
              "gemma-2-9b-it"]
    strength = dict(zip(models, [0.0, 0.8, 0.5, -0.3, 0.3], strict=True))
    arena = live.campaign("Chatbot arena (internal)", "arena", [
        {"prompt": f"Prompt {i}", "responses": [f"answer {i} of {m}" for m in models],
         "models": models} for i in range(20)], annotators=None)
    rng = np.random.default_rng(0)
    voter = live.person("arena-voter")
    for n in range(120):
        assignment = svc.next_assignment(live.store, arena, voter, rng=rng)
        assert assignment is not None
        a, b = (text.rsplit(" of ", 1)[1] for text in assignment.responses)
        p = 1 / (1 + np.exp(strength[b] - strength[a]))
        u = rng.random()
        choice = "tie" if abs(u - p) < 0.05 else ("first" if u < p else "second")
        svc.submit_label(live.store, arena, voter, assignment.id, {"choice": choice},
                         f"shot-{n}", seconds=float(rng.uniform(4, 20)))
    go(page, f"/c/{arena.id}/leaderboard")
    assert page.locator("#leaderboard tbody tr").count() == len(models)
    page.screenshot(path=str(images / "serve-leaderboard.png"), full_page=True)

    # an admin page with overlap-3 labels
    answers = {f"rater-{i}": outcomes for i, outcomes in
               enumerate(_agreement_answers(6).values())}
    rows = [{"prompt": f"Which answer is better? Item {i}",
             "responses": [f"shot-{i}-alpha", f"shot-{i}-beta"]} for i in range(6)]
    rated = live.campaign("Helpfulness, round 2", "pairwise", rows, annotators=list(answers),
                          overlap=3, guidelines=SHOT_GUIDELINES)
    label_all(live, rated, answers)
    admin, admin_watch = visit("admin", width=1100, height=800)
    go(admin, f"/admin/c/{rated.id}")
    admin.screenshot(path=str(images / "serve-admin.png"), full_page=True)
    for shot in ("serve-annotate.png", "serve-leaderboard.png", "serve-admin.png"):
        data = (images / shot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    watch.clean()
    admin_watch.clean()
