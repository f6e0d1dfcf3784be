#!/usr/bin/env python3
"""Checks rendered kustomize output (one multi-document YAML file per overlay).

Run by scripts/deploy-check.sh inside .venv-deploy. For every file:

* schemas: every core resource validates against the Kubernetes OpenAPI schemas that
  kubernetes-validate ships (offline, strict: unknown fields are errors), for each
  --k8s-version. Custom resources (not in those schemas) validate against the JSON
  schemas in --schemas (KIND.lower().schema.json); a kind with neither is an error.
* policy: every namespaced resource is in the namespace tickmesh; no Secret objects (certificates and keys are references only); every pod
  template container has requests == limits with a whole number of CPUs (Guaranteed
  QoS, so the static CPU manager gives it exclusive cores).
* node config: the ConfigMap tickmesh-node-config* holds node.toml; it is written to
  --configs-out/NAME.toml for `tickmesh node --check-config`, and its region and mesh
  peers must match the region label and the mesh NetworkPolicy's tickmesh.io/peers.

Prints one line per problem and exits 1 if there is any.
"""

import argparse
import json
import os
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml


NAMESPACE = "tickmesh"


def docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def rid(d):
    return f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"


def check_schemas(path, items, versions, schema_dir, problems):
    crd_schemas = {}
    for d in items:
        kind = d.get("kind", "")
        group = d.get("apiVersion", "").split("/")[0]
        if "." in group and not group.endswith(".k8s.io"):
            # A custom resource: our own JSON schema, or an error.
            sfile = os.path.join(schema_dir, f"{kind.lower()}.schema.json")
            if not os.path.exists(sfile):
                problems.append(f"{path}: {rid(d)}: custom resource {d['apiVersion']} has no schema; add {sfile}")
                continue
            if sfile not in crd_schemas:
                with open(sfile, encoding="utf-8") as f:
                    crd_schemas[sfile] = json.load(f)
            try:
                jsonschema.validate(d, crd_schemas[sfile])
            except jsonschema.ValidationError as e:
                where = "/".join(str(p) for p in e.absolute_path)
                problems.append(f"{path}: {rid(d)}: {where}: {e.message} (schema {sfile})")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                problems.append(f"{path}: {rid(d)}: Kubernetes {v}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{path}: {rid(d)}: Kubernetes {v}: no schema ({e}); is the kind or apiVersion right?")


def whole_cpus(q):
    try:
        return float(str(q)).is_integer() and float(str(q)) >= 1
    except ValueError:
        return False


CLUSTER_SCOPED = {"Namespace", "PriorityClass", "StorageClass"}


def check_policy(path, items, problems):
    for d in items:
        ns = d.get("metadata", {}).get("namespace")
        if d.get("kind") in CLUSTER_SCOPED:
            if ns is not None:
                problems.append(f"{path}: {rid(d)} is cluster-scoped but has namespace {ns!r}")
        elif ns != NAMESPACE:
            problems.append(f"{path}: {rid(d)} is in namespace {ns!r}, not {NAMESPACE}; set namespace: {NAMESPACE} in the kustomization")
        if d.get("kind") == "Secret":
            problems.append(f"{path}: {rid(d)}: Secret objects must not be in the repository; reference them by name")
        spec = d.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            res = c.get("resources", {})
            req, lim = res.get("requests", {}), res.get("limits", {})
            name = f"{rid(d)} container {c.get('name')}"
            for r in ("cpu", "memory"):
                if r not in lim or str(req.get(r)) != str(lim.get(r)):
                    problems.append(f"{path}: {name}: {r} request and limit must be set and equal (Guaranteed QoS)")
            if not whole_cpus(lim.get("cpu", "")):
                problems.append(f"{path}: {name}: cpu {lim.get('cpu')!r} must be a whole number of CPUs for pinning")


def check_node_config(path, items, out_dir, problems):
    cms = [d for d in items if d.get("kind") == "ConfigMap" and d["metadata"]["name"].startswith("tickmesh-node-config")]
    if len(cms) != 1:
        problems.append(f"{path}: expected one ConfigMap tickmesh-node-config, found {len(cms)}")
        return
    text = cms[0].get("data", {}).get("node.toml")
    if text is None:
        problems.append(f"{path}: {rid(cms[0])} has no node.toml key")
        return
    base = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(out_dir, f"{base}.node.toml")
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(out)
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{path}: node.toml is not TOML: {e}")
        return
    region = cfg.get("region")
    labels = {d.get("metadata", {}).get("labels", {}).get("tickmesh.io/region") for d in items}
    if labels != {region}:
        problems.append(f"{path}: node.toml region {region!r} but resources are labelled {sorted(map(str, labels))}")
    peers = sorted(p["region"] for p in cfg.get("mesh", {}).get("peers", []))
    pols = [d for d in items if d.get("kind") == "NetworkPolicy" and d["metadata"]["name"] == "tickmesh-mesh-from-peers"]
    if len(pols) != 1:
        problems.append(f"{path}: expected the NetworkPolicy tickmesh-mesh-from-peers")
        return
    ann = pols[0]["metadata"].get("annotations", {}).get("tickmesh.io/peers", "")
    listed = sorted(x for x in ann.split(",") if x)
    if listed != peers:
        problems.append(
            f"{path}: mesh-peers.yaml admits {listed} but node.toml's mesh.peers are {peers}; keep them the same"
        )
    froms = pols[0]["spec"].get("ingress", [{}])[0].get("from", [])
    if len(froms) < len(peers) or any("ipBlock" not in f for f in froms):
        problems.append(f"{path}: tickmesh-mesh-from-peers needs at least one ipBlock per peer, and only ipBlocks")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--configs-out", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    problems = []
    for path in a.files:
        items = docs(path)
        if not items:
            problems.append(f"{path}: renders nothing")
            continue
        check_schemas(path, items, a.k8s_version, a.schemas, problems)
        check_policy(path, items, problems)
        check_node_config(path, items, a.configs_out, problems)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
