#!/usr/bin/env bash
# Compiles every ```cpp block of README.md, docs/GUIDE.md and docs/INSTALL.md
# (or of the Markdown files given as arguments), so that no example rots.
#
# Convention (authors of those documents, read this):
#   * A block that contains `int main` is a complete translation unit and is
#     compiled as it stands.
#   * A block whose last non-blank line before its ```cpp fence is
#       <!-- snippet: file -->
#     is a complete translation unit without `main` (a file of a program, such
#     as the implementation file of the separate compilation mode), compiled as
#     it stands, its own #define and #include lines included.
#   * Any other block is a fragment. A document's fragments are compiled
#     together, in one file, each in a namespace of its own (its #include
#     lines moved to the top), after this prefix:
#         #include <confluence_oauth.hpp>
#         #include <future>
#         #include <iostream>
#         #include <thread>
#         namespace cfo = confluence_oauth;
#     A fragment holds declarations (functions, classes, ...) at namespace
#     scope, unless the last non-blank line before its ```cpp fence is one of:
#       <!-- snippet: statements -->
#           statements of a coroutine, compiled as the body of
#             asio::awaitable<void> snippet(cfo::session& session, cfo::confluence& wiki) {
#               <block>
#               co_return;
#             }
#       <!-- snippet: plain-statements -->
#           statements of an ordinary function, compiled as the body of
#             void snippet(asio::io_context& io, cfo::session& session) { <block> }
#     (the parameters are [[maybe_unused]]). Other markers are errors.
#
# Each block is compiled with
#   ${CXX:-g++} -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -I<repo>
# at most two at a time (CHECK_README_JOBS overrides), each as a file named
# like its document (README.md, GUIDE.md, ...) with a #line directive, so
# compiler messages point at the document's own lines. A failing block is
# reported with its document and the line of its ```cpp fence; the script
# exits 1 if any block fails, and if a document has no ```cpp block.
#
# Usage: scripts/check_readme_snippets.sh [FILE.md ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
docs=("$@")
(( ${#docs[@]} )) || docs=(README.md docs/GUIDE.md docs/INSTALL.md)
max_jobs=${CHECK_README_JOBS:-2}
cxx=${CXX:-g++}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Extract the blocks: one folder per block, $work/d<document>_block_<fence>,
# holding the source under the document's base name; $work/d<document>.name
# holds the document's path. Block 0 of a document is its fragments.
python3 - "$work" "${docs[@]}" <<'PY'
import os, re, sys
out, docs = sys.argv[1], sys.argv[2:]
PREFIX = ("#include <confluence_oauth.hpp>\n#include <future>\n#include <iostream>\n#include <thread>\n"
          "namespace cfo = confluence_oauth;\n")
WRAP = {
    None: ("", ""),
    "statements": ("asio::awaitable<void> snippet([[maybe_unused]] cfo::session& session,\n"
                   "                              [[maybe_unused]] cfo::confluence& wiki) {\n",
                   "  co_return;\n}\n"),
    "plain-statements": ("void snippet([[maybe_unused]] asio::io_context& io,\n"
                         "             [[maybe_unused]] cfo::session& session) {\n",
                         "}\n"),
    "file": None,  # a complete translation unit without main
}
marker_re = re.compile(r"^\s*<!--\s*snippet:\s*([\w-]+)\s*-->\s*$")
errors = 0


def extract(index, readme):
    global errors
    lines = open(readme, encoding="utf-8").read().split("\n")
    name = os.path.basename(readme)
    with open(f"{out}/d{index}.name", "w", encoding="utf-8") as f:
        f.write(readme)

    def write(fence, source):
        # Each block is a file named like its document, in a folder of its
        # own: compiler messages then name the document and its lines
        # (#line), and the main file's types stay the main file's (a #line
        # with another file name would make GCC see the block's lambdas as a
        # header's).
        os.makedirs(f"{out}/d{index}_block_{fence:05d}")
        with open(f"{out}/d{index}_block_{fence:05d}/{name}", "w", encoding="utf-8") as f:
            f.write(source)

    count = 0
    includes = []
    fragments = []  # compiled together, each in a namespace of its own: one parse of the header for all
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```cpp":
            i += 1
            continue
        fence = i + 1  # 1-based line of the fence
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            print(f"{readme}:{fence}: unterminated ```cpp block", file=sys.stderr)
            errors += 1
            return
        count += 1
        body = lines[i + 1:j]
        i = j + 1
        kind = None
        k = fence - 2
        while k >= 0 and lines[k].strip() == "":
            k -= 1
        if k >= 0 and lines[k].lstrip().startswith("<!-- snippet"):
            m = marker_re.match(lines[k])
            if not m or m.group(1) not in WRAP:
                print(f"{readme}:{k + 1}: unknown snippet marker: {lines[k].strip()}", file=sys.stderr)
                errors += 1
                continue
            kind = m.group(1)
        text = "\n".join(body) + "\n"
        if re.search(r"\bint\s+main\s*\(", text):
            if kind is not None:
                print(f"{readme}:{k + 1}: a block with int main takes no snippet marker", file=sys.stderr)
                errors += 1
                continue
            write(fence, f"#line {fence + 1}\n" + text)
            continue
        if kind == "file":
            write(fence, f"#line {fence + 1}\n" + text)
            continue
        head, tail = WRAP[kind]
        # A fragment's #includes go to the top of the file (a blank line
        # keeps the numbering), since a namespace must not enclose them.
        kept = []
        for line in body:
            if line.lstrip().startswith("#include"):
                includes.append(line.strip())
                kept.append("")
            else:
                kept.append(line)
        text = "\n".join(kept) + "\n"
        fragments.append(f"namespace readme_line_{fence} {{\n" + head + f"#line {fence + 1}\n" + text + tail + "}\n")
    if fragments:
        write(0, PREFIX + "".join(f"{i}\n" for i in dict.fromkeys(includes)) + "".join(fragments))
    if count == 0:
        print(f"{readme}: no ```cpp blocks", file=sys.stderr)
        errors += 1


for index, readme in enumerate(docs):
    extract(index, readme)
sys.exit(1 if errors else 0)
PY

nice_cmd=()
command -v nice >/dev/null && nice_cmd=(nice -n 10)

compile_block() {
  local dir=$1 line doc src
  line=${dir##*_block_}
  line=$((10#$line))
  doc=$(cat "${dir%%_block_*}.name")
  src=$(basename "$doc")
  local what="$doc:$line"
  (( line == 0 )) && what="$doc (the fragments)"
  if (cd "$dir" && "${nice_cmd[@]}" "$cxx" -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror \
        -I"$repo" -x c++ "$src") >"$dir.log" 2>&1; then
    echo "check_readme_snippets: ok      $what"
  else
    echo "check_readme_snippets: FAILED  $what"
    sed 's/^/    /' "$dir.log"
    echo "$what" >>"$work/failed"
  fi
}

count=0
for dir in "$work"/d*_block_*/; do
  dir=${dir%/}
  while (( $(jobs -rp | wc -l) >= max_jobs )); do wait -n || true; done
  compile_block "$dir" &
  count=$((count + 1))
done
wait

if [[ -s "$work/failed" ]]; then
  echo "check_readme_snippets: $(wc -l <"$work/failed") of $count compilations failed: $(paste -sd' ' "$work/failed")"
  exit 1
fi
echo "check_readme_snippets: every \`\`\`cpp block of ${docs[*]} compiles ($count compilations)"
