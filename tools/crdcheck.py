"""Validate custom resources in rendered manifests against the CustomResourceDefinitions that define them.

kubernetes-validate knows only the built-in kinds and merely warns about the rest. This does for custom
resources what an API server would: it turns each CRD version's openAPIV3Schema into a strict JSON
Schema (unknown fields rejected unless the CRD preserves them) and validates every object of that
kind with jsonschema. CEL rules (x-kubernetes-validations) are not evaluated.

    python tools/crdcheck.py --crds ../shared/crds out/staging.yaml out/production.yaml

Exit status 1 when an object is invalid or a custom resource has no CRD in --crds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Schema = dict[str, Any]

# Keys of an OpenAPI v3 schema that mean the same in JSON Schema; everything else is dropped.
_PASSTHROUGH = (
    "type",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "description",
)


def strict_schema(node: Schema) -> Schema:
    """The JSON Schema an API server would enforce for one CRD schema node (without CEL rules)."""
    if node.get("x-kubernetes-int-or-string"):
        # OpenAPI leaves `type` off these: "8080" and 8080 are both fine, anything else is not.
        out: Schema = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
        return _nullable(node, out)
    out = {k: node[k] for k in _PASSTHROUGH if k in node}
    # An exclusive bound is a boolean modifier in OpenAPI 3.0 and a number in JSON Schema 2020-12.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(flag) is True and bound in out:
            out[flag] = out.pop(bound)
        elif isinstance(out.get(flag), bool):
            del out[flag]
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if "properties" in node:
        out["properties"] = {name: strict_schema(sub) for name, sub in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_schema(node["additionalProperties"])
    elif "properties" in node and not preserve:
        out["additionalProperties"] = False
    if "items" in node:
        out["items"] = strict_schema(node["items"])
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator in node:
            # Structural schemas only constrain values here; types come from the enclosing node.
            out[combinator] = [_constraints_only(strict_schema(s)) for s in node[combinator]]
    if "not" in node:
        out["not"] = _constraints_only(strict_schema(node["not"]))
    return _nullable(node, out)


def _constraints_only(schema: Schema) -> Schema:
    # additionalProperties: false inside a combinator would reject the fields of the other branches.
    return {k: v for k, v in schema.items() if k != "additionalProperties"}


def _nullable(node: Schema, out: Schema) -> Schema:
    if node.get("nullable"):
        return {"anyOf": [{"type": "null"}, out]}
    return out


def resource_schema(version_schema: Schema) -> Schema:
    """Strict schema of a whole object: apiVersion/kind/metadata as the API server checks them."""
    schema = strict_schema(version_schema)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    # CRD schemas leave metadata open; the API server checks it as ObjectMeta. Name and string maps
    # are what manifests get wrong.
    props["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    return schema


def load_crds(crd_dir: Path) -> dict[tuple[str, str], Schema]:
    """(apiVersion, kind) → strict schema, for every served version of every CRD under crd_dir."""
    schemas: dict[tuple[str, str], Schema] = {}
    for path in sorted([*crd_dir.glob("*.yaml"), *crd_dir.glob("*.yml")]):
        for doc in _documents([path]):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                api_version = f"{spec['group']}/{version['name']}"
                schemas[(api_version, spec["names"]["kind"])] = resource_schema(
                    version["schema"]["openAPIV3Schema"]
                )
    return schemas


def is_builtin(api_version: str) -> bool:
    """Core and *.k8s.io groups are the API server's own kinds (kubernetes-validate's job)."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def _documents(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict):
                yield doc


def check(crd_dir: Path, manifests: Iterable[Path]) -> tuple[int, list[str]]:
    """Validate every custom resource in the manifests: (objects checked, error messages)."""
    schemas = load_crds(crd_dir)
    checked, errors = 0, []
    for path in manifests:
        for doc in _documents([path]):
            api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
            if is_builtin(api_version):
                continue
            name = f"{path}: {kind} {doc.get('metadata', {}).get('name', '?')}"
            schema = schemas.get((api_version, kind))
            if schema is None:
                errors.append(f"{name}: no CRD for {api_version} {kind} in {crd_dir}")
                continue
            checked += 1
            validator = jsonschema.Draft202012Validator(schema)
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                where = ".".join(str(p) for p in err.absolute_path) or "(root)"
                errors.append(f"{name}: {where}: {err.message}")
    return checked, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--crds", type=Path, required=True, help="folder of CustomResourceDefinition YAML")
    parser.add_argument("manifests", nargs="+", type=Path, help="rendered manifests ('-' for stdin)")
    args = parser.parse_args(argv)
    if not args.crds.is_dir():
        print(f"crdcheck: no CRD folder at {args.crds}", file=sys.stderr)
        return 2
    checked, errors = check(args.crds, args.manifests)
    for message in errors:
        print(f"crdcheck: INVALID {message}", file=sys.stderr)
    print(f"crdcheck: {checked} custom resources checked, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
