"""Property-based requests from the OpenAPI document (schemathesis): never a 500, always a JSON error."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.req("PA-1"), pytest.mark.slow]

EXAMPLES_PER_OPERATION = 12


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_route_answers_500_or_non_json_errors(live_server):
    document = httpx.get(f"{live_server.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    token = live_server.seed.tokens["a-admin"]
    failures: list[str] = []
    sent: list[int] = []

    with httpx.Client(base_url=live_server.url) as client:
        for operation in operations:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(), authenticated=st.booleans())
            def exercise(case, authenticated):
                headers = {"Authorization": f"Bearer {token}"} if authenticated else {}
                kwargs = case.as_transport_kwargs(base_url=live_server.url, headers=headers)
                client.cookies.clear()
                for name, value in (kwargs.get("cookies") or {}).items():
                    client.cookies.set(name, str(value))
                response = client.request(
                    kwargs["method"],
                    kwargs["url"],
                    headers=kwargs.get("headers"),
                    params=kwargs.get("params"),
                    json=kwargs.get("json"),
                    content=kwargs.get("data") if isinstance(kwargs.get("data"), (bytes, str)) else None,
                )
                sent.append(response.status_code)
                where = f"{case.operation.label} -> {response.status_code}"
                if response.status_code >= 500:
                    failures.append(f"{where}: {response.text[:200]}")
                elif response.status_code >= 400:
                    try:
                        body = response.json()
                    except ValueError:
                        failures.append(f"{where}: error body is not JSON")
                        return
                    if not isinstance(body, dict) or "error" not in body:
                        failures.append(f"{where}: error body has no 'error' field: {body!r}"[:300])

            exercise()
    assert not failures, "\n".join(failures[:20])
    assert len(sent) >= len(operations) * 5
    assert any(code < 300 for code in sent), "some generated requests must get through"
    assert any(400 <= code < 500 for code in sent)
