"""A watch of Services or Endpoints with the official Python client (kubernetes.watch.Watch,
Debian's python3-kubernetes). Prints one JSON line per event and exits once NAME is deleted.

Usage: watch_kind.py KUBECONFIG NAMESPACE services|endpoints NAME
"""
import json
import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
namespace, kind, name = sys.argv[2], sys.argv[3], sys.argv[4]
lister = {
    "services": v1.list_namespaced_service,
    "endpoints": v1.list_namespaced_endpoints,
}[kind]

w = watch.Watch()
for ev in w.stream(lister, namespace, timeout_seconds=120):
    obj = ev["object"]
    line = {"type": ev["type"], "name": obj.metadata.name, "rv": obj.metadata.resource_version}
    if kind == "endpoints":
        line["ips"] = sorted(a.ip for s in (obj.subsets or []) for a in (s.addresses or []))
    else:
        line["clusterIP"] = obj.spec.cluster_ip
    print(json.dumps(line), flush=True)
    if ev["type"] == "DELETED" and obj.metadata.name == name:
        sys.exit(0)
sys.exit(f"no DELETED event for {kind} {name} within 120 s")
