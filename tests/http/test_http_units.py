"""Tier 1: responses, SSE framing, routing and limits, in memory."""

from __future__ import annotations

import re

import orjson
import pytest

from igllama.http import (
    EventStream,
    Headers,
    HTTPError,
    Limits,
    Request,
    Response,
    Router,
    default_error_body,
)
from igllama.http.response import (
    CLOSE,
    KEEP_ALIVE_1_0,
    KEEP_OPEN,
    encode_event,
    encode_response,
    encode_stream_head,
)

CORS = [
    b"Access-Control-Allow-Origin: *",
    b"Access-Control-Allow-Methods: GET, POST, OPTIONS",
    b"Access-Control-Allow-Headers: Content-Type, Authorization",
]


def split_response(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *fields = head.split(b"\r\n")
    return status, fields, body


def request(method: str = "GET", path: str = "/", headers: list[tuple[str, str]] | None = None,
            ) -> Request:
    return Request(method, path, path, "", Headers(headers or []), b"", "1.1", True)


async def no_events():  # type: ignore[no-untyped-def]
    return
    yield b""


# -- whole responses ----------------------------------------------------------------


def test_json_response_has_status_cors_date_and_exact_length() -> None:
    raw = encode_response(Response.json(200, {"status": "ok", "n": "é"}), KEEP_OPEN)
    status, fields, body = split_response(raw)
    assert status == b"HTTP/1.1 200 OK"
    assert orjson.loads(body) == {"status": "ok", "n": "é"}
    assert b"Content-Length: %d" % len(body) in fields
    assert b"Content-Type: application/json" in fields
    assert all(cors in fields for cors in CORS)
    date = [f for f in fields if f.startswith(b"Date: ")]
    assert len(date) == 1
    assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", date[0])
    assert not any(f.startswith(b"Connection:") for f in fields)


def test_connection_field_follows_the_caller() -> None:
    response = Response(404, b"{}")
    assert b"\r\nConnection: close\r\n" in encode_response(response, CLOSE)
    assert b"\r\nConnection: keep-alive\r\n" in encode_response(response, KEEP_ALIVE_1_0)


def test_extra_headers_and_content_type_are_sent() -> None:
    response = Response(201, b"hi", b"text/plain", [(b"X-Request-Id", b"abc")])
    _, fields, body = split_response(encode_response(response, KEEP_OPEN))
    assert b"X-Request-Id: abc" in fields and b"Content-Type: text/plain" in fields
    assert body == b"hi"


def test_204_has_no_content_length_and_no_body() -> None:
    status, fields, body = split_response(encode_response(Response(204, b"", b""), KEEP_OPEN))
    assert status == b"HTTP/1.1 204 No Content" and body == b""
    assert not any(f.startswith((b"Content-Length", b"Content-Type")) for f in fields)


def test_unregistered_status_code_gets_an_empty_reason() -> None:
    assert encode_response(Response(299), KEEP_OPEN).startswith(b"HTTP/1.1 299 \r\n")


@pytest.mark.parametrize(
    "headers", [[(b"X-A", b"a\r\nInjected: 1")], [(b"X A", b"1")], [(b"X-A", b"a\nb")]]
)
def test_header_injection_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ValueError):
        Response(200, b"", headers=headers)


@pytest.mark.parametrize("status", [100, 101, 199, 600])
def test_non_final_status_is_refused(status: int) -> None:
    with pytest.raises(ValueError):
        Response(status)


def test_body_on_204_is_refused() -> None:
    with pytest.raises(ValueError):
        Response(204, b"x")


# -- server-sent events ------------------------------------------------------------------


def test_sse_head_is_chunked_event_stream_with_cors() -> None:
    status, fields, rest = split_response(
        encode_stream_head(EventStream(no_events()), True, KEEP_OPEN)
    )
    assert status == b"HTTP/1.1 200 OK" and rest == b""
    assert b"Content-Type: text/event-stream" in fields
    assert b"Cache-Control: no-cache" in fields
    assert b"Transfer-Encoding: chunked" in fields
    assert all(cors in fields for cors in CORS)
    assert not any(f.startswith(b"Content-Length") for f in fields)


def test_sse_head_for_http_1_0_is_not_chunked() -> None:
    _, fields, _ = split_response(encode_stream_head(EventStream(no_events()), False, CLOSE))
    assert b"Transfer-Encoding: chunked" not in fields and b"Connection: close" in fields


def test_event_is_one_chunk_holding_one_frame() -> None:
    payload = b'{"choices":[{"delta":{"content":"hi"}}]}'
    frame = b"data: " + payload + b"\n\n"
    assert encode_event(payload, True) == b"%x\r\n%s\r\n" % (len(frame), frame)
    assert encode_event(payload, False) == frame


def test_multiline_payload_becomes_one_data_line_per_line() -> None:
    assert encode_event(b"a\nb\r\nc", False) == b"data: a\ndata: b\ndata: c\n\n"


# -- routing ---------------------------------------------------------------------------------


def test_router_matches_exact_path_and_method() -> None:
    router = Router()

    def health(request: Request) -> Response:
        return Response(200)

    async def chat(request: Request) -> Response:
        return Response(200)

    router.add("GET", "/health", health)
    router.add("POST", "/v1/chat/completions", chat)
    assert router.resolve("GET", "/health").handler is health
    assert not router.resolve("GET", "/health").is_async
    assert router.resolve("POST", "/v1/chat/completions").is_async
    assert router.resolve("GET", "/health/").handler is not health


def test_unknown_path_is_404() -> None:
    route = Router().resolve("GET", "/nope")
    with pytest.raises(HTTPError) as caught:
        route.handler(request("GET", "/nope"))
    assert caught.value.status == 404 and "/nope" in caught.value.message


def test_wrong_method_is_405_listing_the_allowed_ones() -> None:
    router = Router()
    router.add("GET", "/v1/models", lambda r: Response(200))
    router.add("POST", "/v1/models", lambda r: Response(200))
    with pytest.raises(HTTPError) as caught:
        router.resolve("DELETE", "/v1/models").handler(request("DELETE", "/v1/models"))
    assert caught.value.status == 405
    assert caught.value.headers == ((b"Allow", b"GET, POST, OPTIONS"),)


def test_options_to_any_path_is_a_preflight() -> None:
    router = Router()
    for path in ("/v1/chat/completions", "/never/registered"):
        result = router.resolve("OPTIONS", path).handler(request("OPTIONS", path))
        assert isinstance(result, Response) and result.status == 204
        assert (b"Access-Control-Max-Age", b"86400") in result.headers


def test_preflight_allows_the_headers_the_browser_asks_for() -> None:
    asked = request("OPTIONS", "/v1/chat/completions",
                    [("access-control-request-headers", "content-type, x-stainless-os")])
    result = Router().resolve("OPTIONS", "/x").handler(asked)
    assert isinstance(result, Response)
    assert (b"Access-Control-Allow-Headers", b"content-type, x-stainless-os") in result.headers
    # Garbage is not echoed back.
    bad = request("OPTIONS", "/x", [("access-control-request-headers", "a b, (c)")])
    result = Router().resolve("OPTIONS", "/x").handler(bad)
    assert isinstance(result, Response)
    assert all(name != b"Access-Control-Allow-Headers" for name, _ in result.headers)


@pytest.mark.parametrize(("method", "path"), [("GET", "health"), ("G T", "/a"), ("GET", "/a?b")])
def test_router_refuses_bad_routes(method: str, path: str) -> None:
    with pytest.raises(ValueError):
        Router().add(method, path, lambda r: Response(200))


def test_router_refuses_a_duplicate_route() -> None:
    router = Router()
    router.add("GET", "/a", lambda r: Response(200))
    with pytest.raises(ValueError):
        router.add("GET", "/a", lambda r: Response(201))


def test_a_template_route_hands_its_segment_to_the_handler() -> None:
    router = Router()
    seen: list[dict[str, str] | None] = []

    def slot(r: Request) -> Response:
        seen.append(r.path_params)
        return Response(200)

    router.add("POST", "/slots/{id}", slot)
    router.add("GET", "/slots", lambda r: Response(201))
    result = router.resolve("POST", "/slots/12").handler(request("POST", "/slots/12"))
    assert isinstance(result, Response) and result.status == 200 and seen == [{"id": "12"}]
    exact = router.resolve("GET", "/slots").handler(request("GET", "/slots"))
    assert isinstance(exact, Response) and exact.status == 201  # the exact path is not the template
    for path in ("/slots/", "/slots/1/2", "/slotsX/1"):  # one whole, non-empty segment only
        with pytest.raises(HTTPError) as caught:
            router.resolve("POST", path).handler(request("POST", path))
        assert caught.value.status == 404
    with pytest.raises(HTTPError) as caught:
        router.resolve("GET", "/slots/1").handler(request("GET", "/slots/1"))
    assert caught.value.status == 405 and caught.value.headers == ((b"Allow", b"POST, OPTIONS"),)
    with pytest.raises(ValueError):
        router.add("GET", "/a/x{id}", lambda r: Response(200))


# -- small records ------------------------------------------------------------------------------


def test_default_error_body_has_openai_shape() -> None:
    assert orjson.loads(default_error_body(404, "Invalid URL")) == {
        "error": {"message": "Invalid URL", "type": "invalid_request_error", "param": None,
                  "code": 404}
    }
    assert orjson.loads(default_error_body(503, "busy"))["error"]["type"] == "server_error"


def test_http_error_needs_an_error_status() -> None:
    with pytest.raises(ValueError):
        HTTPError(200, "fine")


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        Limits(max_body_bytes=0)
    with pytest.raises(ValueError):
        Limits(head_timeout=-1.0)


def test_headers_view_is_case_insensitive() -> None:
    headers = Headers([("content-type", "a"), ("x-b", "1"), ("x-b", "2")])
    assert "Content-Type" in headers and "nope" not in headers
    assert headers.get("X-B") == "1" and headers.get_all("X-b") == ["1", "2"]
    assert list(headers) == [("content-type", "a"), ("x-b", "1"), ("x-b", "2")]
    assert len(headers) == 3
