#!/usr/bin/env bash
# Compiles every ```cpp block of README.md, so that no example in it rots.
#
# Convention (README authors, read this):
#   * A block that contains `int main` is a complete translation unit and is
#     compiled as it stands.
#   * Any other block is a fragment. All fragments are compiled together, in
#     one file, each in a namespace of its own (its #include lines moved to
#     the top), after this prefix:
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
# README.md with a #line directive, so compiler messages point at README.md's
# own lines. A failing block is reported with the line of its ```cpp fence;
# the script exits 1 if any block fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
readme=${1:-README.md}
max_jobs=${CHECK_README_JOBS:-2}
cxx=${CXX:-g++}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Extract the blocks: one file per block, named after the fence's line number.
python3 - "$readme" "$work" <<'PY'
import os, re, sys
readme, out = sys.argv[1], sys.argv[2]
lines = open(readme, encoding="utf-8").read().split("\n")
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
}
marker_re = re.compile(r"^\s*<!--\s*snippet:\s*([\w-]+)\s*-->\s*$")
errors = 0
blocks = []
includes = []
fragments = []  # compiled together, each in a namespace of its own: one parse of the header for all
i = 0
while i < len(lines):
    if lines[i].strip() == "```cpp":
        fence = i + 1  # 1-based line of the fence
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            print(f"{readme}:{fence}: unterminated ```cpp block", file=sys.stderr)
            sys.exit(1)
        body = lines[i + 1:j]
        kind = None
        k = i - 1
        while k >= 0 and lines[k].strip() == "":
            k -= 1
        if k >= 0 and lines[k].lstrip().startswith("<!-- snippet"):
            m = marker_re.match(lines[k])
            if not m or m.group(1) not in WRAP:
                print(f"{readme}:{k + 1}: unknown snippet marker: {lines[k].strip()}", file=sys.stderr)
                errors += 1
            else:
                kind = m.group(1)
        text = "\n".join(body) + "\n"
        if re.search(r"\bint\s+main\s*\(", text):
            if kind is not None:
                print(f"{readme}:{k + 1}: a block with int main takes no snippet marker", file=sys.stderr)
                errors += 1
            source = f'#line {fence + 1}\n' + text
        else:
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
            fragments.append(f"namespace readme_line_{fence} {{\n" + head + f'#line {fence + 1}\n' + text + tail +
                             "}\n")
            i = j + 1
            continue
        # Each block is a file named like the README, in a folder of its own:
        # compiler messages then name README.md and its lines (#line), and
        # the main file's types stay the main file's (a #line with another
        # file name would make GCC see the block's lambdas as a header's).
        os.makedirs(f"{out}/block_{fence:05d}")
        with open(f"{out}/block_{fence:05d}/{os.path.basename(readme)}", "w", encoding="utf-8") as f:
            f.write(source)
        blocks.append(fence)
        i = j + 1
    else:
        i += 1
if fragments:
    os.makedirs(f"{out}/block_00000")
    with open(f"{out}/block_00000/{os.path.basename(readme)}", "w", encoding="utf-8") as f:
        f.write(PREFIX + "".join(f"{i}\n" for i in dict.fromkeys(includes)) + "".join(fragments))
    blocks.append(0)
if not blocks:
    print(f"{readme}: no ```cpp blocks", file=sys.stderr)
    errors += 1
sys.exit(1 if errors else 0)
PY

nice_cmd=()
command -v nice >/dev/null && nice_cmd=(nice -n 10)

compile_block() {
  local dir=$1 line
  line=$(basename "$dir")
  line=$((10#${line#block_}))
  local what="$readme:$line"
  (( line == 0 )) && what="$readme (the fragments)"
  if (cd "$dir" && "${nice_cmd[@]}" "$cxx" -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror \
        -I"$repo" -x c++ "$(basename "$readme")") >"$dir.log" 2>&1; then
    echo "check_readme_snippets: ok      $what"
  else
    echo "check_readme_snippets: FAILED  $what"
    sed 's/^/    /' "$dir.log"
    echo "$line" >>"$work/failed"
  fi
}

count=0
for dir in "$work"/block_*/; do
  dir=${dir%/}
  while (( $(jobs -rp | wc -l) >= max_jobs )); do wait -n || true; done
  compile_block "$dir" &
  count=$((count + 1))
done
wait

if [[ -s "$work/failed" ]]; then
  echo "check_readme_snippets: $(wc -l <"$work/failed") of $count blocks failed, at lines: $(sort -n "$work/failed" | paste -sd' ')"
  exit 1
fi
echo "check_readme_snippets: all $count \`\`\`cpp blocks of $readme compile"
