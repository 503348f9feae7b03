// Service accounts (client credentials) against the fake Atlassian server: the
// grant itself, a session that needs no browser and no refresh token, a new
// token single-flight before the old one expires, one new token and one retry
// after a 401, the token cached in the store, and the site's public cloud id.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

// Its own namespace, so that the unity build can put test files together.
namespace test_service_account {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* cloud_id = "a1b2c3d4-0000-4000-8000-000000000001";
constexpr const char* pages = "/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/pages?limit=5";

struct service_fixture {
  fake_atlassian::server srv;
  cfo::client_config cfg;
  std::shared_ptr<cfo::memory_token_store> store = std::make_shared<cfo::memory_token_store>();

  explicit service_fixture(fake_atlassian::options o = {}) : srv(std::move(o)), cfg(test_util::client_config_for(srv, "http://localhost:3000/callback")) {
    cfg.client_id = "test-service-account";
    cfg.client_secret = cfo::secret("test-service-secret");
    cfg.service_account = true;
    cfg.timeouts.request = 10s;
  }

  std::optional<cfo::token_set> stored() {
    return test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> { co_return co_await store->load(); });
  }

  void store_token(const cfo::token_set& t) {
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store->save(t); });
  }
};

}  // namespace

TEST_SUITE("service account") {

TEST_CASE("client_credentials: a 60-minute token without a refresh token; a wrong secret is invalid_client") {
  service_fixture f;
  const auto before = cfo::token_set::clock::now();
  auto t = test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, f.cfg);
    co_return co_await client.client_credentials();
  });
  CHECK_FALSE(t.access_token.empty());
  CHECK_FALSE(t.has_refresh_token());
  CHECK(t.expires_at - before >= 3590s);
  CHECK(t.expires_at - before <= 3610s);
  CHECK(t.scope == "read:page:confluence read:space:confluence");
  CHECK(t.first_obtained >= before);
  CHECK(f.srv.stats().client_credentials_grants == 1);

  f.cfg.client_secret = cfo::secret("wrong-service-secret");
  auto failed = test_util::failure_of([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, f.cfg);
    try {
      co_await client.client_credentials();
    } catch (const cfo::oauth_error& e) {  // Atlassian's answer: 401 invalid_client
      CHECK(e.details().http_status == 401);
      CHECK(e.details().error == "invalid_client");
      throw;
    }
  });
  CHECK(failed.code == cfo::errc::invalid_client);
  CHECK(failed.code == cfo::remedy::fix_configuration);
  CHECK(failed.what.find("wrong-service-secret") == std::string::npos);
  CHECK(f.srv.stats().client_credentials_grants == 1);

  // The app's own id and secret are no service account's.
  auto app = test_util::client_config_for(f.srv, "http://localhost:3000/callback");
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::oauth_client client(ex, app);
          co_await client.client_credentials();
        }) == cfo::errc::invalid_client);
}

TEST_CASE("a service account's session needs no sign-in, calls the API and caches its token in the store") {
  service_fixture f;
  auto body = test_util::run([&](auto ex) -> asio::awaitable<nlohmann::json> {
    cfo::session s(ex, f.cfg, f.store);
    CHECK_FALSE(co_await s.load());  // nothing cached yet: the first call gets a token
    co_return co_await s.get_json(pages);
  });
  CHECK(body["results"].size() == 5);
  CHECK(f.srv.stats().client_credentials_grants == 1);
  auto cached = f.stored();
  REQUIRE(cached);
  CHECK_FALSE(cached->has_refresh_token());

  // The next run takes the cached token: no new grant.
  auto sites = test_util::run([&](auto ex) -> asio::awaitable<std::vector<cfo::site>> {
    cfo::session s(ex, f.cfg, f.store);
    CHECK(co_await s.load());
    co_await s.get_json(pages);
    co_return co_await s.accessible_resources();
  });
  CHECK(cfo::site::find(sites).id == cloud_id);
  CHECK(f.srv.stats().client_credentials_grants == 1);
  CHECK(f.srv.stats().authorization_code_grants == 0);
  CHECK(f.srv.stats().refresh_grants == 0);

  // refresh() asks for a new one at once.
  auto next = test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::session s(ex, f.cfg, f.store);
    co_return co_await s.refresh();
  });
  CHECK_FALSE(next.access_token == cached->access_token);
  CHECK(f.srv.stats().client_credentials_grants == 2);
  CHECK(f.stored()->access_token == next.access_token);
}

TEST_CASE("an expired service token is replaced once for many callers at once") {
  service_fixture f;
  auto old = test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, f.cfg);
    co_return co_await client.client_credentials();
  });
  old.expires_at = cfo::token_set::clock::now() - 1s;  // expired to the client
  f.store_token(old);
  int ok = 0, done = 0;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.load();
    for (int i = 0; i < 8; ++i)
      asio::co_spawn(ex, s.get_json(pages), [&](std::exception_ptr e, nlohmann::json body) {
        ++done;
        if (!e && body["results"].size() == 5) ++ok;
      });
    asio::steady_timer t(ex);
    while (done < 8) {
      t.expires_after(5ms);
      co_await t.async_wait(asio::use_awaitable);
    }
  });
  CHECK(ok == 8);
  CHECK(f.srv.stats().client_credentials_grants == 2);  // the old one, and one for all eight
  CHECK_FALSE(f.stored()->access_token == old.access_token);
}

TEST_CASE("a token asked for longer than the one held lasts is requested before the old one expires") {
  service_fixture f;
  auto old = test_util::run([&](auto ex) -> asio::awaitable<cfo::token_set> {
    cfo::oauth_client client(ex, f.cfg);
    co_return co_await client.client_credentials();
  });
  old.expires_at = cfo::token_set::clock::now() + 600s;  // still valid for ten minutes
  f.store_token(old);
  auto fresh = test_util::run([&](auto ex) -> asio::awaitable<cfo::secret> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.load();
    co_return co_await s.token(1800s);
  });
  CHECK_FALSE(fresh == old.access_token);
  CHECK(f.srv.stats().client_credentials_grants == 2);
  // Longer than Atlassian's 60 minutes: one try, then a clear error.
  auto too_long = test_util::failure_of([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.load();
    co_await s.token(7200s);
  });
  CHECK(too_long.code == cfo::errc::invalid_config);
  CHECK(f.srv.stats().client_credentials_grants == 3);
}

TEST_CASE("a 401 gets one new service token and one retry, never more") {
  service_fixture f;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.get_json(pages);
    f.srv.revoke_all();  // the token dies on the server
    auto body = co_await s.get_json(pages);
    CHECK(body["results"].size() == 5);
  });
  CHECK(f.srv.stats().client_credentials_grants == 2);

  const auto before = f.srv.stats();
  f.srv.push_status("/ex/", 401, R"({"code":401,"message":"Unauthorized"})");
  f.srv.push_status("/ex/", 401, R"({"code":401,"message":"Unauthorized"})");
  auto ec = test_util::error_of([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.load();
    co_await s.get_json(pages);
  });
  CHECK(ec == cfo::errc::unauthorized);
  CHECK(f.srv.stats().client_credentials_grants - before.client_credentials_grants == 1);
  CHECK(f.srv.stats().api_requests - before.api_requests == 2);
}

TEST_CASE("a service account with a wrong secret fails with invalid_client, and the secret shows nowhere") {
  service_fixture f;
  f.cfg.client_secret = cfo::secret("not-the-service-secret");
  auto failed = test_util::failure_of([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    co_await s.get_json(pages);
  });
  CHECK(failed.code == cfo::errc::invalid_client);
  CHECK(failed.what.find("not-the-service-secret") == std::string::npos);
  CHECK_FALSE(f.stored().has_value());
  CHECK(f.srv.stats().token_requests >= 1);
}

TEST_CASE("cloud_id reads a site's public tenant_info, https only except loopback") {
  fake_atlassian::options o;
  o.tenant_cloud_id = "c0ffee00-0000-4000-8000-000000000042";
  service_fixture f(o);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, f.cfg, f.store);
    CHECK(co_await s.cloud_id(f.srv.base_url()) == "c0ffee00-0000-4000-8000-000000000042");
    CHECK(co_await s.cloud_id(f.srv.base_url() + "/wiki/spaces") == "c0ffee00-0000-4000-8000-000000000042");
  });
  CHECK(f.srv.stats().token_requests == 0);  // no token needed
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::session s(ex, f.cfg, f.store);
          co_await s.cloud_id("http://example.atlassian.net");
        }) == cfo::errc::insecure_transport);

  // A host that is no Atlassian site: site_not_found.
  fake_atlassian::options jira_only;
  jira_only.sites.push_back({"j1", "jira", "https://jira.atlassian.net", {"read:jira-work"}, {}});
  service_fixture g(jira_only);
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          cfo::session s(ex, g.cfg, g.store);
          co_await s.cloud_id(g.srv.base_url());
        }) == cfo::errc::site_not_found);
}

}  // TEST_SUITE
}  // namespace test_service_account
