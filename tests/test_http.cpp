// The HTTP/1.1 parser (detail::http_parser) on buffers, and the client's handling of
// malformed, truncated, oversized, silent and trickling responses over real sockets.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "test_util.hpp"

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

// Its own namespace, so that the unity build can put test files together.
namespace test_http {

namespace {

namespace cfo = confluence_oauth;
using cfo::errc;
using parser = cfo::detail::http_parser;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Parser harness: the same bytes fed whole, byte by byte, and split in two at
// every position. Each way of feeding must give the same outcome.
// ---------------------------------------------------------------------------

struct outcome {
  std::string how;  // which way the bytes were fed
  std::error_code ec;
  std::string error_text;
  bool done = false;
  bool started = false;
  bool keep_alive = false;
  std::size_t used = 0;
  cfo::http_response res;
  cfo::http_request req;
};

struct parse_options {
  parser::kind kind = parser::kind::response;
  cfo::detail::http_limits limits{};
  bool eof = false;      // the peer closes after the bytes
  bool head = false;     // the response answers a HEAD request
};

outcome finish(parser& p, outcome o, const parse_options& opt) {
  if (opt.eof) p.on_eof();
  o.ec = p.error();
  o.error_text = p.error_text();
  o.done = p.done();
  o.started = p.started();
  o.keep_alive = p.keep_alive();
  if (o.done) {
    if (opt.kind == parser::kind::response)
      o.res = p.take_response();
    else
      o.req = p.take_request();
  }
  return o;
}

// Feeds `pieces` in order, stopping once the message is done or has failed.
outcome feed_pieces(std::string how, const std::vector<std::string_view>& pieces, const parse_options& opt) {
  parser p(opt.kind, opt.limits);
  if (opt.head) p.expect_no_body();
  outcome o;
  o.how = std::move(how);
  for (auto piece : pieces) {
    if (p.done() || p.error()) break;
    o.used += p.feed(piece);
  }
  return finish(p, std::move(o), opt);
}

std::vector<outcome> parse_all_ways(std::string_view bytes, const parse_options& opt = {}) {
  std::vector<outcome> out;
  out.push_back(feed_pieces("whole", {bytes}, opt));
  std::vector<std::string_view> bytewise;
  for (std::size_t i = 0; i < bytes.size(); ++i) bytewise.push_back(bytes.substr(i, 1));
  out.push_back(feed_pieces("byte by byte", bytewise, opt));
  if (bytes.size() <= 2048) {
    for (std::size_t i = 1; i < bytes.size(); ++i)
      out.push_back(feed_pieces("split at " + std::to_string(i), {bytes.substr(0, i), bytes.substr(i)}, opt));
  }
  return out;
}

// Asserts that every way of feeding `bytes` fails with `expected`, with an explanation.
void expect_parse_error(std::string_view bytes, errc expected, const parse_options& opt = {}) {
  for (const auto& o : parse_all_ways(bytes, opt)) {
    CAPTURE(o.how);
    CAPTURE(bytes);
    CHECK(o.ec == expected);
    CHECK_FALSE(o.done);
    CHECK_FALSE(o.error_text.empty());
  }
}

// Asserts that every way of feeding `bytes` completes one response and returns it
// (from the whole-buffer feed).
cfo::http_response expect_response(std::string_view bytes, const parse_options& opt = {}) {
  auto all = parse_all_ways(bytes, opt);
  for (const auto& o : all) {
    CAPTURE(o.how);
    CAPTURE(o.error_text);
    CHECK_FALSE(o.ec);
    CHECK(o.done);
    CHECK(o.res.status == all.front().res.status);
    CHECK(o.res.body == all.front().res.body);
    CHECK(o.res.headers.size() == all.front().res.headers.size());
    CHECK(o.keep_alive == all.front().keep_alive);
  }
  return std::move(all.front().res);
}

}  // namespace

TEST_SUITE("http") {

// ---------------------------------------------------------------------------
// 1. The parser on buffers
// ---------------------------------------------------------------------------

TEST_CASE("parser reads a Content-Length body") {
  const std::string bytes =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nX-Multi: a\r\n"
      "x-multi: b\r\n\r\n{\"ok\":true}";
  for (const auto& o : parse_all_ways(bytes)) {
    CAPTURE(o.how);
    REQUIRE(o.done);
    CHECK_FALSE(o.ec);
    CHECK(o.used == bytes.size());
    CHECK(o.keep_alive);
    CHECK(o.res.status == 200);
    CHECK(o.res.reason == "OK");
    CHECK(o.res.body == "{\"ok\":true}");
    CHECK(o.res.headers.get("content-type") == std::optional<std::string_view>("application/json"));
    CHECK(o.res.headers.count("X-MULTI") == 2);
    CHECK(o.res.headers.get("X-Multi") == std::optional<std::string_view>("a"));
    CHECK_FALSE(o.res.headers.get("Missing").has_value());
  }
}

TEST_CASE("parser is not done before the whole Content-Length body arrived") {
  parser p(parser::kind::response, {});
  std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
  CHECK(p.feed(head) == head.size());
  CHECK_FALSE(p.done());
  CHECK_FALSE(p.error());
  CHECK(p.started());
  CHECK_FALSE(p.keep_alive());  // only once done
  CHECK(p.feed("lo") == 2);
  CHECK(p.done());
  CHECK(p.keep_alive());
  CHECK(p.take_response().body == "hello");
}

TEST_CASE("parser reads a status line without a reason phrase and a zero length body") {
  auto res = expect_response("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
  CHECK(res.status == 200);
  CHECK(res.reason.empty());
  CHECK(res.body.empty());
}

TEST_CASE("parser stops at the end of one message and leaves pipelined bytes unconsumed") {
  const std::string first = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none";
  const std::string second = "HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo";
  const std::string both = first + second;
  parser p(parser::kind::response, {});
  std::size_t used = p.feed(both);
  CHECK(used == first.size());
  REQUIRE(p.done());
  CHECK(p.take_response().body == "one");
  CHECK(p.feed(std::string_view(both).substr(used)) == 0);  // done: takes nothing more

  parser next(parser::kind::response, {});
  CHECK(next.feed(std::string_view(both).substr(used)) == second.size());
  REQUIRE(next.done());
  auto res = next.take_response();
  CHECK(res.status == 201);
  CHECK(res.body == "two");
}

TEST_CASE("parser decodes chunked bodies with extensions and trailers") {
  const std::string bytes =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
      "5;name=value\r\nhello\r\n"
      "1 ; ext\r\n \r\n"
      "A\r\n0123456789\r\n"
      "0;last\r\nX-Trailer: yes\r\nX-Checksum: abc\r\n\r\n";
  for (const auto& o : parse_all_ways(bytes)) {
    CAPTURE(o.how);
    CAPTURE(o.error_text);
    REQUIRE(o.done);
    CHECK(o.used == bytes.size());
    CHECK(o.keep_alive);
    CHECK(o.res.body == "hello 0123456789");
    CHECK(o.res.headers.get("Content-Type") == std::optional<std::string_view>("text/plain"));
    CHECK_FALSE(o.res.headers.get("X-Trailer").has_value());  // trailers are discarded
  }
}

TEST_CASE("parser accepts Transfer-Encoding chunked in any case and an empty chunked body") {
  auto res = expect_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n");
  CHECK(res.status == 200);
  CHECK(res.body.empty());
}

TEST_CASE("parser completes a close-delimited body on eof") {
  const std::string bytes = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
  for (const auto& o : parse_all_ways(bytes)) {  // without eof: still waiting
    CAPTURE(o.how);
    CHECK_FALSE(o.done);
    CHECK_FALSE(o.ec);
  }
  for (const auto& o : parse_all_ways(bytes, {.eof = true})) {
    CAPTURE(o.how);
    REQUIRE(o.done);
    CHECK_FALSE(o.ec);
    CHECK(o.res.body == "until the end");
    CHECK_FALSE(o.keep_alive);  // the connection ends with the body
  }
  auto empty = parse_all_ways("HTTP/1.0 200 OK\r\n\r\n", {.eof = true});
  for (const auto& o : empty) {
    CAPTURE(o.how);
    CHECK(o.done);
    CHECK(o.res.body.empty());
  }
}

TEST_CASE("parser skips 1xx interim responses") {
  const std::string bytes =
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok";
  for (const auto& o : parse_all_ways(bytes)) {
    CAPTURE(o.how);
    REQUIRE(o.done);
    CHECK(o.used == bytes.size());
    CHECK(o.res.status == 200);
    CHECK(o.res.reason == "OK");
    CHECK(o.res.body == "ok");
    CHECK(o.res.headers.size() == 2);
    CHECK_FALSE(o.res.headers.get("Link").has_value());
  }
  // An interim response alone is not a response.
  for (const auto& o : parse_all_ways("HTTP/1.1 100 Continue\r\n\r\n")) {
    CAPTURE(o.how);
    CHECK_FALSE(o.done);
    CHECK_FALSE(o.ec);
  }
}

TEST_CASE("parser skips blank lines before a message") {
  auto res = expect_response("\r\n\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
  CHECK(res.status == 200);
  CHECK(res.body == "x");
}

TEST_CASE("parser gives 204 and 304 responses no body") {
  for (std::string status : {"204 No Content", "304 Not Modified"}) {
    CAPTURE(status);
    const std::string head = "HTTP/1.1 " + status + "\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n";
    const std::string bytes = head + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";  // the next response
    for (const auto& o : parse_all_ways(bytes)) {
      CAPTURE(o.how);
      REQUIRE(o.done);
      CHECK(o.used == head.size());
      CHECK(o.res.body.empty());
      CHECK(o.keep_alive);
    }
  }
  for (const auto& o : parse_all_ways("HTTP/1.1 204 No Content\r\n\r\n")) {  // no framing header at all
    CAPTURE(o.how);
    CHECK(o.done);
    CHECK(o.keep_alive);
  }
}

TEST_CASE("parser gives responses to HEAD no body whatever the headers say") {
  for (std::string framing : {"Content-Length: 1234", "Transfer-Encoding: chunked", "X-None: 1"}) {
    CAPTURE(framing);
    const std::string bytes = "HTTP/1.1 200 OK\r\n" + framing + "\r\n\r\n";
    for (const auto& o : parse_all_ways(bytes, {.head = true})) {
      CAPTURE(o.how);
      REQUIRE(o.done);
      CHECK(o.used == bytes.size());
      CHECK(o.res.status == 200);
      CHECK(o.res.body.empty());
    }
  }
  // The same response to a GET waits for its body.
  parser p(parser::kind::response, {});
  p.feed("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
  CHECK_FALSE(p.done());
}

TEST_CASE("parser accepts bare LF line endings") {
  auto res = expect_response("HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok");
  CHECK(res.status == 200);
  CHECK(res.body == "ok");
  CHECK(res.headers.get("X-A") == std::optional<std::string_view>("b"));

  auto chunked = expect_response("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n2;x=y\nde\n0\nX-T: 1\n\n");
  CHECK(chunked.body == "abcde");

  auto mixed = expect_response("HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok");
  CHECK(mixed.body == "ok");
}

TEST_CASE("parser keep_alive follows the HTTP version and the Connection header") {
  struct row {
    const char* head;
    bool keep_alive;
  };
  const row rows[] = {
      {"HTTP/1.1 200 OK\r\n", true},
      {"HTTP/1.1 200 OK\r\nConnection: close\r\n", false},
      {"HTTP/1.1 200 OK\r\nConnection: Close\r\n", false},
      {"HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\n", false},
      {"HTTP/1.1 200 OK\r\nConnection: closed\r\n", true},  // a different token
      {"HTTP/1.0 200 OK\r\n", false},
      {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n", true},
      {"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n", true},
  };
  for (const auto& r : rows) {
    const std::string bytes = std::string(r.head) + "Content-Length: 2\r\n\r\nok";
    CAPTURE(bytes);
    for (const auto& o : parse_all_ways(bytes)) {
      CAPTURE(o.how);
      REQUIRE(o.done);
      CHECK(o.keep_alive == r.keep_alive);
    }
  }
}

TEST_CASE("parser reads requests with method target headers and body") {
  const std::string post =
      "POST /oauth/token?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
      "Content-Length: 13\r\n\r\n{\"a\":\"bcd\"}\r\n";
  for (const auto& o : parse_all_ways(post, {.kind = parser::kind::request})) {
    CAPTURE(o.how);
    REQUIRE(o.done);
    CHECK(o.used == post.size());
    CHECK(o.keep_alive);
    CHECK(o.req.method == "POST");
    CHECK(o.req.target == "/oauth/token?x=1&y=%20");
    CHECK(o.req.headers.get("host") == std::optional<std::string_view>("example.com"));
    CHECK(o.req.body == "{\"a\":\"bcd\"}\r\n");
  }

  // No framing header: a request has no body (not close-delimited).
  const std::string get = "GET /callback?code=abc HTTP/1.0\r\nHost: localhost\r\n\r\n";
  for (const auto& o : parse_all_ways(get, {.kind = parser::kind::request})) {
    CAPTURE(o.how);
    REQUIRE(o.done);
    CHECK(o.used == get.size());
    CHECK_FALSE(o.keep_alive);
    CHECK(o.req.method == "GET");
    CHECK(o.req.target == "/callback?code=abc");
    CHECK(o.req.body.empty());
  }

  const std::string chunked = "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n";
  for (const auto& o : parse_all_ways(chunked, {.kind = parser::kind::request})) {
    CAPTURE(o.how);
    REQUIRE(o.done);
    CHECK(o.req.method == "PUT");
    CHECK(o.req.body == "body");
  }
}

TEST_CASE("parser rejects malformed request lines") {
  for (std::string line : {"GET /", "GET / HTTP/2.0", "GET  / HTTP/1.1", "GET / x HTTP/1.1", " / HTTP/1.1",
                           "GET HTTP/1.1", "garbage"}) {
    expect_parse_error(line + "\r\nHost: x\r\n\r\n", errc::protocol_error, {.kind = parser::kind::request});
  }
}

TEST_CASE("parser rejects malformed status lines") {
  for (std::string line : {"HTTP/1.1 abc OK", "HTTP/2 200 OK", "HTTP/2 200", "HTTP/2.0 200 OK", "HTTP/1.2 200 OK",
                           "http/1.1 200 OK", "ICY 200 OK", "garbage", "HTTP/1.1", "HTTP/1.1 ", "HTTP/1.1 20 OK",
                           "HTTP/1.1 2000 OK", "HTTP/1.1 200OK", "HTTP/1.1  200 OK", "HTTP/1.1 099 Low",
                           "HTTP/1.1 600 High", "HTTP/1.1 -20 OK", "HTTP/1.1 +20 OK", "\x16\x03\x01\x02"}) {
    expect_parse_error(line + "\r\nContent-Length: 0\r\n\r\n", errc::protocol_error);
  }
}

TEST_CASE("parser rejects invalid chunk sizes") {
  for (std::string size : {"zz", "", " ", "-1", "+1", "0x5", "5 5", "g", ";ext", "1ffffffffffffffffff"}) {
    CAPTURE(size);
    expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + "\r\nhello\r\n0\r\n\r\n",
                       errc::protocol_error);
  }
  // A chunk size line that never ends.
  expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5" + std::string(2000, ' '),
                     errc::protocol_error);
}

TEST_CASE("parser rejects a chunk not followed by CRLF") {
  for (std::string after : {"XX", "X\r\n", "\r\r\n", "  \r\n"}) {
    CAPTURE(after);
    expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello" + after + "0\r\n\r\n",
                       errc::protocol_error);
  }
}

TEST_CASE("parser rejects Transfer-Encoding together with Content-Length") {
  expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                     errc::protocol_error);
  expect_parse_error("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
                     errc::protocol_error);
  expect_parse_error("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                     errc::protocol_error, {.kind = parser::kind::request});
}

TEST_CASE("parser rejects transfer codings other than chunked") {
  for (std::string te : {"gzip", "gzip, chunked", "chunked, gzip", "identity"}) {
    CAPTURE(te);
    expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te + "\r\n\r\n0\r\n\r\n", errc::protocol_error);
  }
}

TEST_CASE("parser rejects conflicting and non-numeric Content-Length") {
  expect_parse_error("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", errc::protocol_error);
  for (std::string value : {"abc", "-1", "+5", "5, 5", "1 2", "0x10", "5.0", "", "99999999999999999999999"}) {
    CAPTURE(value);
    expect_parse_error("HTTP/1.1 200 OK\r\nContent-Length: " + value + "\r\n\r\nhello", errc::protocol_error);
  }
  // The same length twice is harmless.
  auto res = expect_response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length:  5 \r\n\r\nhello");
  CHECK(res.body == "hello");
}

TEST_CASE("parser rejects malformed header lines") {
  for (std::string line : {"NoColon", ": empty name", "Bad Name: v", "Name : v", "Na\"me: v", "Na(me: v",
                           "Name\x01: v", "N\xc3\xa4me: v"}) {
    CAPTURE(line);
    expect_parse_error("HTTP/1.1 200 OK\r\n" + line + "\r\nContent-Length: 0\r\n\r\n", errc::protocol_error);
  }
}

TEST_CASE("parser rejects obsolete line folding") {
  expect_parse_error("HTTP/1.1 200 OK\r\nX-Folded: first\r\n second\r\nContent-Length: 0\r\n\r\n", errc::protocol_error);
  expect_parse_error("HTTP/1.1 200 OK\r\nX-Folded: first\r\n\tsecond\r\nContent-Length: 0\r\n\r\n", errc::protocol_error);
  expect_parse_error("HTTP/1.1 200 OK\r\n Leading: space\r\nContent-Length: 0\r\n\r\n", errc::protocol_error);
}

TEST_CASE("parser enforces max_head_bytes") {
  const std::string head = "HTTP/1.1 200 OK\r\nX-Pad: " + std::string(100, 'p') + "\r\nContent-Length: 0\r\n\r\n";
  cfo::detail::http_limits exact;
  exact.max_head_bytes = head.size();
  expect_response(head, {.limits = exact});  // exactly at the limit is fine

  cfo::detail::http_limits tight;
  tight.max_head_bytes = head.size() - 1;
  expect_parse_error(head, errc::header_too_large, {.limits = tight});

  // A head that never ends, even without any line break, stops at the limit.
  cfo::detail::http_limits small;
  small.max_head_bytes = 256;
  expect_parse_error(std::string(1000, 'x'), errc::header_too_large, {.limits = small});
  expect_parse_error("HTTP/1.1 200 OK\r\n" + std::string(1000, 'x'), errc::header_too_large, {.limits = small});

  // The default limit (64 KiB).
  parser p(parser::kind::response, {});
  p.feed("HTTP/1.1 200 OK\r\nX-Big: " + std::string(70 * 1024, 'b') + "\r\n\r\n");
  CHECK(p.error() == errc::header_too_large);
}

TEST_CASE("parser enforces max_header_count") {
  cfo::detail::http_limits limits;
  limits.max_header_count = 3;
  expect_response("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n", {.limits = limits});
  expect_parse_error("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nContent-Length: 0\r\n\r\n", errc::header_too_large,
                     {.limits = limits});
  // Interim responses do not spend the count of the final one.
  expect_response("HTTP/1.1 103 Early Hints\r\nL: 1\r\nL: 2\r\nL: 3\r\n\r\n"
                  "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n",
                  {.limits = limits});
}

TEST_CASE("parser rejects a Content-Length over max_body_bytes before the body arrives") {
  cfo::detail::http_limits limits;
  limits.max_body_bytes = 100;
  // Only the head: the error is already there.
  expect_parse_error("HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", errc::body_too_large, {.limits = limits});
  expect_parse_error("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n", errc::body_too_large,
                     {.limits = limits});
  auto ok = expect_response("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + std::string(100, 'b'),
                            {.limits = limits});
  CHECK(ok.body.size() == 100);
  // The default limit is 8 MiB.
  parser p(parser::kind::response, {});
  p.feed("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(8 * 1024 * 1024 + 1) + "\r\n\r\n");
  CHECK(p.error() == errc::body_too_large);
}

TEST_CASE("parser rejects chunked bodies whose total is over max_body_bytes") {
  cfo::detail::http_limits limits;
  limits.max_body_bytes = 10;
  auto ok = expect_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n",
                            {.limits = limits});
  CHECK(ok.body == "abcdefghij");
  // No single chunk is too large, but together they are; detected at the second size line.
  expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\n", errc::body_too_large,
                     {.limits = limits});
  expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n", errc::body_too_large,
                     {.limits = limits});
}

TEST_CASE("parser rejects close-delimited bodies over max_body_bytes") {
  cfo::detail::http_limits limits;
  limits.max_body_bytes = 10;
  expect_parse_error("HTTP/1.1 200 OK\r\n\r\n" + std::string(11, 'x'), errc::body_too_large, {.limits = limits});
  auto ok = expect_response("HTTP/1.1 200 OK\r\n\r\n" + std::string(10, 'x'), {.limits = limits, .eof = true});
  CHECK(ok.body.size() == 10);
}

TEST_CASE("parser rejects trailers over max_head_bytes") {
  cfo::detail::http_limits limits;
  limits.max_head_bytes = 128;
  std::string trailers;
  for (int i = 0; i < 10; ++i) trailers += "X-T" + std::to_string(i) + ": " + std::string(20, 't') + "\r\n";
  expect_parse_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + trailers + "\r\n",
                     errc::header_too_large, {.limits = limits});
}

TEST_CASE("parser reports eof mid-message as connection_closed") {
  const std::string truncated[] = {
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly",                       // mid body
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",                           // before the body
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",           // mid chunk
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",     // before the last chunk
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n",    // mid trailers
      "HTTP/1.1 200 OK\r\nContent-Len",                                          // mid head
      "HTTP/1.1 100 Continue\r\n\r\n",                                           // only an interim response
  };
  for (const auto& bytes : truncated) {
    for (const auto& o : parse_all_ways(bytes, {.eof = true})) {
      CAPTURE(o.how);
      CAPTURE(bytes);
      CHECK(o.ec == errc::connection_closed);
      CHECK(o.started);
      CHECK_FALSE(o.done);
      CHECK(o.error_text.find("before the message was complete") != std::string::npos);
    }
  }
}

TEST_CASE("parser reports eof before any byte as connection_closed") {
  parser p(parser::kind::response, {});
  CHECK(p.feed("") == 0);
  CHECK_FALSE(p.started());
  p.on_eof();
  CHECK(p.error() == errc::connection_closed);
  CHECK(p.error() == cfo::remedy::retry_later);
  CHECK_FALSE(p.done());
  CHECK(p.error_text().find("before any response") != std::string::npos);
}

TEST_CASE("parser errors are final") {
  parser p(parser::kind::response, {});
  p.feed("HTTP/9 200 OK\r\n\r\n");
  REQUIRE(p.error() == errc::protocol_error);
  CHECK(p.feed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == 0);
  p.on_eof();
  CHECK(p.error() == errc::protocol_error);
  CHECK_FALSE(p.done());
}

TEST_CASE("parser hands out the rest of a Content-Length body to be read straight into") {
  parser p(parser::kind::response, cfo::detail::http_limits{});
  const std::string_view head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123";
  CHECK(p.feed(head) == head.size());
  auto space = p.body_space();
  REQUIRE(space.size() == 6);
  std::memcpy(space.data(), "456", 3);
  p.body_received(3);
  CHECK_FALSE(p.done());
  space = p.body_space();
  REQUIRE(space.size() == 3);
  std::memcpy(space.data(), "789", 3);
  p.body_received(3);
  CHECK(p.done());
  CHECK(p.body_space().empty());
  CHECK(p.take_response().body == "0123456789");
}

TEST_CASE("parser has no body space for a chunked or close-delimited body") {
  parser chunked(parser::kind::response, cfo::detail::http_limits{});
  chunked.feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
  CHECK(chunked.body_space().empty());
  parser to_close(parser::kind::response, cfo::detail::http_limits{});
  to_close.feed("HTTP/1.1 200 OK\r\n\r\n");
  CHECK(to_close.body_space().empty());
}

TEST_CASE("serialize_head writes the URL target the Host header and Content-Length") {
  cfo::http_request req;
  req.method = "POST";
  req.target = "/ignored";  // the request line uses the URL's target
  req.headers.add("Content-Type", "application/json");
  req.body = "{}";
  auto head = cfo::detail::serialize_head(req, cfo::detail::parse_url("https://auth.atlassian.com/oauth/token?a=b"));
  CHECK(head ==
        "POST /oauth/token?a=b HTTP/1.1\r\nHost: auth.atlassian.com\r\nContent-Type: application/json\r\n"
        "Content-Length: 2\r\n\r\n");

  // The serialized head parses back to the same request.
  parser p(parser::kind::request, {});
  p.feed(head + req.body);
  REQUIRE(p.done());
  auto back = p.take_request();
  CHECK(back.method == "POST");
  CHECK(back.target == "/oauth/token?a=b");
  CHECK(back.headers.get("Host") == std::optional<std::string_view>("auth.atlassian.com"));
  CHECK(back.body == "{}");

  cfo::http_request get;
  CHECK(cfo::detail::serialize_head(get, cfo::detail::parse_url("http://[::1]:8080/x")) ==
        "GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
  CHECK(cfo::detail::serialize_head(get, cfo::detail::parse_url("http://127.0.0.1:80?q=1")) ==
        "GET /?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  cfo::http_request empty_post;
  empty_post.method = "POST";
  CHECK(cfo::detail::serialize_head(empty_post, cfo::detail::parse_url("https://h:443/")).find("Content-Length: 0\r\n") !=
        std::string::npos);
}

}  // TEST_SUITE("http")

// ---------------------------------------------------------------------------
// 2. The client against servers that misbehave, over real loopback sockets
// ---------------------------------------------------------------------------

namespace {

// What a raw server does with each connection, once it has read a request head.
struct raw_plan {
  std::string response;                  // bytes to write
  std::chrono::milliseconds trickle{0};  // pause before each byte (0: all at once)
  bool answer = true;                    // false: read and say nothing until the client goes away
};

// A TCP server on 127.0.0.1:0 on the test's own io_context. Each accepted
// connection gets the plan; after the response it half-closes (FIN) and drains,
// so the client sees a clean eof rather than a reset. stop() (or the destructor)
// closes everything so the io_context runs out of work.
class raw_server {
 public:
  raw_server(asio::any_io_executor ex, raw_plan plan) : st_(std::make_shared<state>(ex, std::move(plan))) {
    asio::co_spawn(ex, accept_loop(st_), asio::detached);
  }
  ~raw_server() { stop(); }
  raw_server(const raw_server&) = delete;
  raw_server& operator=(const raw_server&) = delete;

  cfo::detail::url url(const std::string& target = "/x") const {
    return cfo::detail::parse_url("http://127.0.0.1:" + std::to_string(st_->port) + target);
  }
  int connections() const { return st_->connections; }
  int requests() const { return st_->requests; }

  void stop() {
    std::error_code ignored;
    st_->acceptor.close(ignored);
    for (auto& s : st_->sockets) s->close(ignored);
    st_->timer.cancel();
  }

 private:
  struct state {
    state(asio::any_io_executor ex, raw_plan p)
        : acceptor(ex, {asio::ip::make_address("127.0.0.1"), 0}), timer(ex), plan(std::move(p)) {
      port = acceptor.local_endpoint().port();
    }
    asio::ip::tcp::acceptor acceptor;
    asio::steady_timer timer;
    raw_plan plan;
    unsigned short port = 0;
    int connections = 0;
    int requests = 0;
    std::vector<std::shared_ptr<asio::ip::tcp::socket>> sockets;
  };

  static asio::awaitable<void> accept_loop(std::shared_ptr<state> st) {
    for (;;) {
      auto [ec, socket] = co_await st->acceptor.async_accept(cfo::detail::use_tuple);
      if (ec) co_return;
      ++st->connections;
      auto s = std::make_shared<asio::ip::tcp::socket>(std::move(socket));
      st->sockets.push_back(s);
      co_await serve(st, s);  // one connection at a time is all these tests need
    }
  }

  static asio::awaitable<void> serve(std::shared_ptr<state> st, std::shared_ptr<asio::ip::tcp::socket> s) {
    std::string in;
    auto [rec, n] = co_await asio::async_read_until(*s, asio::dynamic_buffer(in), "\r\n\r\n", cfo::detail::use_tuple);
    if (rec) co_return;
    ++st->requests;
    std::error_code ec;
    if (st->plan.answer) {
      if (st->plan.trickle.count() == 0) {
        std::tie(ec, n) = co_await asio::async_write(*s, asio::buffer(st->plan.response), cfo::detail::use_tuple);
      } else {
        for (char c : st->plan.response) {
          st->timer.expires_after(st->plan.trickle);
          std::tie(ec) = co_await st->timer.async_wait(cfo::detail::use_tuple);
          if (ec || !s->is_open()) break;
          std::tie(ec, n) = co_await asio::async_write(*s, asio::buffer(&c, 1), cfo::detail::use_tuple);
          if (ec) break;
        }
      }
      s->shutdown(asio::ip::tcp::socket::shutdown_send, ec);
    }
    // Drain until the client closes (or stop()).
    std::array<char, 4096> sink;
    for (;;) {
      auto [dec, dn] = co_await s->async_read_some(asio::buffer(sink), cfo::detail::use_tuple);
      if (dec) break;
    }
    s->close(ec);
  }

  std::shared_ptr<state> st_;
};

struct attempt {
  std::optional<cfo::http_response> response;
  std::error_code ec;
  std::string what;
  std::chrono::milliseconds elapsed{0};
  std::size_t idle = 0;        // client.idle_connections() afterwards
  int server_requests = 0;
};

// One GET through a fresh http_client to a raw server following `plan`.
attempt fetch_from(raw_plan plan, std::chrono::milliseconds request_timeout = 5s, cfo::detail::http_limits limits = {}) {
  return test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<attempt> {
        raw_server srv(ex, std::move(plan));
        cfo::detail::http_client client(ex, cfo::client_config::tls_options{}, cfo::client_config::http_timeouts{request_timeout, 30s});
        const auto u = srv.url("/x");
        cfo::http_request req;
        req.target = u.target;
        attempt a;
        const auto start = steady::now();
        try {
          a.response = co_await client.send(u, req, limits);
        } catch (const cfo::oauth_error& e) {
          a.ec = e.code();
          a.what = e.what();
        }
        a.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
        a.idle = client.idle_connections();
        a.server_requests = srv.requests();
        co_return a;
      },
      30s);
}

// One GET through a client that trusts the fake server's CA.
attempt fetch_from_fake(fake_atlassian::server& srv, const std::string& path, std::chrono::milliseconds timeout = 5s) {
  return test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<attempt> {
        cfo::client_config::tls_options tls;
        tls.ca_pem = srv.ca_pem();
        cfo::detail::http_client client(ex, tls, cfo::client_config::http_timeouts{timeout, 30s});
        const auto u = cfo::detail::parse_url(srv.base_url() + path);
        cfo::http_request req;
        req.target = u.target;
        attempt a;
        const auto start = steady::now();
        try {
          a.response = co_await client.send(u, req);
        } catch (const cfo::oauth_error& e) {
          a.ec = e.code();
          a.what = e.what();
        }
        a.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
        a.idle = client.idle_connections();
        co_return a;
      },
      30s);
}

}  // namespace

TEST_SUITE("http") {

TEST_CASE("client reads a well-formed response from the raw test server") {
  // The control case: the harness itself works, so the failures below are the client's verdicts.
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"});
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->status == 200);
  CHECK(a.response->body == "hello");
  CHECK(a.idle == 1);  // kept alive
  CHECK(a.server_requests == 1);
}

TEST_CASE("client reads a body many times its receive buffer, head and body in one write") {
  std::string body(300 * 1024, '\0');
  for (std::size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>('a' + i % 26);
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body});
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->body == body);
  CHECK(a.idle == 1);
}

TEST_CASE("client reports a bad status line as protocol_error") {
  auto a = fetch_from({.response = "HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n"});
  CAPTURE(a.what);
  CHECK_FALSE(a.response);
  CHECK(a.ec == errc::protocol_error);
  CHECK(a.ec == cfo::remedy::retry_later);
  CHECK(a.idle == 0);
  auto b = fetch_from({.response = "SSH-2.0-OpenSSH_9.6\r\n\r\n"});
  CHECK(b.ec == errc::protocol_error);
}

TEST_CASE("client reports a bad chunk size as protocol_error") {
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"});
  CAPTURE(a.what);
  CHECK(a.ec == errc::protocol_error);
  CHECK(a.idle == 0);
}

TEST_CASE("client reports a Content-Length longer than the bytes sent as connection_closed") {
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a few bytes"});
  CAPTURE(a.what);
  CHECK(a.ec == errc::connection_closed);
  CHECK(a.idle == 0);
}

TEST_CASE("client reports a connection closed mid chunked body as connection_closed") {
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"});
  CAPTURE(a.what);
  CHECK(a.ec == errc::connection_closed);
}

TEST_CASE("client reports a connection closed without any response as connection_closed") {
  auto a = fetch_from({.response = ""});
  CAPTURE(a.what);
  CHECK(a.ec == errc::connection_closed);
  CHECK(a.server_requests == 1);  // a fresh connection is not retried
}

TEST_CASE("client completes a close-delimited response and does not pool its connection") {
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"});
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->body == "all of it");
  CHECK(a.idle == 0);
}

TEST_CASE("client does not pool a connection that has bytes after the response") {
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"});
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->body == "ok");
  CHECK(a.idle == 0);
}

TEST_CASE("client reports oversized response headers as header_too_large") {
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nX-Huge: " + std::string(70 * 1024, 'h') +
                                   "\r\nContent-Length: 0\r\n\r\n"});
  CAPTURE(a.what);
  CHECK(a.ec == errc::header_too_large);
  CHECK(a.idle == 0);

  cfo::detail::http_limits limits;
  limits.max_head_bytes = 100;
  auto b = fetch_from({.response = "HTTP/1.1 200 OK\r\nX-Pad: " + std::string(100, 'p') + "\r\nContent-Length: 0\r\n\r\n"},
                      5s, limits);
  CHECK(b.ec == errc::header_too_large);
}

TEST_CASE("client reports an oversized Content-Length as body_too_large") {
  cfo::detail::http_limits limits;
  limits.max_body_bytes = 1000;
  auto a = fetch_from({.response = "HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n"}, 5s, limits);
  CAPTURE(a.what);
  CHECK(a.ec == errc::body_too_large);
  auto b = fetch_from({.response = "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"});
  CHECK(b.ec == errc::body_too_large);
}

TEST_CASE("client times out on a server that accepts and never answers") {
  auto a = fetch_from({.response = "", .trickle = 0ms, .answer = false}, 300ms);
  CAPTURE(a.what);
  CHECK(a.ec == errc::timeout);
  CHECK(a.ec == cfo::remedy::retry_later);
  CHECK(a.elapsed >= 300ms);
  CHECK(a.elapsed < 5s);
  CHECK(a.idle == 0);
  CHECK(a.server_requests == 1);  // the request got there; a timeout is not resent
}

TEST_CASE("client deadline covers the whole response not each read") {
  // 1 byte every 100 ms: each read succeeds quickly, yet the response would take
  // over 20 s. Only an overall deadline stops it at 500 ms.
  const std::string slow = "HTTP/1.1 200 OK\r\nX-Slow: " + std::string(200, 's') + "\r\nContent-Length: 0\r\n\r\n";
  auto a = fetch_from({.response = slow, .trickle = 100ms}, 500ms);
  CAPTURE(a.what);
  CHECK(a.ec == errc::timeout);
  CHECK(a.elapsed >= 500ms);
  CHECK(a.elapsed < 5s);
}

TEST_CASE("client errors carry context in the message") {
  auto a = fetch_from({.response = "HTTP/1.1 abc OK\r\n\r\n"});
  CHECK(a.ec == errc::protocol_error);
  CHECK(a.what.find("GET http://127.0.0.1:") != std::string::npos);
  CHECK(a.what.find("/x") != std::string::npos);
  CHECK(a.ec.category() == cfo::detail::error_category());
}

TEST_CASE("client reports malformed responses over TLS with typed errors") {
  fake_atlassian::server srv;
  srv.push_raw_response("/raw/status", "HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n");
  srv.push_raw_response("/raw/chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
  srv.push_raw_response("/raw/short", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
  srv.push_raw_response("/raw/huge", "HTTP/1.1 200 OK\r\nX-Huge: " + std::string(70 * 1024, 'h') + "\r\n\r\n");
  srv.push_raw_response("/raw/ok", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");

  auto ok = fetch_from_fake(srv, "/raw/ok");
  CAPTURE(ok.what);
  REQUIRE(ok.response);
  CHECK(ok.response->body == "ok");
  CHECK(fetch_from_fake(srv, "/raw/status").ec == errc::protocol_error);
  CHECK(fetch_from_fake(srv, "/raw/chunk").ec == errc::protocol_error);
  CHECK(fetch_from_fake(srv, "/raw/short").ec == errc::connection_closed);
  CHECK(fetch_from_fake(srv, "/raw/huge").ec == errc::header_too_large);
  CHECK(srv.stats().requests == 5);
}

TEST_CASE("client times out over TLS on a stalled response") {
  fake_atlassian::server srv;
  srv.push_stall("/stall");
  auto a = fetch_from_fake(srv, "/stall", 300ms);
  CAPTURE(a.what);
  CHECK(a.ec == errc::timeout);
  CHECK(a.elapsed >= 300ms);
  CHECK(a.elapsed < 5s);
}

}  // TEST_SUITE("http")

}  // namespace test_http
