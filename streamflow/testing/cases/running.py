"""Running cases on the embedded transport, reporting like pytest, JUnit XML."""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from streamflow import exactjson
from streamflow.observability.events import ExecutionEvent
from streamflow.runtime.app import AppOptions, environment
from streamflow.runtime.dlq import DeadLetter
from streamflow.runtime.runner import Execution, run_events
from streamflow.testing.cases.effects import check_effects, isolated
from streamflow.testing.cases.matching import (
    Published,
    _check_calls,
    _check_dead_letters,
    _check_executions,
    _check_published,
    _input_line,
    _letter,
    _trace,
)
from streamflow.testing.cases.models import CaseResult, Expect, TestCase, TestFile
from streamflow.testing.mocks import MockServices
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.topology.values import resolve_config
from streamflow.transport.base import TopicSpec
from streamflow.transport.local import LocalTransport

# --------------------------------------------------------------------------- running


class _Capture(logging.Handler):
    """Keeps StreamFlow's log records of one case (shown only if the case fails)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


@contextlib.contextmanager
def _captured_logs() -> Iterator[_Capture]:
    logger = logging.getLogger("streamflow")
    handler = _Capture()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


async def run_case(case: TestCase) -> CaseResult:
    """Run one case on a fresh embedded broker with fresh mock servers. Warnings the
    engine logs meanwhile (an expected dead letter, say) are kept with the result."""
    started = time.monotonic()
    with _captured_logs() as logs:
        try:
            failures = await _run_case(case)
        except Exception as exc:  # a case that cannot run fails; the next one still runs
            failures = [[f"the case could not run: {type(exc).__name__}: {exc}"]]
    if failures and logs.lines:
        failures.append(["captured log:", *logs.lines[-20:]])
    return CaseResult(case, not failures, time.monotonic() - started, failures)


async def _run_case(case: TestCase) -> list[list[str]]:
    # steps that write files or SQLite run on a copy of the topology's folder
    with (
        tempfile.TemporaryDirectory(prefix="sf-test-") as tmp,
        isolated(case.file.integration, Path(tmp)) as integration,
    ):
        return await _run_isolated(case, integration, Path(tmp))


async def _run_isolated(case: TestCase, integration: Integration, tmp: Path) -> list[list[str]]:
    plan = compile_plan(integration)
    encoding = integration.flows[case.flow].doc.encoding
    async with contextlib.AsyncExitStack() as stack:
        mocks: MockServices | None = None
        urls: dict[str, str] = {}
        mock_config: dict[str, str] = {}
        if case.mocks is not None:
            mocks = MockServices.from_dict(case.mocks, case.mocks_source)
            await stack.enter_async_context(mocks)
            urls = {name: mocks.base_url(name) for name in mocks.services}
            mock_config = mocks.config_values()
        config = resolve_config(integration.config, {**mock_config, **case.config})
        scope = {"config": config, "mocks": urls}
        expect = Expect.model_validate(case.expect.render(scope))
        transport = LocalTransport(str(tmp / "broker"))
        stack.callback(transport.close)
        # the outside topics a case expects messages on exist in its embedded broker
        outside = sorted({p.topic for p in expect.published})
        transport.ensure_topics([TopicSpec(t, 1, {}) for t in outside])
        seen: dict[str, Execution] = {}

        def track(ex: Execution, _: ExecutionEvent) -> None:
            seen.setdefault(ex.execution_id, ex)

        try:
            result = await run_events(
                integration,
                transport,
                config,
                case.events,
                flow=case.flow,
                timeout=case.doc.timeout,
                on_event=track,
                options=AppOptions(trace_payloads=True, flows=[case.flow], env=environment()),
            )
        except TimeoutError as exc:
            block = [f"timeout: {exc} (a case's `timeout:` allows longer)"]
            for ex in seen.values():
                block += [f"execution {ex.status}: {_input_line(ex)}", f"  trace: {_trace(ex)}"]
            return [block]
        calls = list(mocks.calls) if mocks is not None else []
        topic = plan.flows[case.flow].dlq_topic
        letters = [_letter(DeadLetter(r), encoding) for r in transport.read_all(topic)]
        published = {t: _published(transport, t) for t in {p.topic for p in expect.published}}
    failures = check_effects(expect, integration)
    failures += _check_executions(expect, result)
    failures += _check_calls(expect, calls)
    failures += _check_dead_letters(expect, letters)
    failures += _check_published(expect, published)
    if expect.max_duration is not None and result.seconds > expect.max_duration:
        failures.append(
            [f"expect.max_duration: took {result.seconds:.2f}s, more than {expect.max_duration:g}s"]
        )
    return failures


def _published(transport: LocalTransport, topic: str) -> list[Published]:
    out = []
    for rec in transport.read_all(topic):
        try:
            value: Any = exactjson.loads(rec.value)  # every digit, as the flow wrote it
        except exactjson.JSONDecodeError:
            value = rec.value.decode(errors="replace")
        key = rec.key.decode(errors="replace") if rec.key is not None else None
        out.append(Published(topic, key, value))
    return out


class Reporter:
    """pytest-like lines: ``PASSED file::name (0.4s)``, details of failures, a summary."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def case(self, r: CaseResult) -> None:
        word = "PASSED" if r.passed else "FAILED"
        print(f"{word} {r.case.id} ({r.seconds:.1f}s)", file=self.out)
        if not r.passed:
            for line in r.details().splitlines():
                print(f"    {line}", file=self.out)
        self.out.flush()

    def summary(self, results: Sequence[CaseResult]) -> None:
        passed = sum(r.passed for r in results)
        print(f"{passed} passed, {len(results) - passed} failed", file=self.out)


async def run_test_files(
    files: Iterable[TestFile],
    *,
    select: str | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case (those whose id contains ``select``), one after the other."""
    results = []
    for f in files:
        for case in f.cases:
            if select and select.lower() not in case.id.lower():
                continue
            r = await run_case(case)
            results.append(r)
            if on_result is not None:
                on_result(r)
    return results


def write_junit_xml(results: Sequence[CaseResult], path: str | Path) -> None:
    """JUnit XML: one testsuite per test file, one testcase per case."""
    failed = sum(not r.passed for r in results)
    total = sum(r.seconds for r in results)
    root = ET.Element(
        "testsuites",
        name="streamflow",
        tests=str(len(results)),
        failures=str(failed),
        errors="0",
        time=f"{total:.3f}",
    )
    suites: dict[str, list[CaseResult]] = {}
    for r in results:
        suites.setdefault(r.case.file.display, []).append(r)
    for name, rs in suites.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=name,
            tests=str(len(rs)),
            failures=str(sum(not r.passed for r in rs)),
            errors="0",
            skipped="0",
            time=f"{sum(r.seconds for r in rs):.3f}",
        )
        for r in rs:
            tc = ET.SubElement(
                suite,
                "testcase",
                classname=name,
                name=r.case.name,
                file=name,
                time=f"{r.seconds:.3f}",
            )
            if not r.passed:
                fail = ET.SubElement(tc, "failure", message=r.message, type="AssertionError")
                fail.text = r.details()
    tree = ET.ElementTree(root)
    ET.indent(tree)
    if str(path) == "-":  # stdout
        sys.stdout.write(ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree.write(out, encoding="utf-8", xml_declaration=True)
