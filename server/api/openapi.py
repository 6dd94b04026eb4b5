"""GET /openapi.json: an OpenAPI 3.1 description of the API, generated, so it cannot drift.

The operations are the app's own routes; a request body's schema is the pydantic model
its handler validates with (`@documented(body=...)`), query parameters come from a model
too. Fuzzers (schemathesis, in the test suite and `make fuzz`) and client generators read
it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Handler = TypeVar("Handler", bound=Callable[..., Any])

REF = "#/components/schemas/{model}"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


@dataclass(frozen=True)
class Operation:
    summary: str
    body: type[BaseModel] | None = None
    # A multipart/form-data body (uploads), as a JSON schema.
    form: dict[str, Any] | None = None
    query: type[BaseModel] | None = None
    # The media type of a successful answer.
    returns: str = "application/json"
    # The path parameter that the answer's "id" names (what the operation creates): links
    # lead from here to every operation taking that parameter, so a stateful fuzzer can
    # follow a create with gets, updates and deletes.
    creates: str | None = None


def documented(
    summary: str,
    body: type[BaseModel] | None = None,
    form: dict[str, Any] | None = None,
    query: type[BaseModel] | None = None,
    returns: str = "application/json",
    creates: str | None = None,
) -> Callable[[Handler], Handler]:
    """Describe a handler's operation for /openapi.json."""

    def mark(handler: Handler) -> Handler:
        operation = Operation(summary, body, form, query, returns, creates)
        handler.__openapi__ = operation  # type: ignore[attr-defined]
        return handler

    return mark


def openapi_document(routes: list[Any], title: str, version: str) -> dict[str, Any]:
    operations = [
        (route, method, getattr(route.endpoint, "__openapi__", Operation(route.path)))
        for route in routes
        if isinstance(route, Route)
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]
    models = {op.body for _, _, op in operations if op.body} | {
        op.query for _, _, op in operations if op.query
    }
    _, schemas = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF
    )
    components = {**schemas.get("$defs", {}), "Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route, method, op in operations:
        paths.setdefault(route.path_format, {})[method.lower()] = _operation(
            route, method, op, components
        )
    for route, method, op in operations:
        if op.creates is not None:
            links = {
                _operation_id(other, other_method): {
                    "operationId": _operation_id(other, other_method),
                    "parameters": {op.creates: "$response.body#/id"},
                }
                for other, other_method, _ in operations
                if op.creates in other.param_convertors
            }
            paths[route.path_format][method.lower()]["responses"]["200"]["links"] = links
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }


def _operation(
    route: Route, method: str, op: Operation, components: dict[str, Any]
) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.param_convertors
    ]
    if op.query is not None:
        query = components[op.query.__name__]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in query.get("properties", {}).items()
        ]
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(route, method),
        "responses": {
            "200": {"description": "Success", "content": {op.returns: {"schema": {}}}},
            "default": {
                "description": "An error, in OpenAI's shape",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        schema = {"$ref": REF.format(model=op.body.__name__)}
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    elif op.form is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": op.form}},
        }
    return out


def _operation_id(route: Route, method: str) -> str:
    return f"{route.name}_{method.lower()}"


# Built once per app, from the routes it serves.
_documents: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


async def openapi(request: Request) -> Response:
    document = _documents.get(request.app)
    if document is None:
        document = _documents[request.app] = openapi_document(
            request.app.routes, "Hearth", version("hearth")
        )
    return JSONResponse(document)
