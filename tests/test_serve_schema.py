"""Property-based requests from the app's own OpenAPI schema (schemathesis): no input makes a 500.

A bounded run: every operation gets `EXAMPLES` generated requests against a real server. Most
request bodies get the served model's name, so generation reaches the engine instead of
stopping at the 404 for an unknown model."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opengpt4.engine.generate import Engine
from opengpt4.serve.app import create_app
from tests.helpers import live_server

EXAMPLES = 60


def with_served_model(case_and_flag):
    case, use_served = case_and_flag
    if use_served and isinstance(case.body, dict):
        case.body["model"] = "tiny"
        if isinstance(case.body.get("max_tokens"), int):  # keep the run short: the model is real
            case.body["max_tokens"] = min(case.body["max_tokens"], 8)
    if use_served and case.path_parameters and "model_id" in case.path_parameters:
        case.path_parameters["model_id"] = "tiny"
    return case


def test_no_request_makes_a_server_error(tiny_model, tiny_tokenizer):
    app = create_app({"tiny": Engine(tiny_model, tiny_tokenizer, pack=False)})
    with live_server(app) as url:
        schema = schemathesis.openapi.from_url(url.removesuffix("/v1") + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions",
                                                    "GET /v1/models"}
        statuses: dict[str, set[int]] = {}
        for op in operations:
            cases = st.tuples(op.as_strategy(), st.booleans()).map(with_served_model)

            @given(case=cases)
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def call(case):
                response = case.call(timeout=60)
                label = f"{case.method} {case.operation.path}"
                statuses.setdefault(label, set()).add(response.status_code)
                assert response.status_code < 500, f"{case.as_curl_command()}\n-> {response.status_code} {response.text}"

            call()
        # the run reached past validation into generation, and found malformed input too
        assert 200 in statuses["POST /v1/chat/completions"] and 400 in statuses["POST /v1/chat/completions"]
