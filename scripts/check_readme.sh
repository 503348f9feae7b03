#!/usr/bin/env bash
# Checks that the C++ block under "## A complete example" in README.md is
# exactly examples/quickstart.cpp, which CI compiles: the README's code builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

block=$(awk '/^## A complete example/ { in_section = 1 }
             in_section && /^```cpp$/ { in_code = 1; next }
             in_code && /^```$/ { exit }
             in_code { print }' README.md)
if [[ -z "$block" ]]; then
  echo "check_readme: no \`\`\`cpp block under '## A complete example' in README.md" >&2
  exit 1
fi
if ! diff -u examples/quickstart.cpp <(printf '%s\n' "$block"); then
  echo "check_readme: README.md's example differs from examples/quickstart.cpp" >&2
  exit 1
fi
echo "check_readme: README.md's example is examples/quickstart.cpp"
