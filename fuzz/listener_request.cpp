// What the redirect listener (section 10) does with a request from the
// network: detail::http_parser kind::request under the listener's limits, then
// parse_callback and match_callback against a fixed authorization, then the
// page it answers with. Input: four piece sizes (0: all that is left), then the
// bytes from the browser.
#include "fuzz_common.hpp"

namespace {

using cfo::detail::http_parser;

const cfo::authorization& fixed_authorization() {
  static const cfo::authorization auth{"https://auth.atlassian.com/authorize?state=Zm9vYmFyLXN0YXRl",
                                       cfo::secret("Zm9vYmFyLXN0YXRl"), cfo::secret{}, "http://127.0.0.1:8765/callback"};
  return auth;
}

std::size_t count(std::string_view s, char c) { return static_cast<std::size_t>(std::count(s.begin(), s.end(), c)); }

// The page must hold no markup but its own: every '<', '>' and quote of the
// text is escaped.
void check_page(std::string_view app, std::string_view title, std::string_view message) {
  auto page = cfo::detail::html_page(app, title, message);
  auto empty = cfo::detail::html_page("", "", "");
  for (char c : {'<', '>', '"', '\''}) FUZZ_CHECK(count(page, c) == count(empty, c));
  // The page goes out whole and a client reads back exactly it.
  auto res = cfo::detail::page_response(400, "Bad Request", page);
  auto bytes = cfo::detail::serialize_response(res);
  http_parser reader(http_parser::kind::response, cfo::detail::http_limits{});
  FUZZ_CHECK(reader.feed(bytes) == bytes.size());
  FUZZ_CHECK(reader.done());
  auto back = reader.take_response();
  FUZZ_CHECK(back.status == 400 && back.body == page);
}

// The listener's route(): how a callback is classified, and what its error carries.
void check_callback(std::string_view target) {
  const auto& auth = fixed_authorization();
  auto params = cfo::detail::parse_callback(target);
  auto match = cfo::detail::match_callback(params, auth);
  switch (match) {
    case cfo::detail::callback_match::code:
      FUZZ_CHECK(!params.code.empty() && params.state && *params.state == auth.state);
      break;
    // Only the authorization's own state answers it, with a code or an error.
    case cfo::detail::callback_match::denied:
      FUZZ_CHECK(params.error == "access_denied" && params.state && *params.state == auth.state);
      break;
    case cfo::detail::callback_match::failed:
      FUZZ_CHECK(!params.error.empty() && params.error != "access_denied" && params.state && *params.state == auth.state);
      break;
    case cfo::detail::callback_match::state_mismatch: FUZZ_CHECK(!params.state || !(*params.state == auth.state)); break;
    case cfo::detail::callback_match::incomplete:
      FUZZ_CHECK(params.error.empty() && params.code.empty() && params.state && *params.state == auth.state);
      break;
  }
  // verify_callback throws exactly what match_callback classified.
  try {
    auto code = cfo::detail::verify_callback(params, auth);
    FUZZ_CHECK(match == cfo::detail::callback_match::code && code == params.code);
  } catch (const cfo::oauth_error& e) {
    auto ec = fuzz::errc_of(e);
    FUZZ_CHECK(match != cfo::detail::callback_match::code);
    if (match == cfo::detail::callback_match::denied) FUZZ_CHECK(ec == cfo::errc::authorization_denied);
    if (match == cfo::detail::callback_match::failed || match == cfo::detail::callback_match::incomplete)
      FUZZ_CHECK(ec == cfo::errc::authorization_failed);
    if (match == cfo::detail::callback_match::state_mismatch) FUZZ_CHECK(ec == cfo::errc::state_mismatch);
    FUZZ_CHECK(e.details().error_description.size() <= 303 && e.details().error_uri.size() <= 303);
    for (const std::string* text : {&e.details().error, &e.details().error_description, &e.details().error_uri})
      for (unsigned char c : *text) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
  }
  // The listener's pages are fixed text; html_page escapes any text all the same.
  check_page("confluence_oauth", "Authorization failed", cfo::detail::sanitize_text(params.error_description, 200));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  std::uint8_t sizes[4];
  for (auto& s : sizes) s = in.byte();
  std::string_view stream = in.rest();

  cfo::detail::http_limits limits;  // as listener_state::serve sets them
  limits.max_head_bytes = 16 * 1024;
  limits.max_header_count = 64;
  limits.max_body_bytes = 16 * 1024;
  http_parser parser(http_parser::kind::request, limits);
  for (std::size_t piece = 0; !stream.empty() && !parser.done() && !parser.error(); ++piece) {
    std::size_t n = sizes[piece % 4] == 0 ? stream.size() : std::min<std::size_t>(sizes[piece % 4], stream.size());
    std::size_t used = parser.feed(stream.substr(0, n));
    FUZZ_CHECK(used <= n);
    FUZZ_CHECK(!(parser.done() && parser.error()));
    if (!parser.done() && !parser.error()) FUZZ_CHECK(used == n);
    stream.remove_prefix(n);
  }
  parser.on_eof();
  FUZZ_CHECK(parser.done() != static_cast<bool>(parser.error()));
  if (parser.error()) {
    FUZZ_CHECK(parser.error().category() == cfo::detail::error_category());
    // Whatever could not be parsed as a request may still be a callback query.
    check_callback(in.rest());
    return 0;
  }
  auto req = parser.take_request();
  FUZZ_CHECK(!req.method.empty() && !req.target.empty());
  FUZZ_CHECK(req.target.find_first_of(" \n") == std::string::npos);
  FUZZ_CHECK(req.body.size() <= limits.max_body_bytes && req.headers.size() <= limits.max_header_count);
  check_callback(req.target);
  return 0;
}
