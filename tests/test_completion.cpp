// Completion tokens and per-operation cancellation: every public operation
// works with a callback, std::future, deferred and as_tuple as well as with
// the default use_awaitable, completes with (error_code, T), keeps the
// oauth_error reachable through with_error_details, and gives up promptly
// when cancelled, against the fake Atlassian server.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/experimental/deferred.hpp>

#include <future>
#include <thread>

// Its own namespace, so that the unity build can put test files together.
namespace test_completion {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";
constexpr const char* cloud_id = "a1b2c3d4-0000-4000-8000-000000000001";
constexpr const char* pages = "/wiki/api/v2/pages?limit=5";

/// A memory store whose every call takes `delay`, so a cancellation can land
/// while the session waits for it.
class slow_store final : public cfo::token_store {
 public:
  explicit slow_store(std::chrono::milliseconds delay) : delay_(delay) {}

  asio::awaitable<std::optional<cfo::token_set>> load() override {
    co_await pause();
    co_return co_await inner_.load();
  }
  asio::awaitable<void> save(const cfo::token_set& t) override {
    co_await pause();
    co_await inner_.save(t);
  }
  asio::awaitable<void> clear() override {
    co_await pause();
    co_await inner_.clear();
  }
  asio::awaitable<bool> replace(const std::optional<cfo::token_set>& expected, const cfo::token_set& next) override {
    co_await pause();
    co_return co_await inner_.replace(expected, next);
  }

  std::chrono::milliseconds delay_;

 private:
  asio::awaitable<void> pause() {
    asio::steady_timer timer(co_await asio::this_coro::executor, delay_);
    co_await timer.async_wait(asio::use_awaitable);
  }

  cfo::memory_token_store inner_;
};

struct fixture {
  fake_atlassian::server srv;
  cfo::client_config cfg = test_util::client_config_for(srv, redirect);
  cfo::token_set granted = test_util::grant_from(srv, cfg, scopes);
  std::shared_ptr<cfo::memory_token_store> store = std::make_shared<cfo::memory_token_store>();

  fixture() {
    cfg.timeouts.request = 10s;
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store->save(granted); });
  }
};

/// Races `op` against a timer that fires 100 ms after `reached()` turns true
/// (checked every 10 ms: the request has reached the fault that holds it),
/// so the cancellation lands while the operation waits. The timer must win,
/// and the cancelled operation must be over well before any deadline of its
/// own (10 s).
template <typename T, typename Reached>
asio::awaitable<void> expect_cancelled(asio::awaitable<T> op, const char* what, Reached reached) {
  using namespace asio::experimental::awaitable_operators;
  auto ex = co_await asio::this_coro::executor;
  auto patience = [ex, reached]() -> asio::awaitable<void> {
    asio::steady_timer timer(ex);
    for (int polls = 0; !reached() && polls < 1000; ++polls) {
      timer.expires_after(10ms);
      co_await timer.async_wait(asio::use_awaitable);
    }
    timer.expires_after(100ms);
    co_await timer.async_wait(asio::use_awaitable);
  };
  const auto start = std::chrono::steady_clock::now();
  auto winner = co_await (std::move(op) || patience());
  const auto took = std::chrono::steady_clock::now() - start;
  INFO(what);
  CHECK(winner.index() == 1);
  CHECK(reached());
  CHECK(took < 12s);
}

/// The same, for an operation that waits on something other than the fake server.
template <typename T>
asio::awaitable<void> expect_cancelled(asio::awaitable<T> op, const char* what) {
  co_await expect_cancelled(std::move(op), what, [] { return true; });
}

/// A GET of `target` (a function: GCC 12 rejects braced temporaries in coroutines).
cfo::http_request get_of(std::string target) {
  cfo::http_request req;
  req.target = std::move(target);
  return req;
}

/// Runs `io` on another thread for as long as the object lives.
class io_thread {
 public:
  io_thread() : work_(asio::make_work_guard(io_)), thread_([this] { io_.run(); }) {}
  ~io_thread() {
    work_.reset();
    thread_.join();
  }
  asio::any_io_executor executor() { return io_.get_executor(); }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;
};

}  // namespace

TEST_SUITE("completion tokens") {

TEST_CASE("a callback user: operations complete with (error_code, result) and chain") {
  fixture f;
  asio::io_context io;
  cfo::session s(io.get_executor(), f.cfg, f.store);
  cfo::confluence wiki(s, cloud_id);
  std::error_code load_ec, token_ec, sites_ec, pages_ec;
  bool found = false;
  cfo::secret token;
  std::vector<cfo::site> sites;
  std::vector<nlohmann::json> items;
  s.load([&](std::error_code ec, bool loaded) {
    load_ec = ec;
    found = loaded;
    s.token([&](std::error_code ec, cfo::secret t) {
      token_ec = ec;
      token = std::move(t);
      s.accessible_resources([&](std::error_code ec, std::vector<cfo::site> listed) {
        sites_ec = ec;
        sites = std::move(listed);
        wiki.get_all(pages, 7, [&](std::error_code ec, std::vector<nlohmann::json> all) {
          pages_ec = ec;
          items = std::move(all);
        });
      });
    });
  });
  io.run_for(30s);
  CHECK_FALSE(load_ec);
  CHECK(found);
  CHECK_FALSE(token_ec);
  CHECK(token == f.granted.access_token);
  CHECK_FALSE(sites_ec);
  REQUIRE(sites.size() == 2);  // a Jira site, then the Confluence one
  CHECK(cfo::site::find(sites).id == cloud_id);
  CHECK_FALSE(pages_ec);
  CHECK(items.size() == 7);
}

TEST_CASE("a callback user gets our error category, and with_error_details the server's words") {
  fixture f;
  asio::io_context io;
  cfo::session empty(io.get_executor(), f.cfg, std::make_shared<cfo::memory_token_store>());
  std::error_code token_ec;
  empty.token([&](std::error_code ec, cfo::secret) { token_ec = ec; });

  cfo::oauth_client client(io.get_executor(), f.cfg);
  f.srv.push_status("/oauth/token", 403, R"({"error":"invalid_grant","error_description":"Unknown or invalid refresh token."})");
  std::error_code refresh_ec;
  std::optional<cfo::oauth_error> detail;
  client.refresh(f.granted, cfo::with_error_details([&](std::error_code ec, cfo::token_set) { refresh_ec = ec; }, detail));

  std::error_code bad_path_ec;
  cfo::confluence wiki(empty, cloud_id);
  wiki.get("no-leading-slash", [&](std::error_code ec, nlohmann::json) { bad_path_ec = ec; });
  io.run_for(30s);

  CHECK(token_ec == cfo::errc::not_signed_in);
  CHECK(token_ec.category() == cfo::detail::error_category());
  CHECK(token_ec == cfo::remedy::reauthenticate);
  CHECK(refresh_ec == cfo::errc::invalid_grant);
  REQUIRE(detail.has_value());
  CHECK(detail->code() == cfo::errc::invalid_grant);
  CHECK(detail->details().http_status == 403);
  CHECK(detail->details().error == "invalid_grant");
  CHECK(detail->details().error_description == "Unknown or invalid refresh token.");
  CHECK(bad_path_ec == cfo::errc::invalid_url);  // a bad argument reaches the handler, not a throw at the call
}

TEST_CASE("a std::future user drives the session from another thread") {
  fixture f;
  io_thread io;
  cfo::session s(io.executor(), f.cfg, f.store);
  CHECK(s.load(asio::use_future).get());
  auto sites = s.accessible_resources(asio::use_future).get();
  cfo::confluence wiki(s, cfo::site::find(sites));
  auto page = wiki.get(pages, asio::use_future).get();
  CHECK(page["results"].size() == 5);
  auto all = wiki.get_all(pages, asio::use_future).get();
  CHECK(all.size() == static_cast<std::size_t>(fake_atlassian::options{}.page_count));
  auto response = s.request(get_of(std::string("/ex/confluence/") + cloud_id + pages), asio::use_future).get();
  CHECK(response.status == 200);

  auto failing = wiki.get("/wiki/rest/api/content", asio::use_future);  // v1 through OAuth: 410 Gone
  try {
    failing.get();
    FAIL("a 410 must fail the future");
  } catch (const std::system_error& e) {
    CHECK(e.code() == cfo::errc::api_gone);
  }
  s.logout(asio::use_future).get();
  CHECK_FALSE(s.grant(asio::use_future).get().has_value());
}

TEST_CASE("deferred and as_tuple tokens") {
  fixture f;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    auto load = s.load(asio::experimental::deferred);  // nothing runs until it is awaited
    CHECK(co_await std::move(load)(asio::use_awaitable));
    auto [ec, token] = co_await s.token(cfo::detail::as_tuple(asio::use_awaitable));
    CHECK_FALSE(ec);
    CHECK(token == f.granted.access_token);
    cfo::confluence wiki(s, cloud_id);
    auto [bad, page] = co_await wiki.get("/wiki/rest/api/content", cfo::detail::as_tuple(asio::use_awaitable));
    CHECK(bad == cfo::errc::api_gone);
    CHECK(page.is_null());
  });
}

TEST_CASE("session and Confluence operations are cancelled by awaitable operators, and the grant survives") {
  fixture f;
  const std::string api_prefix = "/ex/confluence/";
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.load();
    cfo::confluence wiki(s, cloud_id);
    const std::string page_url = api_prefix + cloud_id + pages;
    auto stalled = [&srv = f.srv] { return srv.queued_faults() == 0; };

    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(s.request(get_of(page_url)), "session::request", stalled);
    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(s.get_json(page_url), "session::get_json", stalled);
    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(s.send_json("POST", page_url, nlohmann::json::object()), "session::send_json", stalled);
    f.srv.push_stall("/oauth/token/accessible-resources");
    co_await expect_cancelled(s.accessible_resources(), "session::accessible_resources", stalled);
    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(wiki.request(get_of(pages)), "confluence::request", stalled);
    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(wiki.get(pages), "confluence::get", stalled);
    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(wiki.send_json("PUT", "/wiki/api/v2/pages/1", nlohmann::json::object()), "confluence::send_json", stalled);
    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(wiki.get_all(pages), "confluence::get_all", stalled);
    auto walk = wiki.pages(pages);
    f.srv.push_stall(api_prefix);
    co_await expect_cancelled(walk.next(), "confluence::pager::next", stalled);
    auto first = co_await walk.next();  // the cancelled page is asked for again
    CHECK((first && (*first)["results"].size() == 5));

    auto items = co_await wiki.get_all(pages, 3);
    CHECK(items.size() == 3);
  });
  CHECK(f.srv.stats().token_requests == 1);  // the grant only: nothing cancelled cost it
}

TEST_CASE("token() and refresh() give up when cancelled while the refresh goes on and is kept") {
  fixture f;
  f.granted.expires_at = cfo::token_set::clock::now() - 1s;
  test_util::run([&](auto) -> asio::awaitable<void> { co_await f.store->save(f.granted); });
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.load();
    f.srv.push_delay("/oauth/token", 1500ms);
    auto refreshing = [&srv = f.srv] { return srv.queued_faults() == 0; };
    co_await expect_cancelled(s.token(), "session::token", refreshing);
    co_await expect_cancelled(s.refresh(), "session::refresh (joins the round in flight)");
    auto token = co_await s.token();  // joins the same round, which went on
    CHECK_FALSE(token == f.granted.access_token);
    auto saved = co_await f.store->load();
    REQUIRE(saved.has_value());
    CHECK(saved->access_token == token);
  });
  CHECK(f.srv.stats().refresh_grants == 1);
}

TEST_CASE("store-bound session operations are cancelled while the store is slow, and the saved grant stays") {
  fixture f;
  auto store = std::make_shared<slow_store>(1s);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    store->delay_ = 0ms;
    co_await store->save(f.granted);
    store->delay_ = 1s;
    cfo::session s(ex, f.cfg, store);
    co_await expect_cancelled(s.load(), "session::load");
    co_await expect_cancelled(s.adopt(f.granted), "session::adopt");
    co_await expect_cancelled(s.logout(), "session::logout");
    store->delay_ = 0ms;
    auto saved = co_await store->load();
    REQUIRE(saved.has_value());
    CHECK(saved->refresh_token == f.granted.refresh_token);
    CHECK(co_await s.load());
    auto held = co_await s.grant();
    CHECK(held.has_value());
  });
}

TEST_CASE("the OAuth client, the listener and authorize() are cancelled by awaitable operators") {
  fixture f;
  auto cfg = f.cfg;
  cfg.redirect_uri = "http://127.0.0.1:" + std::to_string(test_util::free_port()) + "/callback";
  auto stalled = [&srv = f.srv] { return srv.queued_faults() == 0; };
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, cfg);
    cfo::authorization auth;
    auth.redirect_uri = cfg.redirect_uri;
    f.srv.push_stall("/oauth/token");
    co_await expect_cancelled(client.exchange_code(cfo::secret(f.srv.issue_code(cfg.redirect_uri, scopes)), auth),
                              "oauth_client::exchange_code", stalled);
    f.srv.push_stall("/oauth/token");
    co_await expect_cancelled(client.refresh(f.granted), "oauth_client::refresh", stalled);

    cfo::detail::redirect_listener listener(ex, "http://127.0.0.1:0/callback");
    co_await expect_cancelled(listener.wait(client.begin_authorization(listener.redirect_uri())),
                              "redirect_listener::wait");
    listener.close();

    auto nobody_comes = [](const std::string&) -> asio::awaitable<void> { co_return; };
    co_await expect_cancelled(cfo::detail::authorize(client, nobody_comes), "authorize");
    cfo::session s(ex, cfg, std::make_shared<cfo::memory_token_store>());
    co_await expect_cancelled(s.authorize(nobody_comes), "session::authorize");

    auto again = co_await client.refresh(f.granted);  // the client is still usable
    CHECK(again.has_refresh_token());
  });
}

TEST_CASE("a callback operation is cancelled through its handler's cancellation slot") {
  fixture f;
  asio::io_context io;
  cfo::session s(io.get_executor(), f.cfg, f.store);
  asio::cancellation_signal signal;
  std::error_code ec;
  bool done = false;
  f.srv.push_stall("/ex/confluence/");
  s.load([&](std::error_code, bool) {
    s.get_json(std::string("/ex/confluence/") + cloud_id + pages,
               asio::bind_cancellation_slot(signal.slot(), [&](std::error_code e, nlohmann::json) {
                 ec = e;
                 done = true;
               }));
  });
  asio::steady_timer later(io, 200ms);
  later.async_wait([&](std::error_code) { signal.emit(asio::cancellation_type::terminal); });
  const auto start = std::chrono::steady_clock::now();
  io.run_for(30s);
  CHECK(done);
  CHECK(ec == asio::error::operation_aborted);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}

}  // TEST_SUITE

}  // namespace test_completion
