"""http step `paginate:` against a real aiohttp list endpoint on loopback: Link header,
next URL and cursor in the body, page and offset numbers, max_pages, loops, bad pages."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from streamflow.errors import PoisonMessageError, ValidationFailed

ITEMS = [{"id": i} for i in range(1, 24)]  # 23 items
CONFIG = {"api": {"type": "string"}}


class Catalogue:
    """23 items, served in pages of `size` in every style the tests need."""

    def __init__(self, size: int = 5) -> None:
        self.size = size

    def slice(self, offset: int, size: int | None = None) -> list[dict[str, int]]:
        return ITEMS[offset : offset + (size or self.size)]

    async def __call__(self, call: Any) -> web.Response:
        q = call.query
        if call.path == "/link":
            page = int(q.get("page", "1"))
            headers = {}
            if page * self.size < len(ITEMS):
                # relative target, among other relations (RFC 8288)
                headers["Link"] = (
                    f'</link?page={page + 1}>; rel="next", </link?page=1>; rel="first"'
                )
            return web.json_response(self.slice((page - 1) * self.size), headers=headers)
        if call.path == "/next":
            page = int(q.get("p", "1"))
            more = page * self.size < len(ITEMS)
            body = {
                "data": self.slice((page - 1) * self.size),
                "next": f"/next?p={page + 1}" if more else None,
            }
            return web.json_response(body)
        if call.path == "/cursor":
            start = int(q.get("after", "0"))
            chunk = [i for i in ITEMS if i["id"] > start][: self.size]
            last = chunk[-1]["id"] if chunk and chunk[-1]["id"] < len(ITEMS) else None
            return web.json_response({"result": {"rows": chunk}, "meta": {"next": last}})
        if call.path == "/pages":
            page, per = int(q.get("page", "1")), int(q.get("per_page", "10"))
            return web.json_response(ITEMS[(page - 1) * per : page * per])
        if call.path == "/offset":
            off = int(q.get("offset", "0"))
            return web.json_response({"items": self.slice(off, 7)})  # the server caps at 7
        if call.path == "/stuck":
            return web.json_response({"rows": [{"id": 1}], "next": "same"})
        if call.path == "/loop":
            return web.json_response([{"id": 1}], headers={"Link": '</loop>; rel="next"'})
        if call.path == "/elsewhere":
            return web.json_response(
                [{"id": 1}], headers={"Link": '<http://127.0.0.2:9/x>; rel="next"'}
            )
        if call.path == "/notalist":
            return web.json_response({"data": {"id": 1}})
        if call.path == "/fail2":
            if q.get("page") == "2":
                return web.json_response({"error": "gone"}, status=404)
            return web.json_response([{"id": 1}], headers={"Link": '<?page=2>; rel="next"'})
        return web.json_response({}, status=404)


def step(url: str, paginate: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "orders", "type": "http", "url": "${config.api}" + url,
            "paginate": paginate, **extra}  # fmt: skip


async def run(step_runner: Any, http_server: Any, st: dict[str, Any]) -> tuple[Any, Any]:
    server = await http_server(Catalogue())
    runner = await step_runner([st], config=CONFIG, values={"api": server.url})
    return await runner.run("orders", {"n": 1}), server


async def test_link_header(step_runner: Any, http_server: Any) -> None:
    out, server = await run(step_runner, http_server, step("/link", {}))
    assert out.result["items"] == ITEMS
    assert (out.result["pages"], out.result["complete"]) == (5, True)
    assert [c.query.get("page") for c in server.calls] == [None, "2", "3", "4", "5"]
    assert out.payload == {"n": 1}  # replace_payload is off


async def test_next_url_in_the_body_like_bh09(step_runner: Any, http_server: Any) -> None:
    # the field case's spelling: the step's own result is the page just read
    st = step("/next", {"next": "${steps.orders.body.next}", "items": "data", "max_pages": 10},
              replace_payload=True)  # fmt: skip
    out, _ = await run(step_runner, http_server, st)
    assert out.payload == ITEMS
    assert out.result["pages"] == 5
    st = step("/next", {"next": "${response.body.next}", "items": "data"})
    out, _ = await run(step_runner, http_server, st)
    assert out.result["items"] == ITEMS


async def test_cursor(step_runner: Any, http_server: Any) -> None:
    pag = {"cursor": "${response.body.meta.next}", "param": "after", "items": "result.rows"}
    out, server = await run(step_runner, http_server, step("/cursor", pag))
    assert out.result["items"] == ITEMS
    assert [c.query.get("after") for c in server.calls] == [None, "5", "10", "15", "20"]


async def test_page_numbers_with_a_size(step_runner: Any, http_server: Any) -> None:
    pag = {"style": "page", "size": 10, "size_param": "per_page"}
    out, server = await run(step_runner, http_server, step("/pages", pag))
    assert out.result["items"] == ITEMS
    # the third page (3 items) is shorter than size: no fourth request
    assert [(c.query["page"], c.query["per_page"]) for c in server.calls] == [
        ("1", "10"), ("2", "10"), ("3", "10")
    ]  # fmt: skip


async def test_offsets_follow_what_the_server_gave(step_runner: Any, http_server: Any) -> None:
    pag = {"style": "offset", "items": "items", "param": "offset"}
    out, server = await run(step_runner, http_server, step("/offset", pag))
    assert out.result["items"] == ITEMS
    assert [c.query["offset"] for c in server.calls] == ["0", "7", "14", "21", "23"]


async def test_max_pages_says_incomplete(step_runner: Any, http_server: Any) -> None:
    out, server = await run(step_runner, http_server, step("/link", {"max_pages": 2}))
    assert out.result["items"] == ITEMS[:10]
    assert (out.result["pages"], out.result["complete"]) == (2, False)
    assert len(server.calls) == 2
    assert "max_pages" in out.note


@pytest.mark.parametrize(
    ("url", "pag", "error"),
    [
        ("/stuck", {"cursor": "${response.body.next}", "items": "rows"}, "did not move"),
        ("/loop", {}, "already read"),
        ("/elsewhere", {}, "on another host \\(127.0.0.2:9\\)"),
        ("/notalist", {"items": "data"}, "no list of items at data"),
        ("/fail2", {}, "answered 404"),
    ],
)
async def test_bad_pages_fail_the_event(
    step_runner: Any, http_server: Any, url: str, pag: dict[str, Any], error: str
) -> None:
    with pytest.raises(PoisonMessageError, match=error):
        await run(step_runner, http_server, step(url, pag))


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"paginate": {"style": "cursor"}}, "style cursor needs"),
        ({"paginate": {"next": "${response.body.n}", "style": "page"}}, "`next` is for style"),
        ({"paginate": {"size_param": "n"}}, "sends `size`"),
        ({"paginate": {}, "for_each": "${payload.ids}"}, "do not combine"),
        ({"paginate": {"pages": 3}}, "pages"),
    ],
)
async def test_invalid_paginate_is_refused_at_load(
    step_runner: Any, extra: dict[str, Any], error: str
) -> None:
    st = {"id": "orders", "type": "http", "url": "${config.api}/x", **extra}
    with pytest.raises(ValidationFailed, match=error):
        await step_runner([st], config=CONFIG, values={"api": "http://127.0.0.1:1"})
