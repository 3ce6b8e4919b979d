"""An informer as client libraries build them (list, then watch from the list's
resourceVersion, relist on 410 Gone), written with the official Python client (Debian's
python3-kubernetes). Prints one JSON line per event and exits once POD is deleted.

Usage: informer.py KUBECONFIG NAMESPACE POD
"""
import json
import sys
import time

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
namespace, pod = sys.argv[2], sys.argv[3]


def emit(**kw):
    print(json.dumps(kw), flush=True)


def relist():
    pods = v1.list_namespaced_pod(namespace)
    emit(type="LIST", rv=pods.metadata.resource_version,
         names=[p.metadata.name for p in pods.items])
    return pods.metadata.resource_version


rv = relist()
deadline = time.time() + 120
while time.time() < deadline:
    w = watch.Watch()
    try:
        for ev in w.stream(v1.list_namespaced_pod, namespace, resource_version=rv,
                           timeout_seconds=20, allow_watch_bookmarks=True):
            obj = ev["object"]
            rv = obj.metadata.resource_version
            if ev["type"] == "BOOKMARK":
                continue
            phase = obj.status.phase if obj.status else None
            emit(type=ev["type"], name=obj.metadata.name, phase=phase, rv=rv)
            if ev["type"] == "DELETED" and obj.metadata.name == pod:
                sys.exit(0)
    except client.exceptions.ApiException as e:
        if e.status != 410:
            raise
        emit(type="GONE")
        rv = relist()
sys.exit("no DELETED event for the pod within 120 s")
