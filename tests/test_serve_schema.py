"""The REST API against its own schema: schemathesis generates requests from /openapi.json
(valid and invalid bodies, paths and query strings) for every operation, as an admin and as an
annotator, and checks that no response is a server error and every response matches the
documented status codes, content types and schemas.

One check is left out where the schema cannot say everything: "schema-valid data is accepted"
for creating a campaign and submitting a label, whose rules depend on the task (a pairwise
item has exactly two different responses, a rating answer's scores lie on the campaign's
scales): such requests get 422 with the field named, which every other check still covers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, settings  # noqa: E402

from prefkit.data.store import FeedbackStore  # noqa: E402
from prefkit.serve import service as svc  # noqa: E402
from prefkit.serve.app import ServeSettings, create_app  # noqa: E402
from prefkit.serve.tasks import TaskSettings  # noqa: E402


@dataclass
class Served:
    app: object
    admin: str
    annotator: str


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    store = FeedbackStore(tmp_path_factory.mktemp("schema") / "app.db")
    admin = svc.add_annotator(store, "root", "admin")
    annotator = svc.add_annotator(store, "ann")
    items = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(30)]
    svc.create_campaign(store, "pairs", TaskSettings("pairwise"), items, overlap=2)
    pool = [{"prompt": f"q{i}", "responses": ["x", "y", "z"], "models": ["m1", "m2", "m3"],
             "prompt_id": str(i)} for i in range(5)]
    svc.create_campaign(store, "arena", TaskSettings("arena"), pool)
    app = create_app(store, ServeSettings(rate=1e9, burst=1e9))
    return Served(app, admin, annotator)


def _operations():
    """(label, operation) for every operation of the app's schema (one app for collection)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(FeedbackStore(Path(tmp) / "app.db"))
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        return [result.ok().label for result in schema.get_all_operations()]


OPERATIONS = _operations()
TASK_RULES = {"POST /api/campaigns", "POST /api/campaigns/{campaign_id}/labels"}


# the campaign-creation cases take ~3 s each (large generated bodies): in the full suite only
SLOW_OPERATIONS = {"POST /api/campaigns"}


@pytest.mark.parametrize("role", ["admin", "annotator"])
@pytest.mark.parametrize("label", [pytest.param(op, marks=pytest.mark.slow)
                                   if op in SLOW_OPERATIONS else op for op in OPERATIONS])
def test_api_conforms_to_its_schema(served, label, role):
    """Generated valid and invalid requests: no 5xx, documented status codes, content types
    and response schemas (schemathesis's checks)."""
    from hypothesis import given

    token = served.admin if role == "admin" else served.annotator
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.app)
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)

    from schemathesis.specs.openapi.checks import positive_data_acceptance

    excluded = [positive_data_acceptance] if label in TASK_RULES else []

    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"},
                               excluded_checks=excluded)

    run()
