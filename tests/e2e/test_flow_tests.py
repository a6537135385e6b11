"""``streamflow test``: the flow tests next to the examples pass; a broken expectation
fails with a readable diff; an invalid test file is refused with file:line:col; JUnit XML.

The command runs as a user runs it: a subprocess from the repository root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)


def sf(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def summary(proc: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    m = SUMMARY.search(proc.stdout)
    assert m, proc.stdout + proc.stderr
    return int(m.group(1)), int(m.group(2))


def copy_example(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(REPO / "topologies" / name, dest)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {path}"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def examples_run() -> subprocess.CompletedProcess[str]:
    return sf("test", "topologies/")


def test_every_example_passes_its_flow_tests(
    examples_run: subprocess.CompletedProcess[str],
) -> None:
    proc = examples_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed, failed = summary(proc)
    assert failed == 0
    with_tests = sorted(p.parent.name for p in (REPO / "topologies").glob("*/tests.yaml"))
    assert {"order-routing", "order-saga", "web-form-to-cms"} <= set(with_tests)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASSED ", "FAILED "))]
    assert len(lines) == passed >= len(with_tests)
    for name in with_tests:
        assert any(ln.startswith(f"PASSED topologies/{name}/tests.yaml::") for ln in lines)
    assert re.match(r"^PASSED \S+/tests\.yaml::.+ \(\d+\.\ds\)$", lines[0])
    assert "Traceback" not in proc.stdout + proc.stderr
    # expected dead letters (saga, a 422) do not leak warnings onto the terminal
    assert "dead-lettered" not in proc.stderr


def test_a_broken_expectation_fails_with_a_readable_diff(tmp_path: Path) -> None:
    ex = copy_example("order-routing", tmp_path)
    tests = ex / "tests.yaml"
    edit(
        tests,
        "output: {order_id: o-2, booked: true, state: pending-approval, amount: 600.5}",
        "output: {order_id: o-2, booked: true, state: approved, amount: 600.5}",
    )
    edit(
        tests,
        "json: {order: o-2, amount: 600.5}, status: 201, count: 1}",
        "json: {order: o-2, amount: 600.5}, status: 201, count: 2}",
    )
    proc = sf("test", tests)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    passed, failed = summary(proc)
    assert (passed, failed) == (4, 1)
    case = f"{tests}::big order needs approval before booking"
    assert f"FAILED {case} (" in out
    failure = out.split(f"FAILED {case}", 1)[1].split("\nPASSED", 1)[0]
    # the final payload: the field, both values, and a diff of pretty JSON
    assert 'output.state: expected "approved", got "pending-approval"' in failure
    assert "--- expected" in failure and "+++ actual" in failure
    assert '-  "state": "approved",' in failure
    assert '+  "state": "pending-approval",' in failure
    # the call count: which expectation, what was expected, what happened
    assert "expect.calls[0] (approvals POST /approvals): expected 2 call(s), got 1" in failure
    assert "approvals POST /approvals -> 201" in failure
    assert "Traceback" not in out + proc.stderr


def test_a_wrong_call_body_names_the_field_and_the_closest_call(tmp_path: Path) -> None:
    ex = copy_example("order-saga", tmp_path)
    tests = ex / "tests.yaml"
    edit(tests, "json: {reason: shipping failed}, count: 1}", "json: {reason: no stock}, count: 1}")
    proc = sf("test", ex)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert summary(proc)[1] == 1
    out = proc.stdout
    assert "shipping down for good refunds the payment then releases the stock" in out
    assert "expect.calls[3] (payments POST /charges/CH-A-1/refund)" in out
    assert 'json.reason: expected "no stock", got "shipping failed"' in out


def test_an_invalid_test_file_exits_2_with_file_line_col(tmp_path: Path) -> None:
    ex = copy_example("order-routing", tmp_path)
    tests = ex / "tests.yaml"
    edit(tests, "      max_duration: 10s\n", "      max_duration: 10s\n      statuss: completed\n")
    proc = sf("test", ex)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = next(n for n, t in enumerate(tests.read_text().splitlines(), 1) if "statuss" in t)
    assert re.search(
        rf"^{re.escape(str(tests))}:{line}:7: cases\[0\]\.expect\.statuss: "
        r"unknown key 'statuss' \(did you mean 'status'\?\)$",
        proc.stderr,
        re.MULTILINE,
    ), proc.stderr
    assert "passed" not in proc.stdout  # nothing ran
    assert "Traceback" not in proc.stderr


def test_an_unknown_mock_service_in_a_call_is_an_invalid_file(tmp_path: Path) -> None:
    ex = copy_example("order-saga", tmp_path)
    tests = ex / "tests.yaml"
    edit(
        tests,
        "- {service: payments, method: POST, path: /charges, count: 1}",
        "- {service: payment, method: POST, path: /charges, count: 1}",
    )
    proc = sf("test", tests)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(
        rf"{re.escape(str(tests))}:\d+:\d+: cases\[1\]\.expect\.calls\[1\]\.service: "
        r"no mock service 'payment'",
        proc.stderr,
    ), proc.stderr


def test_junit_xml_has_the_right_counts(tmp_path: Path) -> None:
    ex = copy_example("order-saga", tmp_path)
    tests = ex / "tests.yaml"
    edit(tests, "status: compensated", "status: completed")
    report = tmp_path / "reports" / "flow-tests.xml"
    proc = sf("test", ex, "--junit-xml", report)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "0")
    [suite] = root.findall("testsuite")
    assert suite.get("name") == str(tests)
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    cases = suite.findall("testcase")
    assert len(cases) == 3
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == [
        "shipping down for good refunds the payment then releases the stock"
    ]
    failure = failed[0].find("failure")
    assert failure is not None
    assert "expected completed, got compensated" in (failure.get("message") or "")
    assert "trace:" in (failure.text or "")
    assert all(float(c.get("time") or "x") > 0 for c in cases)


def test_k_selects_cases_and_no_test_files_is_an_error(tmp_path: Path) -> None:
    proc = sf("test", "topologies/order-saga", "-k", "hiccup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary(proc) == (1, 0)
    (tmp_path / "empty").mkdir()
    proc = sf("test", tmp_path / "empty")
    assert proc.returncode == 2
    assert "no test files" in proc.stderr
