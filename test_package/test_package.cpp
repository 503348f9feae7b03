// Conan's test_package: build against the package and run.
// Usage: test_package [EXPECTED_VERSION [header-only|separate]]
// (the test passes the package's version and its separate_compilation option)
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

#ifdef CONFLUENCE_OAUTH_SEPARATE_COMPILATION
  const char* mode = "separate";
#else
  const char* mode = "header-only";
#endif
  std::cout << "confluence_oauth " << CONFLUENCE_OAUTH_VERSION << " (" << mode << "): "
            << auth.url.substr(0, 40) << "...\n";
  if (argc > 1 && std::strcmp(argv[1], CONFLUENCE_OAUTH_VERSION) != 0) {
    std::cerr << "test_package: header version " << CONFLUENCE_OAUTH_VERSION << " but package version " << argv[1] << "\n";
    return 1;
  }
  if (argc > 2 && std::strcmp(argv[2], mode) != 0) {
    std::cerr << "test_package: built " << mode << " but the package is " << argv[2] << "\n";
    return 1;
  }
  return 0;
}
