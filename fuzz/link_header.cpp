// Section 12's pagination input: detail::next_link on a Link header, and the
// link it finds resolved against the page it came from, as the pager does for
// a relative link. Input: the header value.
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view header(reinterpret_cast<const char*>(data), size);
  auto link = cfo::detail::next_link(header);
  if (!link) return 0;
  // The link is what stood between a '<' and the first '>' after it.
  FUZZ_CHECK(link->find('>') == std::string::npos);
  FUZZ_CHECK(header.find("<" + *link + ">") != std::string_view::npos);

  static const auto current =
      cfo::detail::parse_url("https://api.atlassian.com/ex/confluence/cloud-id/wiki/api/v2/pages?limit=5");
  if (link->empty() || link->front() == '/' || cfo::detail::is_absolute_url(*link)) return 0;
  try {
    auto next = cfo::detail::resolve_reference(current, *link);
    if (link->find("://") == std::string::npos) FUZZ_CHECK(next.origin() == current.origin());
  } catch (const cfo::oauth_error& e) {
    FUZZ_CHECK(fuzz::errc_of(e) == cfo::errc::invalid_url);
  }
  return 0;
}
