// The token endpoint: code exchange and refresh against the fake Atlassian
// server over TLS, in both encodings, with every error ATLASSIAN.md lists and
// every malformed answer a hostile or broken server can give.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

// Its own namespace, so that the unity build can put test files together.
namespace test_oauth {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";

cfo::client_config config_for(const fake_atlassian::server& srv) {
  auto c = test_util::client_config_for(srv, redirect);
  c.timeouts.request = 10s;
  return c;
}

cfo::authorization auth_for(const char* uri = redirect) {
  cfo::authorization a;
  a.redirect_uri = uri;
  return a;
}

cfo::token_set exchange_code(const cfo::client_config& cfg, const std::string& code, const char* uri = redirect) {
  return test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, cfg);
    co_return co_await client.exchange_code(cfo::secret(code), auth_for(uri));
  });
}

cfo::token_set refresh_tokens(const cfo::client_config& cfg, const cfo::token_set& t) {
  return test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, cfg);
    co_return co_await client.refresh(t);
  });
}

/// Runs f, which must throw oauth_error; checks no secret is in its message.
cfo::oauth_error expect_error(auto&& f, std::initializer_list<std::string> secrets = {}) {
  try {
    f();
  } catch (const cfo::oauth_error& e) {
    for (const auto& s : secrets) {
      CAPTURE(s);
      CHECK(std::string(e.what()).find(s) == std::string::npos);
    }
    return e;
  }
  FAIL("expected an oauth_error");
  throw std::logic_error("unreachable");
}

std::string raw_json(int status, const std::string& body, const std::string& extra_headers = "") {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\n" + extra_headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

TEST_SUITE("oauth") {

TEST_CASE("a code is exchanged for a token set with JSON") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  auto t = exchange_code(cfg, srv.issue_code(redirect, scopes));
  CHECK_FALSE(t.access_token.empty());
  CHECK(t.has_refresh_token());
  CHECK(t.token_type == "Bearer");
  CHECK(t.scope.find("read:page:confluence") != std::string::npos);
  CHECK_FALSE(t.expires_within(3500s));
  CHECK(t.expires_within(3601s));
  CHECK(srv.stats().authorization_code_grants == 1);
}

TEST_CASE("a code is exchanged with form encoding") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  cfg.encoding = cfo::client_config::token_encoding::form;
  auto t = exchange_code(cfg, srv.issue_code(redirect, scopes));
  CHECK_FALSE(t.access_token.empty());
  CHECK(srv.stats().authorization_code_grants == 1);
}

TEST_CASE("without offline_access there is no refresh token") {
  fake_atlassian::server srv;
  auto t = exchange_code(config_for(srv), srv.issue_code(redirect, "read:page:confluence"));
  CHECK_FALSE(t.has_refresh_token());
  CHECK(expect_error([&] { refresh_tokens(config_for(srv), t); }).code() == cfo::errc::invalid_grant);
}

TEST_CASE("a reused code is rejected as Atlassian does") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  auto code = srv.issue_code(redirect, scopes);
  exchange_code(cfg, code);
  auto e = expect_error([&] { exchange_code(cfg, code); }, {code, "test-client-secret"});
  CHECK(e.code() == cfo::errc::invalid_request);
  CHECK(e.code() == cfo::remedy::reauthenticate);
  CHECK(e.details().http_status == 400);
  CHECK(e.details().error == "invalid_request");
  CHECK(e.details().error_description == "authorization_code is invalid");
}

TEST_CASE("an expired code is rejected") {
  fake_atlassian::server srv;
  auto code = srv.issue_code(redirect, scopes);
  srv.advance_clock(601s);
  CHECK(expect_error([&] { exchange_code(config_for(srv), code); }, {code}).code() == cfo::errc::invalid_request);
}

TEST_CASE("an invalid code is rejected") {
  fake_atlassian::server srv;
  CHECK(expect_error([&] { exchange_code(config_for(srv), "not-a-code"); }).code() == cfo::errc::invalid_request);
}

TEST_CASE("a redirect_uri that differs from the code's is rejected") {
  fake_atlassian::server srv;
  auto code = srv.issue_code(redirect, scopes);
  auto e = expect_error([&] { exchange_code(config_for(srv), code, "http://localhost:3001/callback"); }, {code});
  CHECK(e.code() == cfo::errc::invalid_grant);
}

TEST_CASE("a wrong client secret is a configuration error and never printed") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  cfg.client_secret = cfo::secret("wrong-secret-value");
  auto code = srv.issue_code(redirect, scopes);
  auto e = expect_error([&] { exchange_code(cfg, code); }, {"wrong-secret-value", code});
  CHECK(e.code() == cfo::errc::invalid_client);
  CHECK(e.code() == cfo::remedy::fix_configuration);
  CHECK(e.details().http_status == 401);
  CHECK(e.details().error == "access_denied");
}

TEST_CASE("PKCE without a client secret is sent and refused by Atlassian as a typed error") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  cfg.use_pkce = true;
  cfg.client_secret = cfo::secret();
  auto e = expect_error([&] { exchange_code(cfg, srv.issue_code(redirect, scopes)); });
  CHECK(e.code() == cfo::errc::invalid_client);  // Atlassian always wants the secret
  CHECK(e.details().http_status == 401);
}

TEST_CASE("refresh tokens rotate and the old one works only within the reuse window") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  auto first = exchange_code(cfg, srv.issue_code(redirect, scopes));
  auto second = refresh_tokens(cfg, first);
  CHECK_FALSE(second.refresh_token == first.refresh_token);
  CHECK_FALSE(second.access_token == first.access_token);
  CHECK(second.scope == first.scope);
  auto again = refresh_tokens(cfg, first);  // within the 10-minute window
  CHECK_FALSE(again.access_token.empty());
  srv.advance_clock(601s);
  auto e = expect_error([&] { refresh_tokens(cfg, first); }, {first.refresh_token.reveal(), "test-client-secret"});
  CHECK(e.code() == cfo::errc::invalid_grant);
  CHECK(e.code() == cfo::remedy::reauthenticate);
  CHECK(e.details().http_status == 403);
  CHECK(e.details().error_description == "Unknown or invalid refresh token.");
  CHECK(srv.stats().families_revoked == 1);
  // The whole family is gone: even the newest refresh token fails now.
  CHECK(expect_error([&] { refresh_tokens(cfg, again); }).code() == cfo::errc::invalid_grant);
}

TEST_CASE("refresh with form encoding") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  cfg.encoding = cfo::client_config::token_encoding::form;
  auto first = exchange_code(cfg, srv.issue_code(redirect, scopes));
  auto second = refresh_tokens(cfg, first);
  CHECK_FALSE(second.refresh_token == first.refresh_token);
  CHECK(srv.stats().refresh_grants == 1);
}

TEST_CASE("a refresh answer without refresh_token keeps the one we have") {
  fake_atlassian::options o;
  o.omit_refresh_token_on_refresh = true;
  fake_atlassian::server srv(o);
  auto cfg = config_for(srv);
  auto first = exchange_code(cfg, srv.issue_code(redirect, scopes));
  auto second = refresh_tokens(cfg, first);
  CHECK(second.refresh_token == first.refresh_token);
  CHECK_FALSE(second.access_token == first.access_token);
}

TEST_CASE("hostile or broken token responses are typed errors") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  struct bad_case {
    const char* name;
    std::string raw;
    cfo::errc expected;
  };
  const std::string big(cfg.max_token_response_bytes + 1, 'x');
  std::vector<bad_case> cases = {
      {"not JSON", raw_json(200, "<html>hello</html>"), cfo::errc::invalid_token_response},
      {"missing access_token", raw_json(200, R"({"token_type":"Bearer","expires_in":3600})"), cfo::errc::invalid_token_response},
      {"access_token not a string", raw_json(200, R"({"access_token":42})"), cfo::errc::invalid_token_response},
      {"error with status 200", raw_json(200, R"({"error":"invalid_grant","error_description":"nope"})"), cfo::errc::invalid_grant},
      {"oversized body", raw_json(200, big), cfo::errc::body_too_large},
      {"oversized chunked body",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + [&] {
         std::string s;
         for (int i = 0; i < 20; ++i) s += "10000\r\n" + std::string(0x10000, 'a') + "\r\n";
         return s + "0\r\n\r\n";
       }(),
       cfo::errc::body_too_large},
      {"HTML 503", "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", cfo::errc::server_unavailable},
      {"429", raw_json(429, R"({"message":"slow down"})", "Retry-After: 7\r\n"), cfo::errc::rate_limited},
      {"deeply nested", raw_json(200, std::string(10000, '[') + std::string(10000, ']')), cfo::errc::invalid_token_response},
      {"bad status line", "HTTP/1.1 2x0 OK\r\n\r\n", cfo::errc::protocol_error},
      {"truncated", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"access_token\":", cfo::errc::connection_closed},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    srv.push_raw_response("/oauth/token", c.raw, true);
    auto code = srv.issue_code(redirect, scopes);
    auto e = expect_error([&] { exchange_code(cfg, code); }, {code, "test-client-secret"});
    CHECK(e.code() == c.expected);
    if (c.expected == cfo::errc::rate_limited) {
      CHECK(e.details().retry_after == 7s);
      CHECK(e.code() == cfo::remedy::retry_later);
    }
  }
}

TEST_CASE("a server echoing secrets back never gets them into a message") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  auto first = exchange_code(cfg, srv.issue_code(redirect, scopes));
  const auto& rt = first.refresh_token.reveal();
  srv.push_raw_response("/oauth/token", raw_json(400, R"({"error":"invalid_request","error_description":"token )" + rt +
                                                          R"( with secret test-client-secret","error_uri":")" + rt + R"("})"));
  auto e = expect_error([&] { refresh_tokens(cfg, first); }, {rt, "test-client-secret"});
  CHECK(e.details().error_description.find(rt) == std::string::npos);
  CHECK(e.details().error_uri.find(rt) == std::string::npos);
  CHECK(e.details().error_description.find("[redacted]") != std::string::npos);
}

TEST_CASE("a token endpoint that never answers hits the request deadline") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  cfg.timeouts.request = 300ms;
  srv.push_stall("/oauth/token");
  auto start = std::chrono::steady_clock::now();
  auto e = expect_error([&] { exchange_code(cfg, srv.issue_code(redirect, scopes)); });
  CHECK(e.code() == cfo::errc::timeout);
  CHECK(e.code() == cfo::remedy::retry_later);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}

TEST_CASE("the token endpoint is reached over one kept-alive connection") {
  fake_atlassian::server srv;
  auto cfg = config_for(srv);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, cfg);
    auto t = co_await client.exchange_code(cfo::secret(srv.issue_code(redirect, scopes)), auth_for());
    for (int i = 0; i < 5; ++i) t = co_await client.refresh(t);
    CHECK(cfo::detail::http_of(client).connections_opened() == 1);
  });
  CHECK(srv.stats().connections == 1);
  CHECK(srv.stats().refresh_grants == 5);
}

}  // TEST_SUITE

}  // namespace test_oauth
