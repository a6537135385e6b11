"""XML to values and back: ``parse_xml``/``render_xml`` of expressions, the ``http``
step's ``xml`` body and ``response_format: xml``, and ``file_read`` of ``.xml`` files.

Parsing uses defusedxml with every risky feature refused: a document with a DTD (so no
entity declarations: no "billion laughs" expansion, no external entities) is an error,
and nothing is ever fetched from the network. Namespaces are dropped: names are local
(``soap:Envelope`` -> ``Envelope``).

Shape (the common "xmltodict" convention):

* an element without attributes or children is its text (``null`` when empty);
* otherwise a mapping: ``@name`` for each attribute, each child element under its name
  (a list when the name repeats), ``#text`` for non-blank text;
* a document is ``{root name: value}``.

``render_xml`` takes the same shape (names may carry a prefix, ``soap:Envelope``, and
``@xmlns:soap`` declares it); numbers and booleans become text (``true``/``false``),
``null`` an empty element. Names must be XML names; text and attributes are escaped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

__all__ = ["MAX_DEPTH", "XmlError", "parse_xml", "render_xml", "to_value"]

MAX_DEPTH = 200
_NAME = re.compile(r"^[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?$")


class XmlError(ValueError):
    """Not well-formed, refused (DTD, entities), too deep, or not renderable."""


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1] if name.startswith("{") else name


def to_value(elem: ET.Element, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise XmlError(f"XML nested deeper than {MAX_DEPTH} elements")
    children = list(elem)
    text = elem.text.strip() if elem.text else ""
    if not elem.attrib and not children:
        return elem.text if text else None
    out: dict[str, Any] = {f"@{_local(k)}": v for k, v in elem.attrib.items()}
    lists: set[str] = set()
    for child in children:
        if not isinstance(child.tag, str):  # comments, processing instructions
            continue
        name, value = _local(child.tag), to_value(child, depth + 1)
        if name in lists:
            out[name].append(value)
        elif name in out:
            out[name] = [out[name], value]
            lists.add(name)
        else:
            out[name] = value
    if text:
        out["#text"] = elem.text
    return out


def parse_xml(source: Any) -> Any:
    """XML text (or UTF-8 bytes) -> ``{root: value}``; ``null`` gives ``null``."""
    if source is None:
        return None
    data = source if isinstance(source, bytes | str) else str(source)
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise XmlError(f"XML refused: {_why(exc)}") from None
    except ET.ParseError as exc:
        raise XmlError(f"not well-formed XML: {exc}") from None
    return {_local(root.tag): to_value(root)}


def _why(exc: DefusedXmlException) -> str:
    name = type(exc).__name__
    if name == "DTDForbidden":
        return "a DTD (<!DOCTYPE …>) is not accepted (entity expansion, external entities)"
    if name == "EntitiesForbidden":
        return "entity declarations are not accepted"
    if name == "ExternalReferenceForbidden":
        return "external references are not accepted"
    return name


def render_xml(value: Any, root: Any = None) -> str:
    """``{root: value}`` (or ``value`` under ``root``) -> XML text (no declaration)."""
    if root is None:
        if not isinstance(value, Mapping) or len(value) != 1:
            raise XmlError("render_xml needs {root: value} (one key) or a root name")
        [(root, value)] = value.items()
    elem = _element(str(root), value, 0)
    return ET.tostring(elem, encoding="unicode", short_empty_elements=True)


def _element(name: str, value: Any, depth: int) -> ET.Element:
    if depth > MAX_DEPTH:
        raise XmlError(f"value nested deeper than {MAX_DEPTH} levels")
    if not _NAME.match(name):
        raise XmlError(f"{name[:40]!r} is not an XML element name")
    elem = ET.Element(name)
    _fill(elem, value, depth)
    return elem


def _fill(elem: ET.Element, value: Any, depth: int) -> None:
    if not isinstance(value, Mapping):
        elem.text = _text(value)
        return
    for key, sub in value.items():
        k = str(key)
        if k.startswith("@"):
            if not _NAME.match(k[1:]):
                raise XmlError(f"{k[:40]!r} is not an XML attribute name")
            elem.set(k[1:], _text(sub) or "")
        elif k == "#text":
            elem.text = _text(sub)
        else:
            for item in sub if isinstance(sub, list) else [sub]:
                elem.append(_element(k, item, depth + 1))


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, list | Mapping):
        raise XmlError("a list or mapping cannot be text or an attribute")
    return str(v)
