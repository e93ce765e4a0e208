"""OpenAI-style error bodies: every failure the server returns has the same shape the API documents.

Clients (the official ``openai`` package included) read ``{"error": {"message", "type", "param", "code"}}``;
a bare FastAPI ``{"detail": ...}`` would surface as an unhelpful generic error, so all handlers map here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# Fields of the OpenAI API this server knowingly does not implement; named in the 400 so the caller
# learns the field is understood but unsupported, not misspelled.
KNOWN_UNSUPPORTED = frozenset(
    {
        "tools", "tool_choice", "parallel_tool_calls", "reasoning", "include", "background", "conversation",
        "prompt", "prompt_cache_key", "service_tier", "safety_identifier", "max_tool_calls", "top_logprobs",
        "user", "stream_options", "functions", "function_call", "logprobs", "response_format", "n",
        "frequency_penalty", "presence_penalty", "logit_bias", "audio", "modalities", "prediction",
        "web_search_options", "store", "metadata", "verbosity", "prompt_cache_retention",
    }
)


class APIError(Exception):
    """An error with an HTTP status and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"{what} with id '{ident}' not found.", param=param, code="not_found")


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "dict", "none", "list"})
_TYPE_PREFIXES = ("list[", "dict[", "function-", "tagged-union", "literal[")
_TAGS = frozenset({"input_text", "output_text", "text"})
_FORMAT_TAGS = frozenset({"text", "json_object", "json_schema"})


def _param(loc: Sequence[int | str]) -> str | None:
    """The field path an error is about, without pydantic's union-branch and discriminator-tag markers."""
    parts: list[int | str] = []
    items = [p for p in loc if p not in ("body", "query", "path", "header")]
    for i, p in enumerate(items):
        if isinstance(p, str) and (p.lower() in _TYPE_NAMES or p.lower().startswith(_TYPE_PREFIXES)):
            continue
        after_index = i > 0 and isinstance(items[i - 1], int)
        if isinstance(p, str) and after_index and p in _TAGS and i + 1 < len(items):
            continue  # the discriminator tag pydantic inserts after a list index
        after_format = i > 0 and items[i - 1] in ("format", "response_format")
        if isinstance(p, str) and after_format and p in _FORMAT_TAGS and i + 1 < len(items):
            continue  # the tag of a text.format / response_format variant
        parts.append(p)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    """The most useful single message for a body that failed validation."""
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            return APIError(
                400,
                "We could not parse the JSON body of your request. The request body must be valid JSON.",
                code="invalid_json",
            )
    for err in errors:
        if err.get("type") == "extra_forbidden":
            field = _param(err.get("loc", ())) or "?"
            leaf = field.rsplit(".", 1)[-1]
            why = "is not supported by this server" if leaf in KNOWN_UNSUPPORTED else "is not a known parameter"
            return APIError(400, f"Unsupported parameter: '{field}' {why}.", param=field, code="unsupported_parameter")
    if not errors:
        return APIError(400, "Invalid request.", code="invalid_request")
    # Prefer the error for the deepest location: union branches report one error each, and the
    # deepest is the one that names the field the caller got wrong.
    err = max(errors, key=lambda e: len(e.get("loc", ())))
    name = _param(err.get("loc", ()))
    # Union branches: a branch whose type matched but whose value did not (an empty list, say) says more
    # than "wrong type" from the branches that did not match at all.
    value_errors = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    if len(errors) > 1 and value_errors:
        err = value_errors[0]
        name = _param(err.get("loc", ()))
    elif len(errors) > 1 and len({_param(e.get("loc", ())) for e in errors}) == 1:
        got = type(err.get("input")).__name__.replace("NoneType", "null")
        return APIError(400, f"Invalid type for '{name}': no accepted type matches (got {got}).",
                        param=name, code="invalid_type")
    if err.get("type") == "missing" and name is None:
        return APIError(400, "The request body is missing: send a JSON object.", code="missing_body")
    if err.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if name is None and err.get("type") in ("model_attributes_type", "dict_type"):
        return APIError(400, "The request body must be a JSON object.", code="invalid_type")
    msg = str(err.get("msg", "invalid value"))
    if name is None:  # a check of the whole body (it names the field in its message)
        return APIError(400, f"Invalid request: {msg.removeprefix('Value error, ')}.", code="invalid_value")
    return APIError(400, f"Invalid value for '{name}': {msg}.", param=name, code="invalid_value")


async def _api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc).response()


async def _http_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large"}
    message = str(exc.detail) if exc.status_code != 404 else "Unknown URL: no such route."
    response = APIError(exc.status_code, message, code=codes.get(exc.status_code)).response()
    if exc.status_code in (408, 413):  # the rest of the body is not read: this connection is done
        response.headers["connection"] = "close"
    return response


async def _server_error_handler(_: Request, exc: Exception) -> JSONResponse:
    return APIError(500, f"The server had an error processing your request ({type(exc).__name__}).",
                    type="server_error", code="server_error").response()


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _server_error_handler)
