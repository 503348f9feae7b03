#!/usr/bin/env bash
# Checks README.md and docs/*.md:
#   1. the C++ block under "## A complete example" in README.md is exactly
#      examples/quickstart.cpp, which CI compiles: the README's code builds;
#   2. every relative link of README.md and docs/*.md (outside code) points to
#      a file or folder that exists and, with a #fragment into a Markdown file,
#      to one of its headings (GitHub's anchors: lower case, punctuation
#      dropped, spaces to hyphens, -1, -2, ... for repeats). Links with a
#      scheme (https:, mailto:) are not followed.
# (scripts/check_readme_snippets.sh compiles the documents' other C++ blocks.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

status=0

block=$(awk '/^## A complete example/ { in_section = 1 }
             in_section && /^```cpp$/ { in_code = 1; next }
             in_code && /^```$/ { exit }
             in_code { print }' README.md)
if [[ -z "$block" ]]; then
  echo "check_readme: no \`\`\`cpp block under '## A complete example' in README.md" >&2
  status=1
elif ! diff -u examples/quickstart.cpp <(printf '%s\n' "$block"); then
  echo "check_readme: README.md's example differs from examples/quickstart.cpp" >&2
  status=1
else
  echo "check_readme: README.md's example is examples/quickstart.cpp"
fi

python3 - README.md docs/*.md <<'PY' || status=1
import os, re, sys
from urllib.parse import unquote

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")

def prose(path):
    """(line number, text) of the lines outside fenced code blocks."""
    inside = False
    for number, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, line

anchors_of = {}
def anchors(path):
    if path not in anchors_of:
        found, seen = set(), {}
        for _, line in prose(path):
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link: its text
                slug = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower()).replace(" ", "-")
                n = seen.get(slug, 0)
                seen[slug] = n + 1
                found.add(slug if n == 0 else f"{slug}-{n}")
            for a in re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line):
                found.add(a)
        anchors_of[path] = found
    return anchors_of[path]

bad = checked = 0
for doc in sys.argv[1:]:
    for number, line in prose(doc):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue
            checked += 1
            path, _, fragment = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(doc), unquote(path))) if path else doc
            why = None
            if not os.path.exists(dest):
                why = f"{dest} does not exist"
            elif fragment and dest.endswith(".md") and unquote(fragment).lower() not in anchors(dest):
                why = f"{dest} has no heading with the anchor #{fragment}"
            if why:
                print(f"check_readme: {doc}:{number}: broken link ({target}): {why}", file=sys.stderr)
                bad += 1
if bad:
    print(f"check_readme: {bad} of {checked} relative links are broken", file=sys.stderr)
    sys.exit(1)
print(f"check_readme: all {checked} relative links of {', '.join(sys.argv[1:])} resolve")
PY

exit "$status"
