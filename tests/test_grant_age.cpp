// Grants that age: when a grant was first obtained and last rotated is kept
// with it (old token files without those fields still load), and
// session_options::grant_warning speaks up 14 days before Atlassian's 90-day
// inactivity and 365-day absolute limits, and when fewer scopes were granted
// than asked for.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

#include <sys/stat.h>

// Its own namespace, so that the unity build can put test files together.
namespace test_grant_age {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";
constexpr auto day = std::chrono::hours(24);
using clock = cfo::token_set::clock;

struct age_fixture {
  fake_atlassian::server srv;
  cfo::client_config cfg = test_util::client_config_for(srv, redirect);
  test_util::temp_dir dir;
  std::shared_ptr<cfo::file_token_store> store = std::make_shared<cfo::file_token_store>(dir / "tokens.json");
  std::vector<std::string> warnings;
  cfo::session_options options;

  age_fixture() {
    cfg.timeouts.request = 10s;
    options.grant_warning = [this](const std::string& w) { warnings.push_back(w); };
  }

  void save(const cfo::token_set& t) {
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store->save(t); });
  }
  cfo::token_set stored() {
    return *test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> { co_return co_await store->load(); });
  }
};

bool near(clock::time_point a, clock::time_point b) { return a - b < 60s && b - a < 60s; }

}  // namespace

TEST_SUITE("grant age") {

TEST_CASE("a grant keeps when it was first obtained and last rotated, in the token file too") {
  age_fixture f;
  auto granted = test_util::grant_from(f.srv, f.cfg, scopes);
  CHECK(near(granted.first_obtained, clock::now()));
  CHECK(granted.last_rotated == granted.first_obtained);

  const auto consented = std::chrono::floor<std::chrono::seconds>(clock::now() - 100 * day);
  granted.first_obtained = consented;
  granted.last_rotated = consented + 50 * day;
  granted.expires_at = clock::now() - 1s;  // expired to the client: the next call refreshes
  f.save(granted);
  auto held = test_util::run([&](auto ex) -> asio::awaitable<std::optional<cfo::token_set>> {
    cfo::session s(ex, f.cfg, f.store, f.options);
    co_await s.load();
    co_await s.token();
    co_return co_await s.grant();
  });
  REQUIRE(held);
  CHECK(f.srv.stats().refresh_grants == 1);
  CHECK(held->first_obtained == consented);
  CHECK(near(held->last_rotated, clock::now()));
  const auto saved = f.stored();
  CHECK(saved.first_obtained == consented);
  CHECK(std::chrono::floor<std::chrono::seconds>(saved.last_rotated) ==
        std::chrono::floor<std::chrono::seconds>(held->last_rotated));
  CHECK(saved.scope == scopes);
  CHECK(f.warnings.empty());  // 100 days old, used today, every scope granted
}

TEST_CASE("a token file from before the grant's age was kept still loads, and warns of nothing") {
  age_fixture f;
  auto granted = test_util::grant_from(f.srv, f.cfg, scopes);
  auto j = granted.to_json();
  j.erase("first_obtained");
  j.erase("last_rotated");
  { std::ofstream(f.dir / "tokens.json") << j.dump(); }
  REQUIRE(::chmod((f.dir / "tokens.json").c_str(), 0600) == 0);
  auto held = test_util::run([&](auto ex) -> asio::awaitable<std::optional<cfo::token_set>> {
    cfo::session s(ex, f.cfg, f.store, f.options);
    CHECK(co_await s.load());
    co_await s.get_json("/oauth/token/accessible-resources");
    co_return co_await s.grant();
  });
  REQUIRE(held);
  CHECK(held->first_obtained == clock::time_point{});
  CHECK(held->last_rotated == clock::time_point{});
  CHECK(f.warnings.empty());

  j["first_obtained"] = "yesterday";
  CHECK_THROWS_AS(cfo::token_set::from_json(j), cfo::oauth_error);
}

TEST_CASE("grant_warning: 14 days before the 365-day and the 90-day limits, once each") {
  age_fixture f;
  auto granted = test_util::grant_from(f.srv, f.cfg, scopes);
  granted.first_obtained = clock::now() - 355 * day;  // ten days left of the year
  granted.last_rotated = clock::now() - 80 * day;     // ten days left unused
  granted.expires_at = clock::now() - 1s;
  f.save(granted);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store, f.options);
    co_await s.load();
    CHECK(f.warnings.size() == 2);
    co_await s.get_json("/oauth/token/accessible-resources");  // refreshes: the inactivity count starts again
  });
  REQUIRE(f.warnings.size() == 2);  // the year's end is not told twice
  CHECK(f.warnings[0].find("365 days") != std::string::npos);
  CHECK(f.warnings[0].find("ends in 9 days") != std::string::npos);
  CHECK(f.warnings[1].find("90 days") != std::string::npos);
  CHECK(f.warnings[1].find("last used 80 days ago") != std::string::npos);
  for (const auto& w : f.warnings) {
    CHECK(w.find(granted.refresh_token.reveal()) == std::string::npos);
    CHECK(w.find(granted.access_token.reveal()) == std::string::npos);
  }
  CHECK(f.srv.stats().refresh_grants == 1);
}

TEST_CASE("grant_warning: a scope asked for and not granted is a configuration problem, said as such") {
  age_fixture f;
  auto granted = test_util::grant_from(f.srv, f.cfg, "read:page:confluence offline_access");
  f.save(granted);
  auto ec = test_util::error_of([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store, f.options);
    co_await s.load();
    co_await s.get_json("/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/spaces");
  });
  CHECK(ec == cfo::errc::scope_mismatch);
  REQUIRE(f.warnings.size() == 1);
  CHECK(f.warnings[0].find("lacks scopes asked for: read:space:confluence") != std::string::npos);
  CHECK(f.warnings[0].find("granted: read:page:confluence offline_access") != std::string::npos);

  // A callback that throws changes nothing.
  f.options.grant_warning = [](const std::string&) { throw std::runtime_error("callback failed"); };
  CHECK(test_util::run([&](auto ex) -> asio::awaitable<bool> {
    cfo::session s(ex, f.cfg, f.store, f.options);
    co_return co_await s.load();
  }));
}

}  // TEST_SUITE
}  // namespace test_grant_age
