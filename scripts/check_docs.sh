#!/usr/bin/env bash
# Checks with Doxygen (docs/Doxyfile) that every public name of
# confluence_oauth.hpp has a doc comment, and counts the public API.
#
# Public: what is in namespace confluence_oauth outside
# confluence_oauth::detail (as CHANGELOG.md defines the API), and, of each
# public class, its public members. Macros (CONFLUENCE_OAUTH_VERSION...) are
# outside the namespace: neither checked nor counted.
#
# The check fails (exit status 1) and lists each undocumented public name with
# its line when
#   - Doxygen warns about anything (WARN_AS_ERROR = FAIL_ON_WARNINGS): an
#     undocumented class, member, constructor or operator (each overload needs
#     a comment, or one ///@{ ... ///@} member group around the overloads with
#     the comment on the first: DISTRIBUTE_GROUP_DOC), or a malformed doc
#     command; defaulted and deleted functions need none;
#   - one of the names counted below has no comment where Doxygen does not
#     warn: an enumerator (Doxygen never warns about those), a free function,
#     variable, type alias or enum of namespace confluence_oauth (Doxygen
#     warns about those only once the namespace itself is documented).
#
# Then it counts from Doxygen's XML output:
#   public namespace-scope names: the types (classes, structs, enums), free
#     functions and function templates, variables and type aliases of
#     namespace confluence_oauth itself (its nested types are members, below);
#   public names in all: those plus every public member of a public class:
#     member functions, static or not, data members, member types and type
#     aliases, nested classes (and their own members), and the enumerators of
#     every public enum (`errc::timeout` is a name a user writes).
# Counting rules: a name is counted once in its scope however many overloads
# (or templates of that name) it has. Constructors, destructors and operators
# (operator=, operator==, operator<<, conversion operators, and hidden friends
# that are operators) are not counted: they add no name a user must learn; a
# hidden friend that is not an operator counts as a member of its class.
# Inherited members are counted where they are declared, not again in each
# derived class, and an override (token_store::load in file_token_store) is
# the base's name, counted there; it still needs its own comment. The "in all" count is of documented names, so with
# undocumented names around it is lower than the API (the check fails then).
#
# Usage: scripts/check_docs.sh [--list] [--max-public N] [--max-names N] [--out DIR]
#   --list          also print both lists, with the header line of each name
#   --max-public N  fail when there are more than N public namespace-scope names
#   --max-names N   fail when there are more than N public names in all
#   --out DIR       Doxygen's output directory (default build/docs; html/ and
#                   xml/ in it); CMake and Meson give their own build dir's
# The limits are the API budget of issue 15 (25 and 150); CI only prints the
# numbers for now (scripts/test.sh), the header being slimmed towards them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$(pwd)

list=0
max_public=""
max_names=""
out=build/docs
usage() { sed -n '2,46p' "$0"; }
while (( $# )); do
  case "$1" in
    --list) list=1 ;;
    --max-public|--max-names|--out)
      if (( $# < 2 )); then echo "check_docs: $1 needs a value" >&2; exit 2; fi
      case "$1" in
        --max-public) max_public=$2 ;;
        --max-names) max_names=$2 ;;
        --out) out=$2 ;;
      esac
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "check_docs: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for n in "$max_public" "$max_names"; do
  if [[ -n "$n" && ! "$n" =~ ^[0-9]+$ ]]; then
    echo "check_docs: a limit must be a whole number, not '$n'" >&2
    exit 2
  fi
done

if ! command -v doxygen >/dev/null 2>&1; then
  echo "check_docs: doxygen not found: run scripts/install-deps.sh (Debian's doxygen)" >&2
  exit 1
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/html" "$out/xml"
warnings="$out/doxygen-warnings.log"

# docs/Doxyfile with its output directory replaced; doxygen reads it from stdin
# and the paths in it from the repository root.
doxygen_rc=0
{ cat docs/Doxyfile; printf 'OUTPUT_DIRECTORY = "%s"\n' "$out"; } |
  doxygen - >"$out/doxygen.log" 2>"$warnings" || doxygen_rc=$?
if [[ ! -f "$out/xml/index.xml" ]]; then
  echo "check_docs: doxygen $(doxygen --version) failed (exit status $doxygen_rc) before writing $out/xml:" >&2
  cat "$warnings" "$out/doxygen.log" >&2
  exit 1
fi

exec python3 - "$repo_root" "$out" "$warnings" "$doxygen_rc" "$list" "$max_public" "$max_names" <<'PY'
import os
import re
import sys
import xml.etree.ElementTree as ET

repo_root, out, warnings_file, doxygen_rc, want_list, max_public, max_names = sys.argv[1:]
doxygen_rc = int(doxygen_rc)
want_list = want_list == "1"
xml_dir = os.path.join(out, "xml")
NAMESPACE = "confluence_oauth"
INTERNAL = NAMESPACE + "::detail"


def rel(path):
    if path.startswith(repo_root + "/"):
        return path[len(repo_root) + 1:]
    return path


# --------------------------------------------------------------------------
# Doxygen's warnings: "file:line: warning|error: text", maybe more lines.
# --------------------------------------------------------------------------
undocumented = []   # (file, line, name, kind)
other_warnings = []
with open(warnings_file, encoding="utf-8", errors="replace") as f:
    text = f.read()
entries = []
for line in text.splitlines():
    m = re.match(r"^(.*?):(\d+): (?:warning|error): (.*)$", line)
    if m:
        entries.append([rel(m.group(1)), int(m.group(2)), m.group(3)])
    elif entries and line.strip():
        entries[-1][2] += "\n  " + line.strip()
    elif line.strip():
        entries.append(["", 0, line.strip()])
for file, line, msg in entries:
    m = re.match(r"^Member (.*) \((\w+)\) of (?:class|struct|union|namespace|file) (\S+) is not documented\.$", msg)
    if m:
        name, kind, scope = m.groups()
        undocumented.append((file, line, f"{scope}::{name}", kind))
        continue
    m = re.match(r"^Compound (\S+) is not documented\.$", msg)
    if m:
        undocumented.append((file, line, m.group(1), "class"))
        continue
    other_warnings.append((file, line, msg))


# --------------------------------------------------------------------------
# The XML: every public name, documented or not.
# --------------------------------------------------------------------------
def load(refid):
    return ET.parse(os.path.join(xml_dir, refid + ".xml")).getroot().find("compounddef")


def documented(el):
    for tag in ("briefdescription", "detaileddescription"):
        d = el.find(tag)
        if d is not None and "".join(d.itertext()).strip():
            return True
    return False


def location(el):
    loc = el.find("location")
    if loc is None:
        return ("", 0)
    return (rel(loc.get("file", "")), int(loc.get("line", "0") or 0))


source_lines = {}


def enumerator_location(enum_md, name):
    """Doxygen gives an enumerator no location: find it in its enum's body."""
    loc = enum_md.find("location")
    file, line = location(enum_md)
    if loc is None or not file:
        return (file, line)
    if file not in source_lines:
        try:
            with open(os.path.join(repo_root, file), encoding="utf-8") as f:
                source_lines[file] = f.read().split("\n")
        except OSError:
            source_lines[file] = []
    start = int(loc.get("bodystart", line) or line)
    end = int(loc.get("bodyend", start) or start)
    if end < start:
        end = start
    pattern = re.compile(r"(?:^|[{,\s])" + re.escape(name) + r"\s*(?:[=,}]|///|//|$)")
    for n in range(start, min(end, len(source_lines[file])) + 1):
        code = source_lines[file][n - 1].split("///")[0]
        if pattern.search(code):
            return (file, n)
    return (file, line)


def is_operator(name):
    return re.match(r"^operator(?![A-Za-z0-9_])", name) is not None


KIND_OF_SECTION_MEMBER = {
    "function": "function", "variable": "variable", "typedef": "alias",
    "enum": "enum", "friend": "friend",
}

# name -> {"kind", "lines", "doc" (any declaration documented), "top"}
names = {}


def add(qualified, kind, loc, doc, top):
    # a class template's specializations are the template's name
    while True:
        plain = re.sub(r"\s*<[^<>]*>", "", qualified)
        if plain == qualified:
            break
        qualified = plain
    e = names.setdefault(qualified, {"kind": kind, "lines": [], "doc": False, "top": top})
    if loc[1]:
        e["lines"].append(loc)
    e["doc"] = e["doc"] or doc


def walk_members(compound, scope, top, class_name=None):
    """The public memberdefs of a namespace or class compound."""
    seen = set()
    for md in compound.iter("memberdef"):
        if md.get("id") in seen or md.get("prot") != "public":
            continue
        seen.add(md.get("id"))
        kind = md.get("kind")
        name = md.findtext("name", "").strip()
        if not name or kind not in KIND_OF_SECTION_MEMBER:
            continue
        if class_name is not None and (name == class_name or name.startswith("~")):
            continue  # constructors, destructors
        if is_operator(name):
            continue
        if md.find("reimplements") is not None:
            continue  # an override: the base class's name, counted there
        if kind == "friend":
            # a hidden friend function counts as a member; "friend class x" not at all
            ftype = md.findtext("type", "").strip()
            if ftype in ("class", "struct", "union") or md.find("argsstring") is None \
                    or not md.findtext("argsstring", "").strip():
                continue
            kind = "function"
        else:
            kind = KIND_OF_SECTION_MEMBER[kind]
        qualified = f"{scope}::{name}"
        add(qualified, kind, location(md), documented(md), top)
        if md.get("kind") == "enum":
            for ev in md.findall("enumvalue"):
                if ev.get("prot", "public") != "public":
                    continue
                evname = ev.findtext("name", "").strip()
                add(f"{qualified}::{evname}", "enumerator", enumerator_location(md, evname),
                    documented(ev), False)


def walk_class(refid, top):
    cd = load(refid)
    qualified = cd.findtext("compoundname", "").strip()
    add(qualified, cd.get("kind"), location(cd), documented(cd), top)
    short = re.sub(r"\s*<.*$", "", qualified.rsplit("::", 1)[-1])  # (of a specialization)
    walk_members(cd, qualified, False, class_name=short)
    for inner in cd.findall("innerclass"):
        if inner.get("prot") == "public":
            walk_class(inner.get("refid"), False)


def walk_namespace(refid):
    nd = load(refid)
    qualified = nd.findtext("compoundname", "").strip()
    if qualified == INTERNAL or qualified.startswith(INTERNAL + "::"):
        return
    walk_members(nd, qualified, True)
    for inner in nd.findall("innerclass"):
        if inner.get("prot", "public") == "public":
            walk_class(inner.get("refid"), True)
    for inner in nd.findall("innernamespace"):
        walk_namespace(inner.get("refid"))


index = ET.parse(os.path.join(xml_dir, "index.xml")).getroot()
ns_refid = None
for c in index.findall("compound"):
    if c.get("kind") == "namespace" and c.findtext("name") == NAMESPACE:
        ns_refid = c.get("refid")
if ns_refid is None:
    print(f"check_docs: Doxygen found no namespace {NAMESPACE} in confluence_oauth.hpp", file=sys.stderr)
    sys.exit(1)
walk_namespace(ns_refid)

# Counted names without a comment that Doxygen did not warn about.
warned = {u[2].split("(")[0] for u in undocumented}
warned_at = {(u[0], u[1]) for u in undocumented}
for qualified, e in sorted(names.items()):
    if e["doc"] or qualified in warned:
        continue
    loc = e["lines"][0] if e["lines"] else ("", 0)
    if e["kind"] != "enumerator" and loc in warned_at:
        continue
    undocumented.append((loc[0], loc[1], qualified, e["kind"]))

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def strip_ns(q):
    return q[len(NAMESPACE) + 2:] if q.startswith(NAMESPACE + "::") else q


def where(e):
    lines = sorted({l for _, l in e["lines"]})
    file = e["lines"][0][0] if e["lines"] else "?"
    return f"{file}:{','.join(map(str, lines))}" if lines else file


public = {q: e for q, e in names.items() if e["top"] and e["doc"]}
all_names = {q: e for q, e in names.items() if e["doc"]}

failed = False
if undocumented:
    failed = True
    print(f"check_docs: {len(undocumented)} declarations of public names in confluence_oauth.hpp have no doc comment:")
    for file, line, name, kind in sorted(undocumented, key=lambda u: (u[0], u[1], u[2])):
        print(f"  {file}:{line}: {strip_ns(name)} ({kind})")
if other_warnings:
    failed = True
    print(f"check_docs: {len(other_warnings)} other Doxygen warnings:")
    for file, line, msg in other_warnings:
        print(f"  {file}:{line}: {msg}" if file else f"  {msg}")
if doxygen_rc != 0 and not failed:
    failed = True
    print(f"check_docs: doxygen exited with status {doxygen_rc} (see {rel(warnings_file)})")
if not failed:
    print("check_docs: Doxygen finds a doc comment on every public name of confluence_oauth.hpp")

print(f"check_docs: {len(public)} public namespace-scope names (types, functions, variables, type aliases)")
print(f"check_docs: {len(all_names)} documented public names in all (members and enumerators included)")

if want_list:
    print(f"\nPublic namespace-scope names ({len(public)}):")
    for q in sorted(public, key=lambda q: (public[q]["kind"], q)):
        print(f"  {public[q]['kind']:<11}{strip_ns(q):<52}{where(public[q])}")
    print(f"\nPublic names in all ({len(all_names)}):")
    for q in sorted(all_names, key=lambda q: (not all_names[q]["top"], q)):
        print(f"  {all_names[q]['kind']:<11}{strip_ns(q):<52}{where(all_names[q])}")

for limit, count, what in ((max_public, len(public), "public namespace-scope names"),
                           (max_names, len(all_names), "public names in all")):
    if limit != "" and count > int(limit):
        failed = True
        print(f"check_docs: {count} {what}, over the budget of {limit} (by {count - int(limit)})")

print(f"check_docs: HTML in {rel(os.path.join(out, 'html', 'index.html'))}")
sys.exit(1 if failed else 0)
PY
