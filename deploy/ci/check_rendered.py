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
* workloads: exactly one StatefulSet tickmesh-ingest and one Deployment tickmesh-gateway;
  every container has startup and liveness probes on /healthz and a readiness probe on
  /readyz; the gateway has a PodDisruptionBudget and an HPA; the client Service and the
  client NetworkPolicy select the gateway pods and not the ingest pod; the mesh Service
  and the peers' mesh NetworkPolicy select the ingest pod and not the gateways; the
  gateways may reach the ingest pod's mesh port (ingress and egress policies).
* node configs: the ConfigMaps tickmesh-node-config* (ingest) and
  tickmesh-gateway-config* (gateways) hold node.toml and are the ones the workloads
  mount; each is written to --configs-out/NAME.{ingest,gateway}.node.toml for
  `tickmesh node --check-config`. The ingest config has role "ingest", its region and
  mesh peers match the region label and the mesh NetworkPolicy's tickmesh.io/peers; the
  gateway config has role "gateway", mesh.upstream = the ingest pod's name in the
  headless Service at its mesh port, and the same region, auth, regions and residency;
  both mount the same mesh certificate Secret.

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


def selects(selector, labels):
    """Whether a label selector (matchLabels only, as ours are) selects pods with `labels`."""
    ml = (selector or {}).get("matchLabels", {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def pod_labels(w):
    return w["spec"]["template"]["metadata"].get("labels", {})


def volume_source(w, kind, mount_path):
    """The name of the `kind` (configMap/secret) volume mounted at mount_path in any container."""
    spec = w["spec"]["template"]["spec"]
    names = {m["name"] for c in spec.get("containers", []) for m in c.get("volumeMounts", []) if m["mountPath"] == mount_path}
    for v in spec.get("volumes", []):
        if v["name"] in names and kind in v:
            return v[kind].get("name") or v[kind].get("secretName")
    return None


def check_probes(path, w, problems):
    for c in w["spec"]["template"]["spec"].get("containers", []):
        want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        for probe, route in want.items():
            got = c.get(probe, {}).get("httpGet", {}).get("path")
            if got != route:
                problems.append(f"{path}: {rid(w)} container {c.get('name')}: {probe} must GET {route} (has {got!r})")


def load_config(path, items, prefix, role, out_dir, problems):
    cms = [d for d in items if d.get("kind") == "ConfigMap" and d["metadata"]["name"].startswith(prefix)]
    if len(cms) != 1:
        problems.append(f"{path}: expected one ConfigMap {prefix}, found {len(cms)}")
        return None, None
    text = cms[0].get("data", {}).get("node.toml")
    if text is None:
        problems.append(f"{path}: {rid(cms[0])} has no node.toml key")
        return None, None
    base = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(out_dir, f"{base}.{role}.node.toml")
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(out)
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{path}: {rid(cms[0])} node.toml is not TOML: {e}")
        return None, None
    if cfg.get("role", "all") != role:
        problems.append(f"{path}: {rid(cms[0])} has role {cfg.get('role', 'all')!r}; it must be {role!r}")
    return cfg, cms[0]["metadata"]["name"]


def check_node_config(path, items, out_dir, problems):
    sts = [d for d in items if d.get("kind") == "StatefulSet"]
    deps = [d for d in items if d.get("kind") == "Deployment"]
    if [rid(d) for d in sts] != ["StatefulSet/tickmesh-ingest"] or [rid(d) for d in deps] != ["Deployment/tickmesh-gateway"]:
        problems.append(
            f"{path}: expected exactly one StatefulSet tickmesh-ingest and one Deployment tickmesh-gateway, "
            f"found {[rid(d) for d in sts + deps]}"
        )
        return
    ingest, gw = sts[0], deps[0]
    for w in (ingest, gw):
        check_probes(path, w, problems)
    icfg, icm = load_config(path, items, "tickmesh-node-config", "ingest", out_dir, problems)
    gcfg, gcm = load_config(path, items, "tickmesh-gateway-config", "gateway", out_dir, problems)
    for w, cm in ((ingest, icm), (gw, gcm)):
        if cm and volume_source(w, "configMap", "/etc/tickmesh/config") != cm:
            problems.append(f"{path}: {rid(w)} must mount ConfigMap {cm} at /etc/tickmesh/config")
    if volume_source(ingest, "secret", "/etc/tickmesh/mesh") != volume_source(gw, "secret", "/etc/tickmesh/mesh"):
        problems.append(f"{path}: the gateways must present the region's certificate: mount the ingest pod's mesh Secret")

    ilabels, glabels = pod_labels(ingest), pod_labels(gw)

    def by_name(kind, name):
        found = [d for d in items if d.get("kind") == kind and d["metadata"]["name"] == name]
        if len(found) != 1:
            problems.append(f"{path}: expected {kind}/{name}")
            return None
        return found[0]

    def must_select(obj, selector, want, not_want, what):
        if obj is None:
            return
        if not selects(selector, want) or selects(selector, not_want):
            problems.append(f"{path}: {rid(obj)} must select {what}")

    client = by_name("Service", "tickmesh-client")
    if client:
        must_select(client, {"matchLabels": client["spec"].get("selector")}, glabels, ilabels, "the gateway pods only")
    mesh = by_name("Service", "tickmesh-mesh")
    if mesh:
        must_select(mesh, {"matchLabels": mesh["spec"].get("selector")}, ilabels, glabels, "the ingest pod only")
    pol = by_name("NetworkPolicy", "tickmesh-client-port")
    if pol:
        must_select(pol, pol["spec"]["podSelector"], glabels, ilabels, "the gateway pods only")
    hpa = by_name("HorizontalPodAutoscaler", "tickmesh-gateway")
    if hpa and hpa["spec"]["scaleTargetRef"].get("name") != "tickmesh-gateway":
        problems.append(f"{path}: {rid(hpa)} must scale Deployment/tickmesh-gateway")
    for name, labels in (("tickmesh-ingest", ilabels), ("tickmesh-gateway", glabels)):
        pdb = by_name("PodDisruptionBudget", name)
        if pdb and not selects(pdb["spec"].get("selector"), labels):
            problems.append(f"{path}: {rid(pdb)} must select the {name} pods")

    # The gateways dial the ingest pod's mesh port by its name in the headless Service.
    headless = by_name("Service", ingest["spec"].get("serviceName", ""))
    mesh_port = next(
        (p["containerPort"] for c in ingest["spec"]["template"]["spec"]["containers"] for p in c.get("ports", []) if p.get("name") == "mesh"),
        None,
    )
    if headless and not any(p.get("port") == mesh_port and p.get("protocol") == "UDP" for p in headless["spec"].get("ports", [])):
        problems.append(f"{path}: {rid(headless)} must publish the ingest pod's mesh port {mesh_port}/UDP for the gateways")
    if headless and not headless["spec"].get("publishNotReadyAddresses"):
        problems.append(f"{path}: {rid(headless)} must publish not-ready addresses, or gateways lose their upstream while the ingest pod is not ready")
    want_upstream = f"{ingest['metadata']['name']}-0.{ingest['spec'].get('serviceName')}.{NAMESPACE}.svc.cluster.local:{mesh_port}"
    if gcfg is not None:
        up = gcfg.get("mesh", {}).get("upstream")
        if up != want_upstream:
            problems.append(f"{path}: gateway mesh.upstream is {up!r}; it must be the ingest pod's mesh address {want_upstream!r}")
    ingress_from_gw = [
        d for d in items
        if d.get("kind") == "NetworkPolicy" and selects(d["spec"]["podSelector"], ilabels)
        and any(
            any(selects(f.get("podSelector"), glabels) and "namespaceSelector" not in f for f in r.get("from", []))
            and any(p.get("protocol") == "UDP" and p.get("port") == mesh_port for p in r.get("ports", []))
            for r in d["spec"].get("ingress", [])
        )
    ]
    egress_to_ingest = [
        d for d in items
        if d.get("kind") == "NetworkPolicy" and selects(d["spec"]["podSelector"], glabels)
        and any(
            any(selects(t.get("podSelector"), ilabels) for t in r.get("to", []))
            and any(p.get("protocol") == "UDP" and p.get("port") == mesh_port for p in r.get("ports", []))
            for r in d["spec"].get("egress", [])
        )
    ]
    if not ingress_from_gw or not egress_to_ingest:
        problems.append(f"{path}: NetworkPolicies must let the gateway pods reach the ingest pod's mesh port {mesh_port}/UDP (ingress and egress)")
    for d in items:
        if d.get("kind") != "NetworkPolicy" or not selects(d["spec"]["podSelector"], glabels):
            continue
        for r in d["spec"].get("ingress", []):
            if any(p.get("port") == mesh_port for p in r.get("ports", [])):
                problems.append(f"{path}: {rid(d)} opens the mesh port on the gateway pods; only the ingest pod takes mesh connections")

    if icfg is None:
        return
    region = icfg.get("region")
    labels = {d.get("metadata", {}).get("labels", {}).get("tickmesh.io/region") for d in items}
    if labels != {region}:
        problems.append(f"{path}: node.toml region {region!r} but resources are labelled {sorted(map(str, labels))}")
    if gcfg is not None:
        for key in ("region", "auth", "regions", "residency"):
            if gcfg.get(key) != icfg.get(key):
                problems.append(f"{path}: gateway.toml {key} differs from node.toml; keep them the same")
    peers = sorted(p["region"] for p in icfg.get("mesh", {}).get("peers", []))
    pols = [d for d in items if d.get("kind") == "NetworkPolicy" and d["metadata"]["name"] == "tickmesh-mesh-from-peers"]
    if len(pols) != 1:
        problems.append(f"{path}: expected the NetworkPolicy tickmesh-mesh-from-peers")
        return
    must_select(pols[0], pols[0]["spec"]["podSelector"], ilabels, glabels, "the ingest pod only")
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
