"""Examples in README.md and docs/*.md, extracted so tests can run and check them.

- A fenced block with the info string ``console`` is a runnable session: each ``$ `` line
  is a shell command (``\\`` continues it), the lines after it up to the next ``$ `` are
  its expected output. ``...`` in an expected line matches any text, a line that is just
  ``...`` any number of lines; no expected lines: the output is not compared. A command
  must exit 0 unless it ends with ``# exit N``.
- Every other fenced block's ``streamflow ...`` lines are command templates: they must
  parse (placeholders in capitals are fine, ``[optional parts]`` are dropped, ``a|b``
  takes ``a``).
- A block right after an HTML comment ``<!-- file: PATH -->`` is written to PATH (relative
  to the repository root, in the test's copy of it) before any console block runs, so a
  session can use the file the page just showed.
- ``yaml`` blocks are checked against the JSON Schema of what they show: a whole
  integration, a ``flows:`` fragment, a list of steps, a test file (``cases:``) or a
  mocks file (``services:``).
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
FILE_MARKER = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->$")


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    file_marker: str | None = None  # PATH of a preceding <!-- file: PATH -->

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info, start = m.group(1), m.group(2), i
        before = [x.strip() for x in lines[:i] if x.strip()][-1:]
        marker = FILE_MARKER.match(before[0]) if before else None
        body: list[str] = []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        text = "\n".join(body) + "\n"
        out.append(Block(path, start + 1, info, text, marker.group(1) if marker else None))
        i += 1
    return out


def all_blocks(info: str | None = None) -> list[Block]:
    return [b for f in doc_files() for b in blocks(f) if info is None or b.info == info]


def session(block: Block) -> list[Command]:
    """The commands of a ``console`` block with their expected output."""
    out: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if out:
                out[-1].expected.append(line)
            i += 1
            continue
        cmd = line[2:]
        while cmd.endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd = cmd[:-1] + " " + lines[i].strip()
        code = 0
        m = re.search(r"\s+#\s*exit (\d+)\s*$", cmd)
        if m:
            code = int(m.group(1))
            cmd = cmd[: m.start()]
        out.append(Command(cmd, [], code))
        i += 1
    for c in out:
        while c.expected and not c.expected[-1].strip():
            c.expected.pop()
    return out


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` lines against ``actual`` ones; ``...`` is a wildcard (see above)."""
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            parts = [re.escape(p) for p in line.rstrip().split("...")]
            pattern += "[^\\n]*".join(parts) + r"[ \t]*\n"
    text = "".join(a.rstrip() + "\n" for a in actual)
    return re.fullmatch(pattern, text) is not None


def command_templates() -> list[tuple[Block, str]]:
    """``streamflow ...`` lines of every non-console block (continuations joined)."""
    out: list[tuple[Block, str]] = []
    for block in all_blocks():
        if block.info in ("console", "yaml", "python", "json"):
            continue
        lines = block.text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            i += 1
            if line.startswith("streamflow "):
                out.append((block, line))
    return out


def template_argv(line: str) -> list[str] | None:
    """The argv of a command template, or None when it is not one to parse (shell syntax)."""
    if any(s in line for s in ("$(", "`", "|&", " | ", ">", "<")):
        return None
    line = re.sub(r"\[[^\]]*\]", " ", line)  # optional parts
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    argv = []
    for tok in tokens[1:]:
        first = tok.split("|")[0] if "|" in tok and not tok.startswith("-") else tok
        argv.append(first.replace("…", "X"))
    return argv


def dedented_yaml(block: Block) -> str:
    return textwrap.dedent(block.text)
