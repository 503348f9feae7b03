// The authorization-code flow end to end against the fake Atlassian server:
// listener, consent page, redirect, exchange and storage, in process with a
// simulated browser, and as the confluence-cli program a user runs.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_browser.hpp"
#include "test_util.hpp"

#include <sys/stat.h>

#include <algorithm>

// Its own namespace, so that the unity build can put test files together.
namespace test_flow {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";

std::string redirect_for(unsigned short port) { return "http://localhost:" + std::to_string(port) + "/callback"; }

struct flow_fixture {
  unsigned short port = test_util::free_port();
  std::string redirect = redirect_for(port);
  fake_atlassian::server srv;

  explicit flow_fixture(fake_atlassian::options o = {}) : srv(with_redirect(std::move(o), redirect_for(port))) {}

  static fake_atlassian::options with_redirect(fake_atlassian::options o, std::string uri) {
    o.redirect_uris = {std::move(uri)};
    return o;
  }

  cfo::client_config config() const { return test_util::client_config_for(srv, redirect); }
};

/// A browser_opener that runs the simulated browser in the background, as a
/// real browser would run beside the application.
cfo::browser_opener simulated_browser(const cfo::client_config& cfg, test_browser::decision d,
                                      std::shared_ptr<test_browser::visit> seen) {
  return [cfg, d, seen](const std::string& url) -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    auto http = std::make_shared<cfo::detail::http_client>(ex, cfg.tls, cfg.timeouts);
    asio::co_spawn(ex, [http, url, d, seen]() -> asio::awaitable<void> {
      *seen = co_await test_browser::browse(*http, url, d);
    }, asio::detached);
  };
}

cfo::token_set run_authorize(const cfo::client_config& cfg, test_browser::decision d,
                             std::shared_ptr<test_browser::visit> seen, cfo::session_options::listener_options o = {}) {
  return test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, cfg);
    co_return co_await cfo::detail::authorize(client, simulated_browser(cfg, d, seen), o);
  });
}

}  // namespace

TEST_SUITE("flow") {

TEST_CASE("consent with Allow ends in a saved token set") {
  flow_fixture f;
  auto seen = std::make_shared<test_browser::visit>();
  auto tokens = run_authorize(f.config(), test_browser::decision::allow, seen);
  CHECK_FALSE(tokens.access_token.empty());
  CHECK(tokens.has_refresh_token());
  CHECK(seen->status == 200);
  CHECK(seen->body.find("Authorization complete") != std::string::npos);
  CHECK(seen->url.rfind(f.redirect + "?", 0) == 0);
  auto s = f.srv.stats();
  CHECK(s.authorize_pages == 1);
  CHECK(s.authorize_decisions == 1);
  CHECK(s.authorization_code_grants == 1);

  test_util::temp_dir dir;
  cfo::file_token_store store(dir / "nested/tokens.json");
  auto loaded = test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> {
    co_await store.save(tokens);
    co_return co_await store.load();
  });
  REQUIRE(loaded);
  CHECK(loaded->access_token == tokens.access_token);
  CHECK(loaded->refresh_token == tokens.refresh_token);
  struct stat st {};
  REQUIRE(::stat((dir / "nested/tokens.json").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat((dir / "nested").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
}

TEST_CASE("consent with Deny ends with authorization_denied and no token request") {
  flow_fixture f;
  auto seen = std::make_shared<test_browser::visit>();
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::oauth_client client(ex, f.config());
          co_await cfo::detail::authorize(client, simulated_browser(f.config(), test_browser::decision::deny, seen));
        }) == cfo::errc::authorization_denied);
  CHECK(seen->status == 403);
  CHECK(seen->body.find("Authorization denied") != std::string::npos);
  CHECK(f.srv.stats().token_requests == 0);
}

// Only a callback with the sign-in's state may end it (anyone can send a stateless
// error); a server that drops the state on denial leaves the wait to its deadline.
TEST_CASE("a denial that does not echo the state gets the mismatch page and the wait runs to its deadline") {
  fake_atlassian::options o;
  o.echo_state_on_deny = false;
  flow_fixture f(o);
  auto seen = std::make_shared<test_browser::visit>();
  cfo::session_options::listener_options lo;
  lo.timeout = 1500ms;
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::oauth_client client(ex, f.config());
          co_await cfo::detail::authorize(client, simulated_browser(f.config(), test_browser::decision::deny, seen), lo);
        }) == cfo::errc::listener_timeout);
  CHECK(seen->status == 400);
  CHECK(seen->body.find("Authorization mismatch") != std::string::npos);
}

TEST_CASE("auto-approve and PKCE with form encoding") {
  fake_atlassian::options o;
  o.auto_approve = true;
  flow_fixture f(o);
  auto cfg = f.config();
  cfg.use_pkce = true;
  cfg.encoding = cfo::client_config::token_encoding::form;
  auto seen = std::make_shared<test_browser::visit>();
  auto tokens = run_authorize(cfg, test_browser::decision::allow, seen);
  CHECK_FALSE(tokens.access_token.empty());
  CHECK(f.srv.stats().authorize_decisions == 0);
  CHECK(f.srv.stats().authorization_code_grants == 1);
}

TEST_CASE("an unregistered redirect URI never reaches the listener") {
  flow_fixture f;
  auto cfg = f.config();
  cfg.redirect_uri = redirect_for(test_util::free_port());  // not the registered one
  auto seen = std::make_shared<test_browser::visit>();
  cfo::session_options::listener_options o;
  o.timeout = 1s;
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::oauth_client client(ex, cfg);
          co_await cfo::detail::authorize(client, simulated_browser(cfg, test_browser::decision::allow, seen), o);
        }) == cfo::errc::listener_timeout);
  CHECK(seen->status == 400);
  CHECK(seen->body.find("unauthorized_client") != std::string::npos);
  CHECK(f.srv.stats().token_requests == 0);
}

TEST_CASE("a browser that cannot start is a typed error and releases the port") {
  flow_fixture f;
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::oauth_client client(ex, f.config());
          std::vector<std::string> missing_browser;
          missing_browser.emplace_back("/nonexistent/browser");
          co_await cfo::detail::authorize(client, cfo::browser_command(missing_browser));
        }) == cfo::errc::browser_launch_failed);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::detail::redirect_listener again(ex, f.redirect);  // the port is free again
    CHECK(again.port() == f.port);
    co_return;
  });
}

TEST_CASE("a browser that keeps running does not inherit the listener's port") {
  flow_fixture f;
  cfo::session_options::listener_options o;
  o.timeout = 300ms;
  // A "browser" that ignores the URL and lives on for a few seconds.
  std::vector<std::string> lingering;
  for (const char* arg : {"/bin/sh", "-c", "sleep 3", "sh"}) lingering.emplace_back(arg);
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::oauth_client client(ex, f.config());
          co_await cfo::detail::authorize(client, cfo::browser_command(lingering), o);
        }) == cfo::errc::listener_timeout);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::detail::redirect_listener again(ex, f.redirect);  // would be address_in_use if the browser held it
    CHECK(again.port() == f.port);
    co_return;
  });
}

TEST_CASE("the file store replaces atomically and reports corruption") {
  test_util::temp_dir dir;
  auto path = dir / "tokens.json";
  cfo::file_token_store store(path);
  cfo::token_set t;
  t.access_token = cfo::secret("a1");
  t.refresh_token = cfo::secret("r1");
  test_util::run([&](auto) -> asio::awaitable<void> {
    auto nothing = co_await store.load();
    CHECK_FALSE(nothing.has_value());
    co_await store.save(t);
    t.refresh_token = cfo::secret("r2");
    co_await store.save(t);
    auto back = co_await store.load();
    CHECK(back->refresh_token.reveal() == "r2");
    co_await store.clear();
    auto cleared = co_await store.load();
    CHECK_FALSE(cleared.has_value());
    co_await store.clear();  // clearing nothing is fine
  });
  std::size_t files = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir.path())) ++files;
  CHECK(files == 0);  // no temporary files left behind
  for (const char* corrupt : {"{not json", R"({"refresh_token":"x"})", R"({"access_token":"a","expires_at":9223372036854775807})"}) {
    CAPTURE(corrupt);
    { std::ofstream(path) << corrupt; }
    REQUIRE(::chmod(path.c_str(), 0600) == 0);  // a file the umask left open to others is refused before it is read
    auto ec = test_util::error_of([&](auto) -> asio::awaitable<void> { co_await store.load(); });
    CHECK(ec == cfo::errc::store_corrupt);
    CHECK(ec == cfo::remedy::reauthenticate);
  }
  cfo::file_token_store unwritable("/proc/cfo-cannot-write/tokens.json");
  CHECK(test_util::error_of([&](auto) -> asio::awaitable<void> { co_await unwritable.save(t); }) == cfo::errc::store_error);
}

}  // TEST_SUITE

#if defined(CFO_CLI_PATH) && defined(CFO_FAKE_BROWSER_PATH)

namespace {

struct cli_fixture : flow_fixture {
  test_util::temp_dir dir;
  std::string ca = dir / "ca.pem";
  std::string token_file = dir / "config/tokens.json";

  explicit cli_fixture(fake_atlassian::options o = {}) : flow_fixture(std::move(o)) { srv.write_ca_pem(ca); }

  std::vector<std::string> base_args() const {
    return {CFO_CLI_PATH,
            "--client-id", "test-client-id",
            "--client-secret", "test-client-secret",
            "--redirect-uri", redirect,
            "--authorize-url", srv.base_url() + "/authorize",
            "--token-url", srv.base_url() + "/oauth/token",
            "--api-url", srv.base_url(),
            "--ca-file", ca,
            "--token-file", token_file};
  }

  test_util::process_result cli(std::vector<std::string> extra) const {
    auto args = base_args();
    args.insert(args.end(), extra.begin(), extra.end());
    return test_util::run_process(args, 60s);
  }

  std::string browser(bool deny = false) const {
    return std::string(CFO_FAKE_BROWSER_PATH) + " --ca-file " + ca + (deny ? " --deny" : "");
  }

  cfo::token_set saved() const {
    return cfo::token_set::from_json(nlohmann::json::parse(test_util::read_text(token_file)));
  }

  /// A fresh grant for `scope` in the token file, as login leaves it, without a browser.
  void sign_in(const std::string& scope = scopes) {
    auto tokens = test_util::grant_from(srv, test_util::client_config_for(srv, redirect), scope);
    cfo::file_token_store store(token_file);
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store.save(tokens); });
  }

  std::string write_key(const std::string& name, const std::string& content, mode_t mode = 0600) const {
    auto path = dir / name;
    { std::ofstream(path, std::ios::binary) << content; }
    REQUIRE(::chmod(path.c_str(), mode) == 0);
    return path;
  }
};

void check_no_secrets(const test_util::process_result& r, const cfo::token_set& t) {
  for (const auto* s : {&t.access_token, &t.refresh_token}) {
    if (s->empty()) continue;
    CHECK(r.err.find(s->reveal()) == std::string::npos);
  }
  CHECK(r.out.find("test-client-secret") == std::string::npos);
  CHECK(r.err.find("test-client-secret") == std::string::npos);
}

/// The output of a run holds none of the grant's tokens, nor the client secret.
void check_nothing_secret(const test_util::process_result& r, const cfo::token_set& t) {
  check_no_secrets(r, t);
  for (const auto* s : {&t.access_token, &t.refresh_token})
    if (!s->empty()) CHECK(r.out.find(s->reveal()) == std::string::npos);
  CHECK(r.out.find("test-client-secret") == std::string::npos);
}

/// `login --no-browser` started with a standard input the test types on; the
/// authorization URL it shows, once shown.
struct no_browser_login {
  test_util::child_process cli;
  std::string url;

  explicit no_browser_login(const cli_fixture& f)
      : cli(with(f.base_args(), {"--no-browser", "--timeout", "120", "login"}), {}, true) {
    const auto err = cli.stderr_once("press Enter");
    const auto at = err.find("\n  ");
    REQUIRE_MESSAGE(at != std::string::npos, "no URL shown: " << err);
    url = err.substr(at + 3, err.find('\n', at + 3) - at - 3);
  }

  static std::vector<std::string> with(std::vector<std::string> args, std::initializer_list<std::string> more) {
    args.insert(args.end(), more);
    return args;
  }
};

/// The address a browser ends on after consent (the fake server set to
/// approve at once), without going there: what a user pastes.
std::string final_address(const cli_fixture& f, const std::string& url) {
  return test_util::run([&](auto ex) -> asio::awaitable<std::string> {
    cfo::detail::http_client http(ex, f.config().tls, f.config().timeouts);
    const auto target = cfo::detail::parse_url(url);
    const cfo::http_request get;
    auto res = co_await http.send(target, get);
    std::string location;  // no ?: in a coroutine: GCC 12 frees its temporary twice
    if (auto header = res.headers.get("Location")) location = *header;
    co_return location;
  });
}

fake_atlassian::options approving() {
  fake_atlassian::options o;
  o.auto_approve = true;
  return o;
}

}  // namespace

TEST_SUITE("cli") {

// Security: the browser's command line is every local user's (ps); login gives
// the browser a private page that leads to the URL, or, when asked, the URL itself.
TEST_CASE("confluence-cli login gives the browser a private page, not the URL") {
  cli_fixture f;
  const std::string args = f.dir / "browser-args", script = f.dir / "browser.sh";
  {
    std::ofstream out(script);
    out << "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '" << args << "'\nexec " << f.browser() << " \"$1\"\n";
  }
  REQUIRE(::chmod(script.c_str(), 0700) == 0);
  auto login = f.cli({"--browser", script, "--timeout", "30", "login"});
  CAPTURE(login.err);
  REQUIRE(login.exit_code == 0);
  auto seen = test_util::read_text(args);
  CHECK(seen.rfind("file:///", 0) == 0);
  CHECK(seen.find("state=") == std::string::npos);
  const auto page = seen.substr(7, seen.find('\n') - 7);
  CHECK_FALSE(std::filesystem::exists(page));  // removed once the sign-in ended

  std::filesystem::remove(args);
  login = f.cli({"--browser", script, "--no-redirect-page", "--timeout", "30", "login"});
  REQUIRE(login.exit_code == 0);
  CHECK(test_util::read_text(args).rfind(f.srv.base_url() + "/authorize?", 0) == 0);
}

// Security: an answer may echo the token (an echo endpoint, a misconfigured proxy);
// before 1.1 `get` printed it verbatim.
TEST_CASE("confluence-cli get redacts the tokens and the secret an answer echoes") {
  cli_fixture f;
  f.sign_in();
  const auto t = f.saved();
  f.srv.push_status("/echo", 200,
                    R"({"authorization":"Bearer )" + t.access_token.reveal() + R"(","refresh":")" +
                        cfo::detail::percent_encode(t.refresh_token.reveal()) + R"(","secret":"test-client-secret"})");
  auto r = f.cli({"get", "/echo"});
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find(t.access_token.reveal()) == std::string::npos);
  CHECK(r.out.find(t.refresh_token.reveal()) == std::string::npos);
  CHECK(r.out.find("test-client-secret") == std::string::npos);
  CHECK(r.out.find("\"authorization\": \"Bearer [redacted]\"") != std::string::npos);
}

TEST_CASE("confluence-cli login, token and token --refresh") {
  cli_fixture f;
  auto login = f.cli({"--browser", f.browser(), "--timeout", "30", "login"});
  CAPTURE(login.err);
  REQUIRE(login.exit_code == 0);
  auto first = f.saved();
  check_no_secrets(login, first);
  CHECK(login.out.find(first.access_token.reveal()) == std::string::npos);
  CHECK(login.out.find("Logged in") != std::string::npos);
  // Which sites the user just authorized, Jira ones included.
  CHECK(login.out.find("Authorized sites:\n  https://example-jira.atlassian.net  example-jira\n"
                       "  https://example.atlassian.net  example\n") != std::string::npos);
  struct stat st {};
  REQUIRE(::stat(f.token_file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  auto token = f.cli({"token"});
  CHECK(token.exit_code == 0);
  CHECK(token.out == first.access_token.reveal() + "\n");
  CHECK(f.srv.stats().refresh_grants == 0);

  auto refreshed = f.cli({"token", "--refresh"});
  CHECK(refreshed.exit_code == 0);
  auto second = f.saved();
  CHECK(refreshed.out == second.access_token.reveal() + "\n");
  CHECK_FALSE(second.refresh_token == first.refresh_token);  // the rotated token was saved
  CHECK(f.srv.stats().refresh_grants == 1);
}

TEST_CASE("confluence-cli refreshes an expiring token by itself") {
  cli_fixture f;
  auto login = f.cli({"--browser", f.browser(), "login"});
  REQUIRE(login.exit_code == 0);
  auto before = f.saved();  // now make it expire within the 60 s skew
  before.expires_at = std::chrono::system_clock::now() + 10s;
  { std::ofstream(f.token_file) << before.to_json().dump(); }
  auto token = f.cli({"token"});
  CHECK(token.exit_code == 0);
  CHECK(f.srv.stats().refresh_grants == 1);
  CHECK(token.out == f.saved().access_token.reveal() + "\n");
}

TEST_CASE("confluence-cli exit codes") {
  cli_fixture f;
  SUBCASE("not logged in is 4") { CHECK(f.cli({"token"}).exit_code == 4); }
  SUBCASE("usage errors are 2") {
    CHECK(f.cli({"--bogus", "login"}).exit_code == 2);
    CHECK(f.cli({"frobnicate"}).exit_code == 2);
    CHECK(f.cli({"--timeout", "soon", "login"}).exit_code == 2);
    CHECK(test_util::run_process({CFO_CLI_PATH, "login"}, 30s, {"ATLASSIAN_CLIENT_ID=", "ATLASSIAN_CLIENT_SECRET="}).exit_code == 2);
    CHECK(f.cli({"--token-url", "http://auth.example.com/token", "login"}).exit_code == 2);
    CHECK(f.cli({"token", "--site", "example"}).exit_code == 2);
    CHECK(f.cli({"sites", "--limit", "3"}).exit_code == 2);
    CHECK(f.cli({"sites", "extra"}).exit_code == 2);
    CHECK(f.cli({"get"}).exit_code == 2);
    CHECK(f.cli({"get", "wiki/api/v2/spaces"}).exit_code == 2);
    CHECK(f.cli({"get", "--site", "example", "/oauth/token/accessible-resources"}).exit_code == 2);
    CHECK(f.cli({"pages", "--limit", "0"}).exit_code == 2);
    CHECK(f.cli({"pages", "--limit", "many"}).exit_code == 2);
    CHECK(f.cli({"--key-file", f.dir / "no-such-key", "token"}).exit_code == 2);
  }
  SUBCASE("help is 0") {
    auto help = test_util::run_process({CFO_CLI_PATH, "--help"});
    CHECK(help.exit_code == 0);
    for (const char* opt : {"--client-id", "--client-secret", "--redirect-uri", "--scope", "--token-file", "--key-file",
                            "--authorize-url", "--token-url", "--api-url", "--ca-file", "--token-encoding", "--no-pkce", "--no-redirect-page",
                            "--audience", "--prompt", "--browser", "--no-browser", "--timeout", "--request-timeout",
                            "--refresh", "--site", "--limit", "\n  login ", "\n  token [--refresh] ", "\n  sites ",
                            "\n  pages [--site SITE] [--limit N]\n", "\n  get [--site SITE] PATH\n", "\n  logout "}) {
      CAPTURE(opt);
      CHECK(help.out.find(opt) != std::string::npos);
    }
  }
  SUBCASE("denied consent is 3") {
    auto r = f.cli({"--browser", f.browser(true), "login"});
    CHECK(r.exit_code == 3);
    CHECK_FALSE(std::filesystem::exists(f.token_file));
  }
  SUBCASE("nobody coming back is 3") {
    auto start = std::chrono::steady_clock::now();
    auto r = f.cli({"--no-browser", "--timeout", "1", "login"});
    CHECK(r.exit_code == 3);
    CHECK(std::chrono::steady_clock::now() - start < 20s);
    CHECK(r.err.find("/authorize?") != std::string::npos);  // the URL was shown to the user
  }
  SUBCASE("a revoked grant is 4") {
    REQUIRE(f.cli({"--browser", f.browser(), "login"}).exit_code == 0);
    f.srv.revoke_all();
    auto r = f.cli({"token", "--refresh"});
    CHECK(r.exit_code == 4);
    check_no_secrets(r, f.saved());
  }
  SUBCASE("a wrong client secret is 2 and never printed") {
    auto args = f.base_args();
    args[4] = "wrong-secret-value";
    args.insert(args.end(), {"--browser", f.browser(), "login"});
    auto r = test_util::run_process(args, 60s);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("wrong-secret-value") == std::string::npos);
  }
}

TEST_CASE("confluence-cli sites lists the sites the grant reaches") {
  cli_fixture f;
  f.sign_in();
  auto r = f.cli({"sites"});
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out == "b2c3d4e5-0000-4000-8000-000000000002  example-jira  https://example-jira.atlassian.net\n"
                 "a1b2c3d4-0000-4000-8000-000000000001  example  https://example.atlassian.net\n");
}

TEST_CASE("confluence-cli pages --limit 30 lists 30 pages in order, in one listing request") {
  fake_atlassian::options o;
  o.page_count = 40;
  cli_fixture f(o);
  f.sign_in();
  const auto before = f.srv.stats().api_requests;
  auto r = f.cli({"pages", "--limit", "30"});
  CAPTURE(r.err);
  REQUIRE(r.exit_code == 0);
  std::string expected;
  for (int n = 1; n <= 30; ++n) expected += std::to_string(n) + "\tPage " + std::to_string(n) + "\n";
  CHECK(r.out == expected);
  CHECK(f.srv.stats().api_requests - before == 2);  // accessible-resources, then one page of 30

  auto by_default = f.cli({"pages"});
  CHECK(by_default.exit_code == 0);
  CHECK(std::count(by_default.out.begin(), by_default.out.end(), '\n') == 25);
  auto all = f.cli({"pages", "--limit=1000"});
  CHECK(all.exit_code == 0);
  CHECK(std::count(all.out.begin(), all.out.end(), '\n') == 40);
}

TEST_CASE("confluence-cli pages --site names the sites when none matches") {
  cli_fixture f;
  f.sign_in();
  auto r = f.cli({"pages", "--site", "https://elsewhere.atlassian.net"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("elsewhere.atlassian.net") != std::string::npos);
  CHECK(r.err.find("example (https://example.atlassian.net)") != std::string::npos);
  CHECK(r.out.empty());
}

TEST_CASE("confluence-cli with several sites needs --site, by URL, name or cloud id") {
  fake_atlassian::options o;
  o.sites.push_back({"cloud-one", "One", "https://one.atlassian.net", {}, {}});
  o.sites.push_back({"cloud-two", "Two", "https://two.atlassian.net", {}, {}});
  o.page_count = 3;
  cli_fixture f(o);
  f.sign_in();
  auto listed = f.cli({"sites"});
  CHECK(listed.exit_code == 0);
  CHECK(listed.out == "cloud-one  One  https://one.atlassian.net\ncloud-two  Two  https://two.atlassian.net\n");

  auto ambiguous = f.cli({"pages"});
  CHECK(ambiguous.exit_code == 2);
  CHECK(ambiguous.err.find("--site") != std::string::npos);
  CHECK(ambiguous.err.find("https://one.atlassian.net") != std::string::npos);
  CHECK(ambiguous.err.find("https://two.atlassian.net") != std::string::npos);

  for (const char* key : {"two", "two.atlassian.net/", "cloud-two"}) {
    CAPTURE(key);
    auto r = f.cli({"get", "--site", key, "/wiki/api/v2/spaces"});
    CAPTURE(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(nlohmann::json::parse(r.out)["_links"]["base"] == "https://two.atlassian.net/wiki");
  }
  auto pages = f.cli({"pages", "--site", "One"});
  CHECK(pages.exit_code == 0);
  CHECK(pages.out == "1\tPage 1\n2\tPage 2\n3\tPage 3\n");
}

TEST_CASE("confluence-cli get prints the JSON answer, on the site or on the API base") {
  cli_fixture f;
  f.sign_in();
  auto r = f.cli({"get", "/wiki/api/v2/spaces"});
  CAPTURE(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("\n  \"results\": [") != std::string::npos);  // pretty-printed
  auto spaces = nlohmann::json::parse(r.out, nullptr, false);
  REQUIRE(spaces.is_object());
  REQUIRE(spaces["results"].size() == 3);
  CHECK(spaces["results"][0]["key"] == "SP1");
  CHECK(spaces["results"][2]["name"] == "Space 3");

  auto resources = f.cli({"get", "/oauth/token/accessible-resources"});
  CAPTURE(resources.err);
  REQUIRE(resources.exit_code == 0);
  auto sites = nlohmann::json::parse(resources.out, nullptr, false);
  REQUIRE(sites.is_array());
  REQUIRE(sites.size() == 2);  // Jira first: no order is promised
  CHECK(sites[1]["id"] == "a1b2c3d4-0000-4000-8000-000000000001");
}

TEST_CASE("confluence-cli get of a retired v1 endpoint exits 2 and points to v2") {
  cli_fixture f;
  f.sign_in();
  auto r = f.cli({"get", "/wiki/rest/api/content"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("410") != std::string::npos);
  CHECK(r.err.find("/wiki/api/v2/") != std::string::npos);
  CHECK(r.out.empty());
}

TEST_CASE("confluence-cli a grant without the endpoint's scope exits 2 without refreshing") {
  cli_fixture f;
  f.sign_in("read:page:confluence offline_access");
  auto r = f.cli({"get", "/wiki/api/v2/spaces"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("scope") != std::string::npos);
  CHECK(r.err.find("--scope") != std::string::npos);
  CHECK(r.out.empty());
  CHECK(f.srv.stats().refresh_grants == 0);
  CHECK(f.cli({"pages"}).exit_code == 0);  // the scope it has still works
}

TEST_CASE("confluence-cli logout forgets the grant") {
  cli_fixture f;
  f.sign_in();
  REQUIRE(f.cli({"token"}).exit_code == 0);
  auto r = f.cli({"logout"});
  CHECK(r.exit_code == 0);
  CHECK(r.err.find("Logged out") != std::string::npos);
  CHECK(r.out.empty());
  CHECK_FALSE(std::filesystem::exists(f.token_file));
  auto token = f.cli({"token"});
  CHECK(token.exit_code == 4);
  CHECK(token.err.find("not logged in") != std::string::npos);
  auto again = f.cli({"logout"});
  CHECK(again.exit_code == 0);
  CHECK(again.err.find("nothing to forget") != std::string::npos);
}

TEST_CASE("confluence-cli --key-file encrypts the token file") {
  cli_fixture f;
  const std::string hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
  std::string raw;
  for (int i = 0; i < 32; ++i) raw += static_cast<char>(i);
  const auto key = f.write_key("key.hex", hex + "\n");
  auto login = f.cli({"--key-file", key, "--browser", f.browser(), "login"});
  CAPTURE(login.err);
  REQUIRE(login.exit_code == 0);
  auto text = test_util::read_text(f.token_file);
  CHECK(nlohmann::json::parse(text).contains("format"));  // sealed
  cfo::file_token_store sealed(f.token_file, cfo::secret(raw));
  auto tokens = test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> { co_return co_await sealed.load(); });
  REQUIRE(tokens);
  CHECK(text.find(tokens->access_token.reveal()) == std::string::npos);

  auto token = f.cli({"--key-file", key, "token"});
  CHECK(token.exit_code == 0);
  CHECK(token.out == tokens->access_token.reveal() + "\n");
  auto refreshed = f.cli({"--key-file", f.write_key("key.bin", raw), "token", "--refresh"});  // the same key, raw
  CHECK(refreshed.exit_code == 0);
  CHECK(nlohmann::json::parse(test_util::read_text(f.token_file)).contains("format"));  // saved sealed again

  auto wrong = f.cli({"--key-file", f.write_key("other.bin", std::string(32, 'k')), "token"});
  CHECK(wrong.exit_code == 2);
  CHECK(wrong.err.find("another key") != std::string::npos);
  CHECK(f.cli({"token"}).exit_code == 2);  // encrypted, and no key given
  auto exposed = f.cli({"--key-file", f.write_key("exposed.hex", hex, 0640), "token"});
  CHECK(exposed.exit_code == 2);
  CHECK(exposed.err.find("chmod 600") != std::string::npos);
  CHECK(f.cli({"--key-file", f.write_key("short.hex", hex.substr(2)), "token"}).exit_code == 2);
}


TEST_CASE("confluence-cli status: exit 0 with a usable grant, 3 when a new login is needed, never a secret") {
  cli_fixture f;
  auto none = f.cli({"status"});
  CHECK(none.exit_code == 3);
  CHECK(none.out.find("Token file:    " + f.token_file) != std::string::npos);
  CHECK(none.out.find("none stored") != std::string::npos);
  CHECK(none.err == "confluence-cli: not logged in: run confluence-cli login\n");

  f.sign_in();
  const auto granted = f.saved();
  auto usable = f.cli({"status"});
  CAPTURE(usable.err);
  CHECK(usable.exit_code == 0);
  for (const char* line : {"Grant:         usable\n", "Access token:  valid for ", "Refresh token: yes\n",
                           "Grant age:     obtained ", "Scopes:        read:page:confluence read:space:confluence offline_access\n",
                           "Sites:\n", "\n  a1b2c3d4-0000-4000-8000-000000000001  example  https://example.atlassian.net\n"}) {
    CAPTURE(line);
    CHECK(usable.out.find(line) != std::string::npos);
  }
  check_nothing_secret(usable, granted);

  // An expired access token is refreshed by the check; a rejected refresh token needs a new login.
  auto expired = granted;
  expired.expires_at = std::chrono::system_clock::now() - 10s;
  { std::ofstream(f.token_file) << expired.to_json().dump(); }
  auto renewed = f.cli({"status"});
  CHECK(renewed.exit_code == 0);
  CHECK(f.srv.stats().refresh_grants == 1);
  check_nothing_secret(renewed, f.saved());

  // A grant near Atlassian's 365-day and 90-day limits is usable, with a warning for each.
  auto aged = f.saved();
  aged.first_obtained = std::chrono::system_clock::now() - std::chrono::hours(24 * 360);
  aged.last_rotated = std::chrono::system_clock::now() - std::chrono::hours(24 * 80);
  { std::ofstream(f.token_file) << aged.to_json().dump(); }
  auto aging = f.cli({"status"});
  CAPTURE(aging.err);
  CHECK(aging.exit_code == 0);
  CHECK(aging.out.find("Grant age:     obtained 360 days ago") != std::string::npos);
  CHECK(aging.out.find("Warning:       the grant ends in ") != std::string::npos);  // 4 or 5 days, rounded down
  CHECK(aging.out.find("Warning:       the refresh token was last used 80 days ago") != std::string::npos);
  check_nothing_secret(aging, aged);

  f.srv.revoke_all();
  const auto revoked = f.saved();
  auto rejected = f.cli({"status"});
  CHECK(rejected.exit_code == 3);
  CHECK(rejected.out.find("needs a new login") != std::string::npos);
  CHECK(rejected.err.find("run confluence-cli login") != std::string::npos);
  CHECK(std::count(rejected.err.begin(), rejected.err.end(), '\n') == 1);  // said once
  check_nothing_secret(rejected, revoked);

  { std::ofstream(f.token_file) << "{not json"; }
  CHECK(f.cli({"status"}).exit_code == 3);
}

TEST_CASE("confluence-cli login --no-browser takes the address pasted on standard input") {
  cli_fixture f(approving());
  no_browser_login login(f);
  const auto address = final_address(f, login.url);
  REQUIRE(address.rfind(f.redirect + "?code=", 0) == 0);
  login.cli.type("  " + address + "\r\n");
  auto r = login.cli.wait();
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("Logged in") != std::string::npos);
  CHECK(f.srv.stats().authorization_code_grants == 1);
  CHECK(r.err.find(cfo::detail::parse_callback(address).code.reveal()) == std::string::npos);
  check_nothing_secret(r, f.saved());
  CHECK(f.cli({"status"}).exit_code == 0);
}

TEST_CASE("confluence-cli login --no-browser: a pasted denial ends the login as the browser's would") {
  cli_fixture f;
  no_browser_login login(f);
  const auto state = cfo::detail::parse_callback(login.url).state;
  REQUIRE(state);
  login.cli.type(f.redirect + "?error=access_denied&error_description=No&state=" + state->reveal() + "\n");
  auto r = login.cli.wait();
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("denied") != std::string::npos);
  CHECK(f.srv.stats().token_requests == 0);
  CHECK_FALSE(std::filesystem::exists(f.token_file));
}

TEST_CASE("confluence-cli login --no-browser: the browser's redirect wins when it comes first") {
  cli_fixture f;
  no_browser_login login(f);
  auto seen = test_util::run([&](auto ex) -> asio::awaitable<test_browser::visit> {
    cfo::detail::http_client http(ex, f.config().tls, f.config().timeouts);
    co_return co_await test_browser::browse(http, login.url);
  });
  CHECK(seen.status == 200);
  auto r = login.cli.wait();  // standard input still open, nothing typed
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK(f.srv.stats().authorization_code_grants == 1);
}

TEST_CASE("confluence-cli login --no-browser refuses a hostile paste before any token request") {
  cli_fixture f(approving());
  no_browser_login login(f);
  const auto address = final_address(f, login.url);
  REQUIRE(address.rfind(f.redirect + "?code=", 0) == 0);
  std::string paste, why;
  SUBCASE("another sign-in's state") {
    paste = address;
    paste.insert(paste.find("state=") + 6, "x");
    why = "does not answer this sign-in";
  }
  SUBCASE("another host") {
    paste = "https://attacker.example/callback" + address.substr(address.find('?'));
    why = "is not on the redirect URI " + f.redirect;
  }
  SUBCASE("no state") {
    REQUIRE(address.find("&state=") != std::string::npos);
    paste = address.substr(0, address.find("&state="));
    why = "does not answer this sign-in";
  }
  SUBCASE("a huge line") {
    paste = address + "&pad=" + std::string(20000, 'a');
    why = "longer than 8192 bytes";
  }
  SUBCASE("a control character") {
    paste = address;
    paste.insert(paste.find('?'), "\x1b[2J");
    why = "control characters";
  }
  login.cli.type(paste + "\n");
  auto r = login.cli.wait();
  CHECK(r.exit_code == 3);
  CHECK(r.err.find("confluence-cli: the pasted ") != std::string::npos);
  CHECK(r.err.find(why) != std::string::npos);
  CHECK(r.err.find(cfo::detail::parse_callback(address).code.reveal()) == std::string::npos);  // not echoed
  CHECK(f.srv.stats().token_requests == 0);
  CHECK_FALSE(std::filesystem::exists(f.token_file));
}

TEST_CASE("confluence-cli help COMMAND and COMMAND --help show that command's help, without a client id") {
  const std::vector<std::string> no_client = {"ATLASSIAN_CLIENT_ID=", "ATLASSIAN_CLIENT_SECRET="};
  for (const auto& args : {std::vector<std::string>{CFO_CLI_PATH, "help", "login"},
                           std::vector<std::string>{CFO_CLI_PATH, "login", "--help"},
                           std::vector<std::string>{CFO_CLI_PATH, "--no-browser", "login", "-h"}}) {
    CAPTURE(args[1]);
    auto r = test_util::run_process(args, 60s, no_client);
    CHECK(r.exit_code == 0);
    CHECK(r.out.rfind("usage: confluence-cli [options] login [--no-browser]\n", 0) == 0);
    CHECK(r.out.find("pasted on standard input") != std::string::npos);
    CHECK(r.out.find("--client-secret") == std::string::npos);  // its own help, not all of it
    CHECK(r.err.empty());
  }
  auto status = test_util::run_process({CFO_CLI_PATH, "status", "--help"}, 60s, no_client);
  CHECK(status.exit_code == 0);
  CHECK(status.out.rfind("usage: confluence-cli [options] status\n", 0) == 0);
  auto all = test_util::run_process({CFO_CLI_PATH, "help"}, 60s, no_client);
  CHECK(all.exit_code == 0);
  CHECK(all.out.find("--client-secret") != std::string::npos);

  for (const auto& args : {std::vector<std::string>{CFO_CLI_PATH, "frobnicate"},
                           std::vector<std::string>{CFO_CLI_PATH, "help", "frobnicate"}}) {
    CAPTURE(args.back());
    auto unknown = test_util::run_process(args, 60s, no_client);
    CHECK(unknown.exit_code == 2);
    CHECK(unknown.err.rfind("confluence-cli: unknown command \"frobnicate\"; the commands are login, status, token, "
                            "sites, pages, get, logout, help\n", 0) == 0);
    CHECK(unknown.err.find("client id") == std::string::npos);
  }
}

TEST_CASE("confluence-cli login that times out names the usual cause, once") {
  cli_fixture f;
  auto r = f.cli({"--no-browser", "--timeout", "1", "login"});
  CHECK(r.exit_code == 3);
  const std::string said = "confluence-cli: no authorization redirect reached " + f.redirect + " within 1 s. The usual cause: "
                           "the redirect URI registered for the app in the developer console differs from --redirect-uri";
  CHECK(r.err.find(said) != std::string::npos);
  CHECK(r.err.find("timed out waiting") == std::string::npos);  // not said a second time
  std::size_t errors = 0;
  for (auto at = r.err.find("confluence-cli: "); at != std::string::npos; at = r.err.find("confluence-cli: ", at + 1)) ++errors;
  CHECK(errors == 1);
}

// A service account: no login, its token cached in the token file, the site
// from --site (cloud id, or URL through the public tenant_info) or from
// accessible-resources, where the Jira site listed first changes nothing.
TEST_CASE("confluence-cli --client-credentials: token, sites, pages and get without login") {
  cli_fixture f;
  auto service = [&](std::vector<std::string> extra) {
    std::vector<std::string> args{"--client-id", "test-service-account", "--client-secret", "test-service-secret",
                                  "--client-credentials"};
    args.insert(args.end(), extra.begin(), extra.end());
    return f.cli(args);
  };
  auto token = service({"token"});
  CAPTURE(token.err);
  REQUIRE(token.exit_code == 0);
  auto cached = f.saved();
  CHECK(token.out == cached.access_token.reveal() + "\n");
  CHECK_FALSE(cached.has_refresh_token());
  CHECK(service({"token"}).out == token.out);  // the cached token
  CHECK(f.srv.stats().client_credentials_grants == 1);
  auto renewed = service({"token", "--refresh"});
  CHECK(renewed.exit_code == 0);
  CHECK(renewed.out != token.out);
  CHECK(f.srv.stats().client_credentials_grants == 2);

  auto sites = service({"sites"});
  CHECK(sites.exit_code == 0);
  CHECK(sites.out.find("a1b2c3d4-0000-4000-8000-000000000001  example") != std::string::npos);
  auto pages = service({"pages", "--limit", "3"});
  CAPTURE(pages.err);
  CHECK(pages.exit_code == 0);
  CHECK(pages.out == "1\tPage 1\n2\tPage 2\n3\tPage 3\n");
  const auto before = f.srv.stats().api_requests;
  for (const std::string& site : {f.srv.base_url(), std::string("a1b2c3d4-0000-4000-8000-000000000001")}) {
    CAPTURE(site);
    auto r = service({"get", "--site", site, "/wiki/api/v2/spaces"});
    CAPTURE(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("\"SP1\"") != std::string::npos);
  }
  CHECK(f.srv.stats().api_requests - before == 2);  // no accessible-resources: the spaces, twice
  CHECK(f.srv.stats().client_credentials_grants == 2);
  CHECK(f.srv.stats().authorization_code_grants == 0);

  CHECK(service({"login"}).exit_code == 2);
  auto plain = service({"pages", "--site", "http://example.atlassian.net"});  // https only, but to loopback
  CHECK(plain.exit_code == 2);
  CHECK(plain.err.find("http") != std::string::npos);
  auto wrong = f.cli({"--client-id", "test-service-account", "--client-secret", "wrong-service-secret",
                      "--client-credentials", "token", "--refresh"});
  CHECK(wrong.exit_code == 2);
  CHECK(wrong.err.find("wrong-service-secret") == std::string::npos);
  CHECK(wrong.err.find("client authentication failed") != std::string::npos);

  // A user's grant in the token file is never replaced by a service account's token.
  f.sign_in();
  const auto user = f.saved();
  auto refused = service({"token"});
  CHECK(refused.exit_code == 2);
  CHECK(refused.err.find("another --token-file") != std::string::npos);
  CHECK(f.saved().refresh_token == user.refresh_token);
}

}  // TEST_SUITE

#endif

}  // namespace test_flow
