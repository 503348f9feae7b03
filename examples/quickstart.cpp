// The README's example: sign in once through the browser, keep the grant in a
// file, and list the pages of your Confluence site. The session refreshes the
// access token by itself and saves each rotated refresh token before using it.
// Set ATLASSIAN_CLIENT_ID and ATLASSIAN_CLIENT_SECRET; register
// http://localhost:3000/callback as the app's callback URL in the Atlassian
// developer console.
#include <confluence_oauth.hpp>

#include <cstdlib>
#include <iostream>
#include <system_error>

namespace cfo = confluence_oauth;

asio::awaitable<void> run(cfo::client_config config) {
  auto ex = co_await asio::this_coro::executor;
  auto store = std::make_shared<cfo::file_token_store>("tokens.json");
  cfo::session session(ex, config, store);
  if (!co_await session.load())                     // no saved grant yet:
    co_await session.authorize();                   // the user consents in the browser

  // Sites come in no order, Jira ones too: the only Confluence site, or find(sites, url).
  auto sites = co_await session.accessible_resources();
  cfo::confluence wiki(session, cfo::site::find(sites));
  auto pages = co_await wiki.get_all("/wiki/api/v2/pages?limit=50", 200);  // at most 200
  for (const auto& page : pages)
    std::cout << page["id"].get<std::string>() << '\t' << page["title"].get<std::string>() << '\n';
}

int main() {
  cfo::client_config config;
  const char* id = std::getenv("ATLASSIAN_CLIENT_ID");
  const char* secret = std::getenv("ATLASSIAN_CLIENT_SECRET");
  if (!id || !secret) {
    std::cerr << "set ATLASSIAN_CLIENT_ID and ATLASSIAN_CLIENT_SECRET\n";
    return 2;
  }
  config.client_id = id;
  config.client_secret = cfo::secret(secret);

  asio::io_context io;
  int status = 0;
  asio::co_spawn(io, run(std::move(config)), [&](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const std::system_error& error) {  // a cfo::oauth_error
      std::cerr << error.what() << '\n';
      status = error.code() == cfo::remedy::reauthenticate ? 3 : 1;
    }
  });
  io.run();
  return status;
}
