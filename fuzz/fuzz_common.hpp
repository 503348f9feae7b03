// Shared by the libFuzzer targets in fuzz/: invariant checks and a reader that
// turns the fuzzer's bytes into choices and pieces.
#pragma once

#include "confluence_oauth.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace cfo = confluence_oauth;

// An invariant the library must keep whatever the input: abort (a crash the
// fuzzer keeps) with the failed condition.
#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "fuzz invariant failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace fuzz {

/// Reads choices off the front of the input; what is left is the payload.
class reader {
 public:
  reader(const std::uint8_t* data, std::size_t size) : rest_(reinterpret_cast<const char*>(data), size) {}

  /// One byte, 0 once the input is used up.
  std::uint8_t byte() {
    if (rest_.empty()) return 0;
    auto b = static_cast<std::uint8_t>(rest_.front());
    rest_.remove_prefix(1);
    return b;
  }

  /// Everything up to (not including) the first `delim`, which is consumed too;
  /// the whole rest when there is none.
  std::string_view until(char delim) {
    auto at = rest_.find(delim);
    auto out = rest_.substr(0, at);
    rest_ = at == std::string_view::npos ? std::string_view{} : rest_.substr(at + 1);
    return out;
  }

  std::string_view rest() const noexcept { return rest_; }

 private:
  std::string_view rest_;
};

/// An HTTP response from the input: the status code on the first line (200
/// when it is not one), header lines up to a blank line, then the body.
inline cfo::http_response response_from(reader& in) {
  namespace d = cfo::detail;
  cfo::http_response res;
  auto status = d::parse_uint<int>(d::trim(in.until('\n')));
  res.status = status && *status >= 100 && *status <= 599 ? *status : 200;
  res.reason = "Reason";
  for (auto line = in.until('\n'); !line.empty() && line != "\r"; line = in.until('\n')) {
    auto colon = line.find(':');
    res.headers.add(std::string(line.substr(0, colon)),
                    std::string(colon == std::string_view::npos ? std::string_view{} : d::trim(line.substr(colon + 1))));
  }
  res.body = std::string(in.rest());
  return res;
}

/// An oauth_error must carry the library's own category and one of its codes.
inline cfo::errc errc_of(const cfo::oauth_error& e) {
  FUZZ_CHECK(e.code().category() == cfo::detail::error_category());
  return static_cast<cfo::errc>(e.code().value());
}

}  // namespace fuzz
