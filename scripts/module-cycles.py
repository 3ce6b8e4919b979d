#!/usr/bin/env python3
"""List import cycles among the top-level modules of a crate's src/ (from `use crate::` and `crate::` paths)."""
import os, re, sys, itertools

root = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = set()
for e in os.listdir(root):
    if e.endswith(".rs") and e not in ("lib.rs", "main.rs"):
        mods.add(e[:-3])
    elif os.path.isdir(os.path.join(root, e)) and e != "bin":
        mods.add(e)
edges = {m: set() for m in mods}
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(dp, f)
        rel = os.path.relpath(p, root).split(os.sep)
        src = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
        if src not in mods:
            continue
        text = open(p).read()
        for m in re.finditer(r"crate::(\w+)", text):
            dst = m.group(1)
            if dst in mods and dst != src:
                edges[src].add(dst)
        for m in re.finditer(r"use crate::\{([^}]*)\}", text, re.S):
            for part in re.findall(r"(?:^|,)\s*(\w+)", m.group(1)):
                if part in mods and part != src:
                    edges[src].add(part)
# strongly connected components (Tarjan)
idx, low, stack, on, sccs, c = {}, {}, [], set(), [], [0]
def strong(v):
    idx[v] = low[v] = c[0]; c[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        s = []
        while True:
            w = stack.pop(); on.discard(w); s.append(w)
            if w == v: break
        sccs.append(sorted(s))
sys.setrecursionlimit(10000)
for v in sorted(mods):
    if v not in idx:
        strong(v)
cyc = [s for s in sccs if len(s) > 1]
pairs = sorted((a, b) for a in mods for b in edges[a] if a < b and a in edges[b])
print("two-module cycles:")
for a, b in pairs:
    print(f"  {a} <-> {b}")
print("strongly connected groups (modules on a common cycle):")
for s in cyc:
    print("  " + " ".join(s))
    for a in s:
        print(f"    {a} -> {', '.join(sorted(x for x in edges[a] if x in s))}")
if not cyc:
    print("  none")
