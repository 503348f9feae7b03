// The right site: accessible-resources has no order and lists Jira sites too
// (the fake lists a Jira-only site first). With no choice, site::find takes the
// only Confluence site, and says which sites there are when it cannot.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

// Its own namespace, so that the unity build can put test files together.
namespace test_sites {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";

/// The sites a fresh grant reaches on a fake server with `o`'s sites.
std::vector<cfo::site> sites_of(fake_atlassian::options o = {}) {
  fake_atlassian::server srv(std::move(o));
  auto cfg = test_util::client_config_for(srv, redirect);
  auto store = std::make_shared<cfo::memory_token_store>();
  auto granted = test_util::grant_from(srv, cfg, scopes);
  return test_util::run([&](auto ex) -> asio::awaitable<std::vector<cfo::site>> {
    cfo::session s(ex, cfg, store);
    co_await s.adopt(granted);
    co_return co_await s.accessible_resources();
  });
}

std::string find_error(const std::vector<cfo::site>& sites) {
  try {
    cfo::site::find(sites);
  } catch (const cfo::oauth_error& e) {
    CHECK(e.code() == cfo::errc::site_not_found);
    CHECK(e.code() == cfo::remedy::fix_configuration);
    return e.what();
  }
  FAIL("site::find chose a site");
  return {};
}

}  // namespace

TEST_SUITE("sites") {

TEST_CASE("with a Jira site listed first, site::find takes the Confluence one, which serves pages") {
  fake_atlassian::server srv;
  auto cfg = test_util::client_config_for(srv, redirect);
  auto store = std::make_shared<cfo::memory_token_store>();
  auto granted = test_util::grant_from(srv, cfg, scopes);
  auto titles = test_util::run([&](auto ex) -> asio::awaitable<std::vector<std::string>> {
    cfo::session s(ex, cfg, store);
    co_await s.adopt(granted);
    auto sites = co_await s.accessible_resources();
    REQUIRE(sites.size() == 2);
    CHECK(sites.front().name == "example-jira");  // first, and not the one to take
    auto site = cfo::site::find(sites);
    CHECK(site.id == "a1b2c3d4-0000-4000-8000-000000000001");
    cfo::confluence wiki(s, site);
    std::vector<std::string> out;
    for (const auto& page : co_await wiki.get_all("/wiki/api/v2/pages?limit=5", 3)) out.push_back(page["title"]);
    // The Jira site has no Confluence behind it.
    cfo::confluence jira(s, sites.front());
    std::error_code ec;
    try {
      co_await jira.get("/wiki/api/v2/pages");
    } catch (const cfo::oauth_error& e) {
      ec = e.code();
    }
    CHECK(ec == cfo::errc::http_error);
    co_return out;
  });
  CHECK(titles == std::vector<std::string>{"Page 1", "Page 2", "Page 3"});
}

TEST_CASE("several Confluence sites: site::find names them all; a key still picks one") {
  fake_atlassian::options o;
  o.sites.push_back({"j1", "Jira only", "https://jira-only.atlassian.net", {"read:jira-work"}, {}});
  o.sites.push_back({"c1", "One", "https://one.atlassian.net", {}, {}});
  o.sites.push_back({"c2", "Two", "https://two.atlassian.net", {}, {}});
  auto sites = sites_of(o);
  REQUIRE(sites.size() == 3);
  auto message = find_error(sites);
  CHECK(message.find("several Confluence sites") != std::string::npos);
  CHECK(message.find("One (https://one.atlassian.net)") != std::string::npos);
  CHECK(message.find("Two (https://two.atlassian.net)") != std::string::npos);
  CHECK(message.find("Jira only") == std::string::npos);  // not a candidate
  CHECK(cfo::site::find(sites, "two").id == "c2");
  CHECK(cfo::site::find(sites, "https://one.atlassian.net").id == "c1");
}

TEST_CASE("no Confluence site, or no site at all: site_not_found that says so") {
  fake_atlassian::options o;
  o.sites.push_back({"j1", "Jira only", "https://jira-only.atlassian.net", {"read:jira-work", "manage:jira-project"}, {}});
  auto message = find_error(sites_of(o));
  CHECK(message.find("none of the sites") != std::string::npos);
  CHECK(message.find("Jira only (https://jira-only.atlassian.net)") != std::string::npos);
  CHECK(find_error({}).find("reaches no site") != std::string::npos);
}

TEST_CASE("a hostile site list reaches the message sanitized") {
  std::vector<cfo::site> sites{{"c1", "A\x1b[2Jevil", "https://a.atlassian.net", {"read:page:confluence"}, {}},
                               {"c2", "B", "https://b.atlassian.net", {"write:confluence-content"}, {}}};
  auto message = find_error(sites);
  CHECK(message.find('\x1b') == std::string::npos);
  CHECK(message.find("https://b.atlassian.net") != std::string::npos);
}

}  // TEST_SUITE
}  // namespace test_sites
