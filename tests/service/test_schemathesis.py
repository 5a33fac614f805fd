"""Schemathesis over the whole OpenAPI, in process: no generated request, valid or not, gets a server error.

A bounded, deterministic number of cases per operation, so that it fits CI; the
ten-minute run against a live server is `schemathesis run` (see the module's end).
Nothing is remembered between runs (no Hypothesis database in the repository).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans

from service.app import create_app
from service.settings import PROJECT_ROOT, Settings

TOKEN = "schemathesis-admin-token"
CASES_PER_OPERATION = 20

# Hypothesis keeps its caches under .cache (ignored), not in a .hypothesis folder of the working tree;
# no example database at all (`database=None` below): every run is the same, derived from the schema.
set_hypothesis_home_dir(PROJECT_ROOT / ".cache" / "hypothesis")

# DSNs and ARF reports are sent raw; generated text is as good a report as any to refuse.
schemathesis.serializer.alias("message/rfc822", "text/plain")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    state = tmp_path_factory.mktemp("schemathesis")
    app = create_app(
        Settings(
            state_dir=state / "state",
            database_url=f"sqlite:///{state / 'outguard.db'}",
            cache_dir=PROJECT_ROOT / ".cache",
            tokens={TOKEN: ["admin"]},
        )
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema
    shutdown_lifespans()  # the app's lifespan started with the first request; stop its threads and database


schema = schemathesis.pytest.from_fixture("api")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # Schemathesis 4's fixture-loaded schemas name each operation's subtest by rewriting
    # `node._nodeid`, which pytest 9.2 no longer has (it keeps `_id`): give it one to read.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error])


def test_the_schema_declares_what_routes_answer(api: schemathesis.BaseSchema) -> None:
    paths = api.raw_schema["paths"]

    def content(path: str, method: str, status: str) -> set[str]:
        return set(paths[path][method]["responses"][status].get("content", {}))

    assert content("/v1/reports/outbound", "get", "200") == {"application/json", "text/csv"}
    assert content("/v1/accounts/{relay}/{account}/incident", "get", "200") == {
        "application/json",
        "text/markdown",
        "text/html",
    }
    for path, method in [
        ("/v1/webhooks/{webhook_id}", "delete"),
        ("/v1/signatures", "post"),
        ("/v1/signatures", "get"),
        ("/v1/campaigns", "get"),
    ]:
        assert "404" in paths[path][method]["responses"], (method, path)
    for path in ("/v1/score", "/v1/score/batch", "/v1/feedback/dsn"):
        assert "413" in paths[path]["post"]["responses"], path
    webhook_id = paths["/v1/webhooks/{webhook_id}/deliveries"]["get"]["parameters"][0]["schema"]
    assert (webhook_id["minimum"], webhook_id["maximum"]) == (1, 2**63 - 1)


# The live run, from the repository's root, against `outguard serve` on PORT (hooks: the alias above):
#   SCHEMATHESIS_HOOKS=tests.service.test_schemathesis .venv/bin/schemathesis run \
#     http://127.0.0.1:PORT/openapi.json --checks not_a_server_error --max-time 600 -w 2
