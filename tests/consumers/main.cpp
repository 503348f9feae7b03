// The consumer program every way in to confluence_oauth builds and runs
// (scripts/test-consumers.sh): include the header as a user would, construct
// a real client, print the version and check it.
//
// Usage: consumer [EXPECTED_VERSION [EXPECTED_MODE]]
// The version must equal EXPECTED_VERSION when given (the script passes the
// project's version) and CONSUMER_PACKAGE_VERSION when the build defines it
// (the version the package manager itself reported: CMake's
// confluence_oauth_VERSION, Meson's dependency version, Conan's reference).
// EXPECTED_MODE, "header-only" or "separate", is how the way in was asked to
// build the library: this file must have been compiled with
// CONFLUENCE_OAUTH_SEPARATE_COMPILATION defined exactly when it is
// "separate" (the package passed the define on to its consumer).
#include <confluence_oauth.hpp>

#include <cstring>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  asio::io_context io;
  confluence_oauth::client_config config;
  config.client_id = "consumer-client-id";
  config.client_secret = confluence_oauth::secret("consumer-client-secret");
  confluence_oauth::oauth_client client(io.get_executor(), config);  // validates, sets up TLS
  auto auth = client.begin_authorization();
  if (auth.url.rfind(config.authorize_url, 0) != 0) {
    std::cerr << "consumer: unexpected authorization URL " << auth.url << "\n";
    return 1;
  }

#ifdef CONFLUENCE_OAUTH_SEPARATE_COMPILATION
  const std::string mode = "separate";
#else
  const std::string mode = "header-only";
#endif
  std::cout << "confluence_oauth " << CONFLUENCE_OAUTH_VERSION << " (" << mode << ")\n";
  int failures = 0;
  const std::string from_parts = std::to_string(CONFLUENCE_OAUTH_VERSION_MAJOR) + "." +
                                 std::to_string(CONFLUENCE_OAUTH_VERSION_MINOR) + "." +
                                 std::to_string(CONFLUENCE_OAUTH_VERSION_PATCH);
  if (from_parts != CONFLUENCE_OAUTH_VERSION) {
    std::cerr << "consumer: CONFLUENCE_OAUTH_VERSION_MAJOR/MINOR/PATCH make " << from_parts << ", not "
              << CONFLUENCE_OAUTH_VERSION << "\n";
    ++failures;
  }
  auto expect = [&](const char* what, const char* want) {
    if (std::strcmp(CONFLUENCE_OAUTH_VERSION, want) != 0) {
      std::cerr << "consumer: CONFLUENCE_OAUTH_VERSION is " << CONFLUENCE_OAUTH_VERSION
                << " but " << what << " is " << want << "\n";
      ++failures;
    }
  };
  if (argc > 1) expect("the expected version", argv[1]);
#ifdef CONSUMER_PACKAGE_VERSION
  expect("the package's version", CONSUMER_PACKAGE_VERSION);
#endif
  if (argc > 2 && mode != argv[2]) {
    std::cerr << "consumer: built " << mode << " (CONFLUENCE_OAUTH_SEPARATE_COMPILATION "
              << (mode == "separate" ? "defined" : "not defined") << ") but the expected mode is "
              << argv[2] << "\n";
    ++failures;
  }
  return failures == 0 ? 0 : 1;
}
