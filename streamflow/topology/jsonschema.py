"""JSON Schema (draft-07) of the YAML contract, generated from the registered config models.

Draft-07 because it is what the YAML language server (VS Code, JetBrains, Neovim) supports
fully. Steps, triggers and connections are discriminated by ``type``: one ``if``/``then`` per
registered type, so a wrong field in an ``http`` step is one error at that field, not one per
step type. Types registered later (new step types, plugins) appear here with no edit:
``integration_schema()`` walks the registry.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from streamflow.topology.models import IntegrationDoc
from streamflow.topology.registry import CONNECTIONS, STEPS, TRIGGERS, load_all

DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_BASE = "https://streamflow.dev/schemas/"
REF = "#/definitions/{model}"
_RAW_OBJECT = {"additionalProperties": True, "type": "object"}


def model_schema(model: type[BaseModel], definitions: dict[str, Any]) -> dict[str, Any]:
    """The draft-07 schema of ``model``; its sub-models go into ``definitions``."""
    sub = model.model_json_schema(by_alias=True, ref_template=REF)
    definitions.update(sub.pop("$defs", {}))
    return sub


def discriminated(
    name: str, models: dict[str, type[BaseModel]], definitions: dict[str, Any]
) -> dict[str, Any]:
    """An object whose ``type`` picks the model (``if type == X then <model X>``).

    Each model goes into ``definitions`` under its class name. An unknown ``type`` is one
    error at ``type`` (its ``enum``); a wrong field of a known type is one error at the field.
    """
    branches = []
    for key in sorted(models):
        model = models[key]
        definitions[model.__name__] = model_schema(model, definitions)
        branches.append(
            {
                "if": {"properties": {"type": {"const": key}}, "required": ["type"]},
                "then": {"$ref": REF.format(model=model.__name__)},
            }
        )
    return {
        "title": name,
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": sorted(models), "description": f"the {name.lower()} type"}},
        "allOf": branches,
    }


def finish(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """Draft-07 housekeeping: ``$defs`` -> ``definitions``, optional fields without a
    union (``anyOf [X, null]`` would report a wrong X as one vague error at the parent)."""
    if "$defs" in schema:
        schema.setdefault("definitions", {}).update(schema.pop("$defs"))
    _walk(schema, _nullable)
    _walk(schema, _enum_alone)
    out = {"$schema": DRAFT, "$id": f"{SCHEMA_BASE}{name}.schema.json"}
    out.update(schema)
    return out


def _walk(node: Any, fn: Any) -> None:
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            _walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            _walk(v, fn)


def _nullable(node: dict[str, Any]) -> None:
    """``anyOf: [X, {type: null}]`` -> ``if: {type: null}, else: X``: null still passes,
    and a wrong X reports X's own error at its own path."""
    options = node.get("anyOf")
    if not isinstance(options, list) or {"type": "null"} not in options:
        return
    rest = [o for o in options if o != {"type": "null"}]
    node.pop("anyOf")
    node["if"] = {"type": "null"}
    node["else"] = rest[0] if len(rest) == 1 else {"anyOf": rest}


def _enum_alone(node: dict[str, Any]) -> None:
    """``enum``/``const`` already fix the type: a ``type`` beside them doubles the error."""
    if ("enum" in node or "const" in node) and isinstance(node.get("type"), str):
        node.pop("type")


def _point_raw(node: dict[str, Any], fields: Iterable[str], ref: dict[str, Any]) -> None:
    """Fields held as raw mappings (validated in a second pass) point at ``ref``."""
    props = node.get("properties", {})
    for name in fields:
        prop = props.get(name)
        if prop is None:
            continue
        if prop.get("type") == "array" and prop.get("items") == _RAW_OBJECT:
            prop["items"] = ref
        elif prop == _RAW_OBJECT:
            prop.clear()
            prop.update(ref)
        elif prop.get("additionalProperties") == _RAW_OBJECT:
            prop["additionalProperties"] = ref
        elif _RAW_OBJECT in prop.get("patternProperties", {}).values():
            patterns = prop["patternProperties"]
            prop["patternProperties"] = dict.fromkeys(patterns, ref)
            prop["additionalProperties"] = False
        elif isinstance(prop.get("anyOf"), list) and _RAW_OBJECT in prop["anyOf"]:
            prop["anyOf"] = [ref if o == _RAW_OBJECT else o for o in prop["anyOf"]]


def _nested_step_lists(node: dict[str, Any]) -> None:
    """Fields typed as raw step lists (branch routes, default) point at the Step union."""
    for prop in node.get("properties", {}).values():
        if (
            isinstance(prop, dict)
            and prop.get("type") == "array"
            and prop.get("items") == _RAW_OBJECT
        ):
            prop["items"] = {"$ref": REF.format(model="Step")}


def _compensations(definitions: dict[str, Any]) -> dict[str, Any]:
    """``compensate:`` is an inline step whose ``id`` may be left out: a copy of each step
    model without ``id`` required."""
    branches = []
    for key in sorted(STEPS):
        model = STEPS[key].config.__name__
        sub = copy.deepcopy(definitions[model])
        sub["required"] = [r for r in sub.get("required", []) if r != "id"]
        definitions[f"{model}Compensation"] = sub
        branches.append(
            {
                "if": {"properties": {"type": {"const": key}}, "required": ["type"]},
                "then": {"$ref": REF.format(model=f"{model}Compensation")},
            }
        )
    return {
        "title": "Compensation",
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": sorted(STEPS)}},
        "allOf": branches,
    }


def integration_schema() -> dict[str, Any]:
    """The schema of an integration file (``schemas/integration.schema.json``)."""
    load_all()
    defs: dict[str, Any] = {}
    schema = model_schema(IntegrationDoc, defs)
    defs["Step"] = discriminated("Step", {k: v.config for k, v in STEPS.items()}, defs)
    defs["Trigger"] = discriminated("Trigger", {k: v.config for k, v in TRIGGERS.items()}, defs)
    defs["Connection"] = discriminated(
        "Connection", {k: v.config for k, v in CONNECTIONS.items()}, defs
    )
    for d in list(defs.values()):
        _nested_step_lists(d)
    defs["Compensation"] = _compensations(defs)
    for key in STEPS:
        model = STEPS[key].config.__name__
        for name in (model, f"{model}Compensation"):
            _point_raw(defs[name], ["compensate"], {"$ref": REF.format(model="Compensation")})
    flow = defs["FlowDoc"]["properties"]
    flow["trigger"] = {"$ref": REF.format(model="Trigger")}
    flow["steps"] = {"type": "array", "minItems": 1, "items": {"$ref": REF.format(model="Step")}}
    _point_raw(schema, ["connections"], {"$ref": REF.format(model="Connection")})
    schema["definitions"] = defs
    return finish(schema, "integration")
