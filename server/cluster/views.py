"""The routers of this process, by deployment name, for the ingress's GET /cluster/replicas.

A registry of its own because Ray Serve ships a request router's module to the handle's
process by value (cloudpickle.register_pickle_by_value): the router class there is a copy,
and a class attribute on it is not what the ingress would import. This module is imported
by reference, so both sides see the one dict."""

from __future__ import annotations

from typing import Any, Protocol


class RouterView(Protocol):
    def view(self) -> list[dict[str, Any]]: ...


ROUTERS: dict[str, RouterView] = {}
