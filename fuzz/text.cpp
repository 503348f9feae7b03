// Section 3's text helpers on arbitrary bytes: percent_decode, parse_query,
// base64_decode / base64url_encode, html_escape, sanitize_text, parse_uint,
// header_has_token and redact. Input: a byte that picks a length, then the text.
#include "fuzz_common.hpp"

namespace {

namespace d = cfo::detail;

template <typename Int>
void check_uint(std::string_view s) {
  auto v = d::parse_uint<Int>(s);
  if (!v) return;
  FUZZ_CHECK(!s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }));
  auto digits = s.substr(std::min(s.find_first_not_of('0'), s.size() - 1));
  FUZZ_CHECK(std::to_string(*v) == digits);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  const std::size_t max = in.byte();
  const std::string_view text = in.rest();

  auto decoded = d::percent_decode(text);
  FUZZ_CHECK(decoded.size() <= text.size());
  FUZZ_CHECK(d::percent_decode(d::percent_encode(text)) == text);
  for (unsigned char c : d::percent_encode(text)) FUZZ_CHECK(d::is_unreserved(c) || c == '%' || std::isxdigit(c));

  auto params = d::parse_query(text);
  FUZZ_CHECK(params.size() <= static_cast<std::size_t>(std::count(text.begin(), text.end(), '&')) + 1);
  std::string composed;
  for (const auto& [name, value] : params) d::append_param(composed, name, value);
  // Composing the pairs again and parsing that gives the same pairs.
  FUZZ_CHECK(d::parse_query(composed) == params);

  FUZZ_CHECK(d::base64_decode(d::base64url_encode(text)) == std::optional<std::string>(text));
  if (auto raw = d::base64_decode(text)) {
    FUZZ_CHECK(raw->size() <= text.size());
    FUZZ_CHECK(d::base64_decode(d::base64url_encode(*raw)) == raw);
  }

  auto escaped = d::html_escape(text);
  for (std::size_t i = 0; i < escaped.size(); ++i) {
    FUZZ_CHECK(escaped[i] != '<' && escaped[i] != '>' && escaped[i] != '"' && escaped[i] != '\'');
    if (escaped[i] == '&') {
      auto rest = std::string_view(escaped).substr(i);
      FUZZ_CHECK(rest.starts_with("&amp;") || rest.starts_with("&lt;") || rest.starts_with("&gt;") ||
                 rest.starts_with("&quot;") || rest.starts_with("&#39;"));
    }
  }

  auto clean = d::sanitize_text(text, max);
  FUZZ_CHECK(clean.size() <= max + 3);
  for (unsigned char c : clean) FUZZ_CHECK(c >= 0x20 && c != 0x7f);

  check_uint<std::uint16_t>(text);
  check_uint<std::uint32_t>(text);
  check_uint<std::uint64_t>(text);
  check_uint<int>(text);

  (void)d::header_has_token(text, "close");
  FUZZ_CHECK(d::iequals(text, text) && d::trim(text).size() <= text.size());

  // A secret that shares no character with the mark cannot be rebuilt around it.
  auto secret_text = text.substr(0, std::min<std::size_t>(max % 16, text.size()));
  cfo::secret s(secret_text);
  const cfo::secret* secrets[] = {&s};
  auto redacted = d::redact(std::string(text), secrets);
  if (secret_text.size() >= 4 && secret_text.find_first_of("[redacted]") == std::string_view::npos)
    FUZZ_CHECK(redacted.find(secret_text) == std::string::npos);
  return 0;
}
