// Conan's test_package: build against the package and run.
// Usage: test_package [EXPECTED_VERSION]  (the test passes the package's version)
#include <confluence_oauth.hpp>

#include <cstring>
#include <iostream>

int main(int argc, char** argv) {
  asio::io_context io;
  confluence_oauth::client_config config;
  config.client_id = "test-package-client-id";
  config.client_secret = confluence_oauth::secret("test-package-client-secret");
  confluence_oauth::oauth_client client(io.get_executor(), config);
  auto auth = client.begin_authorization();

  std::cout << "confluence_oauth " << CONFLUENCE_OAUTH_VERSION << ": " << auth.url.substr(0, 40) << "...\n";
  if (argc > 1 && std::strcmp(argv[1], CONFLUENCE_OAUTH_VERSION) != 0) {
    std::cerr << "test_package: header version " << CONFLUENCE_OAUTH_VERSION << " but package version " << argv[1] << "\n";
    return 1;
  }
  return 0;
}
