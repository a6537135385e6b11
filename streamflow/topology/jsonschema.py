"""JSON Schema of the YAML contract, built from the registered config models."""

from __future__ import annotations

from typing import Any

from streamflow.topology.models import IntegrationDoc
from streamflow.topology.registry import STEPS, TRIGGERS, load_builtins

SCHEMA_ID = "https://streamflow.dev/schemas/integration.schema.json"


def integration_schema() -> dict[str, Any]:
    load_builtins()
    schema = IntegrationDoc.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    step_refs = []
    for name in sorted(STEPS):
        model = STEPS[name].config
        sub = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        _nested_steps(sub)
        defs[model.__name__] = sub
        step_refs.append({"$ref": f"#/$defs/{model.__name__}"})
    trigger_refs = []
    for name in sorted(TRIGGERS):
        tmodel = TRIGGERS[name]
        sub = tmodel.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[tmodel.__name__] = sub
        trigger_refs.append({"$ref": f"#/$defs/{tmodel.__name__}"})
    defs["Step"] = {"oneOf": step_refs}
    defs["Trigger"] = {"oneOf": trigger_refs}
    for d in defs.values():
        _nested_steps(d)
    flow = defs["FlowDoc"]["properties"]
    flow["trigger"] = {"$ref": "#/$defs/Trigger"}
    flow["steps"] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Step"}}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    return schema


def _nested_steps(schema: dict[str, Any]) -> None:
    """Fields typed as raw step lists (branch routes, default) point at the Step union."""
    for prop in schema.get("properties", {}).values():
        items = prop.get("items")
        if prop.get("type") == "array" and items == {
            "additionalProperties": True,
            "type": "object",
        }:
            prop["items"] = {"$ref": "#/$defs/Step"}
