"""A minimal Language Server Protocol client: open one YAML document in a language server
over stdio and return the diagnostics it publishes (what an editor would underline)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

SETTINGS = {"validate": True, "hover": False, "completion": False, "schemaStore": {"enable": False}}


class LanguageServer:
    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.buf = b""
        self.next_id = 1

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        body = json.dumps({"jsonrpc": "2.0", **msg}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def receive(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            if b"\r\n\r\n" in self.buf:
                head, rest = self.buf.split(b"\r\n\r\n", 1)
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                if len(rest) >= length:
                    self.buf = rest[length:]
                    msg: dict[str, Any] = json.loads(rest[:length])
                    return msg
            wait = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, wait))
            if not ready:
                raise TimeoutError("the language server did not answer")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError("the language server exited")
            self.buf += chunk

    def _answer(self, msg: dict[str, Any]) -> None:
        """Requests from the server: its settings, or an empty answer."""
        if msg.get("method") == "workspace/configuration":
            items = msg["params"]["items"]
            self.send({"id": msg["id"], "result": [SETTINGS for _ in items]})
        else:
            self.send({"id": msg["id"], "result": None})

    def initialize(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        self.send(
            {
                "id": 0,
                "method": "initialize",
                "params": {
                    "processId": os.getpid(),
                    "rootUri": None,
                    "capabilities": {"workspace": {"configuration": True}},
                },
            }
        )
        while True:
            msg = self.receive(deadline)
            if msg.get("id") == 0 and "method" not in msg:
                break
        self.send({"method": "initialized", "params": {}})
        self.send(
            {
                "method": "workspace/didChangeConfiguration",
                "params": {"settings": {"yaml": SETTINGS}},
            }
        )

    def diagnostics(self, path: Path, text: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Open ``text`` as the document ``path``; its diagnostics once published."""
        uri = path.resolve().as_uri()
        self.next_id += 1
        self.send(
            {
                "method": "textDocument/didOpen",
                "params": {
                    "textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": text}
                },
            }
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                msg = self.receive(deadline)
                if "id" in msg and "method" in msg:
                    self._answer(msg)
                elif (
                    msg.get("method") == "textDocument/publishDiagnostics"
                    and msg["params"]["uri"] == uri
                ):
                    found: list[dict[str, Any]] = msg["params"]["diagnostics"]
                    return found
        finally:
            self.send({"method": "textDocument/didClose", "params": {"textDocument": {"uri": uri}}})
