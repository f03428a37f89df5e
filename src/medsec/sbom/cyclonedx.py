"""CycloneDX 1.2–1.6 readers (JSON and XML) into the shared SBOM values.

Both encodings are turned into the JSON shape first, so one function maps a component. XML is
streamed: each top-level component is mapped and dropped as soon as it ends, so a large file
is never held whole. Per-component faults become issues; only a broken document raises.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import IO, Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException

from medsec.sbom._collect import MANUFACTURER, Collector
from medsec.sbom.errors import MalformedSbomError, UnsupportedSbomError
from medsec.sbom.identity import check_identifiers
from medsec.sbom.model import Component, ComponentIssue, ComponentKind, ComponentRef, IssueLevel, Provenance, Sbom

SUPPORTED_VERSIONS = ("1.2", "1.3", "1.4", "1.5", "1.6")
XML_NAMESPACE = "http://cyclonedx.org/schema/bom/"

# The CycloneDX hash-alg enumeration (bom-1.6 schema, "hash-alg").
HASH_ALGORITHMS = frozenset(
    {
        "MD5",
        "SHA-1",
        "SHA-256",
        "SHA-384",
        "SHA-512",
        "SHA3-256",
        "SHA3-384",
        "SHA3-512",
        "BLAKE2b-256",
        "BLAKE2b-384",
        "BLAKE2b-512",
        "BLAKE3",
    }
)
_HEX = re.compile(r"[A-Fa-f0-9]{32,128}")

# FDA premarket guidance (2023) per-component support data. medsec writes the first name of each
# set; the others are what SBOMs in the field use (e.g. the FDA case-study SBOMs: "Level of Support").
SUPPORT_LEVEL_PROPERTY = "medsec:support-level"
END_OF_SUPPORT_PROPERTY = "medsec:end-of-support"
SOURCE_SBOM_PROPERTY = "medsec:source-sbom"
_SUPPORT_LEVEL_NAMES = frozenset({"medsecsupportlevel", "levelofsupport", "supportlevel"})
_END_OF_SUPPORT_NAMES = frozenset({"medsecendofsupport", "endofsupport", "endofsupportdate", "eos", "eosdate"})
_NAME_FOLD = re.compile(r"[^a-z0-9]")


def _fold(name: str) -> str:
    return _NAME_FOLD.sub("", name.lower())


def _text(value: object) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _name_of(value: object) -> str | None:
    """An organizational entity or contact ({"name": ...}) or a plain string."""
    if isinstance(value, Mapping):
        return _text(value.get("name")) or _text(value.get("email"))
    return _text(value)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def is_iso_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value[:10])
    except ValueError:
        return False
    return len(value) == 10 or value[10] in "T "


def _supplier(raw: Mapping[str, Any]) -> str | None:
    # NTIA "supplier name": CycloneDX supplier first; 1.6 manufacturer; then publisher and author,
    # which many tools (syft, the FDA case-study SBOMs) fill instead.
    for key in ("supplier", "manufacturer"):
        if (name := _name_of(raw.get(key))) is not None:
            return name
    for key in ("publisher", "author"):
        if (name := _text(raw.get(key))) is not None:
            return name
    for author in _list(raw.get("authors")):
        if (name := _name_of(author)) is not None:
            return name
    return None


def _licenses(raw: object) -> tuple[str, ...]:
    found: list[str] = []
    for entry in _list(raw):
        if not isinstance(entry, Mapping):
            continue
        if (expression := _text(entry.get("expression"))) is not None:
            found.append(expression)
        elif isinstance(lic := entry.get("license"), Mapping) and (
            name := _text(lic.get("id")) or _text(lic.get("name"))
        ):
            found.append(name)
    return tuple(found)


def component_from_dict(raw: Mapping[str, Any], ref: ComponentRef, parent: ComponentRef | None = None) -> Component:
    """Map one CycloneDX component (JSON shape); never raises, records issues instead."""
    issues: list[ComponentIssue] = []
    name = _text(raw.get("name"))
    if name is None:
        issues.append(ComponentIssue("name", "component name missing", IssueLevel.ERROR))
    kind = ComponentKind.LIBRARY
    raw_type = raw.get("type")
    try:
        kind = ComponentKind(str(raw_type))
    except ValueError:
        issues.append(ComponentIssue("type", f"unknown component type {raw_type!r}; read as library"))
    purl, cpe, version, id_issues = check_identifiers(
        _text(raw.get("purl")), _text(raw.get("cpe")), _text(raw.get("version"))
    )
    issues.extend(id_issues)
    hashes: list[tuple[str, str]] = []
    for h in _list(raw.get("hashes")):
        alg = _text(h.get("alg")) if isinstance(h, Mapping) else None
        content = _text(h.get("content")) if isinstance(h, Mapping) else None
        if alg in HASH_ALGORITHMS and content is not None and _HEX.fullmatch(content):
            hashes.append((alg, content.lower()))
        else:
            issues.append(ComponentIssue("hashes", f"unusable hash {alg!r}: {content!r}; dropped"))
    support_level: str | None = None
    end_of_support: str | None = None
    source_sbom: str | None = None
    properties: list[tuple[str, str]] = []
    for prop in _list(raw.get("properties")):
        if not isinstance(prop, Mapping) or (pname := _text(prop.get("name"))) is None:
            continue
        value = prop.get("value")
        pvalue = value if isinstance(value, str) else ""
        folded = _fold(pname)
        if folded in _SUPPORT_LEVEL_NAMES and support_level is None and pvalue.strip():
            support_level = pvalue.strip()
        elif folded in _END_OF_SUPPORT_NAMES and end_of_support is None and is_iso_date(pvalue.strip()):
            end_of_support = pvalue.strip()[:10]
        elif pname == SOURCE_SBOM_PROPERTY and source_sbom is None and pvalue:
            source_sbom = pvalue
        else:
            if folded in _END_OF_SUPPORT_NAMES:
                issues.append(ComponentIssue(pname, f"end of support {pvalue!r} is not an ISO date; kept as text"))
            properties.append((pname, pvalue))
    return Component(
        ref=ref,
        name=name or "",
        version=version,
        kind=kind,
        supplier=_supplier(raw),
        purl=purl,
        cpe=cpe,
        hashes=tuple(hashes),
        licenses=_licenses(raw.get("licenses")),
        support_level=support_level,
        end_of_support=end_of_support,
        source_sbom=source_sbom,
        issues=tuple(issues),
        group=_text(raw.get("group")),
        parent=parent,
        properties=tuple(properties),
    )


def _add_component(
    collector: Collector, raw: object, where: str, parent: ComponentRef | None, *, subject: bool = False
) -> None:
    """Add ``raw`` and, flattened after it, the components nested in it (CycloneDX "components")."""
    stack: list[tuple[object, str, ComponentRef | None, bool]] = [(raw, where, parent, subject)]
    while stack:
        item, path, parent_ref, is_subject = stack.pop()
        if not isinstance(item, Mapping):
            collector.issues.append(ComponentIssue(path, f"not a component object ({type(item).__name__}); skipped"))
            continue
        ref = collector.unique_ref(_text(item.get("bom-ref")), _text(item.get("purl")))
        component = component_from_dict(item, ref, parent_ref)
        if is_subject:
            collector.subject = component
        else:
            collector.components.append(component)
        children = _list(item.get("components"))
        stack.extend((c, f"{path}.components[{i}]", ref, False) for i, c in reversed(list(enumerate(children))))


def _tool_name(tool: object) -> str | None:
    if not isinstance(tool, Mapping):
        return _text(tool)
    parts = [_text(tool.get("vendor")) or _text(tool.get("group")), _text(tool.get("name")), _text(tool.get("version"))]
    joined = " ".join(p for p in parts if p)
    return joined or None


def _tools(raw: object) -> tuple[str, ...]:
    # 1.2-1.4: an array of tools; 1.5+: {"components": [...], "services": [...]}.
    entries = _list(raw.get("components")) + _list(raw.get("services")) if isinstance(raw, Mapping) else _list(raw)
    return tuple(name for t in entries if (name := _tool_name(t)) is not None)


def _check_version(spec: object, source: str, field: str) -> str:
    if not isinstance(spec, str):
        raise MalformedSbomError("CycloneDX spec version missing", source=source, field=field)
    if spec not in SUPPORTED_VERSIONS:
        raise UnsupportedSbomError(
            f"CycloneDX spec version {spec!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
            source=source,
            field=field,
        )
    return spec


def _apply_metadata(collector: Collector, metadata: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...], list[str]]:
    if "component" in metadata:
        _add_component(collector, metadata["component"], "metadata.component", None, subject=True)
    subject = collector.subject
    product_supplier = _name_of(metadata.get("supplier")) or _name_of(
        metadata.get("manufacturer") or metadata.get("manufacture")
    )
    if subject is not None and subject.supplier is None and product_supplier is not None:
        collector.subject = replace(subject, supplier=product_supplier)
    authors = [name for a in _list(metadata.get("authors")) if (name := _name_of(a)) is not None]
    return _text(metadata.get("timestamp")), _tools(metadata.get("tools")), authors


def _add_dependencies(collector: Collector, entry: object) -> None:
    if not isinstance(entry, Mapping) or (ref := _text(entry.get("ref"))) is None:
        collector.issues.append(ComponentIssue("dependencies", "dependency entry without ref; skipped"))
        return
    targets: list[str] = []
    for target in _list(entry.get("dependsOn")):
        # 1.2 allowed nested objects; later versions list refs.
        name = _text(target.get("ref")) if isinstance(target, Mapping) else _text(target)
        if name is not None:
            targets.append(name)
    collector.add_edges(ref, targets)


def read_json(doc: object, *, source: str) -> Sbom:
    """Read a parsed CycloneDX JSON document (``json.loads`` output)."""
    if not isinstance(doc, Mapping):
        raise MalformedSbomError("a CycloneDX document must be a JSON object", source=source, field="(document)")
    if doc.get("bomFormat") != "CycloneDX":
        raise MalformedSbomError("bomFormat is not 'CycloneDX'", source=source, field="bomFormat")
    spec = _check_version(doc.get("specVersion"), source, "specVersion")
    for key, kind in (("metadata", Mapping), ("components", list), ("dependencies", list)):
        if key in doc and not isinstance(doc[key], kind):
            shape = "an object" if kind is Mapping else "an array"
            raise MalformedSbomError(f"must be {shape}", source=source, field=key)
    collector = Collector()
    created, tools, authors = _apply_metadata(collector, doc.get("metadata") or {})
    for i, raw in enumerate(doc.get("components") or []):
        _add_component(collector, raw, f"components[{i}]", None)
    for entry in doc.get("dependencies") or []:
        _add_dependencies(collector, entry)
    provenance = Provenance(
        supplier=MANUFACTURER,
        format=f"CycloneDX {spec} JSON",
        document_id=_text(doc.get("serialNumber")),
        created=created,
        tools=tools,
        authors=tuple(authors),
    )
    return collector.finish(provenance)


# -- XML --------------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _etext(elem: Element) -> str | None:
    return _text(elem.text)


def _xml_entity(elem: Element) -> dict[str, Any]:
    """An organizationalEntity / contact / tool element as its JSON shape."""
    return {_local(c.tag): _etext(c) for c in elem if len(c) == 0}


def _xml_component(elem: Element) -> dict[str, Any]:
    raw: dict[str, Any] = {"type": elem.get("type"), "bom-ref": elem.get("bom-ref")}
    for child in elem:
        tag = _local(child.tag)
        if tag in ("supplier", "manufacturer"):
            raw[tag] = _xml_entity(child)
        elif tag == "authors":
            raw["authors"] = [_xml_entity(a) for a in child]
        elif tag == "hashes":
            raw["hashes"] = [{"alg": h.get("alg"), "content": _etext(h)} for h in child]
        elif tag == "licenses":
            licenses: list[dict[str, Any]] = []
            for lic in child:
                if _local(lic.tag) == "expression":
                    licenses.append({"expression": _etext(lic)})
                else:
                    licenses.append({"license": _xml_entity(lic)})
            raw["licenses"] = licenses
        elif tag == "properties":
            raw["properties"] = [{"name": p.get("name"), "value": p.text or ""} for p in child]
        elif tag == "components":
            raw["components"] = [_xml_component(c) for c in child if _local(c.tag) == "component"]
        elif len(child) == 0:
            raw[tag] = _etext(child)
    return raw


def _xml_metadata(elem: Element) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for child in elem:
        tag = _local(child.tag)
        if tag == "timestamp":
            raw["timestamp"] = _etext(child)
        elif tag == "tools":
            tools: list[Any] = []
            for t in child:
                t_tag = _local(t.tag)
                if t_tag == "tool":
                    tools.append(_xml_entity(t))
                elif t_tag in ("components", "services"):  # 1.5+
                    tools.extend(_xml_component(c) for c in t)
            raw["tools"] = tools
        elif tag == "authors":
            raw["authors"] = [_xml_entity(a) for a in child]
        elif tag == "component":
            raw["component"] = _xml_component(child)
        elif tag in ("supplier", "manufacture", "manufacturer"):
            raw[tag] = _xml_entity(child)
    return raw


def _xml_dependency(elem: Element) -> dict[str, Any]:
    return {"ref": elem.get("ref"), "dependsOn": [d.get("ref") for d in elem if _local(d.tag) == "dependency"]}


def _events(stream: IO[bytes], source: str) -> Iterator[tuple[str, Element]]:
    try:
        yield from safe_et.iterparse(stream, events=("start", "end"), forbid_dtd=True)
    except ParseError as e:
        line, column = e.position
        raise MalformedSbomError(f"not well-formed XML: {e.msg}", source=source, line=line, column=column) from e
    except DefusedXmlException as e:
        # DTDs and entity declarations are refused outright (entity expansion, external entities).
        raise MalformedSbomError(f"XML refused: {e}", source=source) from e


def read_xml(stream: IO[bytes], *, source: str) -> Sbom:
    """Read CycloneDX XML from ``stream``, one top-level component at a time."""
    collector = Collector()
    stack: list[Element] = []
    spec = ""
    document_id: str | None = None
    created: str | None = None
    tools: tuple[str, ...] = ()
    authors: list[str] = []
    index = 0
    for event, elem in _events(stream, source):
        if event == "start":
            stack.append(elem)
            if len(stack) == 1:
                namespace, _, local = elem.tag[1:].partition("}") if elem.tag.startswith("{") else ("", "", elem.tag)
                if local != "bom" or not namespace.startswith(XML_NAMESPACE):
                    raise UnsupportedSbomError(
                        f"root element {elem.tag!r} is not a CycloneDX bom", source=source, field="(root)"
                    )
                spec = _check_version(namespace[len(XML_NAMESPACE) :], source, "xmlns")
                document_id = _text(elem.get("serialNumber"))
            continue
        stack.pop()
        depth = len(stack)
        tag = _local(elem.tag)
        if depth == 2 and _local(stack[1].tag) == "components" and tag == "component":
            _add_component(collector, _xml_component(elem), f"components[{index}]", None)
            index += 1
            stack[-1].remove(elem)
        elif depth == 2 and _local(stack[1].tag) == "dependencies" and tag == "dependency":
            _add_dependencies(collector, _xml_dependency(elem))
            stack[-1].remove(elem)
        elif depth == 1:
            if tag == "metadata":
                created, tools, authors = _apply_metadata(collector, _xml_metadata(elem))
            stack[0].remove(elem)
    provenance = Provenance(
        supplier=MANUFACTURER,
        format=f"CycloneDX {spec} XML",
        document_id=document_id,
        created=created,
        tools=tools,
        authors=tuple(authors),
    )
    return collector.finish(provenance)
