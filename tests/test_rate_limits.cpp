// Rate limits the way Atlassian asks for them (ATLASSIAN.md "Rate limits"), against
// the fake server's burst limit and quota over real sockets: Retry-After of any size
// or as an HTTP date, the backoff without one, one wait shared by the session's
// requests, the rate-limit headers, the NearLimit slow-down, and get_all that stops
// with what it read and where to go on.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

#include <asio/experimental/awaitable_operators.hpp>

#include <array>
#include <ctime>

// Its own namespace, so that the unity build can put test files together.
namespace test_rate_limits {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence offline_access";
constexpr const char* site_id = "a1b2c3d4-0000-4000-8000-000000000001";
const std::string pages = std::string("/ex/confluence/") + site_id + "/wiki/api/v2/pages?limit=5";

/// A fake server with `limits`, a saved grant, and a session configuration that trusts it.
struct limited {
  fake_atlassian::server srv;
  cfo::client_config cfg;
  std::shared_ptr<cfo::memory_token_store> store = std::make_shared<cfo::memory_token_store>();

  explicit limited(fake_atlassian::options::rate_limits limits) : srv(with(std::move(limits))), cfg(test_util::client_config_for(srv, redirect)) {
    cfg.timeouts.request = 10s;
    auto granted = test_util::grant_from(srv, cfg, scopes);
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store->save(granted); });
  }

  static fake_atlassian::options with(fake_atlassian::options::rate_limits limits) {
    fake_atlassian::options o;
    o.limits = std::move(limits);
    return o;
  }

  /// Small waits, so that the suite stays fast; Retry-After is still honoured as sent.
  static cfo::session_options quick() {
    cfo::session_options o;
    o.retry.base_delay = 20ms;
    o.retry.max_delay = 200ms;
    return o;
  }
};

/// The oauth_error a coroutine failed with (none when it did not fail).
template <typename Make>
std::optional<cfo::oauth_error> oauth_failure(Make make) {
  try {
    test_util::run(std::move(make));
  } catch (const cfo::oauth_error& e) {
    return e;
  }
  return std::nullopt;
}

}  // namespace

TEST_SUITE("rate limits") {

TEST_CASE("Retry-After of 2^63-1 saturates, and the call fails at once with the wait it asked for") {
  fake_atlassian::options::rate_limits l;
  l.burst = 1;
  l.burst_reset = 3600s;
  l.retry_after = "9223372036854775807";
  limited f(l);
  std::optional<cfo::oauth_error> again;
  auto start = steady::now();
  auto e = oauth_failure([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store, limited::quick());
    co_await s.load();
    co_await s.get_json(pages);  // the burst
    std::optional<cfo::oauth_error> first;
    try {
      co_await s.get_json(pages);
    } catch (const cfo::oauth_error& x) {
      first = x;
    }
    // The session's next request is not sent: the server asked for the wait.
    cfo::http_request req;
    req.target = pages;
    auto [ec, res] = co_await s.request(req, cfo::with_error_details(cfo::detail::use_tuple, again));
    CHECK(ec == cfo::errc::rate_limited);
    if (first) throw *first;
  });
  REQUIRE(e);
  CHECK(steady::now() - start < 30s);  // nowhere near the wait: not slept through
  CHECK(e->code() == cfo::errc::rate_limited);
  CHECK(e->code() == cfo::remedy::retry_later);
  CHECK(e->details().http_status == 429);
  REQUIRE(e->details().retry_after);
  CHECK(*e->details().retry_after == std::chrono::seconds::max());
  CHECK(e->details().rate_limit.beta_retry_after == std::chrono::seconds::max());
  CHECK(e->details().rate_limit.reason == "burst");
  CHECK(std::string(e->what()).find("retry_policy::max_wait") != std::string::npos);
  REQUIRE(again);
  REQUIRE(again->details().retry_after);
  CHECK(*again->details().retry_after > 3000s);  // the session holds the host back for an hour at most
  CHECK(*again->details().retry_after <= 3600s);
  CHECK(std::string(again->what()).find("not sent") != std::string::npos);
  CHECK(f.srv.stats().api_requests == 2);  // the third request never left
  CHECK(f.srv.stats().rate_limited == 1);
}

TEST_CASE("Retry-After as an HTTP date is waited for, never less") {
  fake_atlassian::options::rate_limits l;
  l.burst = 1;
  l.burst_reset = 1s;
  l.retry_after = test_util::http_date(3s);  // whole seconds: at least 1 s after the 429 unless the set-up takes 2 s
  limited f(l);
  auto waited = test_util::run([&](auto ex) -> asio::awaitable<steady::duration> {
    cfo::session s(ex, f.cfg, f.store, limited::quick());
    co_await s.load();
    co_await s.get_json(pages);
    auto start = steady::now();
    co_await s.get_json(pages);
    co_return steady::now() - start;
  });
  CHECK(waited >= 900ms);
  CHECK(f.srv.stats().rate_limited == 1);  // the retry came after the server's wait
  CHECK(f.srv.stats().api_requests == 3);
}

TEST_CASE("the parsers: Retry-After of any size, X-RateLimit-Reset in ISO 8601") {
  const auto now = std::chrono::system_clock::now();
  CHECK(cfo::detail::parse_retry_after("9223372036854775807", now) == std::chrono::seconds::max());
  CHECK(cfo::detail::parse_retry_after("9223372036854775808", now) == std::chrono::seconds::max());
  CHECK(cfo::detail::parse_retry_after("99999999999999999999999999999999", now) == std::chrono::seconds::max());
  CHECK(cfo::detail::parse_retry_after(" 30 ", now) == 30s);
  CHECK_FALSE(cfo::detail::parse_retry_after("30s", now));
  using cfo::detail::parse_iso8601;
  const auto noon = std::chrono::sys_days(std::chrono::year(2026) / 1 / 31) + 12h;
  CHECK(parse_iso8601("2026-01-31T12:00:00Z") == noon);
  CHECK(parse_iso8601("2026-01-31T12:00:00.250Z") == noon);
  CHECK(parse_iso8601("2026-01-31T13:30:00+01:30") == noon);
  CHECK(parse_iso8601("2026-01-31T10:00:00-0200") == noon);
  CHECK_FALSE(parse_iso8601("2026-01-31 12:00:00Z"));
  CHECK_FALSE(parse_iso8601("2026-13-31T12:00:00Z"));
  CHECK_FALSE(parse_iso8601("2026-01-31T12:00:00"));
  CHECK_FALSE(parse_iso8601("2026-01-31T12:00:00.Z"));
  cfo::http_response res;
  res.headers.add("X-RateLimit-Limit", "18446744073709551616000");  // saturates
  res.headers.add("X-RateLimit-Remaining", "soon");                 // ignored
  res.headers.add("X-RateLimit-NearLimit", "TRUE");
  res.headers.add("RateLimit-Reason", "quota\r\nX-Evil: 1");
  auto r = res.rate_limit();
  CHECK(r.limit == std::numeric_limits<std::uint64_t>::max());
  CHECK_FALSE(r.remaining);
  CHECK_FALSE(r.reset);
  CHECK(r.near_limit);
  CHECK(r.reason.find('\n') == std::string::npos);
}

TEST_CASE("without Retry-After: Atlassian's example backoff, within its bounds") {
  const cfo::session_options::retry_policy atlassian;
  CHECK(atlassian.base_delay == 5s);
  CHECK(atlassian.max_delay == 30s);
  CHECK(atlassian.jitter == doctest::Approx(0.3));
  CHECK(atlassian.max_attempts == 5);  // 4 retries
  CHECK(atlassian.max_wait == 60s);
  // Computed, not slept: 5, 10, 20, 30, 30 s, each times 0.7-1.3.
  const std::array<std::chrono::milliseconds, 5> nominal{5s, 10s, 20s, 30s, 30s};
  for (int retry = 1; retry <= 5; ++retry) {
    const auto n = nominal[static_cast<std::size_t>(retry - 1)];
    std::chrono::milliseconds low = n * 2, high{0};
    for (int i = 0; i < 200; ++i) {
      const auto d = cfo::detail::backoff_delay(atlassian, retry);
      low = std::min(low, d);
      high = std::max(high, d);
    }
    CHECK(low >= n * 7 / 10);
    CHECK(high <= n * 13 / 10);
    CHECK(high - low > n / 10);  // it is random
  }

  // Over sockets: a quota spent for the hour, 429s without Retry-After.
  fake_atlassian::options::rate_limits l;
  l.quota = 1;
  l.send_retry_after = false;
  limited f(l);
  auto o = limited::quick();
  o.retry.base_delay = 40ms;
  o.retry.max_delay = 1s;
  auto start = steady::now();
  auto e = oauth_failure([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store, o);
    co_await s.load();
    co_await s.get_json(pages);
    start = steady::now();
    co_await s.get_json(pages);
  });
  const auto elapsed = steady::now() - start;
  REQUIRE(e);
  CHECK(e->code() == cfo::errc::rate_limited);
  CHECK_FALSE(e->details().retry_after);
  CHECK(f.srv.stats().rate_limited == 5);  // max_attempts tries, then the 429 is the answer
  CHECK(elapsed >= (40ms + 80ms + 160ms + 320ms) * 7 / 10);
}

TEST_CASE("one 429 holds back the session's next requests: two sent at once wait for the same moment") {
  fake_atlassian::options::rate_limits l;
  l.burst = 2;
  l.burst_reset = 2s;
  limited f(l);
  auto o = limited::quick();
  o.retry.max_attempts = 1;  // no retries: a 429 would be the answer
  auto [first, statuses] = test_util::run([&](auto ex) -> asio::awaitable<std::pair<int, std::vector<int>>> {
    using namespace asio::experimental::awaitable_operators;
    cfo::session s(ex, f.cfg, f.store, o);
    co_await s.load();
    cfo::http_request req;
    req.target = pages;
    co_await s.request(req);
    co_await s.request(req);
    auto told = co_await s.request(req);  // 429, Retry-After: 2
    // Both wait for the moment the server named, then go: no second 429.
    auto [a, b] = co_await (s.request(req) && s.request(req));
    co_return std::make_pair(told.status, std::vector<int>{a.status, b.status});
  });
  CHECK(first == 429);
  CHECK(statuses == std::vector<int>{200, 200});
  CHECK(f.srv.stats().rate_limited == 1);
  CHECK(f.srv.stats().api_requests == 5);
}

TEST_CASE("a wait for the server is cancellable, and nothing is sent meanwhile") {
  fake_atlassian::options::rate_limits l;
  l.burst = 1;
  l.burst_reset = 30s;
  limited f(l);
  auto o = limited::quick();
  o.retry.max_attempts = 1;
  auto won_by_timer = test_util::run([&](auto ex) -> asio::awaitable<bool> {
    using namespace asio::experimental::awaitable_operators;
    cfo::session s(ex, f.cfg, f.store, o);
    co_await s.load();
    cfo::http_request req;
    req.target = pages;
    co_await s.request(req);
    auto told = co_await s.request(req);  // 429, Retry-After: 30
    CHECK(told.status == 429);
    asio::steady_timer timer(ex, 100ms);
    auto winner = co_await (s.request(req) || timer.async_wait(asio::use_awaitable));
    co_return winner.index() == 1;
  });
  CHECK(won_by_timer);
  CHECK(f.srv.stats().api_requests == 2);
}

TEST_CASE("the rate-limit headers reach the response and the error; NearLimit under 20% left") {
  fake_atlassian::options::rate_limits l;
  l.quota = 5;
  limited f(l);
  std::vector<cfo::error_details::rate_limit_info> seen;
  auto e = oauth_failure([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store, limited::quick());
    co_await s.load();
    cfo::http_request req;
    req.target = pages;
    for (int i = 0; i < 5; ++i) {
      auto res = co_await s.request(req);
      seen.push_back(res.rate_limit());
    }
    co_await s.get_json(pages);  // over the quota: an hour to wait, beyond max_wait
  });
  REQUIRE(seen.size() == 5);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    CHECK(seen[i].limit == 5u);
    CHECK(seen[i].remaining == 4 - i);
    REQUIRE(seen[i].reset);
    CHECK(*seen[i].reset > std::chrono::system_clock::now() + 3000s);
    CHECK(seen[i].near_limit == (i == 4));  // 0 of 5 left: under 20%
  }
  REQUIRE(e);
  CHECK(e->code() == cfo::errc::rate_limited);
  CHECK(e->details().rate_limit.reason == "quota");
  CHECK(e->details().rate_limit.remaining == 0u);
  CHECK(e->details().rate_limit.near_limit);
  REQUIRE(e->details().retry_after);
  CHECK(*e->details().retry_after > 3000s);
  CHECK(e->details().rate_limit.beta_retry_after == e->details().retry_after);
}

TEST_CASE("near_limit_pause slows the next request down when NearLimit says so") {
  fake_atlassian::options::rate_limits l;
  l.quota = 10;
  limited f(l);
  auto o = limited::quick();
  o.retry.near_limit_pause = 1s;
  auto [near, paused] = test_util::run([&](auto ex) -> asio::awaitable<std::pair<std::vector<bool>, steady::duration>> {
    cfo::session s(ex, f.cfg, f.store, o);
    co_await s.load();
    cfo::http_request req;
    req.target = pages;
    std::vector<bool> near_limit;
    for (int i = 0; i < 9; ++i) {
      auto res = co_await s.request(req);
      near_limit.push_back(res.rate_limit().near_limit);
    }
    auto start = steady::now();
    co_await s.request(req);
    co_return std::make_pair(near_limit, steady::now() - start);
  });
  CHECK(near == std::vector<bool>{false, false, false, false, false, false, false, false, true});
  CHECK(paused >= 900ms);
  CHECK(f.srv.stats().rate_limited == 0);
}

TEST_CASE("a 503 with Retry-After is waited out") {
  fake_atlassian::options::rate_limits l;
  l.burst = 1;
  l.burst_reset = 1s;
  l.status = 503;
  limited f(l);
  auto body = test_util::run([&](auto ex) -> asio::awaitable<nlohmann::json> {
    cfo::session s(ex, f.cfg, f.store, limited::quick());
    co_await s.load();
    co_await s.get_json(pages);
    co_return co_await s.get_json(pages);
  });
  CHECK(body["results"].size() == 5);
  CHECK(f.srv.stats().rate_limited == 1);
}

TEST_CASE("get_all that fails on a page returns what it read and where to go on") {
  fake_atlassian::options::rate_limits l;
  l.burst = 3;
  l.burst_reset = 1s;
  limited f(l);
  auto impatient = limited::quick();
  impatient.retry.max_wait = 0ms;  // the 429 on page 4 ends the call
  auto e = oauth_failure([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store, impatient);
    co_await s.load();
    cfo::confluence wiki(s, site_id);
    co_await wiki.get_all("/wiki/api/v2/pages?limit=2");
  });
  REQUIRE(e);
  CHECK(e->code() == cfo::errc::rate_limited);
  CHECK(e->details().retry_after == 1s);
  const auto& partial = e->details().partial_results;
  REQUIRE(partial.size() == 6);
  const std::string resume = e->details().resume_path;
  CHECK(resume.starts_with("/wiki/api/v2/pages?"));
  CHECK(resume.find("cursor=") != std::string::npos);

  // Another session (another run of the program) goes on from there, waiting as asked.
  auto rest = test_util::run([&](auto ex) -> asio::awaitable<std::vector<nlohmann::json>> {
    cfo::session s(ex, f.cfg, f.store, limited::quick());
    co_await s.load();
    cfo::confluence wiki(s, site_id);
    co_return co_await wiki.get_all(resume);
  });
  std::vector<std::string> ids;
  for (const auto& item : partial) ids.push_back(item["id"]);
  for (const auto& item : rest) ids.push_back(item["id"]);
  std::vector<std::string> expected;
  for (int i = 1; i <= 12; ++i) expected.push_back(std::to_string(i));
  CHECK(ids == expected);
}

TEST_CASE("an absolute Link on the gateway is followed; one to another host is refused, unsent") {
  fake_atlassian::server other;  // the foreign host: it must see nothing
  fake_atlassian::options::rate_limits none;
  limited f(none);
  const std::string listing = std::string("/ex/confluence/") + site_id + "/wiki/api/v2/pages";
  auto link = [](const std::string& url) { return "<" + url + ">; rel=\"next\""; };
  f.srv.push_status(listing, 200, R"({"results":[{"id":"1"}]})", {{"Link", link(f.srv.base_url() + listing + "?cursor=two")}});
  f.srv.push_status(listing, 200, R"({"results":[{"id":"2"}]})", {{"Link", link(other.base_url() + listing + "?cursor=three")}});
  auto e = oauth_failure([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store, limited::quick());
    co_await s.load();
    cfo::confluence wiki(s, site_id);
    co_await wiki.get_all("/wiki/api/v2/pages");
  });
  REQUIRE(e);
  CHECK(e->code() == cfo::errc::protocol_error);
  CHECK(std::string(e->what()).find(other.base_url()) != std::string::npos);
  REQUIRE(e->details().partial_results.size() == 1);
  CHECK(e->details().partial_results[0]["id"] == "1");
  CHECK(e->details().resume_path == "/wiki/api/v2/pages?cursor=two");
  CHECK(f.srv.stats().api_requests == 2);  // the first page, and the absolute link on the gateway
  CHECK(other.stats().connections == 0);
  CHECK(other.stats().requests == 0);
}

}  // TEST_SUITE

}  // namespace test_rate_limits
