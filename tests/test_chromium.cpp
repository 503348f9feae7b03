// A real browser: headless Chromium follows the authorization URL through the
// fake server's redirect into the listener, and the flow completes. The test
// command installs Chromium; its absence is a failure, never a skip.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

// Its own namespace, so that the unity build can put test files together.
namespace test_chromium {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

const char* chromium_path() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (::access(p, X_OK) == 0) return p;
  return nullptr;
}

std::vector<std::string> chromium_command(const char* binary, const std::string& profile_dir) {
  return {binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
          // The fake server's CA is generated per run; Chromium has no option to
          // trust a CA file, and it only ever talks to loopback here.
          "--ignore-certificate-errors", "--user-data-dir=" + profile_dir, "--dump-dom"};
}

}  // namespace

TEST_SUITE("browser") {

TEST_CASE("headless Chromium follows the authorization redirect into the listener") {
  const char* chromium = chromium_path();
  REQUIRE_MESSAGE(chromium != nullptr, "Chromium is not installed: run scripts/install-deps.sh");
  test_util::temp_dir profile;
  auto port = test_util::free_port();
  fake_atlassian::options o;
  o.auto_approve = true;
  o.redirect_uris = {"http://localhost:" + std::to_string(port) + "/callback"};
  fake_atlassian::server srv(o);

  auto cfg = test_util::client_config_for(srv, o.redirect_uris.front());
  cfo::session_options::listener_options lo;
  lo.timeout = 90s;  // a cold Chromium start on a loaded CI machine takes seconds

  auto tokens = test_util::run(
      [&](auto ex) -> asio::awaitable<cfo::token_set> {
        cfo::oauth_client client(ex, cfg);
        co_return co_await cfo::detail::authorize(client, cfo::browser_command(chromium_command(chromium, profile.path().string())), lo);
      },
      120s);
  CHECK_FALSE(tokens.access_token.empty());
  CHECK(tokens.has_refresh_token());
  auto s = srv.stats();
  CHECK(s.authorize_pages == 1);
  CHECK(s.authorization_code_grants == 1);
  // Chromium exits by itself after --dump-dom; make sure no instance outlives the test.
  if (::access("/usr/bin/pkill", X_OK) == 0) test_util::run_process({"/usr/bin/pkill", "-f", profile.path().string()}, 10s);
}

}  // TEST_SUITE

}  // namespace test_chromium
