// detail::http_parser reading a response, as the transport does (section 7):
// the bytes arrive in pieces whose sizes come from the input, then the peer
// may close. Input: a flags byte (bit 0: the request was HEAD, bit 1: small
// limits that the fuzzer can reach, else the token endpoint's), four piece
// sizes (0: all that is left), then the bytes from the server.
#include "fuzz_common.hpp"

namespace {

using cfo::detail::http_parser;

struct outcome {
  bool done = false;
  std::error_code error;
  bool keep_alive = false;
  cfo::http_response response;
};

void check_response(const cfo::http_response& res, const cfo::detail::http_limits& limits) {
  FUZZ_CHECK(res.body.size() <= limits.max_body_bytes);
  FUZZ_CHECK(res.headers.size() <= limits.max_header_count);
  // Interim responses are skipped; 101 is final (and has no body).
  FUZZ_CHECK(res.status >= 100 && res.status <= 599 && (res.status >= 200 || res.status == 101));
  for (const auto& h : res.headers) {
    FUZZ_CHECK(!h.name.empty());
    FUZZ_CHECK(h.name.find_first_of(std::string_view(" \t\r\n:\0", 6)) == std::string::npos);
    FUZZ_CHECK(h.value.find('\n') == std::string::npos);
  }
}

// Feeds `stream` in pieces; every byte up to the end of the message is used,
// none after it (the transport treats those as a reason not to reuse the connection).
outcome parse(std::string_view stream, const std::uint8_t (&sizes)[4], bool head_request, bool eof,
              const cfo::detail::http_limits& limits) {
  http_parser parser(http_parser::kind::response, limits);
  if (head_request) parser.expect_no_body();
  FUZZ_CHECK(!parser.started());
  for (std::size_t piece = 0; !stream.empty() && !parser.done() && !parser.error(); ++piece) {
    std::size_t n = sizes[piece % 4] == 0 ? stream.size() : std::min<std::size_t>(sizes[piece % 4], stream.size());
    std::size_t used = parser.feed(stream.substr(0, n));
    FUZZ_CHECK(used <= n);
    FUZZ_CHECK(parser.started());
    FUZZ_CHECK(!(parser.done() && parser.error()));
    if (!parser.done() && !parser.error()) FUZZ_CHECK(used == n);
    stream.remove_prefix(n);
  }
  if (parser.done() || parser.error()) FUZZ_CHECK(parser.feed("HTTP/1.1 200 OK\r\n\r\n") == 0);
  if (eof) {
    parser.on_eof();
    FUZZ_CHECK(parser.done() != static_cast<bool>(parser.error()));
  }
  FUZZ_CHECK(!(parser.done() && parser.error()));
  outcome out;
  out.done = parser.done();
  out.error = parser.error();
  out.keep_alive = parser.keep_alive();
  if (out.error) {
    FUZZ_CHECK(out.error.category() == cfo::detail::error_category());
    FUZZ_CHECK(!parser.error_text().empty());
  }
  if (out.keep_alive) FUZZ_CHECK(out.done);
  if (out.done) {
    out.response = parser.take_response();
    check_response(out.response, limits);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  const std::uint8_t flags = in.byte();
  std::uint8_t sizes[4];
  for (auto& s : sizes) s = in.byte();
  const bool head_request = flags & 1;
  cfo::detail::http_limits limits;
  if (flags & 2) {
    limits.max_head_bytes = 512;
    limits.max_header_count = 8;
    limits.max_body_bytes = 256;
  } else {
    limits.max_body_bytes = cfo::client_config{}.max_token_response_bytes;
  }
  const std::string_view stream = in.rest();

  auto pieces = parse(stream, sizes, head_request, true, limits);
  // How the bytes were split must not matter.
  const std::uint8_t whole[4] = {0, 0, 0, 0};
  auto at_once = parse(stream, whole, head_request, true, limits);
  FUZZ_CHECK(pieces.done == at_once.done && pieces.error == at_once.error && pieces.keep_alive == at_once.keep_alive);
  if (pieces.done) {
    FUZZ_CHECK(pieces.response.status == at_once.response.status && pieces.response.reason == at_once.response.reason &&
               pieces.response.body == at_once.response.body &&
               pieces.response.headers.size() == at_once.response.headers.size());
  }
  // A message complete before the close must not depend on the close.
  auto open = parse(stream, sizes, head_request, false, limits);
  if (open.done) FUZZ_CHECK(pieces.done && open.response.body == pieces.response.body);
  return 0;
}
