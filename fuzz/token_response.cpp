// Section 9's reading of the token endpoint's answer: parse_token_response,
// with response_details, parse_retry_after and parse_json under it. Input: the
// status code on the first line, header lines up to a blank line, then the body.
#include "fuzz_common.hpp"

namespace {

namespace d = cfo::detail;

// Sent with the request: an echo of either must never reach an error.
const cfo::secret client_secret("S3CR3T-CLIENT-0987654321");
const cfo::secret refresh_token("REFRESH-TOKEN-1234567890");

std::size_t depth(const nlohmann::json& j) {
  std::size_t deepest = 0;
  if (j.is_structured())
    for (const auto& child : j) deepest = std::max(deepest, depth(child));
  return j.is_structured() ? deepest + 1 : 0;
}

bool leaks(std::string_view text) {
  return text.find(client_secret.reveal()) != std::string_view::npos ||
         text.find(refresh_token.reveal()) != std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  const auto res = fuzz::response_from(in);

  // parse_json refuses deep nesting and a NUL (where nlohmann::json stops
  // reading), and otherwise reads what nlohmann::json reads.
  auto limited = d::parse_json(res.body);
  auto plain = nlohmann::json::parse(res.body, nullptr, false);
  const bool has_nul = res.body.find('\0') != std::string::npos;
  if (!limited.is_discarded()) FUZZ_CHECK(limited == plain && depth(limited) <= 64 && !has_nul);
  else if (!plain.is_discarded()) FUZZ_CHECK(depth(plain) > 64 || has_nul);

  const auto now = std::chrono::system_clock::now();
  if (auto retry = res.headers.get("Retry-After")) {
    auto delay = d::parse_retry_after(*retry, now);
    if (delay) FUZZ_CHECK(delay->count() >= 0);
  }
  auto details = d::response_details(res);
  FUZZ_CHECK(details.http_status == res.status && details.www_authenticate.size() <= 303);

  const cfo::secret* sent[] = {&client_secret, &refresh_token};
  try {
    auto tokens = d::parse_token_response(res, sent);
    FUZZ_CHECK(res.status >= 200 && res.status < 300);
    FUZZ_CHECK(!tokens.access_token.empty() && tokens.token_type == "Bearer");
    if (tokens.expires_at != cfo::token_set::clock::time_point::max()) {
      FUZZ_CHECK(tokens.expires_at >= now);
      FUZZ_CHECK(tokens.expires_at <= cfo::token_set::clock::now() + std::chrono::hours(24 * 366 * 10));
    }
  } catch (const cfo::oauth_error& e) {
    auto ec = fuzz::errc_of(e);
    FUZZ_CHECK(ec == cfo::errc::invalid_grant || ec == cfo::errc::invalid_request || ec == cfo::errc::invalid_client ||
               ec == cfo::errc::server_unavailable || ec == cfo::errc::rate_limited ||
               ec == cfo::errc::oauth_error_response || ec == cfo::errc::invalid_token_response);
    FUZZ_CHECK(e.details().http_status == res.status);
    FUZZ_CHECK(!leaks(e.what()) && !leaks(e.details().error) && !leaks(e.details().error_description) && !leaks(e.details().error_uri));
  }
  return 0;
}
