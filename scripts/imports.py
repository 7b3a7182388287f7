#!/usr/bin/env python3
"""Module import graph of one Rust crate, and its cycles.

Usage: scripts/imports.py CRATE_DIR [--edges] [--no-tests] [--strict]

Every file under CRATE_DIR/src is a node (its module path: `run::serve`). An edge A -> B means
A names an item of B: `crate::b::…`, `super::…` and `self::…` paths, a child module declared
with `mod b;` and named as `b::…`, and `#[macro_export]` macros (which live at the crate root)
resolved to the file that defines them. Comments and string literals are ignored, so doc links
do not count. `--no-tests` leaves `#[cfg(test)] mod tests { … }` out.

Prints the cycles (strongly connected components of more than one module) and exits 1 if
there is any; `--edges` prints the graph too. A submodule that names its own parent or another
ancestor (`super::Trait` in `vmm/qemu/mod.rs`) is not counted as closing a cycle: a module and
its submodules are one unit to the rest of the crate. Such loops are listed as notes, and
`--strict` counts them as cycles too.
Needs nothing but Python 3.
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(text):
    """Removes comments, string and char literals (keeping line structure irrelevant)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            # a char literal ('a', '\n', '\u{1F600}') or a lifetime ('a)
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                i += len(m.group(0))
                out.append("' '")
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_tests(text):
    """Cuts `#[cfg(test)] mod NAME { … }` blocks out of stripped source."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", text)
        if not m:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[i:]


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (aliases and globs dropped)."""
    tree = re.sub(r"\s+", "", tree)
    depth, parts, cur = 0, [], ""
    for ch in tree:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    paths = []
    for p in filter(None, parts):
        if "{" in p:
            head, rest = p.split("{", 1)
            for sub in expand_use(rest[: rest.rfind("}")]):
                paths.append(head + sub if sub != "self" else head.rstrip(":"))
        else:
            paths.append(p.split("as")[0] if re.search(r"\bas\b", p) else p)
    return [p.rstrip(":*").rstrip(":") for p in paths]


def modules(src):
    """{module path tuple: file} for every .rs file of the crate."""
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts in (["main"], ["lib"]):
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        if parts and parts[0] == "bin":
            continue  # binaries are crates of their own
        mods[tuple(parts)] = f
    return mods


def inline_mods(text):
    """(start, end) of every inline `mod NAME { … }` block of stripped source."""
    spans = []
    for m in re.finditer(r"\bmod\s+" + IDENT + r"\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        spans.append((m.start(), i))
    return spans


def resolve(path, here, mods, macros, inline=0):
    """The module (tuple) an absolute or relative path names, or None if outside the crate.
    `inline`: how many inline `mod … { }` blocks of the file the path sits in (their
    `super` is still the file)."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("self", "super"):
        base = here
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                if inline:
                    inline -= 1
                else:
                    base = base[:-1]
            segs = segs[1:]
    elif here + (segs[0],) in mods:
        base = here  # a child module named directly
    else:
        return None
    if not base and segs and segs[0] in macros and (segs[0],) not in mods:
        return macros[segs[0]]
    best = base
    for s in segs:
        if best + (s,) in mods:
            best = best + (s,)
        else:
            break
    return best


def graph(crate, tests=True):
    src = Path(crate) / "src"
    mods = modules(src)
    texts = {}
    macros = {}
    for m, f in mods.items():
        t = strip(f.read_text())
        texts[m] = t if tests else drop_tests(t)
        for mm in re.finditer(r"#\[macro_export\]\s*macro_rules!\s*(" + IDENT + ")", t):
            macros[mm.group(1)] = m
    edges = {m: set() for m in mods}
    for m, t in texts.items():
        spans = inline_mods(t)
        depth = lambda pos: sum(1 for a, b in spans if a <= pos < b)
        paths = []
        for u in re.finditer(r"\buse\s+([^;]+);", t):
            paths += [(p, depth(u.start())) for p in expand_use(u.group(1))]
        body = re.sub(r"\buse\s+[^;]+;", lambda u: " " * len(u.group(0)), t)
        pat = r"\b(?:crate|super|self)(?:::" + IDENT + ")+"
        paths += [(p.group(0), depth(p.start())) for p in re.finditer(pat, body)]
        children = [c[-1] for c in mods if c[:-1] == m and len(c) == len(m) + 1]
        for c in children:
            pat = r"(?<![:\w])" + c + r"(?:::" + IDENT + ")+"
            paths += [(p.group(0), 0) for p in re.finditer(pat, body)]
        for p, inline in paths:
            targets = [resolve(p, m, mods, macros, inline)]
            segs = p.split("::")
            if len(segs) == 2 and segs[0] == "crate" and segs[1] in macros and (segs[1],) in mods:
                # `use crate::error` names both the module and the macro `error!`
                targets.append(macros[segs[1]])
            for target in targets:
                if target is not None and target != m:
                    edges[m].add(target)
    return mods, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def loop_through(start, comp, edges):
    """A shortest path start -> … -> start inside one component (BFS)."""
    comp = set(comp)
    prev, todo = {start: None}, [start]
    while todo:
        nxt = []
        for v in todo:
            for w in sorted(edges[v] & comp):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if v != start else [start, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        todo = nxt
    return [start]


def name(m):
    return "::".join(m) or "crate"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    mods, edges = graph(args[0], tests="--no-tests" not in sys.argv)
    if "--edges" in sys.argv:
        for m in sorted(edges):
            print(f"{name(m)} -> {', '.join(name(t) for t in sorted(edges[m])) or '-'}")
    strict = "--strict" in sys.argv
    # A submodule naming its parent (`super::Trait`) while the parent names it (`mod x;`
    # plus `x::new()`) is one module's inside, not a circle between modules: unless
    # --strict, edges from a module up to one of its ancestors are left out.
    upward = lambda a, b: len(b) < len(a) and a[: len(b)] == b
    reduced = {m: {t for t in ts if strict or not upward(m, t)} for m, ts in edges.items()}
    found = cycles(reduced)
    for comp in found:
        print("cycle: " + " <-> ".join(name(m) for m in comp))
        print("  e.g. " + " -> ".join(name(m) for m in loop_through(comp[0], comp, reduced)))
    if not strict:
        for comp in cycles(edges):
            if not any(set(comp) & set(c) for c in found):
                print("(within " + name(comp[0]) + ", through submodules naming their parent: "
                      + " <-> ".join(name(m) for m in comp) + ")")
    n = sum(len(e) for e in edges.values())
    print(f"{len(mods)} modules, {n} edges, {len(found)} cycles", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
