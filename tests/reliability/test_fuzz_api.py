"""Fuzz the front end's HTTP API from its own OpenAPI schema (schemathesis) against live processes.

A real worker (procedural, small splats) and a real front end on loopback; schemathesis generates valid and
invalid requests for every operation the schema declares. Required of every answer: no 5xx other than a
typed 503 (JSON ``error`` from the documented set, with Retry-After), a status code the operation declares,
the declared content type, and a body that matches the declared schema; invalid input must be refused.

Not required: that every schema-valid request succeeds. The schema cannot say "not blank", "a base64 image
or at most 1024 characters of text" or "a decodable JPEG", and refusing those with a typed 422 is correct,
so schemathesis's positive_data_acceptance check is left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from reliability_support import TALLY, TYPED_503
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from generation.testing import Service, running

LONG = os.environ.get("SPLATGEN_LONG_TESTS") == "1"
EXAMPLES = 300 if LONG else 40


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp: Path = tmp_path_factory.mktemp("fuzz_api")
    with running("worker", tmp, {"SPLATGEN_PROCEDURAL_GAUSSIANS": "20000"}) as worker:
        env = {"SPLATGEN_WORKERS": worker.url, "SPLATGEN_WORKER_PROBE_INTERVAL_S": "0.5"}
        with running("front", tmp, env) as service:
            yield service


@pytest.fixture(scope="module")
def front_schema(front: Service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{front.url}/openapi.json")


@schemathesis.check
def only_typed_503s(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 5xx is allowed only as a typed 503 with a Retry-After header."""
    if response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code != 503 or error not in TYPED_503 or "retry-after" not in response.headers:
        raise AssertionError(f"untyped server error {response.status_code}: {response.text[:300]}")
    return True


def fuzz_operation(operation: APIOperation, mode: GenerationMode) -> str | None:
    """Run one operation's examples; the shrunk failure as text, or None."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Case) -> None:
        response = case.call_and_validate(
            timeout=120,
            excluded_checks=[not_a_server_error, positive_data_acceptance],
            additional_checks=[only_typed_503s],
        )
        TALLY.fuzz_examples[f"{mode.value} {case.method} {case.path} -> {response.status_code}"] += 1

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body (GET /health) has no invalid input to send.
        assert mode is GenerationMode.NEGATIVE, f"no positive example for {operation.path}"
        return None
    except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis reports failures as a FailureGroup
        return f"{mode.value} {operation.method.upper()} {operation.path}: {exc}"
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_api_answers_match_the_schema(front_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    operations = [result.ok() for result in front_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/generate/"),
        ("POST", "/v1/generate"),
    }
    failures = [f for op in operations if (f := fuzz_operation(op, mode))]
    assert not failures, "\n\n".join(failures)
