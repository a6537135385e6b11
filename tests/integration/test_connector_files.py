"""file_read and file_write on real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.errors import PoisonMessageError, ValidationFailed

CSV = "id;email;name\n1;a@x.io;Ann\n\n2;b@x.io;\n3;c@x.io;Cy\n"


async def test_read_csv_json_ndjson(step_runner: Any, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c.csv").write_text(CSV)
    (tmp_path / "in" / "d.json").write_text('{"data": {"items": [{"a": 1}, {"a": 2}]}}')
    (tmp_path / "in" / "e.ndjson").write_text('{"a": 1}\n\n{"a": [2]}\n')
    (tmp_path / "in" / "n.csv").write_text("1,x\n2,y\n")
    runner = await step_runner(
        """
        - id: csv
          type: file_read
          path: in/${payload.name}
          csv: {delimiter: ";", empty_as_null: true}
        - {id: json, type: file_read, path: in/d.json, records_path: data.items}
        - {id: ndjson, type: file_read, path: in/e.ndjson, replace_payload: false}
        - {id: headless, type: file_read, path: in/n.csv, csv: {header: false, columns: [n, v]}}
        - {id: chunks, type: file_read, path: in/c.csv, csv: {delimiter: ";"}, chunk_size: 2}
        """
    )
    out = await runner.run("csv", {"name": "c.csv"})
    assert out.payload == {
        "file": str(tmp_path / "in" / "c.csv"),
        "count": 3,
        "records": [
            {"id": "1", "email": "a@x.io", "name": "Ann"},
            {"id": "2", "email": "b@x.io", "name": None},
            {"id": "3", "email": "c@x.io", "name": "Cy"},
        ],
    }
    assert out.result == {"file": str(tmp_path / "in" / "c.csv"), "count": 3}
    assert (await runner.run("json", {})).payload["records"] == [{"a": 1}, {"a": 2}]
    out = await runner.run("ndjson", {"keep": True})
    assert out.payload == {"keep": True}
    assert out.result["records"] == [{"a": 1}, {"a": [2]}]
    assert (await runner.run("headless", {})).payload["records"] == [
        {"n": "1", "v": "x"},
        {"n": "2", "v": "y"},
    ]
    out = await runner.run("chunks", {})
    assert [[r["id"] for r in c] for c in out.payload["chunks"]] == [["1", "2"], ["3"]]
    assert out.payload["count"] == 3


async def test_read_failures(step_runner: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "secret.txt").write_text("x")
    (tmp_path / "data").mkdir()
    runner = await step_runner(
        """
        - {id: r, type: file_read, path: "${payload.p}", format: json, root: data}
        - {id: any, type: file_read, path: "${payload.p}"}
        """
    )
    with pytest.raises(PoisonMessageError, match="no such file"):
        await runner.run("r", {"p": "data/missing.json"})
    with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
        await runner.run("r", {"p": "data/../secret.txt"})
    with pytest.raises(PoisonMessageError, match="invalid JSON"):
        await runner.run("any", {"p": "bad.json"})
    with pytest.raises(PoisonMessageError, match="cannot tell the format"):
        await runner.run("any", {"p": "secret.txt"})


async def test_write_atomic_no_overwrite_backup(step_runner: Any, tmp_path: Path) -> None:
    runner = await step_runner(
        """
        - id: once
          type: file_write
          path: "out/sub/${payload.name}.json"
          content: "${payload.data}"
        - id: replace
          type: file_write
          path: "out/sub/${payload.name}.json"
          content: "${payload.data}"
          overwrite: true
          backup: true
        """
    )
    target = tmp_path / "out" / "sub" / "a.json"
    out = await runner.run("once", {"name": "a", "data": {"v": 1}})
    assert out.result["action"] == "created"
    assert orjson.loads(target.read_bytes()) == {"v": 1}
    # the same content again (a retried execution) is fine; other content is refused
    assert (await runner.run("once", {"name": "a", "data": {"v": 1}})).result["action"] == (
        "unchanged"
    )
    with pytest.raises(PoisonMessageError, match="exists"):
        await runner.run("once", {"name": "a", "data": {"v": 2}})
    assert orjson.loads(target.read_bytes()) == {"v": 1}
    out = await runner.run("replace", {"name": "a", "data": {"v": 3}})
    assert out.result["action"] == "replaced"
    assert orjson.loads(target.read_bytes()) == {"v": 3}
    assert orjson.loads((target.parent / "a.json.bak").read_bytes()) == {"v": 1}
    # no temporary files are left behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json", "a.json.bak"]


async def test_write_csv_and_append(step_runner: Any, tmp_path: Path) -> None:
    runner = await step_runner(
        """
        - id: csv
          type: file_write
          path: out.csv
          content: ${payload.rows}
          mode: append
          csv: {columns: [id, name, tags]}
        - {id: nd, type: file_write, path: out.ndjson, content: "${payload.rows}", mode: append}
        """
    )
    await runner.run("csv", {"rows": [{"id": 1, "name": "a,b", "tags": ["x"]}]})
    await runner.run("csv", {"rows": [{"id": 2, "name": None}]})
    assert (tmp_path / "out.csv").read_text() == 'id,name,tags\n1,"a,b","[""x""]"\n2,,\n'
    await runner.run("nd", {"rows": [{"a": 1}, {"a": 2}]})
    await runner.run("nd", {"rows": {"a": 3}})
    lines = (tmp_path / "out.ndjson").read_text().splitlines()
    assert [orjson.loads(x) for x in lines] == [{"a": 1}, {"a": 2}, {"a": 3}]


async def test_write_failure_leaves_the_old_file(step_runner: Any, tmp_path: Path) -> None:
    runner = await step_runner(
        [{"id": "w", "type": "file_write", "path": "x.json", "content": "${payload}",
          "overwrite": True}]
    )  # fmt: skip
    (tmp_path / "x.json").write_text('{"old": true}')
    with pytest.raises(PoisonMessageError, match="cannot write json"):
        await runner.run("w", {"bad": {1, 2}})  # a set is not JSON
    assert (tmp_path / "x.json").read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


async def test_write_validation(step_runner: Any) -> None:
    with pytest.raises(ValidationFailed, match="append works for ndjson and csv"):
        await step_runner(
            [{"id": "w", "type": "file_write", "path": "x.json", "format": "json",
              "mode": "append"}]
        )  # fmt: skip


async def test_event_paths_are_confined_by_default(step_runner: Any, tmp_path: Path) -> None:
    """F3: without root:, a payload value cannot steer a file out of the folder written
    in the path template (.., absolute paths, symlinked files and folders)."""
    for d in ("data", "out", "outside", "data/sub"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / "outside" / "secret.json").write_text('{"secret": 1}')
    (tmp_path / "data" / "ok.json").write_text('{"ok": 1}')
    (tmp_path / "data" / "sub" / "deep.json").write_text('{"deep": 1}')
    for d in ("data", "out"):
        (tmp_path / d / "link.json").symlink_to(tmp_path / "outside" / "secret.json")
        (tmp_path / d / "dirlink").symlink_to(tmp_path / "outside")
    (tmp_path / "data" / "inner.json").symlink_to(tmp_path / "data" / "ok.json")
    runner = await step_runner(
        """
        - {id: r, type: file_read, path: "data/${payload.name}", format: json}
        - {id: any, type: file_read, path: "${payload.name}", format: json}
        - {id: w, type: file_write, path: "out/${payload.name}", content: {v: 1}, overwrite: true}
        - {id: cfg, type: file_read, path: "${config.dir}/secret.json"}
        - {id: fixed, type: file_read, path: "outside/secret.json"}
        - {id: mixed, type: file_read, path: "${config.dir}/${payload.name}", format: json}
        """,
        config={"dir": {"type": "string"}},
        values={"dir": str(tmp_path / "outside")},
    )
    for name in ("../outside/secret.json", "link.json", "dirlink/secret.json",
                 "sub/../../outside/secret.json"):  # fmt: skip
        with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
            await runner.run("r", {"name": name})
        with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
            await runner.run("w", {"name": name})
    assert (tmp_path / "outside" / "secret.json").read_text() == '{"secret": 1}'
    assert (await runner.run("r", {"name": "ok.json"})).payload["records"] == [{"ok": 1}]
    assert (await runner.run("r", {"name": "sub/deep.json"})).payload["records"] == [{"deep": 1}]
    assert (await runner.run("r", {"name": "inner.json"})).payload["records"] == [{"ok": 1}]
    await runner.run("w", {"name": "sub/new.json"})  # (create_dirs) still inside out/
    assert (tmp_path / "out" / "sub" / "new.json").exists()
    # no folder before the event's part: confined to the topology's folder
    with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
        await runner.run("any", {"name": "/etc/hostname"})
    assert (await runner.run("any", {"name": "data/ok.json"})).payload["records"] == [{"ok": 1}]
    # paths from the deployer (text, config) are not the event's: not confined
    assert (await runner.run("cfg", {})).payload["records"] == [{"secret": 1}]
    assert (await runner.run("fixed", {})).payload["records"] == [{"secret": 1}]
    # a config prefix sets the folder; the event's part stays inside it
    assert (await runner.run("mixed", {"name": "secret.json"})).payload["records"] == [
        {"secret": 1}
    ]
    with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
        await runner.run("mixed", {"name": "../data/ok.json"})


def test_validate_says_where_files_may_be(tmp_path: Path) -> None:
    from streamflow.connectors.files import file_places
    from streamflow.topology.loader import load_integration

    (tmp_path / "i.yaml").write_text(
        "apiVersion: streamflow/v1\nkind: Integration\nname: fs\nflows:\n"
        "  - name: f\n    trigger: {type: manual}\n    steps:\n"
        "      - {id: w, type: file_write, path: 'out/${payload.name}', content: {v: 1}}\n"
        "      - {id: r, type: file_read, path: 'in/x.json', root: in}\n"
        "      - {id: s, type: file_read, path: 'static.json'}\n"
        "      - {id: l, type: file_list, path: 'in/${payload.who}'}\n"
        "      - {id: o, type: s3, operation: get, bucket: b, key: k, file: 'dl/${payload.key}'}\n"
    )
    lines = file_places(load_integration(tmp_path / "i.yaml"))
    assert lines == [
        f"fs/f/w (file_write): files only under {tmp_path / 'out'} (the default root: set "
        "root: to change)",
        f"fs/f/r (file_read): files only under {tmp_path / 'in'} (root)",
        "fs/f/s (file_read): files at the path written in the topology (no part of it comes "
        "from the event)",
        f"fs/f/l (file_list): files only under {tmp_path / 'in'} (the default root: set "
        "root: to change)",
        f"fs/f/o (s3): files only under {tmp_path / 'dl'} (the default root: set root: to change)",
    ]
