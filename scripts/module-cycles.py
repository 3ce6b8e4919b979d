#!/usr/bin/env python3
"""List import cycles among the top-level modules of a crate's src/ (from `use crate::` and
`crate::` paths).

Comments (doc links included) and `#[cfg(test)]` items (test modules, test-only module files)
do not count: a test may build its fixtures with a higher layer, as Go's external test packages
do, without the code it tests depending on it.

Usage: module-cycles.py [SRC_DIR] [--check]
With --check, exits 1 when any cycle remains (scripts/test.sh runs it so).
"""
import os, re, sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
check = "--check" in sys.argv[1:]
root = args[0] if args else "src"


def strip_tests(text, path, skip_files):
    """Returns TEXT without its `#[cfg(test)]` items; records test-only module files."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j = m.end()
        decl = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text[j:])
        if decl:
            base = os.path.dirname(path)
            if os.path.basename(path) not in ("mod.rs", "lib.rs", "main.rs"):
                base = os.path.join(base, os.path.basename(path)[:-3])
            skip_files.add(os.path.join(base, decl.group(1) + ".rs"))
            skip_files.add(os.path.join(base, decl.group(1), "mod.rs"))
            i = j + decl.end()
            continue
        semi, brace = text.find(";", j), text.find("{", j)
        if brace < 0 or (0 <= semi < brace):
            i = semi + 1 if semi >= 0 else len(text)
            continue
        depth, k = 0, brace
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    out.append(text[i:])
    return "".join(out)


def code(text):
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


mods = set()
for e in os.listdir(root):
    if e.endswith(".rs") and e not in ("lib.rs", "main.rs"):
        mods.add(e[:-3])
    elif os.path.isdir(os.path.join(root, e)) and e != "bin":
        mods.add(e)
edges = {m: set() for m in mods}
texts, skip = {}, set()
for dp, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(dp, f)
            texts[p] = strip_tests(code(open(p).read()), p, skip)
for p, text in texts.items():
    if p in skip:
        continue
    rel = os.path.relpath(p, root).split(os.sep)
    src = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    if src not in mods:
        continue
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
sys.exit(1 if check and cyc else 0)
