"""Comparing what a case expected with what the run did: outputs, calls, dead letters."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from streamflow.envelope import decode_record
from streamflow.errors import PoisonMessageError
from streamflow.runtime.dlq import DeadLetter
from streamflow.runtime.runner import Execution, RunResult
from streamflow.testing.cases.models import (
    MATCHERS,
    CallExpect,
    DeadLetterExpect,
    ExecutionExpect,
    Expect,
    PublishedExpect,
)
from streamflow.testing.mocks import RecordedCall

# --------------------------------------------------------------------------- matching


def _is_matcher(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in MATCHERS


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float | Decimal):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    return type(v).__name__


def _show(v: Any, limit: int = 200) -> str:
    text = json.dumps(v, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _matcher_ok(m: dict[str, Any], actual: Any) -> bool:
    key, arg = next(iter(m.items()))
    if key == "$regex":
        return isinstance(actual, str) and re.search(str(arg), actual) is not None
    if key == "$type":
        kind = _type_of(actual)
        return kind == arg or (arg == "number" and kind == "integer")
    # $contains
    if isinstance(actual, str):
        return isinstance(arg, str) and arg in actual
    if isinstance(actual, list):
        return any(not compare(arg, item) for item in actual)
    if isinstance(actual, dict):
        return not compare(arg, actual) if isinstance(arg, dict) else arg in actual
    return False


def _scalar_equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float | Decimal) and isinstance(actual, int | float | Decimal):
        if {type(expected), type(actual)} == {float, Decimal}:  # YAML reads 0.1 as a float
            return float(expected) == float(actual)
        return bool(expected == actual)
    return type(expected) is type(actual) and bool(expected == actual)


def compare(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Why ``actual`` does not match ``expected`` (a subset), one line per mismatch."""
    where = path or "value"
    if _is_matcher(expected):
        if _matcher_ok(expected, actual):
            return []
        key, arg = next(iter(expected.items()))
        return [f"{where}: expected {key[1:]} {_show(arg)}, got {_show(actual)}"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a mapping, got {_show(actual)}"]
        out: list[str] = []
        for k, v in expected.items():
            sub = f"{path}.{k}" if path else str(k)
            if k not in actual:
                out.append(f"{sub}: missing (expected {_show(v)})")
            else:
                out.extend(compare(v, actual[k], sub))
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {_show(actual)}"]
        if len(expected) != len(actual):
            return [
                f"{where}: expected {len(expected)} item(s), got {len(actual)}: {_show(actual)}"
            ]
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out.extend(compare(e, a, f"{path}[{i}]"))
        return out
    if _scalar_equal(expected, actual):
        return []
    return [f"{where}: expected {_show(expected)}, got {_show(actual)}"]


def _project(expected: Any, actual: Any) -> Any:
    """``actual`` cut down to the shape of ``expected``, for a readable diff."""
    if _is_matcher(expected):
        return expected if _matcher_ok(expected, actual) else actual  # a match is no diff
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: _project(expected[k], actual[k]) for k in expected if k in actual}
    if isinstance(expected, list) and isinstance(actual, list):
        return [_project(e, a) for e, a in zip(expected, actual, strict=False)] + actual[
            len(expected) :
        ]
    return actual


def diff(expected: Any, actual: Any) -> list[str]:
    """A unified diff of pretty JSON: expected vs the matching part of actual."""
    a = json.dumps(expected, indent=2, default=str, ensure_ascii=False).splitlines()
    b = json.dumps(_project(expected, actual), indent=2, default=str, ensure_ascii=False)
    return list(difflib.unified_diff(a, b.splitlines(), "expected", "actual", lineterm="", n=2))


def _mismatch(title: str, expected: Any, actual: Any, path: str) -> list[str] | None:
    problems = compare(expected, actual, path)
    if not problems:
        return None
    block = [title, *problems]
    if isinstance(expected, dict | list) and isinstance(actual, dict | list):
        block.extend(diff(expected, actual))
    return block


# --------------------------------------------------------------------------- calls


def _path_matches(pattern: str, path: str) -> bool:
    want, got = pattern.split("/"), path.split("/")
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        if w.startswith("{") and w.endswith("}"):
            if not g:
                return False
        elif w != g:
            return False
    return True


def _headers_of(call: RecordedCall) -> dict[str, str]:
    return {k.lower(): v for k, v in call.headers.items()}


def _call_problems(e: CallExpect, call: RecordedCall, *, where_only: bool = False) -> list[str]:
    """Why ``call`` does not match ``e``; ``where_only`` checks service, method, path."""
    if e.service is not None and call.service != e.service:
        return [f"service: expected {e.service}, got {call.service}"]
    if e.method is not None and call.method != e.method.upper():
        return [f"method: expected {e.method.upper()}, got {call.method}"]
    if e.path is not None and not _path_matches(e.path, call.path):
        return [f"path: expected {e.path}, got {call.path}"]
    if where_only:
        return []
    out: list[str] = []
    if "json_" in e.model_fields_set:
        out.extend(compare(e.json_, call.json, "json"))
    if "body" in e.model_fields_set:
        out.extend(compare(e.body, call.body, "body"))
    if e.query is not None:
        out.extend(compare(e.query, call.query, "query"))
    if e.headers is not None:
        got = _headers_of(call)
        for k, v in e.headers.items():
            if k.lower() not in got:
                out.append(f"headers.{k}: missing")
            elif compare(v, got[k.lower()]):
                out.append(f"headers.{k}: differs (value not shown: headers may hold secrets)")
    if e.status is not None and call.status != e.status:
        out.append(f"status: expected {e.status}, got {call.status}")
    return out


def _describe_call(n: int, c: RecordedCall) -> str:
    body = (
        f" {_show(c.json, 160)}" if c.json is not None else (f" {c.body[:80]!r}" if c.body else "")
    )
    return f"#{n} {c.service} {c.method} {c.path} -> {c.status}{body}"


def _check_calls(expect: Expect, calls: list[RecordedCall]) -> list[list[str]]:
    failures: list[list[str]] = []
    for j, e in enumerate(expect.calls):
        matching = [c for c in calls if not _call_problems(e, c)]
        title = f"expect.calls[{j}] ({e.label()})"
        if e.count is not None and len(matching) == e.count:
            continue
        if e.count is None and matching:
            continue
        want = f"{e.count} call(s)" if e.count is not None else "at least 1 call"
        block = [f"{title}: expected {want}, got {len(matching)}"]
        if len(matching) < (e.count if e.count is not None else 1):
            near = [c for c in calls if not _call_problems(e, c, where_only=True)]
            for c in near[:3]:
                problems = _call_problems(e, c)
                block.append(f"closest: {_describe_call(calls.index(c) + 1, c)}")
                block.extend("  " + p for p in problems)
                if (
                    "json_" in e.model_fields_set
                    and isinstance(e.json_, dict | list)
                    and compare(e.json_, c.json)
                ):
                    block.extend("  " + line for line in diff(e.json_, c.json))
            if not near:
                block.append("calls received:" if calls else "no calls were received")
                block.extend("  " + _describe_call(i, c) for i, c in enumerate(calls, 1))
        else:
            block.append("matching calls:")
            block.extend("  " + _describe_call(calls.index(c) + 1, c) for c in matching)
        failures.append(block)
    if expect.calls_ordered and not failures:
        pos = -1
        for j, e in enumerate(expect.calls):
            if e.count == 0:
                continue
            nxt = next(
                (i for i, c in enumerate(calls) if i > pos and not _call_problems(e, c)), None
            )
            if nxt is None:
                block = [
                    f"expect.calls_ordered: expect.calls[{j}] ({e.label()}) "
                    "did not come after the calls listed before it",
                    "calls received, in order:",
                ]
                block.extend("  " + _describe_call(i, c) for i, c in enumerate(calls, 1))
                failures.append(block)
                break
            pos = nxt
    return failures


# --------------------------------------------------------------------------- dead letters


@dataclass
class _Letter:
    step: str
    error: str
    error_type: str
    payload: Any

    def describe(self) -> str:
        return f"step {self.step}: {self.error_type}: {self.error[:200]}"


def _letter(d: DeadLetter, encoding: str) -> _Letter:
    try:
        payload = decode_record(d.record, encoding).payload  # type: ignore[arg-type]
    except PoisonMessageError:
        payload = None
    return _Letter(d.step, d.header("error"), d.header("error-type"), payload)


def _letter_problems(e: DeadLetterExpect, d: _Letter) -> list[str]:
    out = []
    if e.step is not None and d.step != e.step:
        out.append(f"step: expected {e.step}, got {d.step}")
    if e.error is not None and e.error.lower() not in d.error.lower():
        out.append(f"error: expected text {e.error!r} in {d.error[:200]!r}")
    if e.error_type is not None and d.error_type != e.error_type:
        out.append(f"error_type: expected {e.error_type}, got {d.error_type}")
    if "payload" in e.model_fields_set:
        out.extend(compare(e.payload, d.payload, "payload"))
    return out


def _check_dead_letters(expect: Expect, letters: list[_Letter]) -> list[list[str]]:
    want = expect.dead_letters
    if want is None:
        return []
    listing = ["dead letters:", *("  " + d.describe() for d in letters)] if letters else []
    count = want if isinstance(want, int) else len(want)
    failures: list[list[str]] = []
    if len(letters) != count:
        failures.append([f"expect.dead_letters: expected {count}, got {len(letters)}", *listing])
    if isinstance(want, int) or not letters:
        return failures
    left = list(letters)
    for j, e in enumerate(want):
        hit = next((d for d in left if not _letter_problems(e, d)), None)
        if hit is not None:
            left.remove(hit)
            continue
        block = [f"expect.dead_letters[{j}]: no dead letter matches"]
        for d in letters[:3]:
            block.append(f"closest: {d.describe()}")
            block.extend("  " + p for p in _letter_problems(e, d))
        failures.append(block)
    return failures


# --------------------------------------------------------------------------- published


@dataclass
class Published:
    topic: str
    key: str | None
    value: Any  # the JSON value, or the text when it is not JSON

    def describe(self) -> str:
        return f"{self.topic} key={self.key} {json.dumps(self.value, default=str)[:200]}"


def _published_problems(e: PublishedExpect, m: Published) -> list[str]:
    out = []
    if e.key is not None and m.key != e.key:
        out.append(f"key: expected {e.key!r}, got {m.key!r}")
    if "value" in e.model_fields_set:
        out.extend(compare(e.value, m.value, "value"))
    return out


def _check_published(expect: Expect, messages: dict[str, list[Published]]) -> list[list[str]]:
    failures: list[list[str]] = []
    for j, e in enumerate(expect.published):
        got = messages.get(e.topic, [])
        hits = [m for m in got if not _published_problems(e, m)]
        if (len(hits) == e.count) if e.count is not None else hits:
            continue
        want = f"{e.count}" if e.count is not None else "at least 1"
        block = [f"expect.published[{j}] ({e.topic}): expected {want} message(s), got {len(hits)}"]
        for m in got[:3]:
            block.append(f"closest: {m.describe()}")
            block.extend("  " + p for p in _published_problems(e, m))
        failures.append(block)
    return failures


# --------------------------------------------------------------------------- executions


def _finished_steps(ex: Execution) -> list[str]:
    return [ev.step for ev in ex.events if ev.event == "step"]


def _execution_label(i: int, n: int) -> str:
    return f"execution {i + 1} of {n}"


def _input_line(ex: Execution) -> str:
    return f"input: {_show(ex.input, 100)}"


def _check_executions(expect: Expect, result: RunResult) -> list[list[str]]:
    failures: list[list[str]] = []
    exs = result.executions
    n = len(exs)
    per: list[ExecutionExpect] = list(expect.executions or [])
    for i, ex in enumerate(exs):
        label = _execution_label(i, n)
        status = expect.status[i] if isinstance(expect.status, list) else expect.status
        own = per[i] if i < len(per) else ExecutionExpect()
        for name, want in (
            ("expect.status", status),
            (f"expect.executions[{i}].status", own.status),
        ):
            if want is not None and ex.status != want:
                block = [f"{name}: {label}: expected {want}, got {ex.status}", _input_line(ex)]
                if ex.error:
                    block.append(f"error: {ex.error}")
                block.append("trace: " + _trace(ex))
                failures.append(block)
        outputs: list[tuple[str, Any]] = []
        if "output" in expect.model_fields_set:
            outputs.append(("expect.output", expect.output))
        if "output" in own.model_fields_set:
            outputs.append((f"expect.executions[{i}].output", own.output))
        for name, want in outputs:
            found = _mismatch(
                f"{name}: {label}: the final payload differs", want, ex.output, "output"
            )
            if found:
                found.insert(1, _input_line(ex))
                failures.append(found)
        for name, text in (
            ("expect.error", expect.error),
            (f"expect.executions[{i}].error", own.error),
        ):
            if text is not None and text.lower() not in ex.error.lower():
                got = repr(ex.error) if ex.error else "no error"
                failures.append(
                    [
                        f"{name}: {label}: expected text {text!r} in the error, got {got}",
                        _input_line(ex),
                    ]
                )
        if own.steps is not None and _finished_steps(ex) != own.steps:
            failures.append(
                [
                    f"expect.executions[{i}].steps: {label}: the finished steps differ",
                    _input_line(ex),
                    *difflib.unified_diff(
                        own.steps, _finished_steps(ex), "expected", "actual", lineterm="", n=10
                    ),
                ]
            )
    return failures


def _trace(ex: Execution) -> str:
    parts = []
    for ev in ex.events:
        if ev.event == "step":
            parts.append(f"{ev.step} ok")
        elif ev.event in ("retry", "failed", "filtered"):
            parts.append(f"{ev.step} {ev.event}")
        elif ev.event != "started":
            parts.append(ev.event)
    return ", ".join(parts) or ("started" if ex.events else "no events")
