"""Pagination of HTTP list endpoints, shared by the ``http`` step and the ``poll`` trigger.

Styles (``style:``; inferred from the fields when not given):

* ``link`` (default): follow the ``Link: <url>; rel="next"`` header (RFC 8288); relative
  targets are resolved against the page's URL. No ``next`` link: the last page.
* ``next``: ``next: ${response.body.links.next}`` gives the next URL (absolute, or
  relative to the page's URL); ``null``/``''`` ends.
* ``cursor``: ``cursor: ${response.body.meta.next_cursor}`` gives a value sent as the
  query parameter ``param`` of the next request; ``null``/``''`` ends, the same cursor
  twice is an error (the server is not moving).
* ``page`` / ``offset``: the query parameter ``param`` counts pages from ``start``
  (default 1) or items from ``start`` (default 0; it grows by the items received). An
  empty page ends, and so does a page shorter than ``size`` when ``size`` is set (sent as
  ``size_param`` when that is set).

``response`` in the templates is the page just read (``{status, headers, body}``). The
items of a page are at the dotted path ``items`` (default: the body, when it is a list).
At most ``max_pages`` pages are read; when more remain, the result says ``complete:
false``. A next request identical to one already sent is an error (a loop), and so is a
next page on another scheme, host or port than the first (the step's credentials are
never sent elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from pydantic import Field, model_validator

from streamflow.topology.expressions import ROOTS, Template, compile_value
from streamflow.topology.models import Model

Style = Literal["link", "next", "cursor", "page", "offset"]
PAGE_ROOTS = ROOTS | {"response"}


class PaginationError(ValueError):
    """The pages cannot be followed (not a list, a loop, a stuck cursor)."""


class Paginate(Model):
    """How to read every page of a list endpoint (see docs/connectors.md)."""

    style: Style | None = Field(
        None,
        description="link (Link header, the default), next (a next URL), cursor, page, "
        "offset; inferred from `next`/`cursor`",
    )
    items: str | None = Field(
        None, description="dotted path to the list in a page's body (default: the body)"
    )
    next: str | None = Field(
        None, description="next: template of the next URL, e.g. ${response.body.next}; null ends"
    )
    cursor: str | None = Field(
        None, description="cursor: template of the next cursor, e.g. ${response.body.cursor}"
    )
    param: str | None = Field(
        None, description="cursor/page/offset: the query parameter (default cursor/page/offset)"
    )
    start: int | None = Field(None, ge=0, description="page: first page (1); offset: 0")
    size: int | None = Field(
        None, ge=1, le=1_000_000, description="page size; a shorter page is the last one"
    )
    size_param: str | None = Field(None, description="query parameter carrying `size`")
    max_pages: int = Field(100, ge=1, le=100_000, description="stop after this many pages")

    @model_validator(mode="after")
    def _style(self) -> Paginate:
        style = self.effective_style
        if self.next is not None and style != "next":
            raise ValueError(f"`next` is for style next, not {style}")
        if self.cursor is not None and style != "cursor":
            raise ValueError(f"`cursor` is for style cursor, not {style}")
        if style == "next" and not self.next:
            raise ValueError("style next needs `next: ${response.body.…}` (the next URL)")
        if style == "cursor" and not self.cursor:
            raise ValueError("style cursor needs `cursor: ${response.body.…}`")
        if self.next is not None and self.cursor is not None:
            raise ValueError("use one of `next` and `cursor`")
        if self.size_param is not None and self.size is None:
            raise ValueError("`size_param` sends `size`: set size")
        return self

    @property
    def effective_style(self) -> Style:
        if self.style is not None:
            return self.style
        return "next" if self.next is not None else "cursor" if self.cursor else "link"


@dataclass
class PageRequest:
    url: str
    query: dict[str, str]

    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self.url, tuple(sorted(self.query.items())))


@dataclass
class PageState:
    """Where a walk is: the request to send next and what was seen."""

    request: PageRequest
    origin: tuple[str, str] = ("", "")  # scheme and host:port of the first request
    number: int = 0  # pages read so far
    position: int = 0  # page number or offset of `request`
    cursor: Any = None
    sent: set[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=set)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.rsplit("@", 1)[-1].lower()


def dig(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(doc, Mapping):
            doc = doc.get(key)
        elif isinstance(doc, list) and key.lstrip("-").isdigit():
            i = int(key)
            doc = doc[i] if -len(doc) <= i < len(doc) else None
        else:
            return None
    return doc


class Pager:
    """The pure part of a walk: first request, items of a page, the next request."""

    def __init__(self, cfg: Paginate, roots: frozenset[str] = PAGE_ROOTS) -> None:
        self.cfg = cfg
        self.style = cfg.effective_style
        self.next: Template | None = (
            compile_value(cfg.next, roots=roots) if cfg.next is not None else None
        )
        self.cursor: Template | None = (
            compile_value(cfg.cursor, roots=roots) if cfg.cursor is not None else None
        )
        self.param = cfg.param or {"page": "page", "offset": "offset"}.get(self.style, "cursor")
        default_start = 1 if self.style == "page" else 0
        self.start = cfg.start if cfg.start is not None else default_start

    def begin(self, url: str, query: Mapping[str, str]) -> PageState:
        q = dict(query)
        if self.style in ("page", "offset"):
            q[self.param] = str(self.start)
        if self.cfg.size_param and self.cfg.size is not None:
            q[self.cfg.size_param] = str(self.cfg.size)
        state = PageState(PageRequest(url, q), _origin(url), position=self.start)
        state.sent.add(state.request.key())
        return state

    def items(self, body: Any) -> list[Any]:
        found = dig(body, self.cfg.items) if self.cfg.items else body
        if found is None and self.cfg.items:
            return []
        if not isinstance(found, list):
            where = f" at {self.cfg.items}" if self.cfg.items else ""
            raise PaginationError(f"a page has no list of items{where}")
        return found

    def advance(
        self,
        state: PageState,
        response: Mapping[str, Any],
        next_link: str | None,
        items: list[Any],
        scope: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    ) -> bool:
        """Move ``state`` to the next page; False when this page was the last one.
        ``scope(response)`` gives the scope of the templates."""
        state.number += 1
        req = state.request
        nxt: PageRequest | None = None
        if self.style == "link":
            nxt = PageRequest(urljoin(req.url, next_link), {}) if next_link else None
        elif self.style == "next":
            assert self.next is not None
            target = self.next.render(scope(response))
            nxt = PageRequest(urljoin(req.url, str(target)), {}) if target else None
        elif self.style == "cursor":
            assert self.cursor is not None
            value = self.cursor.render(scope(response))
            if value is None or value == "":
                return False
            if value == state.cursor:
                raise PaginationError(f"the cursor did not move ({self.param}={value})")
            state.cursor = value
            nxt = PageRequest(req.url, {**req.query, self.param: str(value)})
        else:
            size = self.cfg.size
            if not items or (size is not None and len(items) < size):
                return False
            state.position += 1 if self.style == "page" else len(items)
            nxt = PageRequest(req.url, {**req.query, self.param: str(state.position)})
        if nxt is None:
            return False
        if _origin(nxt.url) != state.origin:  # credentials go to the API's host only
            raise PaginationError(
                f"the next page is on another host ({_origin(nxt.url)[1] or nxt.url[:60]})"
            )
        if nxt.key() in state.sent:
            raise PaginationError(f"the next page is one already read ({nxt.url})")
        state.sent.add(nxt.key())
        state.request = nxt
        return True
