// The README's example: sign in once through the browser, keep the grant in a
// file, refresh it when it is about to expire. Set ATLASSIAN_CLIENT_ID and
// ATLASSIAN_CLIENT_SECRET; register http://localhost:3000/callback as the
// app's callback URL in the Atlassian developer console.
#include <confluence_oauth.hpp>

#include <cstdlib>
#include <iostream>

namespace cfo = confluence_oauth;

asio::awaitable<void> run(cfo::client_config config) {
  auto ex = co_await asio::this_coro::executor;
  cfo::oauth_client client(ex, config);
  cfo::file_token_store store("tokens.json");

  auto tokens = co_await store.load();
  if (!tokens) {  // first run: the user consents in the browser
    tokens = co_await cfo::authorize(client, cfo::open_browser);
    co_await store.save(*tokens);
  } else if (tokens->expires_within(std::chrono::seconds(60))) {
    tokens = co_await client.refresh(*tokens);  // Atlassian rotates the refresh token:
    co_await store.save(*tokens);               // save it before anything uses it
  }
  std::cout << "Signed in; access token " << *tokens << '\n';  // secrets print as fingerprints
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
    } catch (const cfo::oauth_error& error) {
      std::cerr << error.what() << '\n';
      status = error.code() == cfo::condition::reauthenticate ? 3 : 1;
    }
  });
  io.run();
  return status;
}
