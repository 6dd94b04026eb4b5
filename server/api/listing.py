"""OpenAI's cursor pagination of lists (files, vector stores, their files): limit, after
(an id), order, and the list object with has_more, first_id and last_id."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from server.api.body import validate_body
from server.api.errors import bad_request

Query = TypeVar("Query", bound="ListQuery")


class ListQuery(BaseModel):
    """OpenAI's cursor pagination, as query parameters."""

    model_config = ConfigDict(extra="allow")
    limit: int | None = Field(None, ge=1, le=10000)
    after: str | None = None
    order: Literal["asc", "desc"] = "desc"


def list_query(request: Request, model: type[Query]) -> Query:
    """The query string validated as `model` (400 naming the parameter otherwise)."""
    return validate_body(model, dict(request.query_params))


def page(items: list[dict[str, Any]], query: ListQuery, default_limit: int = 10000) -> dict:
    """OpenAI's cursor pagination: limit, after (an id), has_more, first_id, last_id."""
    limit = query.limit or default_limit
    after = query.after
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise bad_request(f"No object with id {after!r} to continue after.", param="after")
        items = items[ids.index(after) + 1 :]
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }
