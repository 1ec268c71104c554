"""A stand-in Kubernetes API server, just enough for ``kubectl apply --dry-run=client -f FILE``.

What kubectl 1.37 asks for (seen with ``-v=8``), and what this answers:

* ``GET /openapi/v3``: 404. kubectl then asks the legacy ``/openapi/v2`` whether the server offers
  server-side field validation, and because this document lists no paths, it validates on the client side,
  against that same document (``--validate=strict``, the default: unknown fields and wrong types are errors).
* ``GET /openapi/v2``: the OpenAPI v2 document as kubectl requires it, protobuf (gnostic's
  ``openapi.v2.Document``, encoded here by hand, fields numbered as in gnostic's OpenAPIv2.proto). Its
  definitions are the Kubernetes schemas kubernetes-validate ships (the strict variant) plus our CRD schemas
  from deploy/schemas/, turned back from JSON Schema into OpenAPI: ``$ref`` into definitions, one type per
  schema, and the ``x-kubernetes-group-version-kind`` tags kubectl finds a kind's schema by.
* ``GET /api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>``: legacy discovery (kubectl accepts it
  when the aggregated form is not offered), listing exactly the kinds it is given.
* ``GET`` of each object (apply reads it to choose between create and patch): 404 NotFound, as on an empty
  cluster, so every object prints ``created (dry run)``.

Every request is recorded, so a test can tell that validation and discovery really took place.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]

from tests.csi.protowire import ld, vint

SCHEMA_VERSION = "1.37.0"
KUBERNETES_SCHEMAS = (
    Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{SCHEMA_VERSION}-local-strict"
)
OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]

Doc = dict[str, Any]


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def plural(kind: str) -> str:
    """The resource name Kubernetes gives a kind (``StorageClass`` → ``storageclasses``)."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + "s"


def to_openapi(schema: Any) -> Any:
    """A JSON Schema (2020-12: ``$defs``, nullable types as lists, ``const``) in OpenAPI v2's terms."""
    if isinstance(schema, list):
        return [to_openapi(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = "#/definitions/" + value.removeprefix("#/$defs/")
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            if len(types) == 1:  # several types is no type at all in OpenAPI: anything goes
                out[key] = types[0]
        elif key == "const":
            out["enum"] = [value]
        elif key in ("properties", "patternProperties"):
            out[key] = {name: to_openapi(s) for name, s in value.items()}
        elif key not in ("$schema", "$id", "$defs", "$comment"):
            out[key] = to_openapi(value)
    return out


def gvk_of(schema: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(group, version, kind) of an object schema, from its apiVersion and kind enums (or consts)."""
    properties = to_openapi(schema).get("properties", {})
    api_versions = properties.get("apiVersion", {}).get("enum", [])
    kinds = properties.get("kind", {}).get("enum", [])
    if len(api_versions) != 1 or len(kinds) != 1:
        return None
    group, version = split_api_version(api_versions[0])
    return group, version, kinds[0]


def definitions(crd_schemas: Iterable[Path]) -> dict[str, Any]:
    """Every Kubernetes definition plus one per CRD schema file, in OpenAPI terms, tagged with their kinds."""
    kubernetes = json.loads((KUBERNETES_SCHEMAS / "_definitions.json").read_text())["$defs"]
    out: dict[str, Any] = {name: to_openapi(s) for name, s in kubernetes.items()}
    for path in crd_schemas:
        schema = json.loads(path.read_text())
        gvk = gvk_of(schema)
        if gvk is None:
            raise ValueError(f"{path}: no single apiVersion and kind")
        group, version, kind = gvk
        definition = to_openapi(schema)
        definition["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": kind}]
        out[f"{'.'.join(reversed(group.split('.')))}.{version}.{kind}"] = definition
    return out


# -- protobuf: tests/csi/test_proto.py's hand encoder (ld: length-delimited, vint: varint fields) ---------


def pb_any(number: int, value: Any) -> bytes:
    """gnostic ``Any``: the value as YAML text (field 2); JSON is YAML."""
    return ld(number, ld(2, json.dumps(value)))


def pb_schema(schema: Mapping[str, Any]) -> bytes:
    """gnostic ``openapi.v2.Schema``: the fields kubectl's validation reads."""
    out = b""
    if isinstance(schema.get("$ref"), str):
        out += ld(1, schema["$ref"])
    if isinstance(schema.get("format"), str):
        out += ld(2, schema["format"])
    out += b"".join(ld(19, name) for name in schema.get("required", []))
    out += b"".join(pb_any(20, value) for value in schema.get("enum", []))
    extra = schema.get("additionalProperties")
    if isinstance(extra, bool):
        out += ld(21, vint(2, int(extra)))
    elif isinstance(extra, Mapping):
        out += ld(21, ld(1, pb_schema(extra)))
    if isinstance(schema.get("type"), str):
        out += ld(22, ld(1, schema["type"]))
    if isinstance(schema.get("items"), Mapping):
        out += ld(23, ld(1, pb_schema(schema["items"])))
    if schema.get("properties"):
        out += ld(25, pb_named_schemas(schema["properties"]))
    for key, value in schema.items():
        if key.startswith("x-"):
            out += ld(31, ld(1, key) + pb_any(2, value))
    return out


def pb_named_schemas(schemas: Mapping[str, Mapping[str, Any]]) -> bytes:
    """gnostic ``Properties`` or ``Definitions``: repeated NamedSchema (name = 1, value = 2) as field 1."""
    return b"".join(ld(1, ld(1, name) + ld(2, pb_schema(s))) for name, s in schemas.items())


def pb_document(defs: Mapping[str, Mapping[str, Any]]) -> bytes:
    """gnostic ``openapi.v2.Document``: swagger, info, no paths, the definitions."""
    info = ld(1, "Kubernetes") + ld(2, f"v{SCHEMA_VERSION}")
    return ld(1, "2.0") + ld(2, info) + ld(9, pb_named_schemas(defs))


def not_found(message: str, details: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Status body of a 404, which kubectl reads as "no such object"."""
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
    return status | {"message": message, "details": dict(details or {})}


class FakeApiServer:
    """Serves discovery and OpenAPI for the kinds of ``docs`` on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, docs: Iterable[Doc], crd_schemas: Iterable[Path]) -> None:
        docs = list(docs)
        self.requests: list[str] = []
        self.resources: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for kind_key in sorted({(d["apiVersion"], d["kind"]) for d in docs}):
            api_version, kind = kind_key
            namespaced = any(d["metadata"].get("namespace") for d in docs if (d["apiVersion"], d["kind"]) == kind_key)
            resource = {
                "name": plural(kind),
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": VERBS,
            }
            self.resources.setdefault(split_api_version(api_version), []).append(resource)
        self.openapi_v2 = pb_document(definitions(crd_schemas))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context is this server (no credentials)."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "nobody", "user": {}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- answers ---------------------------------------------------------------------------------------
    def group_versions(self) -> Iterator[tuple[str, str]]:
        yield from sorted(self.resources)

    def discovery_path(self, group: str, version: str) -> str:
        return f"api/{version}" if group == "" else f"apis/{group}/{version}"

    def answer(self, path: str) -> tuple[int, Any]:
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                    "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
                }
                for group, version in self.group_versions()
                if group
            ]
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for group, version in self.group_versions():
            base = "/" + self.discovery_path(group, version)
            if path == base:
                api_version = f"{group}/{version}" if group else version
                return 200, {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": api_version,
                    "resources": self.resources[(group, version)],
                }
            if match := re.fullmatch(re.escape(base) + r"(?:/namespaces/[^/]+)?/([^/]+)/([^/]+)", path):
                return 404, not_found(f'{match[1]} "{match[2]}" not found', {"name": match[2], "kind": match[1]})
        return 404, not_found(f"{path} is not served here")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append(f"GET {path}")
                if path == "/openapi/v2":
                    code, data, content_type = 200, server.openapi_v2, OPENAPI_V2_PROTOBUF
                else:
                    code, body = server.answer(path)
                    data, content_type = json.dumps(body).encode(), "application/json"
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet (the base class writes to stderr); tests read ``server.requests``."""

        return Handler
