"""KubeRay manifests validate against KubeRay's real CRD schemas, strictly (unknown fields rejected, as
`kubectl apply` does), run as non-root, and agree with the project (image, entrypoint, presets, Ray version)."""
from __future__ import annotations

import copy
import functools
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster.cli import build_parser
from cluster.config import load_config

REPO = Path(__file__).resolve().parent.parent
CRD_DIRS = [REPO.parent / "shared" / "kuberay-crds", REPO / "tests" / "fixtures" / "kuberay-crds"]
MANIFESTS = {"RayJob": REPO / "cluster/kuberay/rayjob.yaml", "RayCluster": REPO / "cluster/kuberay/raycluster.yaml"}


def _strict(schema: dict) -> dict:
    """OpenAPI v3 (structural) schema -> JSON schema that rejects unknown fields like the API server."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(s)
    s["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is validated by the API server, not the CRD
    return s


@functools.lru_cache(maxsize=None)
def _schema(kind: str) -> dict:
    name = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}[kind]
    path = next(d / name for d in CRD_DIRS if (d / name).exists())
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_validates_strictly(kind):
    doc = yaml.safe_load(MANIFESTS[kind].read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    jsonschema.validate(doc, _schema(kind))


def test_strict_validation_rejects_unknown_field():
    doc = yaml.safe_load(MANIFESTS["RayJob"].read_text())
    doc["spec"]["entrypont"] = "typo"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema("RayJob"))


def _pod_specs(doc):
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    yield spec["headGroupSpec"]["template"]["spec"]
    for g in spec["workerGroupSpecs"]:
        yield g["template"]["spec"]


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_pods_run_as_non_root_with_project_image(kind):
    doc = yaml.safe_load(MANIFESTS[kind].read_text())
    version = yaml.safe_load((REPO / "pyproject.toml").read_text().split("[project]")[1].split("\n\n")[0]
                             .replace(" = ", ": "))["version"]
    for pod in _pod_specs(doc):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            assert c["image"] == f"medgrpo:{version}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert (doc["spec"].get("rayClusterSpec", doc["spec"]))["rayVersion"] == "2.60.0"


def test_rayjob_entrypoint_is_a_valid_medgrpo_command():
    doc = yaml.safe_load(MANIFESTS["RayJob"].read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "medgrpo"
    args = build_parser().parse_args(argv[1:])
    assert args.cmd == "train"
    cfg = load_config(args.preset, args.overrides)
    assert cfg.resume == "auto"


def test_dockerfile_user_is_non_root():
    text = (REPO / "cluster/Dockerfile").read_text()
    assert "USER 1000" in text and "medgrpo" in text
