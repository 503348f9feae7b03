// The fake Atlassian server itself, over real sockets: Confluence v1 spaces (offset
// pagination, classic or granular scope), delayed answers, the gateway's near-expiry
// 403/404, the retry-status counter, fast deep v2 pagination, and the standalone
// program's flags. Other suites rely on these behaviours; here they are pinned down.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

#include <asio/experimental/awaitable_operators.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

// Its own namespace, so that the unity build can put test files together.
namespace test_fake_server {

namespace {

namespace cfo = confluence_oauth;
using json = nlohmann::json;
using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using steady = std::chrono::steady_clock;

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* default_site = "a1b2c3d4-0000-4000-8000-000000000001";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";

asio::awaitable<cfo::http_response> get(cfo::detail::http_client& http, std::string url, std::string token,
                                        std::string method = "GET") {
  cfo::http_request req;
  req.method = std::move(method);
  if (!token.empty()) req.headers.set("Authorization", "Bearer " + token);
  co_return co_await http.send(cfo::detail::parse_url(url), req);
}

struct timed_response {
  cfo::http_response response;
  std::chrono::milliseconds elapsed{0};
};

asio::awaitable<timed_response> timed_get(cfo::detail::http_client& http, std::string url, std::string token,
                                          steady::time_point start) {
  timed_response r;
  r.response = co_await get(http, url, token);
  r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
  co_return r;
}

asio::awaitable<void> pause(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

// Code exchange through the library; the token's string.
std::string access_token_for(const cfo::client_config& cfg, const std::string& code) {
  auto t = test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, cfg);
    cfo::authorization auth;
    auth.redirect_uri = redirect;
    co_return co_await client.exchange_code(cfo::secret(code), auth);
  });
  return t.access_token.reveal();
}

struct fixture {
  fake_atlassian::server srv;

  explicit fixture(fake_atlassian::options o = {}) : srv(std::move(o)) {}

  cfo::client_config config() const {
    auto c = test_util::client_config_for(srv, redirect);
    c.tls.use_system_trust = false;  // the fake's CA is enough, and loading the system store is slow
    return c;
  }
  std::string gateway() const { return srv.base_url() + "/ex/confluence/" + default_site; }
  std::string token(const std::string& scope) { return access_token_for(config(), srv.issue_code(redirect, scope)); }

  /// Runs `f(http_client&)` on a fresh io_context with a client that trusts this server.
  template <class F>
  auto with_client(F f) const {
    return test_util::run(
        [tls = config().tls, f](asio::any_io_executor ex) -> decltype(f(std::declval<cfo::detail::http_client&>())) {
          cfo::detail::http_client http(ex, tls, cfo::client_config::http_timeouts{5s, 30s});
          co_return co_await f(http);
        },
        30s);
  }

  cfo::http_response fetch(const std::string& url, const std::string& token, std::string method = "GET") const {
    return with_client([&](cfo::detail::http_client& http) { return get(http, url, token, method); });
  }
};

json body_of(const cfo::http_response& r) { return json::parse(r.body); }

}  // namespace

TEST_SUITE("fake_server") {

// ---------------------------------------------------------------------------
// Confluence v1 spaces
// ---------------------------------------------------------------------------

TEST_CASE("v1 spaces page with start and limit, _links.next relative to /wiki, no Link header") {
  fake_atlassian::options o;
  o.space_count = 7;
  fixture f(o);
  auto tok = f.token("read:confluence-space.summary offline_access");

  auto first = f.fetch(f.gateway() + "/wiki/rest/api/space?limit=3", tok);
  REQUIRE(first.status == 200);
  CHECK_FALSE(first.headers.get("Link"));
  auto j = body_of(first);
  CHECK(j["start"] == 0);
  CHECK(j["limit"] == 3);
  CHECK(j["size"] == 3);
  CHECK(j["_links"]["base"] == "https://example.atlassian.net/wiki");
  CHECK(j["_links"]["context"] == "/wiki");
  CHECK(j["_links"]["next"] == "/rest/api/space?limit=3&start=3");
  CHECK(j["results"][0] == json{{"id", "1"}, {"key", "SP1"}, {"name", "Space 1"}, {"type", "global"}});

  // Follow next (gateway + context + next) to the end.
  struct walk {
    std::vector<std::string> keys;
    std::vector<int> sizes;
    json last;
  };
  auto w = f.with_client([&](cfo::detail::http_client& http) -> asio::awaitable<walk> {
    walk out;
    std::string url = f.gateway() + "/wiki/rest/api/space?limit=3";
    for (;;) {
      auto r = co_await get(http, url, tok);
      REQUIRE(r.status == 200);
      CHECK_FALSE(r.headers.get("Link"));
      out.last = body_of(r);
      out.sizes.push_back(out.last["size"].get<int>());
      for (const auto& s : out.last["results"]) out.keys.push_back(s["key"].get<std::string>());
      if (!out.last["_links"].contains("next")) co_return out;
      auto next = out.last["_links"]["next"].get<std::string>();
      CHECK(next.rfind("/wiki", 0) != 0);
      url = f.gateway() + out.last["_links"]["context"].get<std::string>() + next;
    }
  });
  CHECK(w.keys == std::vector<std::string>{"SP1", "SP2", "SP3", "SP4", "SP5", "SP6", "SP7"});
  CHECK(w.sizes == std::vector<int>{3, 3, 1});
  CHECK(w.last["start"] == 6);
  CHECK(w.last["limit"] == 3);
}

TEST_CASE("v1 spaces default to 25, clamp the limit to 250 and reject bad numbers") {
  fake_atlassian::options o;
  o.space_count = 300;
  fixture f(o);
  auto tok = f.token("read:space:confluence");
  auto space = [&](const std::string& query) { return f.fetch(f.gateway() + "/wiki/rest/api/space" + query, tok); };

  auto j = body_of(space(""));
  CHECK(j["start"] == 0);
  CHECK(j["limit"] == 25);
  CHECK(j["size"] == 25);
  CHECK(j["_links"]["next"] == "/rest/api/space?limit=25&start=25");

  j = body_of(space("?limit=1000"));
  CHECK(j["limit"] == 250);
  CHECK(j["size"] == 250);
  CHECK(j["results"][249]["id"] == "250");
  CHECK(j["_links"]["next"] == "/rest/api/space?limit=250&start=250");

  j = body_of(space("?start=250&limit=250"));
  CHECK(j["size"] == 50);
  CHECK(j["results"][49]["key"] == "SP300");
  CHECK_FALSE(j["_links"].contains("next"));

  j = body_of(space("?start=1000"));
  CHECK(j["start"] == 1000);
  CHECK(j["size"] == 0);
  CHECK(j["results"].empty());
  CHECK_FALSE(j["_links"].contains("next"));

  for (std::string bad : {"?limit=0", "?limit=-5", "?limit=ten", "?start=-1", "?start=", "?start=%zz"}) {
    CAPTURE(bad);
    auto r = space(bad);
    CHECK(r.status == 400);
    CHECK(body_of(r)["statusCode"] == 400);
  }
}

TEST_CASE("v1 spaces take the classic or the granular scope, and every other v1 path stays 410") {
  fixture f;
  const std::string v1 = f.gateway() + "/wiki/rest/api/space", v2 = f.gateway() + "/wiki/api/v2/spaces";
  auto classic = f.token("read:confluence-space.summary");
  auto granular = f.token("read:space:confluence");
  auto pages_only = f.token("read:page:confluence");

  CHECK(f.fetch(v1, classic).status == 200);
  CHECK(body_of(f.fetch(v1, granular))["size"] == 3);
  auto classic_v2 = f.fetch(v2, classic);  // classic scopes do not open v2
  CHECK(classic_v2.status == 401);
  CHECK(body_of(classic_v2)["message"] == "Unauthorized; scope does not match");

  auto mismatch = f.fetch(v1, pages_only);
  CHECK(mismatch.status == 401);
  CHECK(body_of(mismatch)["message"] == "Unauthorized; scope does not match");
  CHECK_FALSE(mismatch.headers.get("WWW-Authenticate"));  // not an expired token

  auto anonymous = f.fetch(v1, "");
  CHECK(anonymous.status == 401);
  CHECK(anonymous.headers.get("WWW-Authenticate"));
  CHECK(f.srv.stats().api_unauthorized == 3);

  CHECK(f.fetch(v1, classic, "POST").status == 405);
  for (std::string gone : {"/wiki/rest/api/content", "/wiki/rest/api/space/SP1", "/wiki/rest/api/spaces",
                           "/wiki/rest/api/space/"}) {
    CAPTURE(gone);
    CHECK(f.fetch(f.gateway() + gone, classic).status == 410);
  }
  CHECK(f.fetch(f.srv.base_url() + "/ex/confluence/no-such-site/wiki/rest/api/space", classic).status == 404);
}

// ---------------------------------------------------------------------------
// Delayed answers
// ---------------------------------------------------------------------------

TEST_CASE("push_delay answers late without holding up other connections, once") {
  fixture f;
  auto tok = f.token(scopes);
  f.srv.push_delay("/ex/", 400ms);
  struct result {
    timed_response delayed, other, again;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client a(ex, f.config().tls, cfo::client_config::http_timeouts{5s, 30s});
        cfo::detail::http_client b(ex, f.config().tls, cfo::client_config::http_timeouts{5s, 30s});
        auto start = steady::now();
        auto [delayed, other] =
            co_await (timed_get(a, f.gateway() + "/wiki/api/v2/spaces", tok, start) &&
                      timed_get(b, f.srv.base_url() + "/oauth/token/accessible-resources", tok, start));
        auto again = co_await timed_get(a, f.gateway() + "/wiki/api/v2/spaces", tok, steady::now());
        co_return result{std::move(delayed), std::move(other), std::move(again)};
      },
      30s);
  CHECK(r.delayed.response.status == 200);
  CHECK(body_of(r.delayed.response)["results"].size() == 3);
  CHECK(r.delayed.elapsed >= 400ms);
  CHECK(r.other.response.status == 200);
  CHECK(r.other.elapsed + 200ms < r.delayed.elapsed);  // served while the other one waited
  CHECK(r.again.response.status == 200);
  CHECK(r.again.elapsed < 300ms);  // the delay was used up
  auto s = f.srv.stats();
  CHECK(s.api_requests == 3);
  CHECK(s.requests == 4);  // and the code exchange
}

TEST_CASE("a delayed answer is computed when the delay ends") {
  fixture f;
  auto tok = f.token(scopes);
  f.srv.push_delay("/ex/", 300ms);
  auto status = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<int> {
        cfo::detail::http_client http(ex, f.config().tls, cfo::client_config::http_timeouts{5s, 30s});
        auto expire_meanwhile = [&]() -> asio::awaitable<void> {
          while (f.srv.stats().api_requests == 0) co_await pause(5ms);  // the request is in, and waiting
          f.srv.advance_clock(3601s);
        };
        auto res = co_await (get(http, f.gateway() + "/wiki/api/v2/pages", tok) && expire_meanwhile());
        co_return res.status;
      },
      30s);
  CHECK(status == 401);  // the token had expired by the time the answer was made
  CHECK(f.srv.stats().api_unauthorized == 1);
}

TEST_CASE("a pending delay does not hold up the server's shutdown") {
  auto srv = std::make_unique<fake_atlassian::server>();
  auto cfg = test_util::client_config_for(*srv, redirect);
  cfg.tls.use_system_trust = false;
  auto tok = access_token_for(cfg, srv->issue_code(redirect, scopes));
  srv->push_delay("/ex/", 60s);
  auto stopped_in = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<std::chrono::milliseconds> {
        auto http = std::make_shared<cfo::detail::http_client>(ex, cfg.tls, cfo::client_config::http_timeouts{30s, 30s});
        auto url = srv->base_url() + "/ex/confluence/" + default_site + "/wiki/api/v2/pages";
        auto ended = std::make_shared<bool>(false);
        asio::co_spawn(ex, [http, url, tok]() -> asio::awaitable<void> { co_await get(*http, url, tok); },
                       [ended](std::exception_ptr) { *ended = true; });
        while (srv->stats().api_requests == 0) co_await pause(5ms);
        auto start = steady::now();
        srv.reset();  // joins the server's thread
        auto took = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
        while (!*ended) co_await pause(5ms);  // the client sees the connection end
        co_return took;
      },
      30s);
  CHECK(stopped_in < 1s);
}

// ---------------------------------------------------------------------------
// The gateway near expiry, injected statuses
// ---------------------------------------------------------------------------

TEST_CASE("near expiry the gateway answers the configured status instead of the answer") {
  int status = 403;
  SUBCASE("403") { status = 403; }
  SUBCASE("404") { status = 404; }
  CAPTURE(status);
  fake_atlassian::options o;
  o.near_expiry_window = 300s;
  o.near_expiry_status = status;
  fixture f(o);
  auto tok = f.token(scopes);
  const std::string pages = f.gateway() + "/wiki/api/v2/pages";

  CHECK(f.fetch(pages, tok).status == 200);
  f.srv.advance_clock(3200s);  // 400 s left
  CHECK(f.fetch(pages, tok).status == 200);
  f.srv.advance_clock(100s);  // 300 s left: within the window
  auto near = f.fetch(pages, tok);
  CHECK(near.status == status);
  CHECK(body_of(near)["code"] == status);
  CHECK(near.headers.get("Content-Type").value_or("").find("application/json") == 0);
  CHECK(f.fetch(f.srv.base_url() + "/oauth/token/accessible-resources", tok).status == 200);  // not /ex/
  f.srv.advance_clock(300s);  // expired: a plain 401
  CHECK(f.fetch(pages, tok).status == 401);
  auto s = f.srv.stats();
  CHECK(s.api_near_expiry == 1);
  CHECK(s.api_unauthorized == 1);
}

TEST_CASE("without a near-expiry window a token is good to its last second") {
  fixture f;
  auto tok = f.token(scopes);
  f.srv.advance_clock(3599s);
  CHECK(f.fetch(f.gateway() + "/wiki/api/v2/pages", tok).status == 200);
  CHECK(f.srv.stats().api_near_expiry == 0);
}

TEST_CASE("injected 429 and 503 answers are counted, other injected answers are not") {
  fixture f;
  auto tok = f.token(scopes);
  const std::string pages = f.gateway() + "/wiki/api/v2/pages";
  const std::string resources = f.srv.base_url() + "/oauth/token/accessible-resources";
  f.srv.push_status("/ex/", 429, R"({"message":"Rate limit exceeded"})", {{"Retry-After", "7"}});
  f.srv.push_status("/oauth/token/accessible-resources", 503, R"({"message":"busy"})", {{"Retry-After", "1"}});
  f.srv.push_status("/ex/", 500, R"({"message":"oops"})");
  f.srv.push_raw_response("/ex/", "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n");

  auto limited = f.fetch(pages, tok);
  CHECK(limited.status == 429);
  CHECK(limited.headers.get("Retry-After") == "7");
  CHECK(f.fetch(resources, tok).status == 503);
  CHECK(f.fetch(pages, tok).status == 500);
  CHECK(f.fetch(pages, tok).status == 429);  // raw bytes: not a push_status answer
  CHECK(f.fetch(pages, tok).status == 200);
  auto s = f.srv.stats();
  CHECK(s.injected_retry_statuses == 2);
  CHECK(s.api_requests == 5);
}

// ---------------------------------------------------------------------------
// Deep v2 pagination
// ---------------------------------------------------------------------------

TEST_CASE("v2 pagination through 5000 pages, 250 at a time and 4 at a time, on one keep-alive connection each") {
  fake_atlassian::options o;
  o.page_count = 5000;
  fixture f(o);
  auto tok = f.token(scopes);
  struct walk {
    int requests = 0;
    int items = 0;
    bool in_order = true;
    bool link_matches_body = true;
    std::chrono::milliseconds elapsed{0};
  };
  auto paginate = [&](int limit) {
    return f.with_client([&](cfo::detail::http_client& http) -> asio::awaitable<walk> {
      walk w;
      auto start = steady::now();
      std::string url = f.gateway() + "/wiki/api/v2/pages?limit=" + std::to_string(limit);
      for (;;) {
        auto r = co_await get(http, url, tok);
        REQUIRE(r.status == 200);
        ++w.requests;
        auto j = body_of(r);
        for (const auto& p : j["results"]) w.in_order = w.in_order && p["id"] == std::to_string(++w.items);
        auto link = r.headers.get("Link");
        if (!j["_links"].contains("next")) {
          w.link_matches_body = w.link_matches_body && !link;
          break;
        }
        auto next = j["_links"]["next"].get<std::string>();
        w.link_matches_body = w.link_matches_body && link && *link == "<" + next + ">; rel=\"next\"";
        url = f.gateway() + next;
      }
      w.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
      co_return w;
    });
  };
  auto wide = paginate(1000);  // clamped to 250
  CHECK(wide.requests == 20);
  CHECK(wide.items == 5000);
  CHECK(wide.in_order);
  CHECK(wide.link_matches_body);

  auto narrow = paginate(4);
  CHECK(narrow.requests == 1250);
  CHECK(narrow.items == 5000);
  CHECK(narrow.in_order);
  CHECK(narrow.link_matches_body);
  MESSAGE("5000 pages: " << wide.elapsed.count() << " ms by 250, " << narrow.elapsed.count() << " ms by 4");
  CHECK(f.srv.stats().connections == 3);  // the code exchange, then one keep-alive connection per walk
}

}  // TEST_SUITE

#if defined(CFO_FAKE_SERVER_PATH)

namespace {

// The standalone server as a child process, stopped with SIGTERM.
class fake_process {
 public:
  explicit fake_process(std::vector<std::string> flags) {
    std::vector<std::string> args{CFO_FAKE_SERVER_PATH, "--plain-http", "--auto-approve", "--port-file",
                                  dir_ / "port"};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, (dir_ / "out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, (dir_ / "err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) throw std::runtime_error("cannot start fake-atlassian");
    for (auto deadline = steady::now() + 10s; steady::now() < deadline; std::this_thread::sleep_for(5ms)) {
      auto text = test_util::read_text(dir_ / "port");
      if (!text.empty() && text.back() == '\n') {
        base_ = "http://127.0.0.1:" + text.substr(0, text.size() - 1);
        return;
      }
    }
    throw std::runtime_error("fake-atlassian did not start: " + test_util::read_text(dir_ / "err"));
  }
  ~fake_process() { stop(); }
  fake_process(const fake_process&) = delete;
  fake_process& operator=(const fake_process&) = delete;

  const std::string& base_url() const { return base_; }

  int stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, &status_, 0);
      pid_ = -1;
    }
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }

  cfo::client_config config() const {
    cfo::client_config c;
    c.client_id = "test-client-id";
    c.client_secret = cfo::secret("test-client-secret");
    c.redirect_uri = redirect;
    c.authorize_url = base_ + "/authorize";
    c.token_url = base_ + "/oauth/token";
    c.api_url = base_;
    c.tls.use_system_trust = false;  // plain http; and loading the system store is slow
    return c;
  }

  /// Consent (auto-approved) and code exchange.
  cfo::token_set login(const std::string& scope) const {
    return test_util::run([&](asio::any_io_executor ex) -> asio::awaitable<cfo::token_set> {
      cfo::oauth_client client(ex, config());
      std::string query;
      cfo::detail::append_param(query, "audience", "api.atlassian.com");
      cfo::detail::append_param(query, "client_id", "test-client-id");
      cfo::detail::append_param(query, "scope", scope);
      cfo::detail::append_param(query, "redirect_uri", redirect);
      cfo::detail::append_param(query, "state", "s");
      cfo::detail::append_param(query, "response_type", "code");
      auto r = co_await get(cfo::detail::http_of(client), base_ + "/authorize?" + query, "");
      REQUIRE(r.status == 302);
      auto p = cfo::detail::parse_callback(std::string(r.headers.get("Location").value_or("")));
      cfo::authorization auth;
      auth.redirect_uri = redirect;
      co_return co_await client.exchange_code(p.code, auth);
    });
  }

  cfo::http_response fetch(const std::string& path, const std::string& token) const {
    return test_util::run([&](asio::any_io_executor ex) -> asio::awaitable<cfo::http_response> {
      cfo::detail::http_client http(ex, config().tls, cfo::client_config::http_timeouts{5s, 30s});
      co_return co_await get(http, base_ + path, token);
    });
  }

 private:
  test_util::temp_dir dir_;
  pid_t pid_ = -1;
  int status_ = 0;
  std::string base_;
};

}  // namespace

TEST_SUITE("fake_server") {

TEST_CASE("fake-atlassian --help names every flag, and bad values are exit 2") {
  auto help = test_util::run_process({CFO_FAKE_SERVER_PATH, "--help"});
  CHECK(help.exit_code == 0);
  for (std::string flag : {"--host", "--port", "--port-file", "--ca-out", "--plain-http", "--client-id",
                           "--client-secret", "--redirect-uri", "--auto-approve", "--access-token-lifetime",
                           "--code-lifetime", "--refresh-reuse-window", "--site", "--page-count", "--space-count",
                           "--near-expiry-window", "--near-expiry-status", "--help"}) {
    CAPTURE(flag);
    CHECK(help.out.find("  " + flag + " ") != std::string::npos);
  }
  for (std::vector<std::string> bad : {std::vector<std::string>{"--site", "only-an-id"},
                                       {"--site", "id,,https://x.example"},
                                       {"--space-count", "-1"},
                                       {"--near-expiry-status", "200"},
                                       {"--near-expiry-window", "soon"},
                                       {"--code-lifetime", "0"},
                                       {"--refresh-reuse-window"}}) {
    CAPTURE(bad.front());
    bad.insert(bad.begin(), CFO_FAKE_SERVER_PATH);
    auto r = test_util::run_process(bad);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("bad argument") != std::string::npos);
  }
}

TEST_CASE("fake-atlassian --site, --space-count and --refresh-reuse-window reach the server") {
  fake_process p({"--site", "c1,One,https://one.example", "--site", "c2,Two, Inc.,https://two.example",
                  "--space-count", "7", "--refresh-reuse-window", "0"});
  auto t = p.login("read:confluence-space.summary offline_access");

  auto sites = body_of(p.fetch("/oauth/token/accessible-resources", t.access_token.reveal()));
  REQUIRE(sites.size() == 2);
  CHECK(sites[0]["id"] == "c1");
  CHECK(sites[1]["name"] == "Two, Inc.");
  CHECK(sites[1]["url"] == "https://two.example");

  auto spaces = body_of(p.fetch("/ex/confluence/c2/wiki/rest/api/space?limit=250", t.access_token.reveal()));
  CHECK(spaces["size"] == 7);
  CHECK(spaces["_links"]["base"] == "https://two.example/wiki");

  // No reuse window: the superseded refresh token is dead at once (and takes the family).
  auto refresh = [&](asio::any_io_executor ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, p.config());
    co_return co_await client.refresh(t);
  };
  auto rotated = test_util::run(refresh);
  CHECK_FALSE(rotated.refresh_token == t.refresh_token);
  std::this_thread::sleep_for(5ms);  // strictly past the zero-second window
  CHECK(test_util::error_of(refresh) == cfo::errc::invalid_grant);
  CHECK(p.stop() == 0);
}

TEST_CASE("fake-atlassian --near-expiry-window and --near-expiry-status reach the server") {
  fake_process p({"--access-token-lifetime", "30", "--near-expiry-window", "60", "--near-expiry-status", "404"});
  auto tok = p.login(scopes).access_token.reveal();
  CHECK(p.fetch(std::string("/ex/confluence/") + default_site + "/wiki/api/v2/pages", tok).status == 404);
  CHECK(p.fetch("/oauth/token/accessible-resources", tok).status == 200);
  CHECK(p.stop() == 0);
}

}  // TEST_SUITE

#endif

}  // namespace test_fake_server
