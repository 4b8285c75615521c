"""Route declarations: what each route is, who may call it, and how sub-apps are mounted.

A sub-app (``SubApp``) is a small class whose handlers are declared with ``@route``: the
method and path, a summary and parameters for ``/api/openapi.json``, and the ``Access`` the
route needs.  Each sub-app gets its own Klein app from those declarations; ``mount`` puts
every sub-app's routes into one Klein app, each behind the one access check
(relaymail.web.access.AccessGate), so a handler runs only once its caller is allowed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, TypeVar

from klein import Klein
from twisted.web.iweb import IRequest

from relaymail.web.http import json_reply

PATH_VARIABLE = re.compile(r"{(\w+)}")
ROUTE_ATTRIBUTE = "__relaymail_route__"


class Access(enum.Enum):
    """What a caller needs for a route."""

    PUBLIC = "public"
    # The bearer token, or a console session (with its CSRF token for changes).
    ADMIN = "admin"
    # /health and /metrics: a loopback client not forwarded by a proxy, when
    # web.open_metrics_to_loopback; else as ADMIN.
    LOCAL_OR_ADMIN = "loopback-or-admin"
    # A console session cookie (no token: the page asks for its CSRF token with it).
    SESSION = "session"
    # Any signed-in principal: an account user (session, bearer token from
    # /api/auth/login, or an API key with the route's scope) or an admin; the handler
    # limits what it shows and changes to the caller's own objects.
    USER = "user"


@dataclass(frozen=True)
class Route:
    """One route: ``path`` in OpenAPI form (``/api/queue/{qid}``)."""

    method: str  # lower case, as OpenAPI spells it
    path: str
    summary: str
    access: Access
    query: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    endpoint: str = ""  # the handler's name in its sub-app
    scope: str | None = None  # the API key scope a USER route needs (None: any key)

    @property
    def rule(self) -> str:
        """The path as a Klein (werkzeug) rule."""
        return PATH_VARIABLE.sub(r"<string:\1>", self.path)

    @property
    def path_variables(self) -> list[str]:
        return PATH_VARIABLE.findall(self.path)


def query(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    """A query parameter, as OpenAPI describes it."""
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": kind}}


Handler = TypeVar("Handler", bound=Callable[..., Any])


def route(method: str, path: str, summary: str, access: Access = Access.ADMIN,
          query: Sequence[dict[str, Any]] = (),
          body: dict[str, Any] | None = None, scope: str | None = None
          ) -> Callable[[Handler], Handler]:
    """Declare a sub-app's handler (``def handler(self, request, **path_variables)``)."""

    def declare(handler: Handler) -> Handler:
        setattr(handler, ROUTE_ATTRIBUTE,
                Route(method.lower(), path, summary, access, tuple(query), body,
                      scope=scope))
        return handler

    return declare


class SubApp:
    """One area of the console and API.  Subclasses declare handlers with ``@route``; each
    gets ``app`` (its Klein app) and ``routes`` (the declarations, in order).

    A sub-app's own ``app`` runs its handlers without the access check: serve it only
    through ``mount``, which checks first."""

    app: ClassVar[Klein]
    routes: ClassVar[tuple[Route, ...]]
    # The 404 answer of its routes when the process was built without this area.
    unavailable: ClassVar[str] = "not available here"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.app = Klein()
        routes = []
        for name, handler in vars(cls).items():
            declared: Route | None = getattr(handler, ROUTE_ATTRIBUTE, None)
            if declared is None:
                continue
            declared = replace(declared, endpoint=name)
            cls.app.route(declared.rule, methods=[declared.method.upper()],
                          endpoint=name)(handler)
            routes.append(declared)
        cls.routes = tuple(routes)


class Mount(Protocol):
    """What ``mount``'s routes ask of the object the root Klein app is bound to."""

    def refusal(self, access: Access, request: IRequest, scope: str | None = None
                ) -> bytes | None:
        """None when the caller may go on; else the answer (401, 403)."""

    def subapp(self, kind: type[SubApp]) -> SubApp | None:
        """The running instance of a sub-app, or None when it was not built."""


def mount(root: Klein, subapps: Sequence[type[SubApp]]) -> tuple[Route, ...]:
    """Serve every route of ``subapps`` from ``root`` (a class-level Klein app of a class
    implementing ``Mount``): the access check, then the sub-app's own handler."""
    routes = []
    for kind in subapps:
        for declared in kind.routes:
            root.route(declared.rule, methods=[declared.method.upper()],
                       endpoint=f"{kind.__name__}.{declared.endpoint}")(
                _forward(kind, declared))
            routes.append(declared)
    return tuple(routes)


def _forward(kind: type[SubApp], declared: Route) -> Callable[..., Any]:
    def forward(mounted: Mount, request: IRequest, **variables: str) -> Any:
        refusal = mounted.refusal(declared.access, request, declared.scope)
        if refusal is not None:
            return refusal
        subapp = mounted.subapp(kind)
        if subapp is None:
            return json_reply(request, {"error": kind.unavailable}, 404)
        return subapp.app.execute_endpoint(declared.endpoint, request, **variables)

    forward.__name__ = f"{kind.__name__}_{declared.endpoint}"
    return forward
