#!/usr/bin/env python3
"""check-layers.py SRC_DIR [--why]: the import graph between a Rust crate's
top-level modules, and its cycles.

A top-level module is one that the crate root (SRC_DIR/lib.rs, else main.rs)
declares with `mod NAME;`. Its file (SRC_DIR/NAME.rs or SRC_DIR/NAME/mod.rs)
and every file of its own `mod child;` declarations, recursively, count as
that module. An edge A -> B is a path in A's files that names B from the
crate root:
  - `crate::B...` and `crate::{B..., ...}`, in `use` items and in code;
  - `super::B` from A's top-level scope (and `super::super::B` from one
    folder down, and so on), where `super` is the crate root;
  - `crate::NAME` where the root re-exports NAME from B (`pub use B::NAME`).
Comments, string literals and items under `#[cfg(test)]` (test modules, test
helpers) are left out: tests may reach across layers. The crate root itself
is not a module here (it declares all of them).

Prints every module's edges, then the strongly connected components with more
than one module (the cycles) with the edges inside them, or, when there is no
cycle, the modules by layer (layer 0 imports no other module; layer n imports
only layers below n). --why lists the file and line of every edge.
When the crate root's docs have a `## Layers` section, the first ```text
block after it declares the layers, one per line, top first:
    NUMBER  MODULE [MODULE...]  what they hold
(two or more spaces between the three fields). Then every module must be in
exactly one declared layer, and every edge must go to the same layer or a
lower one: an import that goes up fails even when it makes no cycle.

Exits 1 when there is a cycle or the declared layers do not hold, 2 on a
usage error.
"""
import re
import os
import sys

# --- tokens -----------------------------------------------------------------

IDENT_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
IDENT = IDENT_START | set("0123456789")


def tokens(text):
    """Yields (kind, value, line): kind is 'id', 'str' or 'p' (punctuation;
    '::' is one token). Comments are dropped; string and char literals become
    one 'str' token (value: the raw text between the quotes)."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            line += text.count("\n", i, j)
            i = j
        elif c in IDENT_START or (c == "$" and i + 1 < n and text[i + 1] in IDENT_START):
            j = i + 1
            while j < n and text[j] in IDENT:
                j += 1
            word = text[i:j]
            # raw and byte strings: r"..", r#".."#, b"..", br#".."#, b'x'
            if word in ("r", "br", "rb", "b", "c", "cr") and j < n and text[j] in "\"#'":
                k, hashes = j, 0
                while k < n and text[k] == "#":
                    hashes, k = hashes + 1, k + 1
                if k < n and text[k] == '"' and (hashes or "r" in word):
                    end = text.find('"' + "#" * hashes, k + 1)
                    end = n if end < 0 else end
                    line0 = line
                    line += text.count("\n", i, end)
                    yield ("str", text[k + 1:end], line0)
                    i = end + 1 + hashes
                    continue
                if hashes == 0 and text[j] in "\"'":
                    i = j  # b"..", b'x': the quote is lexed next as a literal
                    continue
            if word == "r" and j < n and text[j] == "#":
                # raw identifier r#name
                k = j + 1
                while k < n and text[k] in IDENT:
                    k += 1
                yield ("id", text[j + 1:k], line)
                i = k
                continue
            yield ("id", word, line)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            line0 = line
            line += text.count("\n", i, j)
            yield ("str", text[i + 1:j], line0)
            i = j + 1
        elif c == "'":
            # char literal ('x', '\n', '\u{..}') or lifetime ('a)
            if i + 1 < n and text[i + 1] == "\\":
                j = text.find("'", i + 3)
                j = n if j < 0 else j
                yield ("str", text[i + 1:j], line)
                i = j + 1
            elif i + 2 < n and text[i + 2] == "'":
                yield ("str", text[i + 1], line)
                i += 3
            else:
                j = i + 1
                while j < n and text[j] in IDENT:
                    j += 1
                yield ("p", "'", line)  # a lifetime: its name is not a path
                i = j
        elif c.isdigit():
            j = i + 1
            while j < n and (text[j] in IDENT or text[j] == "."):
                if text[j] == "." and j + 1 < n and not text[j + 1].isdigit():
                    break
                j += 1
            yield ("num", text[i:j], line)
            i = j
        elif text.startswith("::", i):
            yield ("p", "::", line)
            i += 2
        else:
            yield ("p", c, line)
            i += 1


# --- attributes and test items ------------------------------------------------

def cfg_needs_test(toks, i, end):
    """True when the cfg predicate toks[i:end] holds only under `test`."""
    def pred(i):
        # returns (needs_test, next index)
        if i >= end:
            return False, i
        v = toks[i][1]
        if toks[i][0] == "id" and i + 1 < end and toks[i + 1][1] == "(":
            args, j = [], i + 2
            while j < end and toks[j][1] != ")":
                a, j = pred(j)
                args.append(a)
                if j < end and toks[j][1] == ",":
                    j += 1
            j += 1
            if v == "all":
                return any(args), j
            if v == "any":
                return bool(args) and all(args), j
            return False, j  # not(..) and unknown predicates
        j = i + 1
        if j < end and toks[j][1] == "=":
            j += 2
        return (v == "test" and j == i + 1), j
    return pred(i)[0]


def read_attr(toks, i):
    """toks[i] is '#'. Returns (end index, inner, is_test, path) of the
    attribute `#[..]` or `#![..]`, or None when this '#' starts none."""
    j = i + 1
    inner = j < len(toks) and toks[j][1] == "!"
    if inner:
        j += 1
    if j >= len(toks) or toks[j][1] != "[":
        return None
    depth, k = 1, j + 1
    while k < len(toks) and depth:
        depth += {"[": 1, "]": -1}.get(toks[k][1], 0) if toks[k][0] == "p" else 0
        k += 1
    body = (j + 1, k - 1)
    is_test, path = False, None
    a = body[0]
    if a < body[1] and toks[a][1] == "cfg" and a + 1 < body[1] and toks[a + 1][1] == "(":
        is_test = cfg_needs_test(toks, a + 2, body[1] - 1)
    if (a + 2 < body[1] and toks[a][1] == "path" and toks[a + 1][1] == "="
            and toks[a + 2][0] == "str"):
        path = toks[a + 2][1]
    return k, inner, is_test, path


BLOCK_ITEMS = {"fn", "mod", "impl", "trait", "struct", "enum", "union", "macro_rules"}
SEMI_ITEMS = {"use", "static", "const", "type", "let", "extern"}


def item_end(toks, i):
    """The index just past the item, statement, field or arm that starts at
    toks[i] (after its attributes)."""
    kind, k = None, i
    while k < len(toks) and kind is None and toks[k][0] == "id":
        v = toks[k][1]
        if v == "pub" and k + 1 < len(toks) and toks[k + 1][1] == "(":
            while k < len(toks) and toks[k][1] != ")":
                k += 1
            k += 1
            continue
        if v in BLOCK_ITEMS:
            kind = "block"
        elif v in SEMI_ITEMS:
            nxt = toks[k + 1][1] if k + 1 < len(toks) else ""
            if v == "const" and nxt in ("fn", "unsafe", "async", "extern"):
                pass
            elif v == "extern" and nxt != "crate":
                pass  # extern "C" fn / extern "C" { .. }
            else:
                kind = "semi"
        k += 1
    depth, j = 0, i
    while j < len(toks):
        kind_j, v, _ = toks[j]
        if kind_j == "p":
            if v in "([{":
                depth += 1
            elif v in ")]}":
                if depth == 0:
                    return j  # the closer of the enclosing block
                depth -= 1
                if depth == 0 and v == "}" and kind != "semi":
                    return j + 1
            elif depth == 0 and v == ";":
                return j + 1
            elif depth == 0 and v == "," and kind is None:
                return j
        j += 1
    return j


# --- one crate ----------------------------------------------------------------

def lex_file(path):
    with open(path, encoding="utf-8") as f:
        return list(tokens(f.read()))


def child_files(path, toks, is_mod_rs):
    """The files of the `mod name;` declarations at the top level of a file
    (name, path, under_cfg_test)."""
    base = os.path.dirname(path) if is_mod_rs else os.path.splitext(path)[0]
    # attrs: the outer attributes since the last `;`, `{` or `}` (only a
    # visibility can stand between an item's attributes and its `mod`)
    out, depth, i, attrs = [], 0, 0, []
    while i < len(toks):
        kind, v, _ = toks[i]
        if kind == "p" and v == "#":
            a = read_attr(toks, i)
            if a:
                if not a[1]:
                    attrs.append(a)
                i = a[0]
                continue
        if kind == "p" and v in ";{}":
            attrs = []
        if kind == "p" and v in "([{":
            depth += 1
        elif kind == "p" and v in ")]}":
            depth -= 1
        elif (depth == 0 and kind == "id" and v == "mod" and i + 2 < len(toks)
              and toks[i + 1][0] == "id" and toks[i + 2][1] == ";"):
            name = toks[i + 1][1]
            custom = next((a[3] for a in attrs if a[3]), None)
            if custom:  # #[path] is relative to the declaring file's folder
                cand = [os.path.join(os.path.dirname(path), custom)]
            else:
                cand = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            found = next((c for c in cand if os.path.isfile(c)), None)
            out.append((name, found, any(a[2] for a in attrs)))
        i += 1
    return out


def root_reexports(toks, mods):
    """NAME -> module for `use m::{NAME, ..};` items at the root's top level."""
    out, depth, i = {}, 0, 0
    while i < len(toks):
        kind, v, _ = toks[i]
        if kind == "p" and v in "([{":
            depth += 1
        elif kind == "p" and v in ")]}":
            depth -= 1
        elif depth == 0 and kind == "id" and v == "use":
            j = i + 1
            while j < len(toks) and toks[j][1] in ("crate", "self", "::"):
                j += 1
            if j < len(toks) and toks[j][1] in mods:
                m, end = toks[j][1], j
                while end < len(toks) and toks[end][1] != ";":
                    end += 1
                for name in use_leaves(toks, j + 1, end):
                    out.setdefault(name, m)
                i = end
        i += 1
    return out


def use_leaves(toks, i, end):
    """The names a use tree toks[i:end] brings in (last segments, or `as`)."""
    names, last = [], None
    for k in range(i, end):
        kind, v, _ = toks[k]
        if kind == "id" and v not in ("self", "as"):
            last = v
        if kind == "p" and v in ",}":
            if last:
                names.append(last)
            last = None
    if last:
        names.append(last)
    return names


def group_heads(toks, i):
    """toks[i] is '{' of `crate::{..}`: the first segment of each path in it."""
    heads, depth, want = [], 0, True
    k = i
    while k < len(toks):
        kind, v, line = toks[k]
        if kind == "p" and v == "{":
            depth += 1
            want = depth == 1
        elif kind == "p" and v == "}":
            depth -= 1
            if depth == 0:
                break
        elif kind == "p" and v == "," and depth == 1:
            want = True
        elif want and kind == "id":
            heads.append((v, line))
            want = False
        k += 1
    return heads


def file_edges(toks, fdepth, reexp, mods, keep_tests):
    """(target name, line) for every path in a file that names a crate-root
    item. fdepth: 0 for a top-level module's own file, 1 for its children."""
    found = []
    frames = []  # per open brace: True when it opens an inline `mod x {`
    i, n = 0, len(toks)
    while i < n:
        kind, v, line = toks[i]
        if kind == "p" and v == "#":
            a = read_attr(toks, i)
            if a:
                end, inner, is_test, _ = a
                if is_test and not keep_tests:
                    if inner and not frames:
                        return found  # #![cfg(test)]: the whole file is test code
                    j = end
                    while j < n and toks[j][1] == "#" and read_attr(toks, j):
                        j = read_attr(toks, j)[0]
                    i = item_end(toks, j) if not inner else item_end(toks, end)
                    continue
                i = end
                continue
        if kind == "p" and v == "{":
            frames.append(i >= 2 and toks[i - 2][1] == "mod" and toks[i - 1][0] == "id")
        elif kind == "p" and v == "}":
            if frames:
                frames.pop()
        elif kind == "id" and v == "crate" and i + 1 < n and toks[i + 1][1] == "::":
            prev = toks[i - 1][1] if i else ""
            in_vis = prev == "in" and i >= 3 and toks[i - 2][1] == "(" and toks[i - 3][1] == "pub"
            if not in_vis and prev != "::":
                found += heads_after(toks, i + 2)
        elif kind == "id" and v == "super" and (i == 0 or toks[i - 1][1] != "::"):
            s, j = 0, i
            while j + 1 < n and toks[j][1] == "super" and toks[j + 1][1] == "::":
                s, j = s + 1, j + 2
            depth = fdepth + sum(frames)
            if s and s == depth + 1:
                found += heads_after(toks, j)
            i = max(j, i + 1)
            continue
        i += 1
    out = []
    for name, line in found:
        if name in mods:
            out.append((name, line, None))
        elif name in reexp:
            out.append((reexp[name], line, name))
    return out


def heads_after(toks, k):
    if k >= len(toks):
        return []
    if toks[k][1] == "{":
        return group_heads(toks, k)
    if toks[k][0] == "id":
        return [(toks[k][1], toks[k][2])]
    return []


def crate_modules(src):
    """{module: [(file, depth)]} from the root's `mod` declarations, and the
    root's tokens. Falls back to the entries of SRC_DIR without a root."""
    root = next((os.path.join(src, r) for r in ("lib.rs", "main.rs")
                 if os.path.isfile(os.path.join(src, r))), None)
    mods = {}
    if root is None:
        for e in sorted(os.listdir(src)):
            p = os.path.join(src, e)
            if e.endswith(".rs"):
                mods[e[:-3]] = [(p, 0, False)]
            elif os.path.isfile(os.path.join(p, "mod.rs")):
                mods[e] = [(os.path.join(p, "mod.rs"), 0, False)]
        root_toks = []
    else:
        root_toks = lex_file(root)
        for name, path, test in child_files(root, root_toks, True):
            if path:
                mods[name] = [(path, 0, test)]
    for name, files in mods.items():
        k = 0
        while k < len(files):
            path, depth, test = files[k]
            is_mod_rs = os.path.basename(path) == "mod.rs"
            for _, child, ctest in child_files(path, lex_file(path), is_mod_rs):
                if child and all(child != f[0] for f in files):
                    files.append((child, depth + 1, test or ctest))
            k += 1
    return mods, root_toks


def graph(src, keep_tests=False):
    mods, root_toks = crate_modules(src)
    if not keep_tests:  # modules the root declares under #[cfg(test)]
        mods = {m: f for m, f in mods.items() if not f[0][2]}
    reexp = root_reexports(root_toks, mods)
    edges = {m: {} for m in mods}  # m -> {target: [(file, line, via)]}
    for m, files in mods.items():
        for path, depth, test in files:
            if test and not keep_tests:
                continue
            for target, line, via in file_edges(lex_file(path), depth, reexp, mods, keep_tests):
                if target != m:
                    edges[m].setdefault(target, []).append((path, line, via))
    return mods, edges


def sccs(edges):
    """Tarjan's strongly connected components, iteratively."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def layers(edges):
    level = {}

    def lv(m):
        if m not in level:
            level[m] = 1 + max((lv(t) for t in edges[m]), default=-1)
        return level[m]
    for m in edges:
        lv(m)
    return level


LAYER_LINE = re.compile(r"^\s*(\d+)\s{2,}([a-z_][a-z0-9_]*(?: [a-z_][a-z0-9_]*)*)(?:\s{2,}\S.*)?$")


def declared_layers(src):
    """{module: layer} from the crate root's `## Layers` diagram, or None."""
    root = next((os.path.join(src, f) for f in ("lib.rs", "main.rs")
                 if os.path.isfile(os.path.join(src, f))), None)
    if root is None:
        return None
    docs = [l[3:].rstrip("\n") for l in open(root, encoding="utf-8")
            if l.startswith("//!")]
    try:
        start = next(i for i, l in enumerate(docs) if l.strip() == "## Layers")
        open_ = next(i for i in range(start, len(docs)) if docs[i].strip() == "```text")
    except StopIteration:
        return None
    level = {}
    for l in docs[open_ + 1:]:
        if l.strip() == "```":
            break
        m = LAYER_LINE.match(l)
        if m:
            for mod in m.group(2).split():
                level.setdefault(mod, []).append(int(m.group(1)))
    return level


def check_declared(src, mods, edges, declared):
    """The problems with the declared layers, as lines to print."""
    bad = []
    for m in sorted(set(declared) - set(mods)):
        bad.append(f"the diagram names {m}, which is not a module")
    for m in sorted(mods):
        if len(declared.get(m, [])) != 1:
            where = "no layer" if m not in declared else "several layers"
            bad.append(f"{m} is in {where} of the diagram")
    for a in sorted(edges):
        for b in sorted(edges[a]):
            la, lb = declared.get(a, [None])[0], declared.get(b, [None])[0]
            if la is not None and lb is not None and lb > la:
                path, line, _ = edges[a][b][0]
                bad.append(f"{a} (layer {la}) imports {b} (layer {lb}), above it: "
                           f"{os.path.relpath(path)}:{line}")
    return bad


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = {a for a in argv if a.startswith("--")}
    if len(args) != 1 or not os.path.isdir(args[0]) or flags - {"--why", "--with-tests"}:
        sys.stderr.write(__doc__)
        return 2
    src = args[0]
    mods, edges = graph(src, "--with-tests" in flags)
    for m in sorted(edges):
        print(f"{m} -> {', '.join(sorted(edges[m])) or '-'}")
        if "--why" in flags:
            for t in sorted(edges[m]):
                for path, line, via in edges[m][t]:
                    extra = f" (crate::{via}, re-exported from {t})" if via else ""
                    print(f"    {t}: {os.path.relpath(path)}:{line}{extra}")
    n_edges = sum(len(t) for t in edges.values())
    cycles = [c for c in sccs(edges) if len(c) > 1]
    for c in cycles:
        inner = sorted(f"{a}->{b}" for a in c for b in edges[a] if b in c)
        print(f"cycle of {len(c)} modules: {' '.join(c)}")
        print(f"  {len(inner)} edges inside it: {', '.join(inner)}")
    print(f"{src}: {len(mods)} modules, {n_edges} edges, {len(cycles)} cycle(s)"
          + (f", largest {max(len(c) for c in cycles)} modules" if cycles else ""))
    if cycles:
        print(f"{src}: FAIL: the modules must form layers (no import cycle); "
              "--why shows where each edge is")
        return 1
    level = layers(edges)
    for k in range(max(level.values(), default=-1), -1, -1):
        print(f"  layer {k}: {' '.join(sorted(m for m in level if level[m] == k))}")
    declared = declared_layers(src)
    if declared is not None:
        bad = check_declared(src, mods, edges, declared)
        for b in bad:
            print(f"  {b}")
        if bad:
            print(f"{src}: FAIL: the code does not match the crate docs' layer diagram")
            return 1
        print(f"{src}: ok, no cycle, every import goes down the crate docs' layers")
        return 0
    print(f"{src}: ok, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
