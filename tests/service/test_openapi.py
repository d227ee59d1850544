"""Property-based tests of every operation against the app's own OpenAPI schema (schemathesis): no 5xx,
and every answer conforms to the schema (status code documented, content type, headers, body)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.config import ServiceConfig

from .conftest import API_KEY, DEMO_CHECKPOINT, Corpus, make_config

pytestmark = pytest.mark.slow  # every test here reads the demo corpus, indexed once per session (about a minute)

MAX_EXAMPLES = 30  # per operation and mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="session")
def api_schema(corpus: Corpus) -> schemathesis.BaseSchema:
    """The schema of an app over the shared corpus; an API key keeps the write routes from changing it."""
    app = create_app(make_config(corpus, api_key=API_KEY, max_upload_bytes=4 * 2**20))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _cases() -> list[tuple[GenerationMode, str, str]]:
    """(mode, method, path) of every operation; negative data only where there is input to break."""
    paths = create_app(ServiceConfig(model_path=DEMO_CHECKPOINT)).openapi()["paths"]  # the same whatever the config
    cases = []
    for path, item in paths.items():
        for method, operation in item.items():
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            cases += [(mode, method.upper(), path) for mode in modes]
    return cases


# `schemathesis.pytest.from_fixture` + `@schema.parametrize()` fails on pytest 9 (schemathesis 4.32 reads
# `Function._nodeid`), so each operation and mode is a parametrized test running its own hypothesis search.
@pytest.mark.parametrize("mode,method,path", _cases(), ids=lambda v: getattr(v, "value", v))
def test_api_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode, method: str, path: str
) -> None:
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    check()
