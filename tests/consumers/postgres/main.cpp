// A consumer of the PostgreSQL token store, the way an installed package
// gives it (CMake's confluence_oauth::postgres, pkg-config's
// confluence_oauth_postgres): it compiles, links libpq, and refuses a short
// key with invalid_config before any connection. Prints
// "confluence_oauth VERSION (MODE) postgres, libpq N".
#include <confluence_oauth.hpp>
#include <confluence_oauth_postgres.hpp>

#include <iostream>
#include <memory>
#include <string>

int main(int argc, char** argv) {
  namespace cfo = confluence_oauth;
  if (argc != 3 || std::string(argv[1]) != CONFLUENCE_OAUTH_VERSION) {
    std::cerr << "expected the version " << CONFLUENCE_OAUTH_VERSION << " and a mode\n";
    return 1;
  }
  asio::io_context io;
  auto db = std::make_shared<cfo::postgres_token_store::database>(io.get_executor(), "host=/nonexistent",
                                                                 cfo::file_token_store::generate_key());
  cfo::postgres_token_store store(db, "consumer");
  try {
    cfo::postgres_token_store::database short_key(io.get_executor(), "host=/nonexistent", cfo::secret("short"));
    return 1;
  } catch (const cfo::oauth_error& e) {
    if (e.code() != cfo::errc::invalid_config) return 1;
  }
  std::cout << "confluence_oauth " << CONFLUENCE_OAUTH_VERSION << " (" << argv[2] << ") postgres, libpq "
            << PQlibVersion() << '\n';
  return store.grant_key() == "consumer" ? 0 : 1;
}
