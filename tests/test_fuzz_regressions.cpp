// Inputs the fuzzers in fuzz/ found (also kept in fuzz/regressions/<target>/),
// each with the typed outcome it must have.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "test_util.hpp"

// Its own namespace, so that the unity build can put test files together.
namespace test_fuzz_regressions {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

// The last second system_clock can hold: 2262 with libstdc++'s nanoseconds.
constexpr std::int64_t latest_second =
    std::chrono::duration_cast<std::chrono::seconds>(cfo::token_set::clock::duration::max()).count();

}  // namespace

TEST_CASE("fuzz regression: a stored expires_at past what the clock holds is store_corrupt") {
  const cfo::file_token_store store("/nonexistent/tokens.json");
  // fuzz/regressions/store_file/expires_at_year_9999: the year 9999 overflowed the clock.
  const std::string year_9999 = R"({"access_token":"a","expires_at":253402300799,"version":1})";
  if (latest_second < 253402300799)
    CHECK(test_util::thrown_code([&] { store.decode(year_9999); }) == cfo::errc::store_corrupt);
  const std::string too_late = R"({"access_token":"a","expires_at":)" + std::to_string(latest_second + 1) + "}";
  CHECK(test_util::thrown_code([&] { store.decode(too_late); }) == cfo::errc::store_corrupt);
  const std::string last = R"({"access_token":"a","expires_at":)" + std::to_string(latest_second) + "}";
  auto tokens = store.decode(last);
  CHECK(tokens.expires_at.time_since_epoch() == std::chrono::seconds(latest_second));
  CHECK_FALSE(tokens.expires_within(1h));
}

TEST_CASE("fuzz regression: a Retry-After date after 2262 is a long wait, not an overflow") {
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(784111777));  // 1994-11-06 08:49:37
  // fuzz/regressions/token_response/retry_after_year_9999
  CHECK(cfo::detail::parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) ==
        std::chrono::seconds(253402300799 - 784111777));
  CHECK(cfo::detail::parse_retry_after("Sat, 01 Jan 2300 00:00:00 GMT", now) ==
        std::chrono::seconds(10413792000 - 784111777));

  cfo::http_response res;
  res.status = 429;
  res.headers.add("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT");
  try {
    cfo::detail::parse_token_response(res, {});
    FAIL("a 429 parsed as tokens");
  } catch (const cfo::oauth_error& e) {
    CHECK(e.code() == cfo::errc::rate_limited);
    REQUIRE(e.details().retry_after.has_value());
    CHECK(*e.details().retry_after > std::chrono::hours(24 * 365 * 7000));
  }
}

TEST_CASE("fuzz regression: a bracket in a host outside an IPv6 literal is invalid_url") {
  // fuzz/regressions/url/host_with_bracket: its text read back as another URL.
  for (const char* bad : {"http://a]:b:1/", "http://:]:1", "https://x[y/", "https://[a]b]/"}) {
    CAPTURE(bad);
    CHECK(test_util::thrown_code([&] { cfo::detail::parse_url(bad); }) == cfo::errc::invalid_url);
  }
  auto v6 = cfo::detail::parse_url("http://[::1]:8765/callback");
  CHECK(v6.host == "::1");
  CHECK(cfo::detail::parse_url(v6.str()).authority() == "[::1]:8765");
}

TEST_CASE("fuzz regression: a NUL in a JSON answer is invalid JSON, not the end of it") {
  using namespace std::string_literals;
  using cfo::detail::parse_json;
  // fuzz/regressions/token_response/nul_ends_nlohmann_text: nlohmann::json
  // stops reading at a NUL and accepts what came before.
  const auto number_then_nesting = "1844854775808\0{{{{"s;
  REQUIRE_FALSE(nlohmann::json::parse(number_then_nesting, nullptr, false).is_discarded());
  CHECK(parse_json(number_then_nesting).is_discarded());
  CHECK(parse_json("[\"a\0b\"]"s).is_discarded());  // raw, inside a string: nlohmann's own refusal
  CHECK(parse_json(R"(["a\u0000b"])")[0] == "a\0b"s);  // escaped, it is text

  cfo::http_response res;
  res.status = 200;
  res.body = R"({"access_token":"a","token_type":"Bearer"})"s + "\0<html>"s;
  CHECK(test_util::thrown_code([&] { cfo::detail::parse_token_response(res, {}); }) ==
        cfo::errc::invalid_token_response);
}

}  // namespace test_fuzz_regressions
