"""Attaches to a `tty: true, stdin: true` container running a shell, with the official Python
client's WebSocket stream (Debian's python3-kubernetes, `v4.channel.k8s.io`): resizes the
terminal, runs `tty; stty size` and `exit` in it, and prints everything the terminal showed.

Usage: attach_tty.py KUBECONFIG NAMESPACE POD
"""
import json
import sys
import time

from kubernetes import client, config
from kubernetes.stream import stream

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
namespace, pod = sys.argv[2], sys.argv[3]

ws = stream(v1.connect_get_namespaced_pod_attach, pod, namespace,
            stdin=True, stdout=True, stderr=False, tty=True,
            _preload_content=False)
seen = ""


def read_until(text, secs=30):
    global seen
    deadline = time.time() + secs
    while text not in seen and ws.is_open() and time.time() < deadline:
        ws.update(timeout=1)
        seen += ws.read_stdout()
    if text not in seen:
        sys.exit("no %r on the terminal within %s s: %r" % (text, secs, seen))


ws.write_channel(4, json.dumps({"Width": 123, "Height": 45}))
ws.write_stdin("echo $((40+2))-ready; tty; stty size\n")
read_until("42-ready")
read_until("45 123")
ws.write_channel(4, json.dumps({"Width": 90, "Height": 30}))
ws.write_stdin("stty size\n")
read_until("30 90")
ws.write_stdin("exit\n")
deadline = time.time() + 30
while ws.is_open() and time.time() < deadline:
    ws.update(timeout=1)
    seen += ws.read_stdout()
print(seen)
print("CLOSED" if not ws.is_open() else "STILL OPEN")
