// Section 5: parse_url, resolve_reference and is_loopback. Input: a URL, a
// newline, then a reference to resolve against it (a pagination link, a
// redirect target).
#include "fuzz_common.hpp"

namespace {

bool same(const cfo::detail::url& a, const cfo::detail::url& b) {
  return a.scheme == b.scheme && a.host == b.host && a.port == b.port && a.target == b.target;
}

// What parse_url accepts is well formed, and its text reads back as itself.
void check_url(const cfo::detail::url& u) {
  FUZZ_CHECK(u.scheme == "http" || u.scheme == "https");
  FUZZ_CHECK(!u.host.empty());
  for (char c : u.host) FUZZ_CHECK(!(c >= 'A' && c <= 'Z') && static_cast<unsigned char>(c) > 0x20);
  FUZZ_CHECK(!u.target.empty() && u.target.front() == '/');
  FUZZ_CHECK(u.target.find('#') == std::string::npos);
  FUZZ_CHECK(u.path().size() <= u.target.size());
  FUZZ_CHECK(u.str() == u.origin() + u.target);
  cfo::detail::url back;
  try {
    back = cfo::detail::parse_url(u.str());
  } catch (const cfo::oauth_error& e) {
    std::fprintf(stderr, "%s does not read back: %s\n", u.str().c_str(), e.what());
    FUZZ_CHECK(!"a parsed URL reads back");
  }
  FUZZ_CHECK(same(back, u));
  (void)cfo::detail::is_loopback(u.host);
  (void)cfo::detail::is_loopback(u.authority());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  const std::string_view base_text = in.until('\n');
  const std::string_view ref = in.rest();
  (void)cfo::detail::is_loopback(base_text);

  cfo::detail::url base;
  try {
    base = cfo::detail::parse_url(base_text);
  } catch (const cfo::oauth_error& e) {
    FUZZ_CHECK(fuzz::errc_of(e) == cfo::errc::invalid_url);
    base = cfo::detail::parse_url("https://api.atlassian.com/ex/confluence/cloud-id/wiki/api/v2/pages?limit=5");
  }
  check_url(base);

  cfo::detail::url resolved;
  try {
    resolved = cfo::detail::resolve_reference(base, ref);
  } catch (const cfo::oauth_error& e) {
    FUZZ_CHECK(fuzz::errc_of(e) == cfo::errc::invalid_url);
    return 0;
  }
  // Only an absolute or scheme-relative reference leaves the base's origin.
  if (ref.find("://") == std::string_view::npos && ref.substr(0, 2) != "//") {
    FUZZ_CHECK(resolved.origin() == base.origin());
    FUZZ_CHECK(!resolved.target.empty() && resolved.target.front() == '/');
  }
  // A resolved reference is not checked yet (the session parses it again
  // before it sends anything): it reads back as itself or is refused.
  try {
    auto again = cfo::detail::parse_url(resolved.str());
    FUZZ_CHECK(same(again, resolved));
    check_url(again);
  } catch (const cfo::oauth_error& e) {
    FUZZ_CHECK(fuzz::errc_of(e) == cfo::errc::invalid_url);
  }
  return 0;
}
