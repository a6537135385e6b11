"""F6: hostile YAML (alias bombs, deep nesting, recursive anchors, bytes that are not
UTF-8) is refused with file:line, in bounded time and memory, wherever StreamFlow reads
YAML: topology files (validate/run/serve/test), config-value files and schema files.

The time and memory bounds are generous sanity limits (a bomb would take minutes and
gigabytes), not performance assertions.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from streamflow.errors import ConfigError, ValidationFailed
from streamflow.topology.loader import load_integration
from streamflow.topology.values import read_config_file

HEAD = "apiVersion: streamflow/v1\nkind: Integration\nname: y\n"
FLOW = "flows:\n  - name: f\n    trigger: {type: manual}\n    steps:\n"
LAUGHS = "".join(
    f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
CORPUS: dict[str, tuple[bytes, str]] = {  # name: (file, expected message)
    "billion-laughs": (
        (HEAD + "x-bomb:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + LAUGHS
         + FLOW + "      - {id: t, type: transform, output: *i}\n").encode(),
        "alias bomb",
    ),
    "mapping-bomb": (
        (HEAD + "x0: &m0 {k1: v, k2: v, k3: v, k4: v, k5: v, k6: v, k7: v, k8: v, k9: v}\n"
         + "".join(f"x{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(9)) + "}\n"
                   for i in range(1, 10)) + FLOW).encode(),
        "alias bomb",
    ),
    "deep-brackets": ((HEAD + "x: " + "[" * 10_000 + "]" * 10_000 + "\n").encode(),
                      "nesting deeper"),
    "deep-braces": ((HEAD + "x: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n").encode(),
                    "nesting deeper"),
    "deep-blocks": (
        (HEAD + "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v\n").encode(),
        "nesting deeper",
    ),
    "alias-chain": (
        (HEAD + "x:\n  a0: &a0 [1]\n"
         + "".join(f"  a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 400)) + FLOW).encode(),
        "aliases nest deeper",
    ),
    "recursive-sequence": ((HEAD + "flows: &f\n  - name: f\n    steps: *f\n").encode(),
                           "recursive anchor"),
    "recursive-mapping": ((HEAD + "x: &m\n  self: *m\n").encode(), "recursive anchor"),
    "non-utf8": (HEAD.encode() + b"x: caf\xe9\n", "not UTF-8 text: byte 0xe9"),
    "utf16-without-bom": ("name: y\n".encode("utf-16-le"), "U+0000 is not allowed"),
    "control-character": ((HEAD + "x: \x07\n").encode(), "U+0007 is not allowed in YAML"),
    "unclosed": ((HEAD + "x: [1, 2\n").encode(), "YAML syntax error"),
}  # fmt: skip
TIME_LIMIT = 20.0  # seconds, under tracemalloc on a loaded machine: a bomb takes minutes
MEMORY_LIMIT = 64 * 2**20  # bytes allocated at peak: a bomb takes gigabytes


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_topology_is_refused_with_file_and_line(tmp_path: Path, name: str) -> None:
    data, message = CORPUS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ValidationFailed) as info:
            load_integration(path)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    issue = info.value.issues[0]
    assert issue.file == str(path) and issue.line >= 1
    assert message in issue.message, issue
    assert elapsed < TIME_LIMIT, f"{name}: {elapsed:.1f}s"
    assert peak < MEMORY_LIMIT, f"{name}: {peak / 2**20:.0f} MiB"


def test_config_and_schema_files_have_the_same_limits(tmp_path: Path) -> None:
    bomb = ("a: &a [x, x, x, x, x, x, x, x, x]\n" + LAUGHS).encode()
    (tmp_path / "values.yaml").write_bytes(bomb)
    with pytest.raises(ConfigError, match=r"values\.yaml: cannot read config file: line \d+"):
        read_config_file(tmp_path / "values.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"x: caf\xe9\n")
    with pytest.raises(ConfigError, match="line 1, column 7: not UTF-8"):
        read_config_file(tmp_path / "latin1.yaml")
    (tmp_path / "schema.yaml").write_bytes(b"type: object\nx: " + b"[" * 10_000 + b"]" * 10_000)
    (tmp_path / "deep.json").write_bytes(b"[" * 10_000 + b"]" * 10_000)
    for schema in ("schema.yaml", "deep.json"):
        (tmp_path / "i.yaml").write_text(
            HEAD + f"flows:\n  - name: f\n    trigger: {{type: webhook, schema: {schema}}}\n"
            "    steps: [{id: t, type: transform, output: {a: 1}}]\n"
        )
        with pytest.raises(ValidationFailed) as info:
            load_integration(tmp_path / "i.yaml")
        assert "cannot read schema file" in str(info.value) or "not JSON" in str(info.value)
        assert "Traceback" not in str(info.value)


def test_validate_exits_2_with_file_line_and_no_traceback(tmp_path: Path) -> None:
    """The command a user runs: one `streamflow validate` over the whole corpus."""
    for name, (data, _) in CORPUS.items():
        (tmp_path / f"{name}.yaml").write_bytes(data)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "streamflow"), "validate", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    for name in CORPUS:
        assert f"{name}.yaml:" in out, name
