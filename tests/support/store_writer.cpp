// store-writer — saves token sets through file_token_store::save in a tight
// loop until it is killed, for the crash-safety test.
//
//   store-writer PATH [--key HEX] START
//
// Set N (N = START, START+1, ...) is derived from N in every field, so a file
// that mixed two sets is told apart from one set (see expected_set). Once it
// is ready to save, it writes "ready\n" on stdout, then "N\n" after each save
// of set N has completed; each line is one write(2) to an unbuffered stdout,
// so a reader sees whole lines even when the writer is killed. Exits 2 on bad
// arguments, 1 if a save fails.
#include "confluence_oauth.hpp"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

#include <unistd.h>

namespace {

namespace cfo = confluence_oauth;

constexpr std::string_view usage_text =
    "usage: store-writer PATH [--key HEX] START\n"
    "  PATH       the token file\n"
    "  --key HEX  its AES-256-GCM key as 64 hex digits (default: not encrypted)\n"
    "  START      the sequence number of the first set saved\n";

[[noreturn]] void usage_error(const std::string& why) {
  std::cerr << "store-writer: " << why << '\n' << usage_text;
  std::exit(2);
}

std::optional<cfo::secret> parse_key(std::string_view hex) {
  if (hex.size() != 64) return std::nullopt;
  std::string key;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    auto digit = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = digit(hex[i]), lo = digit(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    key.push_back(static_cast<char>(hi * 16 + lo));
  }
  return cfo::secret(std::move(key));
}

/// Writes `line` with one write(2): a line is either all there or not at all.
void report(const std::string& line) {
  if (::write(STDOUT_FILENO, line.data(), line.size()) != static_cast<ssize_t>(line.size())) std::exit(1);
}

asio::awaitable<void> save_forever(cfo::file_token_store& store, std::int64_t start) {
  for (std::int64_t n = start;; ++n) {
    // The same derivation as expected_set() in tests/test_crash_safety.cpp.
    cfo::token_set t;
    t.access_token = cfo::secret("access-" + std::to_string(n));
    t.refresh_token = cfo::secret("refresh-" + std::to_string(n));
    t.scope = "scope-" + std::to_string(n);
    t.expires_at = cfo::token_set::clock::time_point(std::chrono::seconds(1'700'000'000 + n));
    co_await store.save(t);
    report(std::to_string(n) + "\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, start_text;
  std::optional<cfo::secret> key;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--key") {
      if (i + 1 >= argc) usage_error("--key needs a value");
      key = parse_key(argv[++i]);
      if (!key) usage_error("--key needs 64 hex digits (32 bytes)");
    } else if (path.empty()) {
      path = arg;
    } else if (start_text.empty()) {
      start_text = arg;
    } else {
      usage_error("unexpected argument " + std::string(arg));
    }
  }
  if (path.empty() || start_text.empty()) usage_error("PATH and START are required");
  std::int64_t start = 0;
  try {
    std::size_t used = 0;
    start = std::stoll(start_text, &used);
    if (used != start_text.size() || start < 0) throw std::invalid_argument("not a sequence number");
  } catch (const std::exception&) {
    usage_error("START must be a whole number of at least 0");
  }
  try {
    auto store = key ? cfo::file_token_store(path, std::move(*key)) : cfo::file_token_store(path);
    asio::io_context io(1);
    std::exception_ptr failed;
    report("ready\n");
    asio::co_spawn(io, save_forever(store, start), [&](std::exception_ptr e) { failed = e; });
    io.run();
    if (failed) std::rethrow_exception(failed);
  } catch (const std::exception& e) {
    std::cerr << "store-writer: " << e.what() << '\n';
    return 1;
  }
  return 1;  // the loop only ends by failing
}
