"""The web UI's HTTP server (aiohttp): pages, a JSON API and live updates.

Pages are one HTML shell (``static/index.html``) that ``static/app.js`` fills from the
JSON API; the server checks access before it serves a page, so a graph or colony the
user may not read is an error page with its status (403, 404), never an empty shell:

- ``/`` and ``/colonies/<name>``: a colony's overview; ``/graphs?colony=&state=&q=&page=``:
  its graph list; ``/graphs/<processgraphid>[?at=<sequence>]``: a graph at an event.
- ``/api/...``: the JSON the pages read (:func:`build_app` lists the routes);
  ``/api/graphs/<id>/live`` is a server-sent event stream that says "the graph has new
  events, up to sequence N" while it runs.

Access: the server reads as one identity (:class:`~colonies_es.ui.reader.Identity`), so
whoever reaches it reads what that identity may. Two guards keep it that person's:

1. it listens on a loopback address unless told otherwise (:func:`check_bind`);
2. every request needs the access token: the link ``colonies ui`` prints carries it
   once (``?token=``), the server answers with a cookie (HttpOnly, SameSite=Strict) and
   a redirect to the same page without it. Changes (re-run) are POSTs, refused when
   their Origin is another site's.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from colonies_es.client import ColoniesConnectionError, ColoniesError
from colonies_es.models import to_dict
from colonies_es.projections.timetravel import ReplayError
from colonies_es.ui.reader import Reader

__all__ = ["TOKEN_COOKIE", "UiBindError", "build_app", "check_bind", "is_loopback"]

log = logging.getLogger("colonies.ui")

TOKEN_COOKIE = "colonies_ui_token"
_READER = web.AppKey("reader", Reader)
_TOKEN = web.AppKey("token", str)
_SHELL = web.AppKey("shell", str)
_KEEPALIVE = 15.0
"""Seconds between comments on an idle live stream (proxies close silent ones)."""
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class UiBindError(ValueError):
    """The server was asked to listen beyond this machine without being told it may."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: ``localhost`` or
    every address it resolves to is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind(host: str, expose: bool) -> None:
    """Raises :class:`UiBindError` for a non-loopback ``host`` unless ``expose``."""
    if not expose and not is_loopback(host):
        raise UiBindError(
            f"refusing to listen on {host}: it is reachable from other machines, and the UI "
            "reads as you (your key). Pass --expose to do it anyway."
        )


def build_app(reader: Reader, token: str) -> web.Application:
    """The application: pages, the API and static files, reading through ``reader``;
    requests need ``token`` (module docstring). The caller closes ``reader``."""
    app = web.Application(middlewares=[_errors, _token_guard])
    app[_READER] = reader
    app[_TOKEN] = token
    app[_SHELL] = _static_dir().joinpath("index.html").read_text()
    app.router.add_get("/", _colony_page)
    app.router.add_get("/colonies/{colony}", _colony_page)
    app.router.add_get("/graphs", _colony_page)
    app.router.add_get("/graphs/{graphid}", _graph_page)
    app.router.add_get("/api/colonies/{colony}/overview", _overview)
    app.router.add_get("/api/colonies/{colony}/graphs", _graph_list)
    app.router.add_get("/api/graphs/{graphid}/timeline", _timeline)
    app.router.add_get("/api/graphs/{graphid}/processes/{processid}", _process)
    app.router.add_get("/api/graphs/{graphid}/audit", _audit)
    app.router.add_post("/api/graphs/{graphid}/rerun", _rerun)
    app.router.add_get("/api/graphs/{graphid}/live", _live)
    app.router.add_static("/static", _static_dir(), append_version=False)
    app.on_response_prepare.append(_add_security_headers)
    return app


def _static_dir() -> Path:
    return Path(str(resources.files("colonies_es.ui") / "static"))


# --------------------------------------------------------------------------- guards


@web.middleware
async def _token_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests need the token (module docstring); the static files are the package's
    own code and style, served to anyone (the 401 page is styled with them)."""
    if request.path.startswith("/static/"):
        return await handler(request)
    token = request.app[_TOKEN]
    offered = request.query.get("token")
    if offered is not None and secrets.compare_digest(offered, token):
        query = {k: v for k, v in request.query.items() if k != "token"}
        response = web.HTTPFound(request.rel_url.with_query(query))
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        raise response
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    if not secrets.compare_digest(cookie, token):
        return _failure(
            request,
            401,
            "this page needs the access token: open the link `colonies ui` printed "
            "(it ends with ?token=...)",
        )
    if request.method != "GET" and not _same_origin(request):
        return _failure(request, 403, "changes are accepted from the UI's own pages only")
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ColoniesError and connection failures become error pages (or JSON) with their
    status; nothing else leaks a traceback to the browser."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ColoniesError as error:
        return _failure(request, error.status, error.message or str(error))
    except ColoniesConnectionError as error:
        return _failure(request, 503, str(error))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _failure(request, 500, "internal error (see the server's log)")


def _failure(request: web.Request, status: int, message: str) -> web.Response:
    """An error as JSON for the API, as a page for everything else."""
    if request.path.startswith("/api/"):
        body = json.dumps({"status": status, "error": message})
        content_type = "application/json"
    else:
        body = _ERROR_PAGE.format(status=status, message=html.escape(message))
        content_type = "text/html"
    return web.Response(status=status, text=body, content_type=content_type)


_ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} · colonies</title>
<link rel="stylesheet" href="/static/app.css"><link rel="icon" href="data:,"></head>
<body><header class="top"><a href="/" class="brand">colonies</a></header>
<main class="error-page"><h1>{status}</h1><p class="error-message">{message}</p></main>
</body></html>
"""


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_SECURITY_HEADERS)


# --------------------------------------------------------------------------- pages


def _shell(request: web.Request, colonyname: str) -> web.Response:
    reader = request.app[_READER]
    page = request.app[_SHELL].replace("{{colony}}", html.escape(colonyname, quote=True))
    page = page.replace("{{default_colony}}", html.escape(reader.identity.colonyname, quote=True))
    return web.Response(text=page, content_type="text/html")


async def _colony_page(request: web.Request) -> web.Response:
    reader = request.app[_READER]
    colonyname = request.match_info.get("colony") or request.query.get("colony", "")
    colonyname = colonyname or reader.identity.colonyname
    await reader.check_member(colonyname)  # a 403 page for another colony's
    return _shell(request, colonyname)


async def _graph_page(request: web.Request) -> web.Response:
    reader = request.app[_READER]
    graph = await reader.graph(request.match_info["graphid"])
    reader.warm(graph.processgraphid)  # the page asks for the timeline next
    return _shell(request, graph.colonyname)


# --------------------------------------------------------------------------- API


async def _overview(request: web.Request) -> web.Response:
    return web.json_response(await request.app[_READER].overview(request.match_info["colony"]))


async def _graph_list(request: web.Request) -> web.Response:
    query = request.query
    page = _int(query.get("page", "0"), "page")
    data = await request.app[_READER].graph_list(
        request.match_info["colony"], query.get("state", ""), query.get("q", ""), page
    )
    return web.json_response(data)


async def _timeline(request: web.Request) -> web.Response:
    """The graph's timeline; with ``?events=E&nodes=N&edges=M`` (what the page has) only
    what follows."""
    events, nodes, edges = (_count(request.query.get(name, "0"), name) for name in _SINCE)
    graphid = request.match_info["graphid"]
    data = await request.app[_READER].timeline_json(graphid, (events, nodes, edges))
    # msgspec: several times faster than json.dumps on a 3,000-event timeline
    return web.Response(body=msgspec.json.encode(data), content_type="application/json")


_SINCE = ("events", "nodes", "edges")


async def _process(request: web.Request) -> web.Response:
    at = request.query.get("at")
    data = await request.app[_READER].process_at(
        request.match_info["graphid"],
        request.match_info["processid"],
        _int(at, "at") if at else None,
    )
    return web.json_response(data)


async def _audit(request: web.Request) -> web.Response:
    return web.json_response(await request.app[_READER].audit(request.match_info["graphid"]))


async def _rerun(request: web.Request) -> web.Response:
    graph = await request.app[_READER].rerun(request.match_info["graphid"])
    return web.json_response(to_dict(graph))


async def _live(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``data: {"sequence": N}`` each time the graph gets events
    (the first at once), a comment line when idle. Membership is checked before the
    stream opens (a refusal is an error response); the stream ends when the page goes
    away or the graph can no longer be read."""
    graphid = request.match_info["graphid"]
    follower = request.app[_READER].follow(graphid, idle=_KEEPALIVE)
    try:
        first = await anext(follower)
    except BaseException:
        await follower.aclose()
        raise
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers["Cache-Control"] = "no-cache"
    try:
        await response.prepare(request)
        await _send(response, {"sequence": first})
        async for sequence in follower:
            if sequence is None:
                await response.write(b": idle\n\n")
            else:
                await _send(response, {"sequence": sequence})
    except (ConnectionResetError, ColoniesError, ColoniesConnectionError, ReplayError) as error:
        log.info("live stream of %s ended: %s", graphid, error)
    finally:
        await follower.aclose()
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(data)}\n\n".encode())


def _count(text: str, name: str) -> int:
    """A count of the query (0 or more); ColoniesError(400) otherwise."""
    if not text.isdigit():
        raise ColoniesError(400, f"{name} must be a count (0 or more), not {text!r}")
    return int(text)


def _int(text: str, name: str) -> int:
    if not text.strip().lstrip("-").isdigit():
        raise ColoniesError(400, f"{name} must be a whole number, not {text!r}")
    return int(text)
