"""JSON Schemas (draft-07) of the flow-test file (``tests.yaml``) and the mocks file
(``mocks.yaml``), generated from their pydantic models like the integration's."""

from __future__ import annotations

from typing import Any

from streamflow.testing.cases.models import CaseDoc, TestFileDoc
from streamflow.testing.mocks import MocksDoc
from streamflow.topology.jsonschema import REF, finish, model_schema


def mocks_schema() -> dict[str, Any]:
    """The schema of a mocks file (``schemas/mocks.schema.json``)."""
    defs: dict[str, Any] = {}
    schema = model_schema(MocksDoc, defs)
    schema["definitions"] = defs
    return finish(schema, "mocks")


def tests_schema() -> dict[str, Any]:
    """The schema of a flow-test file (``schemas/tests.schema.json``); ``mocks:`` may be a
    file name or an inline mocks document."""
    defs: dict[str, Any] = {}
    schema = model_schema(TestFileDoc, defs)
    defs["CaseDoc"] = model_schema(CaseDoc, defs)
    defs["MocksDoc"] = model_schema(MocksDoc, defs)
    schema["properties"]["cases"]["items"] = {"$ref": REF.format(model="CaseDoc")}
    for node in (schema, defs["CaseDoc"]):
        mocks = node["properties"]["mocks"]
        mocks.pop("anyOf")  # str | mocks document | None: one error at the wrong field
        mocks["if"] = {"type": ["string", "null"]}
        mocks["else"] = {"$ref": REF.format(model="MocksDoc")}
    schema["definitions"] = defs
    return finish(schema, "tests")
