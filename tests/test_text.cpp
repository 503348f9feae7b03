// Pure functions: text and crypto helpers, secret, URLs, errors, the
// configuration, the authorization URL, callbacks and token responses.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"

#include <sstream>

// Its own namespace, so that the unity build can put test files together.
namespace test_text {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

cfo::client_config valid_config() {
  cfo::client_config c;
  c.client_id = "client-id";
  c.client_secret = cfo::secret("client-secret-value");
  return c;
}

cfo::errc errc_of(auto&& f) {
  try {
    f();
  } catch (const cfo::oauth_error& e) {
    REQUIRE(e.code().category() == cfo::detail::error_category());
    return static_cast<cfo::errc>(e.code().value());
  }
  FAIL("no oauth_error thrown");
  return {};
}

std::string hex(const std::array<unsigned char, 32>& d) {
  std::string out;
  for (auto b : d) {
    out += "0123456789abcdef"[b >> 4];
    out += "0123456789abcdef"[b & 15];
  }
  return out;
}

}  // namespace

TEST_SUITE("text") {

TEST_CASE("percent encoding keeps unreserved characters and round-trips") {
  CHECK(cfo::detail::percent_encode("aZ09-._~") == "aZ09-._~");
  CHECK(cfo::detail::percent_encode("a b/c?d=e&f:g") == "a%20b%2Fc%3Fd%3De%26f%3Ag");
  CHECK(cfo::detail::percent_encode("\xC3\xA9") == "%C3%A9");
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  CHECK(cfo::detail::percent_decode(cfo::detail::percent_encode(all)) == all);
  CHECK(cfo::detail::percent_decode("a+b%2") == "a b%2");
  CHECK(cfo::detail::percent_decode("%zz%41") == "%zzA");
}

TEST_CASE("query strings parse in order and decode") {
  auto q = cfo::detail::parse_query("code=a%2Bb&state=x+y&&flag&empty=");
  REQUIRE(q.size() == 4);
  CHECK(q[0] == std::pair<std::string, std::string>{"code", "a+b"});
  CHECK(q[1].second == "x y");
  CHECK(q[2] == std::pair<std::string, std::string>{"flag", ""});
  CHECK(q[3] == std::pair<std::string, std::string>{"empty", ""});
}

TEST_CASE("base64url matches RFC 4648 vectors and decodes both alphabets") {
  CHECK(cfo::detail::base64url_encode("") == "");
  CHECK(cfo::detail::base64url_encode("f") == "Zg");
  CHECK(cfo::detail::base64url_encode("fo") == "Zm8");
  CHECK(cfo::detail::base64url_encode("foo") == "Zm9v");
  CHECK(cfo::detail::base64url_encode("foobar") == "Zm9vYmFy");
  CHECK(cfo::detail::base64url_encode("\xfb\xff") == "-_8");
  CHECK(cfo::detail::base64_decode("-_8").value() == "\xfb\xff");
  CHECK(cfo::detail::base64_decode("+/8=").value() == "\xfb\xff");
  CHECK_FALSE(cfo::detail::base64_decode("a!b").has_value());
  CHECK_FALSE(cfo::detail::base64_decode("a").has_value());
}

TEST_CASE("html escaping neutralises markup") {
  CHECK(cfo::detail::html_escape("<a href=\"x\">'&'</a>") ==
        "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
}

TEST_CASE("SHA-256 and the PKCE S256 example of RFC 7636") {
  CHECK(hex(cfo::detail::sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto d = cfo::detail::sha256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
  CHECK(cfo::detail::base64url_encode(d.data(), d.size()) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

TEST_CASE("random tokens carry 256 bits and differ") {
  auto a = cfo::detail::random_token(32), b = cfo::detail::random_token(32);
  CHECK(a.size() == 43);
  CHECK(a != b);
}

TEST_CASE("AES-256-GCM round-trips and rejects a wrong key or altered data") {
  std::string key(32, 'k'), other(32, 'o');
  auto sealed = cfo::detail::aes256gcm_seal(key, "refresh-token-value", "aad");
  CHECK(sealed.find("refresh-token-value") == std::string::npos);
  CHECK(cfo::detail::aes256gcm_open(key, sealed, "aad").value() == "refresh-token-value");
  CHECK_FALSE(cfo::detail::aes256gcm_open(other, sealed, "aad").has_value());
  CHECK_FALSE(cfo::detail::aes256gcm_open(key, sealed, "other aad").has_value());
  auto tampered = sealed;
  tampered[15] ^= 1;
  CHECK_FALSE(cfo::detail::aes256gcm_open(key, tampered, "aad").has_value());
  CHECK_FALSE(cfo::detail::aes256gcm_open(key, "short").has_value());
  CHECK(errc_of([&] { cfo::detail::aes256gcm_seal("short key", "x"); }) == cfo::errc::invalid_config);
}

TEST_CASE("secret never prints its value and compares by value") {
  cfo::secret s("super-secret-token");
  std::ostringstream os;
  os << s;
  CHECK(os.str().find("super-secret-token") == std::string::npos);
  CHECK(os.str().rfind("secret(sha256:", 0) == 0);
  CHECK(s == cfo::secret("super-secret-token"));
  CHECK_FALSE(s == cfo::secret("super-secret-tokeN"));
  CHECK_FALSE(s == cfo::secret("short"));
  cfo::secret moved(std::move(s));
  CHECK(moved.reveal() == "super-secret-token");
  CHECK(s.empty());  // NOLINT(bugprone-use-after-move): moved-from is wiped
  std::ostringstream empty;
  empty << cfo::secret{};
  CHECK(empty.str() == "secret(empty)");
}

TEST_CASE("redaction removes echoed secrets from server text") {
  cfo::secret a("code-1234567"), b("client-secret-value");
  const cfo::secret* list[] = {&a, &b, nullptr};
  CHECK(cfo::detail::redact("bad code code-1234567 for client-secret-value", list) ==
        "bad code [redacted] for [redacted]");
}

TEST_CASE("redaction ends when a secret is part of the mark and comes before truncation") {
  cfo::secret inside("dact");
  const cfo::secret* list[] = {&inside};
  CHECK(cfo::detail::redact("a dact b dact", list) == "a [redacted] b [redacted]");
  cfo::secret long_token(std::string(400, 't'));
  cfo::secret sent_secret("client-secret-value");
  const cfo::secret* sent[] = {&long_token, &sent_secret};
  cfo::http_response r;
  r.status = 400;
  r.body = R"({"error":"invalid_grant","error_description":")" + std::string(250, ' ') + "Unknown token " +
           long_token.reveal() + " for client-secret-value\"}";
  try {
    cfo::detail::parse_token_response(r, sent);
    FAIL("no throw");
  } catch (const cfo::oauth_error& e) {
    CHECK(std::string(e.what()).find("tttttttttt") == std::string::npos);
    CHECK(e.details().error_description.find("[redacted]") != std::string::npos);
  }
}

TEST_CASE("URLs parse with defaults, IPv6 and ports") {
  auto u = cfo::detail::parse_url("HTTPS://Auth.Atlassian.com/oauth/token?x=1");
  CHECK(u.scheme == "https");
  CHECK(u.host == "auth.atlassian.com");
  CHECK(u.port == 443);
  CHECK(u.target == "/oauth/token?x=1");
  CHECK(u.path() == "/oauth/token");
  CHECK(u.query() == "x=1");
  CHECK(u.str() == "https://auth.atlassian.com/oauth/token?x=1");
  auto v6 = cfo::detail::parse_url("http://[::1]:8080");
  CHECK(v6.host == "::1");
  CHECK(v6.port == 8080);
  CHECK(v6.target == "/");
  CHECK(v6.authority() == "[::1]:8080");
  CHECK(cfo::detail::parse_url("http://localhost?a=b").target == "/?a=b");
}

TEST_CASE("malformed URLs are typed errors") {
  for (const char* bad : {"", "auth.atlassian.com/x", "ftp://x/", "https://", "https://user:pw@host/",
                          "https://host:99999/", "https://host:12a/", "https://host/#frag", "https://[::1/",
                          "https://ho st/", "http://h/a b"}) {
    CAPTURE(bad);
    CHECK(errc_of([&] { cfo::detail::parse_url(bad); }) == cfo::errc::invalid_url);
  }
}

TEST_CASE("loopback detection") {
  for (const char* h : {"127.0.0.1", "127.1.2.3", "::1", "[::1]"}) CHECK(cfo::detail::is_loopback(h));
  // A name is judged by what it resolves to, when plain http connects.
  for (const char* h : {"localhost", "LOCALHOST", "example.com", "10.0.0.1", "localhost.example.com", "0.0.0.0", "::", "128.0.0.1"})
    CHECK_FALSE(cfo::detail::is_loopback(h));
}

TEST_CASE("relative references resolve against the gateway base") {
  auto base = cfo::detail::parse_url("https://api.atlassian.com/ex/confluence/abc/wiki/api/v2/pages?limit=5");
  CHECK(cfo::detail::resolve_reference(base, "/wiki/api/v2/pages?cursor=x").str() ==
        "https://api.atlassian.com/wiki/api/v2/pages?cursor=x");
  CHECK(cfo::detail::resolve_reference(base, "https://other.example/p").str() == "https://other.example/p");
  CHECK(cfo::detail::resolve_reference(base, "?cursor=y").str() ==
        "https://api.atlassian.com/ex/confluence/abc/wiki/api/v2/pages?cursor=y");
  CHECK(cfo::detail::resolve_reference(base, "spaces").str() == "https://api.atlassian.com/ex/confluence/abc/wiki/api/v2/spaces");
}

TEST_CASE("Retry-After in seconds and as an HTTP date") {
  auto now = std::chrono::system_clock::time_point(std::chrono::seconds(784111777));  // Sun, 06 Nov 1994 08:49:37 GMT
  CHECK(cfo::detail::parse_retry_after("120", now) == 120s);
  CHECK(cfo::detail::parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now) == 60s);
  CHECK(cfo::detail::parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now) == 0s);
  CHECK_FALSE(cfo::detail::parse_retry_after("soon", now).has_value());
  CHECK_FALSE(cfo::detail::parse_retry_after("-5", now).has_value());
}

TEST_CASE("error codes map to conditions") {
  std::error_code grant = cfo::errc::invalid_grant;
  CHECK(grant == cfo::remedy::reauthenticate);
  CHECK(grant != cfo::remedy::retry_later);
  CHECK(std::error_code(cfo::errc::timeout) == cfo::remedy::retry_later);
  CHECK(std::error_code(cfo::errc::rate_limited) == cfo::remedy::retry_later);
  CHECK(std::error_code(cfo::errc::invalid_client) == cfo::remedy::fix_configuration);
  CHECK(std::error_code(cfo::errc::certificate_rejected) == cfo::remedy::fix_configuration);
  CHECK(std::error_code(cfo::errc::authorization_denied) == cfo::remedy::reauthenticate);
  CHECK(grant.category().name() == std::string("confluence_oauth"));
  for (int e = 1; e <= static_cast<int>(cfo::errc::site_not_found); ++e)
    CHECK(cfo::detail::error_category().message(e).find("unknown") == std::string::npos);
}

TEST_CASE("oauth_error carries the server's details") {
  cfo::error_details d;
  d.error = "invalid_grant";
  d.error_description = "Unknown or invalid refresh token.";
  d.http_status = 403;
  cfo::oauth_error e(cfo::errc::invalid_grant, "token request failed", d);
  CHECK(std::string(e.what()).find("HTTP 403; invalid_grant: Unknown or invalid refresh token.") != std::string::npos);
  CHECK(e.details().http_status == 403);
  CHECK(e.details().error == "invalid_grant");
  CHECK(e.code() == cfo::remedy::reauthenticate);
}

TEST_CASE("configuration validation names the problem") {
  CHECK_NOTHROW(valid_config().validate());
  auto check = [](auto mutate, cfo::errc expected) {
    auto c = valid_config();
    mutate(c);
    CHECK(errc_of([&] { c.validate(); }) == expected);
  };
  check([](auto& c) { c.client_id.clear(); }, cfo::errc::invalid_config);
  check([](auto& c) { c.client_id = "has space"; }, cfo::errc::invalid_config);
  check([](auto& c) { c.client_secret = cfo::secret(); }, cfo::errc::invalid_config);
  check([](auto& c) { c.scopes.clear(); }, cfo::errc::invalid_config);
  check([](auto& c) { c.scopes = {"read:page:confluence offline_access"}; }, cfo::errc::invalid_config);
  check([](auto& c) { c.token_url = "http://auth.example.com/token"; }, cfo::errc::insecure_transport);
  check([](auto& c) { c.api_url = "not a url"; }, cfo::errc::invalid_url);
  check([](auto& c) { c.redirect_uri = "http://app.example.com/callback"; }, cfo::errc::insecure_transport);
  check([](auto& c) { c.timeouts.request = 0ms; }, cfo::errc::invalid_config);
  auto ok = valid_config();
  ok.token_url = "http://127.0.0.1:8080/token";
  ok.redirect_uri = "https://app.example.com/callback";
  CHECK_NOTHROW(ok.validate());
  // A public client (no secret, PKCE) of a standard server; Atlassian's always needs the secret.
  auto pkce = valid_config();
  pkce.client_secret = cfo::secret();
  pkce.token_url = "https://auth.example.com/oauth/token";
  CHECK_NOTHROW(pkce.validate());
  pkce.use_pkce = false;
  CHECK(errc_of([&] { pkce.validate(); }) == cfo::errc::invalid_config);
}

TEST_CASE("the authorization URL has every Atlassian parameter and a fresh state") {
  asio::io_context io;
  cfo::oauth_client client(io.get_executor(), valid_config());
  auto a = client.begin_authorization();
  auto b = client.begin_authorization();
  CHECK(a.url.rfind("https://auth.atlassian.com/authorize?", 0) == 0);
  auto params = cfo::detail::parse_query(cfo::detail::parse_url(a.url).query());
  std::map<std::string, std::string> m(params.begin(), params.end());
  CHECK(m.at("audience") == "api.atlassian.com");
  CHECK(m.at("client_id") == "client-id");
  CHECK(m.at("scope") == "read:page:confluence read:space:confluence offline_access");
  CHECK(m.at("redirect_uri") == "http://localhost:3000/callback");
  CHECK(m.at("response_type") == "code");
  CHECK(m.at("prompt") == "consent");
  CHECK(m.at("state") == a.state.reveal());
  CHECK(a.state.reveal().size() == 43);  // 32 random bytes
  CHECK_FALSE(a.state == b.state);
  CHECK(m.at("code_challenge_method") == "S256");  // PKCE by default, Atlassian included
  CHECK(a.url.find("client-secret-value") == std::string::npos);
}

TEST_CASE("empty optional parameters are left out and PKCE uses S256") {
  asio::io_context io;
  auto c = valid_config();
  c.audience.clear();
  c.prompt.clear();
  c.use_pkce = true;
  c.extra_authorize_params = {{"login_hint", "a@b.c"}, {"empty", ""}};
  cfo::oauth_client client(io.get_executor(), c);
  auto a = client.begin_authorization("http://127.0.0.1:5555/cb");
  auto params = cfo::detail::parse_query(cfo::detail::parse_url(a.url).query());
  std::map<std::string, std::string> m(params.begin(), params.end());
  CHECK(m.count("audience") == 0);
  CHECK(m.count("prompt") == 0);
  CHECK(m.count("empty") == 0);
  CHECK(m.at("login_hint") == "a@b.c");
  CHECK(m.at("redirect_uri") == "http://127.0.0.1:5555/cb");
  CHECK(a.redirect_uri == "http://127.0.0.1:5555/cb");
  CHECK(m.at("code_challenge_method") == "S256");
  auto d = cfo::detail::sha256(a.code_verifier.reveal());
  CHECK(m.at("code_challenge") == cfo::detail::base64url_encode(d.data(), d.size()));
  CHECK(a.code_verifier.reveal().size() >= 43);
}

TEST_CASE("callbacks are parsed and matched against the pending state") {
  cfo::authorization auth;
  auth.state = cfo::secret("the-state");
  auto ok = cfo::detail::parse_callback("/callback?code=the%20code&state=the-state");
  CHECK(ok.code.reveal() == "the code");
  CHECK(cfo::detail::match_callback(ok, auth) == cfo::detail::callback_match::code);
  CHECK(cfo::detail::verify_callback(ok, auth).reveal() == "the code");
  auto other = cfo::detail::parse_callback("code=x&state=other");
  CHECK(cfo::detail::match_callback(other, auth) == cfo::detail::callback_match::state_mismatch);
  CHECK(errc_of([&] { cfo::detail::verify_callback(other, auth); }) == cfo::errc::state_mismatch);
  auto denied = cfo::detail::parse_callback("http://localhost/cb?error=access_denied&error_description=User%20did%20not%20authorize&state=the-state");
  CHECK(cfo::detail::match_callback(denied, auth) == cfo::detail::callback_match::denied);
  CHECK(errc_of([&] { cfo::detail::verify_callback(denied, auth); }) == cfo::errc::authorization_denied);
  auto denied_other = cfo::detail::parse_callback("?error=access_denied&state=other");
  CHECK(cfo::detail::match_callback(denied_other, auth) == cfo::detail::callback_match::state_mismatch);
  auto failed = cfo::detail::parse_callback("?error=server_error&state=the-state");
  CHECK(errc_of([&] { cfo::detail::verify_callback(failed, auth); }) == cfo::errc::authorization_failed);
  // An error without the state is anyone's: it must not answer the authorization (fails before 1.1).
  auto stateless = cfo::detail::parse_callback("?error=access_denied&error_description=Evil");
  CHECK(cfo::detail::match_callback(stateless, auth) == cfo::detail::callback_match::state_mismatch);
  CHECK(errc_of([&] { cfo::detail::verify_callback(stateless, auth); }) == cfo::errc::state_mismatch);
  CHECK(cfo::detail::match_callback(cfo::detail::parse_callback("/callback"), auth) == cfo::detail::callback_match::state_mismatch);
  CHECK(cfo::detail::match_callback(cfo::detail::parse_callback("?state=the-state"), auth) == cfo::detail::callback_match::incomplete);
}

TEST_CASE("token sets round-trip through their storage form") {
  cfo::token_set t;
  t.access_token = cfo::secret("at");
  t.refresh_token = cfo::secret("rt");
  t.expires_at = std::chrono::system_clock::time_point(std::chrono::seconds(1800000000));
  t.scope = "read:page:confluence offline_access";
  auto back = cfo::token_set::from_json(t.to_json());
  CHECK(back.access_token == t.access_token);
  CHECK(back.refresh_token == t.refresh_token);
  CHECK(back.expires_at == t.expires_at);
  CHECK(back.scope == t.scope);
  std::ostringstream os;
  os << t;
  CHECK(os.str().find("\"at\"") == std::string::npos);
  CHECK(os.str().find("rt,") == std::string::npos);
  CHECK(errc_of([] { cfo::token_set::from_json(nlohmann::json::array()); }) == cfo::errc::store_corrupt);
  CHECK(errc_of([] { cfo::token_set::from_json({{"refresh_token", "x"}}); }) == cfo::errc::store_corrupt);
  for (auto when : {nlohmann::json(-1), nlohmann::json(9223372036854775807LL), nlohmann::json(18446744073709551615ULL),
                    nlohmann::json(1.5), nlohmann::json("soon")})
    CHECK(errc_of([&] { cfo::token_set::from_json({{"access_token", "a"}, {"expires_at", when}}); }) == cfo::errc::store_corrupt);
  CHECK(t.expires_within(60s, t.expires_at - 30s));
  CHECK_FALSE(t.expires_within(60s, t.expires_at - 120s));
}

TEST_CASE("token responses are checked field by field") {
  auto response = [](int status, std::string body) {
    cfo::http_response r;
    r.status = status;
    r.body = std::move(body);
    return r;
  };
  cfo::secret sent("echoed-client-secret");
  const cfo::secret* redact[] = {&sent};
  auto parse = [&](int status, std::string body) { return cfo::detail::parse_token_response(response(status, std::move(body)), redact); };
  auto t = parse(200, R"({"access_token":"a","expires_in":"3600","token_type":"bearer","scope":"s"})");
  CHECK(t.access_token.reveal() == "a");
  CHECK_FALSE(t.has_refresh_token());
  CHECK(t.expires_within(3601s));
  CHECK_FALSE(t.expires_within(3500s));
  CHECK(errc_of([&] { parse(200, "<html>"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, "[1]"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, R"({"token_type":"Bearer"})"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, R"({"access_token":""})"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, R"({"access_token":"a","token_type":"mac"})"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, R"({"access_token":"a","expires_in":-1})"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, R"({"access_token":"a","refresh_token":5})"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, R"({"error":"invalid_grant"})"); }) == cfo::errc::invalid_grant);
  CHECK(errc_of([&] { parse(400, R"({"error":"invalid_request"})"); }) == cfo::errc::invalid_request);
  CHECK(errc_of([&] { parse(401, R"({"error":"access_denied","error_description":"Unauthorized"})"); }) == cfo::errc::invalid_client);
  CHECK(errc_of([&] { parse(503, "busy"); }) == cfo::errc::server_unavailable);
  CHECK(errc_of([&] { parse(404, "nope"); }) == cfo::errc::invalid_token_response);
  CHECK(errc_of([&] { parse(200, std::string(100, '[') + std::string(100, ']')); }) == cfo::errc::invalid_token_response);
  try {
    parse(400, R"({"error":"invalid_request","error_description":"bad secret echoed-client-secret"})");
    FAIL("no throw");
  } catch (const cfo::oauth_error& e) {
    CHECK(std::string(e.what()).find("echoed-client-secret") == std::string::npos);
    CHECK(e.details().error_description == "bad secret [redacted]");
    CHECK(e.details().http_status == 400);
  }
}

TEST_CASE("parse_json counts the nesting outside strings only") {
  using cfo::detail::parse_json;
  auto nested = [](std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); };
  CHECK_FALSE(parse_json(nested(64)).is_discarded());
  CHECK(parse_json(nested(65)).is_discarded());
  // An escaped quote does not end a string: the brackets after it are text.
  const auto quoted = parse_json(R"({"a":"\")" + std::string(100, '[') + R"("})");
  REQUIRE_FALSE(quoted.is_discarded());
  CHECK(quoted["a"] == "\"" + std::string(100, '['));
  // An escaped backslash does not escape the quote after it: the string ends there.
  CHECK_FALSE(parse_json(R"(["\\",)" + nested(63) + "]").is_discarded());
  CHECK(parse_json(R"(["\\",)" + nested(64) + "]").is_discarded());
  CHECK(parse_json(R"(["unterminated)").is_discarded());
}

}  // TEST_SUITE

}  // namespace test_text
