#!/usr/bin/env bash
# Checks that docs/API.md documents every public name of confluence_oauth.hpp,
# and that the docs name nothing the header no longer has.
#
# What counts as public: the declarations in `namespace confluence_oauth`
# outside its `namespace detail { ... }` blocks: classes, structs, enums (and
# their enumerators), functions and function templates, type aliases,
# variables, and the CONFLUENCE_OAUTH_* macros; for each public class or
# struct, its public members (member functions, data members, member type
# aliases, nested classes). Constructors, destructors and operators are not
# required (the docs may still list them).
#
# Direction 1 (strict): each public name must appear in docs/API.md in
# backticks: a top-level name as `name` (a span starting with it, e.g.
# `find_site(sites, key)`; a `confluence_oauth::` or `cfo::` prefix is
# allowed), a member either as `class::member` anywhere or as `member` inside
# the class's own section: the part of API.md under a heading whose first
# backticked span is the class (`### `session``, `### `confluence::pager``).
#
# Direction 2 (strict): the first backticked span of each table row's first
# cell in docs/API.md must name something that exists: inside a class section,
# a member of that class (or the class itself, its destructor, an operator);
# elsewhere, a public top-level name. And anywhere in docs/API.md, and in
# README.md outside code blocks, a span `X::y` (also `confluence_oauth::X::y`,
# `cfo::X::y`) where X is a public class or enum must name a member of X, and
# `confluence_oauth::n` / `cfo::n` must name a public top-level name.
#
# Check 2 (strict): each public name has a doc comment in the header itself:
# a `///` line (or block of them) directly above its declaration (template
# headers, requires-clauses, attributes and preprocessor conditionals may sit
# in between), or a `///<` trailing comment on the line that names it (an
# enumerator on its enum's own line needs the latter). Every
# declaration counts (each overload), except that an overload directly below
# another declaration of the same name, with no blank line between, shares
# that one's comment. Constructors, destructors and operators are exempt.
#
# Usage: scripts/check_api_doc.sh [--list]   (--list prints what was extracted,
#        with the header line of each name)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exec python3 - "$@" <<'PY'
import re
import sys

HEADER = "confluence_oauth.hpp"
API_DOC = "docs/API.md"
README = "README.md"
NAMESPACE = "confluence_oauth"

# ---------------------------------------------------------------------------
# Lexing: drop comments, blank out string and character literals, take out
# preprocessor lines (keeping the CONFLUENCE_OAUTH_* macro names).
# ---------------------------------------------------------------------------

def clean(text):
    out = []
    macros = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c in " \t":
            out.append(c)
            i += 1
            continue
        if at_line_start and c == "#":
            j = i
            while True:  # the directive and its continuation lines
                e = text.find("\n", j)
                if e == -1:
                    e = n
                if e > 0 and text[e - 1] == "\\" and e < n:
                    j = e + 1
                    continue
                break
            m = re.match(r"#\s*define\s+(CONFLUENCE_OAUTH_\w+)", text[i:e])
            if m:
                macros.append((m.group(1), text.count("\n", 0, i) + 1))
            out.append("\n" * text.count("\n", i, e))
            i = e
            continue
        at_line_start = False
        if c == "\n":
            at_line_start = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            e = text.find("\n", i)
            i = n if e == -1 else e
        elif text.startswith("/*", i):
            e = text.find("*/", i + 2)
            e = n if e == -1 else e + 2
            out.append("\n" * text.count("\n", i, e))
            i = e
        elif c == 'R' and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end + len(m.group(1)) + 2
        elif c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out), macros


TOKEN_RE = re.compile(r"[A-Za-z_]\w*|\d[\w.']*|::|->|\.\.\.|\S")


class Tok(str):
    """A token that knows its line in the header."""
    line = 0


def tokenize(text):
    toks = []
    line, last = 1, 0
    for m in TOKEN_RE.finditer(text):
        line += text.count("\n", last, m.start())
        last = m.start()
        t = Tok(m.group(0))
        t.line = line
        toks.append(t)
    return toks


def line_of(t):
    return getattr(t, "line", 0)


def is_ident(t):
    return bool(re.match(r"[A-Za-z_]\w*$", t))


KEYWORDS = {
    "alignas", "alignof", "auto", "bool", "char", "class", "const", "constexpr", "consteval", "constinit",
    "decltype", "delete", "default", "double", "enum", "explicit", "extern", "final", "float", "friend",
    "inline", "int", "long", "mutable", "noexcept", "operator", "override", "private", "protected", "public",
    "requires", "short", "signed", "sizeof", "static", "static_assert", "struct", "template", "typename",
    "union", "unsigned", "using", "virtual", "void", "volatile", "return", "co_return", "co_await",
}


def skip_balanced(toks, i, open_, close):
    """toks[i] == open_; returns the index after the matching close."""
    depth = 0
    while i < len(toks):
        if toks[i] == open_:
            depth += 1
        elif toks[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def skip_angles(toks, i):
    """toks[i] == '<'; skips a template argument list (parens inside kept whole)."""
    depth = 0
    while i < len(toks):
        t = toks[i]
        if t == "(":
            i = skip_balanced(toks, i, "(", ")")
            continue
        if t == "<":
            depth += 1
        elif t == ">":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def strip_prefix(decl):
    """Drops template headers, requires-clauses and attributes at the front."""
    i = 0
    while i < len(decl):
        if decl[i] == "template" and i + 1 < len(decl) and decl[i + 1] == "<":
            i = skip_angles(decl, i + 1)
        elif decl[i] == "requires":
            i += 1
            while i < len(decl):
                if decl[i] == "(":
                    i = skip_balanced(decl, i, "(", ")")
                else:  # a concept-id: name(::name)*<args>
                    while i < len(decl) and is_ident(decl[i]):
                        i += 1
                        if i < len(decl) and decl[i] == "::":
                            i += 1
                    if i < len(decl) and decl[i] == "<":
                        i = skip_angles(decl, i)
                if decl[i:i + 2] in (["&", "&"], ["|", "|"]):
                    i += 2
                    continue
                break
        elif decl[i] == "[" and i + 1 < len(decl) and decl[i + 1] == "[":
            i = skip_balanced(decl, i, "[", "]")
        else:
            break
    return decl[i:]


def classify(decl, class_name=None):
    """What a declaration (tokens, template header included) declares:
    (kind, name) with kind in function/ctor/dtor/operator/variable/alias/
    out_of_line/skip."""
    d = strip_prefix(decl)
    if not d:
        return ("skip", None)
    if d[0] in ("friend", "static_assert", "namespace") or (d[0] == "using" and "=" not in d):
        return ("skip", None)
    if d[0] == "using":
        return ("alias", d[1])
    if d[0] == "typedef":
        return ("alias", [t for t in d if is_ident(t)][-1])
    if "operator" in d:
        return ("operator", None)
    i, angle = 0, 0
    while i < len(d):
        t = d[i]
        if t == "<" and i > 0 and (is_ident(d[i - 1]) or d[i - 1] == ">"):
            i = skip_angles(d, i)
            continue
        if t == "[" and i + 1 < len(d) and d[i + 1] == "[":
            i = skip_balanced(d, i, "[", "]")
            continue
        if t == "=":
            name = d[i - 1] if i > 0 else None
            return ("variable", name) if name and is_ident(name) else ("skip", None)
        if t == "(":
            name = d[i - 1] if i > 0 else None
            if name is None or not is_ident(name) or name in KEYWORDS or re.match(r"[A-Z][A-Z0-9_]+$", name):
                i = skip_balanced(d, i, "(", ")")  # decltype(...), a macro, ...
                continue
            if i >= 2 and d[i - 2] == "~":
                return ("dtor", name)
            if i >= 2 and d[i - 2] == "::":
                return ("out_of_line", name)
            if name == class_name:
                return ("ctor", name)
            return ("function", name)
        i += 1
    idents = [t for t in d if is_ident(t) and t not in KEYWORDS]
    if d[0] in ("class", "struct", "union", "enum"):
        return ("skip", None)  # a forward declaration
    return ("variable", idents[-1]) if idents else ("skip", None)


class Model:
    def __init__(self):
        self.top = {}        # name -> kind
        self.classes = {}    # qualified class name -> {"members": {name: kind}, "bases": [..], "kind": ...}
        self.macros = []
        self.where = {}      # qualified name -> [(first line of the declaration, line of the name)]

    def place(self, qual, start, name_tok):
        if line_of(name_tok):
            self.where.setdefault(qual, []).append((line_of(start) or line_of(name_tok), line_of(name_tok)))


def parse_scope(toks, i, model, scope, class_name=None, default_public=True, record=True):
    """Parses declarations from toks[i] to the closing '}' of the scope (or the
    end). `scope` is None at global scope, "" in namespace confluence_oauth,
    or the qualified class name. Returns the index after the closing '}'."""
    public = default_public
    decl = []
    stack = []  # brackets opened inside the current declaration
    while i < len(toks):
        t = toks[i]
        if not stack and t == "}":
            return i + 1
        if not stack and class_name is not None and not decl and t in ("public", "private", "protected") \
                and i + 1 < len(toks) and toks[i + 1] == ":":
            public = t == "public"
            i += 2
            continue
        if stack:
            decl.append(t)
            if t in "([{":
                stack.append(t)
            elif t in ")]}":
                stack.pop()
            i += 1
            continue
        if t in "([":
            stack.append(t)
            decl.append(t)
            i += 1
            continue
        if t == ";":
            declare(model, scope, class_name, decl, public and record)
            decl = []
            i += 1
            continue
        if t != "{":
            decl.append(t)
            i += 1
            continue
        # A '{' at the declaration's own level: what does it open?
        head = strip_prefix(decl)
        if head and head[0] == "namespace":
            name = head[1] if len(head) > 1 and is_ident(head[1]) else None
            if scope is None and name == NAMESPACE:
                i = parse_scope(toks, i + 1, model, "", record=True)
            else:
                i = skip_balanced(toks, i, "{", "}")  # detail, or anything else
            decl = []
            continue
        if head and head[0] == "extern":
            i = parse_scope(toks, i + 1, model, scope, record=False)
            decl = []
            continue
        if head and head[0] == "enum":
            k = 1
            while k < len(head) and head[k] in ("class", "struct"):
                k += 1
            name = head[k] if k < len(head) and is_ident(head[k]) else None
            end = skip_balanced(toks, i, "{", "}")
            enumerators = []
            body = toks[i + 1:end - 1]
            expect = True
            depth = 0
            for b in body:
                if b in "([{<":
                    depth += 1
                elif b in ")]}>":
                    depth -= 1
                elif b == "," and depth == 0:
                    expect = True
                elif expect and is_ident(b) and depth == 0:
                    enumerators.append(b)
                    expect = False
            if name and scope is not None and public and record:
                qual = f"{scope}::{name}" if scope else name
                add_top_or_member(model, scope, name, "enum")
                model.place(qual, decl[0] if decl else name, name)
                model.classes[qual] = {"members": {e: "enumerator" for e in enumerators}, "bases": [], "kind": "enum"}
                for e in enumerators:
                    model.place(f"{qual}::{e}", e, e)
            i = end
            decl = ["enum", name or "?"]  # the rest, up to ';'
            continue
        if head and head[0] in ("class", "struct", "union") and "(" not in head and "=" not in head:
            k = 1
            while k < len(head) and head[k] == "[":
                k = skip_balanced(head, k, "[", "]")
            name = head[k] if k < len(head) and is_ident(head[k]) else None
            specialization = k + 1 < len(head) and head[k + 1] in ("<", "::")
            bases = []
            if ":" in head[k + 1:]:
                for b in " ".join(head[head.index(":", k + 1) + 1:]).split(","):
                    words = [w for w in b.split() if w not in ("public", "private", "protected", "virtual")]
                    if words:
                        bases.append("".join(words))
            keep = bool(name) and not specialization and scope is not None and public and record
            qual = (f"{scope}::{name}" if scope else name) if keep else None
            if keep:
                add_top_or_member(model, scope, name, "class")
                model.place(qual, decl[0], name)
                model.classes[qual] = {"members": {}, "bases": bases, "kind": head[0]}
            i = parse_scope(toks, i + 1, model, qual if keep else scope, class_name=name,
                            default_public=head[0] != "class", record=keep)
            decl = [head[0], name or "?"]  # a variable of this type may follow
            continue
        first = first_top(head, ("=", "("))
        if first == "=":
            i = skip_balanced(toks, i, "{", "}")  # a braced initializer
            decl.append("{}")
            continue
        if first is None:
            # `type name{...}`: a data member or variable with a braced initializer
            i = skip_balanced(toks, i, "{", "}")
            decl.append("{}")
            continue
        # A function body.
        declare(model, scope, class_name, decl, public and record)
        i = skip_balanced(toks, i, "{", "}")
        decl = []
    return i


def first_top(d, wanted):
    """The first of `wanted` in d outside template argument lists and
    attributes, or None."""
    d = strip_prefix(d)
    i = 0
    while i < len(d):
        t = d[i]
        if t == "<" and i > 0 and (is_ident(d[i - 1]) or d[i - 1] == ">"):
            i = skip_angles(d, i)
            continue
        if t == "[" and i + 1 < len(d) and d[i + 1] == "[":
            i = skip_balanced(d, i, "[", "]")
            continue
        if t == "operator":
            return "("
        if t in wanted:
            return t
        i += 1
    return None


def add_top_or_member(model, scope, name, kind):
    if scope == "":
        model.top.setdefault(name, kind)
    elif scope:
        model.classes[scope]["members"].setdefault(name, kind)


def declare(model, scope, class_name, decl, record):
    if not decl or not record or scope is None:
        return
    if decl[0] in ("enum", "class", "struct", "union") and len(decl) == 2:
        return  # the ';' after a type definition, or a forward declaration
    if decl[0] in ("class", "struct", "union", "enum") and len(decl) > 2:
        decl = decl[2:]  # `struct x {...} var;`
        if not decl:
            return
    kind, name = classify(decl, class_name)
    if kind in ("skip", "operator", "out_of_line", "ctor", "dtor") or not name:
        return
    add_top_or_member(model, scope, name, kind)
    model.place(f"{scope}::{name}" if scope else name, decl[0], name)


def load_model():
    text = open(HEADER, encoding="utf-8").read()
    cleaned, macros = clean(text)
    model = Model()
    model.macros = macros
    parse_scope(tokenize(cleaned), 0, model, None, record=True)
    for m, line in macros:
        model.top.setdefault(m, "macro")
        model.where.setdefault(m, []).append((line, line))
    model.lines = text.split("\n")
    return model


def all_names(model):
    """(qualified name, kind) of every public name, in --list order."""
    out = sorted(model.top.items())
    for cls in sorted(model.classes):
        out += [(f"{cls}::{name}", kind) for name, kind in sorted(model.classes[cls]["members"].items())]
    return out

# ---------------------------------------------------------------------------
# Check 2: doc comments in the header
# ---------------------------------------------------------------------------

SKIPPABLE_RE = re.compile(r"^(template\s*<.*|requires\b.*|\[\[.*\]\]\s*|#\s*(if|ifdef|ifndef|elif|else)\b.*)$")


def has_doc(model, start, name_line, group_above):
    """Whether the declaration starting on line `start` (1-based), naming its
    name on `name_line`, carries a doc comment. `group_above`: the lines of
    declarations of the same name above it (an overload set)."""
    lines = model.lines
    if "///<" in lines[name_line - 1]:
        return True
    k = start - 1  # 1-based line above the declaration
    while k >= 1:
        text = lines[k - 1].strip()
        if text.startswith("///") and not text.startswith("///<"):
            return True
        if SKIPPABLE_RE.match(text):
            k -= 1
            continue
        # an overload right below a declaration of the same name
        return bool(text) and any(s <= k <= e for s, e in group_above)
    return False


def undocumented(model):
    out = []
    for qual, kind in all_names(model):
        decls = sorted(model.where.get(qual, []))
        group = []  # (first line, last line) of the declarations above, approximated
        for i, (start, name_line) in enumerate(decls):
            # An enumerator on its enum's line cannot take the enum's comment as its own.
            owner = model.where.get(qual.rsplit("::", 1)[0], []) if kind == "enumerator" else []
            if any(name_line == n for _, n in owner):
                documented = "///<" in model.lines[name_line - 1]
            else:
                documented = has_doc(model, start, name_line, group)
            if not documented:
                out.append((name_line, kind, qual))
            nxt = decls[i + 1][0] if i + 1 < len(decls) else start
            group.append((start, max(name_line, nxt - 1)))
    return out

# ---------------------------------------------------------------------------
# The documentation side
# ---------------------------------------------------------------------------

SPAN_RE = re.compile(r"`([^`\n]+)`")
HEAD_RE = re.compile(r"~?[A-Za-z_]\w*(?:::~?[A-Za-z_]\w*)*")


def span_head(span):
    s = span.strip()
    for prefix in (NAMESPACE + "::", "cfo::"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    m = HEAD_RE.match(s)
    return m.group(0) if m else None


def prose_lines(path):
    """(line number, text) of the lines outside fenced code blocks."""
    out = []
    fenced = False
    for n, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def doc_sections(lines, model):
    """For each line: the class whose section it is in (or None)."""
    stack = []  # (level, class or None)
    owner = {}
    for n, line in lines:
        m = re.match(r"^(#{1,6})\s", line)
        if m:
            level = len(m.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            spans = SPAN_RE.findall(line)
            head = span_head(spans[0]) if spans else None
            stack.append((level, head if head in model.classes else None))
        owner[n] = next((c for _, c in reversed(stack) if c), None)
    return owner


def members_with_bases(model, cls, seen=None):
    seen = seen or set()
    info = model.classes.get(cls)
    if not info or cls in seen:
        return {}, False
    seen.add(cls)
    members = dict(info["members"])
    external = False
    for b in info["bases"]:
        b = b.split("<")[0]
        if b.startswith(NAMESPACE + "::"):
            b = b[len(NAMESPACE) + 2:]
        if b in model.classes:
            more, ext = members_with_bases(model, b, seen)
            for k, v in more.items():
                members.setdefault(k, v)
            external = external or ext
        else:
            external = True
    # nested classes and enums count as members
    for other in model.classes:
        if other.startswith(cls + "::") and "::" not in other[len(cls) + 2:]:
            members.setdefault(other[len(cls) + 2:], "class")
    return members, external


def resolve_qualified(model, head):
    """For `X::y...` with X a public class/enum: None if fine or not ours to
    judge, else a complaint."""
    parts = head.split("::")
    if len(parts) < 2:
        return None
    cls = parts[0]
    if cls not in model.classes:
        return None
    k = 1
    while k < len(parts):
        members, external = members_with_bases(model, cls)
        name = parts[k]
        if name.startswith("~") or name == "operator" or name == cls.split("::")[-1]:
            return None
        if name not in members:
            return None if external else f"`{cls}` has no public member `{name}`"
        nested = f"{cls}::{name}"
        if nested in model.classes:
            cls = nested
            k += 1
            continue
        return None
    return None


def main():
    model = load_model()
    if "--list" in sys.argv[1:]:
        for qual, kind in all_names(model):
            lines = ",".join(str(n) for _, n in sorted(model.where.get(qual, [])))
            print(f"{kind:10} {qual:60} {HEADER}:{lines}")
        return 0

    undoc = sorted(undocumented(model))

    try:
        api_lines = prose_lines(API_DOC)
    except FileNotFoundError:
        print(f"check_api_doc: {API_DOC} is missing", file=sys.stderr)
        return 1
    owner = doc_sections(api_lines, model)
    heads_anywhere = set()
    heads_in_class = {}
    for n, line in api_lines:
        for span in SPAN_RE.findall(line):
            head = span_head(span)
            if not head:
                continue
            heads_anywhere.add(head)
            if owner.get(n):
                heads_in_class.setdefault(owner[n], set()).add(head)

    missing = []
    for name, kind in sorted(model.top.items()):
        if name not in heads_anywhere:
            missing.append(f"{kind} `{name}`")
    for cls in sorted(model.classes):
        for name, kind in sorted(model.classes[cls]["members"].items()):
            if f"{cls}::{name}" in heads_anywhere or name in heads_in_class.get(cls, set()):
                continue
            missing.append(f"{kind} `{cls}::{name}`")

    stale = []
    top_names = set(model.top)
    for n, line in api_lines:
        m = re.match(r"^\s*\|([^|]*)\|", line)
        if m and not re.match(r"^\s*:?-+:?\s*$", m.group(1)):
            spans = SPAN_RE.findall(m.group(1))
            head = span_head(spans[0]) if spans else None
            if head:
                cls = owner.get(n)
                if cls:
                    members, external = members_with_bases(model, cls)
                    first = head.split("::")[0]
                    ok = (first.lstrip("~") == cls.split("::")[-1] or first == "operator" or first in members
                          or head.startswith(cls + "::") or external)
                    if head.startswith(cls + "::"):
                        ok = resolve_qualified(model, head) is None
                    if not ok:
                        stale.append(f"{API_DOC}:{n}: `{head}` is not a public member of `{cls}`")
                elif "::" in head:
                    problem = resolve_qualified(model, head)
                    if problem or head.split("::")[0] not in top_names:
                        stale.append(f"{API_DOC}:{n}: `{head}`: {problem or 'no such public name'}")
                elif head not in top_names:
                    stale.append(f"{API_DOC}:{n}: `{head}` is not a public name of {HEADER}")
    for path, lines in ((API_DOC, api_lines), (README, prose_lines(README))):
        for n, line in lines:
            for span in SPAN_RE.findall(line):
                raw = span.strip()
                qualified = raw.startswith(NAMESPACE + "::") or raw.startswith("cfo::")
                head = span_head(raw)
                if not head:
                    continue
                first = head.split("::")[0]
                if qualified and first not in top_names and first not in ("detail", NAMESPACE):  # NAMESPACE: the CMake target
                    stale.append(f"{path}:{n}: `{raw}`: {HEADER} has no public `{head.split('::')[0]}`")
                    continue
                problem = resolve_qualified(model, head)
                if problem:
                    stale.append(f"{path}:{n}: `{raw}`: {problem}")

    stale = sorted(set(stale), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))
    if missing:
        print(f"check_api_doc: {len(missing)} public names of {HEADER} are not in {API_DOC}:")
        for m in missing:
            print(f"  {m}")
    if stale:
        print(f"check_api_doc: {len(stale)} references to names {HEADER} does not have:")
        for s in stale:
            print(f"  {s}")
    if undoc:
        print(f"check_api_doc: {len(undoc)} declarations of public names in {HEADER} have no /// doc comment:")
        for line, kind, qual in undoc:
            print(f"  {HEADER}:{line}: {kind} `{qual}`")
    if missing or stale or undoc:
        return 1
    total = len(model.top) + sum(len(c["members"]) for c in model.classes.values())
    print(f"check_api_doc: {API_DOC} documents all {total} public names of {HEADER}")
    print(f"check_api_doc: {HEADER} has a /// doc comment on every one of them")
    return 0


sys.exit(main())
PY
