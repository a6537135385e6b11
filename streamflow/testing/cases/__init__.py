"""Flow tests: YAML test cases next to an integration, run on the embedded transport.

A test file (``tests.yaml``, or ``NAME.tests.yaml``) sits beside ``integration.yaml``::

    integration: integration.yaml        # default: integration.yaml in the same folder
    mocks: mocks.yaml                    # default mock services of every case (a file or inline)
    config: {big_order: 500}             # config values of every case
    cases:
      - name: big orders need approval
        flow: order-created              # only this flow runs (optional with one flow)
        config: {big_order: 100}         # merged over the file's config
        events: [{id: o-1, status: paid, items: [a], items_total: [600]}]   # or events_file:
        mocks: {services: {...}}         # replaces the named services of the defaults
        timeout: 30s                     # give up waiting for the executions after this
        expect:
          status: completed              # every execution (or a list: one per event)
          output: {state: pending-approval}   # subset of every execution's final payload
          error: "503"                   # text in every execution's error
          executions:                    # per event, in order: status, output, error, steps
            - {status: completed, output: {approval: APR-o-1}}
          calls:                         # what the mock services received
            - {service: approvals, method: POST, path: /approvals, json: {order: o-1}, count: 1}
          calls_ordered: true            # the calls above happened in this order
          dead_letters: 0                # or a list of {step, error, error_type, payload}
          published: [{topic: t, key: k, value: {...}, count: 1}]   # kafka_publish messages
          max_duration: 5s               # bound on the run (events fed -> every execution ended)

Expected values are subsets: a mapping matches when each of its keys matches, a list
when it has as many items and each matches, anything else when equal. A one-key
mapping ``{$regex: ...}``, ``{$contains: ...}`` or ``{$type: string}`` matches by
pattern, containment or JSON type. Strings may use ``${config.<name>}`` (the case's
config values, mock base URLs included) and ``${mocks.<service>}`` (a mock's base URL).

Mock base URLs are set as config values automatically (the mock's ``config:``); a value
in ``config`` wins over them. Each case runs on a fresh embedded broker in a temporary
directory with fresh mock servers, so cases never see each other's data.

``load_test_files(paths)`` validates (raising ``ValidationFailed`` with file:line:col);
``run_test_files(files, reporter)`` runs them; ``write_junit_xml`` writes a report.
"""

from streamflow.testing.cases.loading import find_test_files, load_test_file, load_test_files
from streamflow.testing.cases.matching import compare, diff
from streamflow.testing.cases.models import CaseResult, TestCase, TestFile
from streamflow.testing.cases.running import Reporter, run_case, run_test_files, write_junit_xml

__all__ = [
    "CaseResult",
    "Reporter",
    "TestCase",
    "TestFile",
    "compare",
    "diff",
    "find_test_files",
    "load_test_file",
    "load_test_files",
    "run_case",
    "run_test_files",
    "write_junit_xml",
]
