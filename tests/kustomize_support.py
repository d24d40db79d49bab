"""Render a kustomization without the kustomize binary: the subset deploy/ uses.

Supported, with kustomize's meaning: `resources` (YAML files and directories holding a
kustomization), `namespace` (set on every namespaced object), `images` (name -> newName / newTag /
digest on containers and initContainers) and `patches` with a `path` to a strategic-merge patch:
maps merge recursively, a null value deletes the field, lists of containers / volumes / env /
ports / volumeMounts merge by their key (name, mountPath, containerPort or port) with the patch's
new items first (as kustomize orders them), other lists are replaced, and a document with
`$patch: delete` removes the object. Anything else in a kustomization fails loudly.

`kubectl kustomize` is used instead when it is installed (`render`); the tests also check that
both agree, so this subset cannot drift from the real thing unnoticed.
"""
from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import yaml

_SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
_CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                   "CustomResourceDefinition", "PriorityClass"}
_MERGE_KEYS = {"containers": ("name",), "initContainers": ("name",), "env": ("name",), "volumes": ("name",),
               "volumeMounts": ("mountPath",), "ports": ("containerPort", "port"),
               "imagePullSecrets": ("name",)}


def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def object_key(doc: dict) -> tuple[str, str, str, str]:
    meta = doc.get("metadata", {})
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


def _merge_key(field: str, items: list) -> str | None:
    for key in _MERGE_KEYS.get(field, ()):
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def strategic_merge(base, patch, field: str = ""):
    """Merge `patch` into `base` (neither is modified)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = _merge_key(field, base + patch)
        if key is None:
            return copy.deepcopy(patch)
        by_key = {item[key]: item for item in patch}
        old_keys = {item[key] for item in base}
        new_items = [copy.deepcopy(item) for item in patch if item[key] not in old_keys]
        merged = [strategic_merge(item, by_key[item[key]], field) if item[key] in by_key else copy.deepcopy(item)
                  for item in base]
        return new_items + merged
    return copy.deepcopy(patch)


def _set_images(doc: dict, images: list[dict]) -> None:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") if "template" in spec else None
    if pod is None and doc.get("kind") == "Pod":
        pod = spec
    if pod is None:
        return
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name = container["image"].split("@")[0]
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        for rule in images:
            if rule["name"] != name:
                continue
            image = rule.get("newName", name)
            if "digest" in rule:
                image += "@" + rule["digest"]
            elif "newTag" in rule:
                image += ":" + str(rule["newTag"])
            container["image"] = image


def _matches(doc: dict, patch: dict) -> bool:
    group = lambda api: api.split("/")[0] if "/" in api else ""  # noqa: E731
    return (doc["kind"] == patch["kind"] and doc["metadata"]["name"] == patch["metadata"]["name"]
            and group(doc["apiVersion"]) == group(patch["apiVersion"]))


def render_subset(folder: str | Path) -> list[dict]:
    """The objects a kustomization folder renders to, with the subset above."""
    folder = Path(folder)
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kust) - _SUPPORTED
    if unsupported:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unsupported)}, which this renderer lacks")
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = folder / res
        docs.extend(render_subset(path) if path.is_dir() else _load_docs(path))
    for entry in kust.get("patches", []):
        if set(entry) != {"path"}:
            raise ValueError(f"{folder}: only `patches: - path:` is supported, got {entry}")
        for patch in _load_docs(folder / entry["path"]):
            targets = [i for i, d in enumerate(docs) if _matches(d, patch)]
            if len(targets) != 1:
                raise ValueError(f"{folder}/{entry['path']}: {patch['kind']}/{patch['metadata']['name']} "
                                 f"matches {len(targets)} objects")
            if patch.get("$patch") == "delete":
                docs.pop(targets[0])
            else:
                docs[targets[0]] = strategic_merge(docs[targets[0]], patch)
    for doc in docs:
        if "namespace" in kust and doc["kind"] not in _CLUSTER_SCOPED:
            doc.setdefault("metadata", {})["namespace"] = kust["namespace"]
        _set_images(doc, kust.get("images", []))
    return docs


def kubectl_available() -> bool:
    return shutil.which("kubectl") is not None


def render_kubectl(folder: str | Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render(folder: str | Path) -> list[dict]:
    """`kubectl kustomize` when installed, else the subset renderer."""
    return render_kubectl(folder) if kubectl_available() else render_subset(folder)
