// Section 11 and 12's reading of API answers: fail_api (with api_message and
// is_scope_mismatch, which read the WWW-Authenticate header and the body),
// parse_api_json and parse_sites (accessible-resources). Input: the status code
// on the first line, header lines up to a blank line, then the body.
#include "fuzz_common.hpp"

#include <algorithm>

namespace d = cfo::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  const auto res = fuzz::response_from(in);

  auto message = d::api_message(res);
  FUZZ_CHECK(message.size() <= 303);
  for (unsigned char c : message) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
  const bool scope = d::is_scope_mismatch(res);
  if (scope) FUZZ_CHECK(res.status == 401);

  if (res.status < 200 || res.status >= 300) {
    try {
      d::fail_api(res, "GET https://api.atlassian.com/ex/confluence/cloud-id/wiki/api/v2/pages");
    } catch (const cfo::oauth_error& e) {
      auto ec = fuzz::errc_of(e);
      FUZZ_CHECK(e.details().http_status == res.status && e.details().error_description == message);
      FUZZ_CHECK((ec == cfo::errc::scope_mismatch) == scope);
      if (res.status == 401 && !scope) FUZZ_CHECK(ec == cfo::errc::unauthorized);
    }
    return 0;
  }
  nlohmann::json body;
  try {
    static const auto resources = d::parse_url("https://api.atlassian.com/oauth/token/accessible-resources");
    body = d::parse_api_json(res, "GET", resources);
  } catch (const cfo::oauth_error& e) {
    FUZZ_CHECK(fuzz::errc_of(e) == cfo::errc::protocol_error);
    return 0;
  }
  try {
    auto sites = d::parse_sites(body);
    for (std::size_t i = 0; i < sites.size(); ++i) {
      FUZZ_CHECK(!sites[i].id.empty());
      for (std::size_t j = i + 1; j < sites.size(); ++j) FUZZ_CHECK(sites[i].id != sites[j].id);
      auto& scopes = sites[i].scopes;
      for (std::size_t a = 0; a < scopes.size(); ++a)
        for (std::size_t b = a + 1; b < scopes.size(); ++b) FUZZ_CHECK(scopes[a] != scopes[b]);
      (void)cfo::site::find(sites, sites[i].id);
    }
    try {
      (void)cfo::site::find(sites);  // no key: the only Confluence site, or a list of them
      FUZZ_CHECK(std::count_if(sites.begin(), sites.end(), [](const cfo::site& s) {
                   return std::any_of(s.scopes.begin(), s.scopes.end(),
                                      [](const std::string& scope) { return scope.find("confluence") != std::string::npos; });
                 }) == 1);
    } catch (const cfo::oauth_error& e) {
      FUZZ_CHECK(fuzz::errc_of(e) == cfo::errc::site_not_found);
    }
    if (!sites.empty()) (void)cfo::site::find(sites, sites.front().url);
    (void)cfo::site::find(sites, "example.atlassian.net");
  } catch (const cfo::oauth_error& e) {
    auto ec = fuzz::errc_of(e);
    FUZZ_CHECK(ec == cfo::errc::protocol_error || ec == cfo::errc::site_not_found);
  }
  return 0;
}
