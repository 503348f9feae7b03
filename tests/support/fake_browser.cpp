// fake-browser — an HTTP client that plays the user's browser in the OAuth
// authorization flow: it opens the URL, follows redirects, answers the fake
// server's consent page with Allow (or Deny), and ends on the app's callback.
// Used by the demo when Chromium is absent, and as `--browser` in the tests.
//
//   fake-browser [--ca-file PEM] [--deny] URL
//
// Prints each visited URL to stderr without its query (queries carry codes and
// states). Exits 0 when the last page answered below 400, 1 otherwise, 2 on
// bad arguments.
#include "test_browser.hpp"

#include <exception>
#include <iostream>
#include <string>
#include <string_view>

namespace {

namespace cfo = confluence_oauth;

constexpr std::string_view usage_text =
    "usage: fake-browser [--ca-file PEM] [--deny] URL\n"
    "  --ca-file PEM  also trust the CA certificates in this PEM file\n"
    "  --deny         answer the consent page with Deny instead of Allow\n"
    "  --help         show this help\n"
    "Exit status: 0 if the last page's status is below 400, 1 otherwise, 2 on bad arguments.\n";

std::string without_query(std::string_view url) { return std::string(url.substr(0, url.find('?'))); }

asio::awaitable<int> run(std::string start, cfo::tls_options tls, test_browser::decision decision) {
  try {
    cfo::detail::http_client http(co_await asio::this_coro::executor, tls, cfo::timeouts{});
    auto visit = co_await test_browser::browse(http, start, decision);
    for (const auto& u : visit.urls) std::cerr << "fake-browser: visited " << without_query(u) << '\n';
    std::cerr << "fake-browser: final status " << visit.status << " at " << without_query(visit.url) << '\n';
    co_return visit.status > 0 && visit.status < 400 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "fake-browser: " << e.what() << '\n';
    co_return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  cfo::tls_options tls;
  auto decision = test_browser::decision::allow;
  std::string start;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage_text;
      return 0;
    } else if (arg == "--deny") {
      decision = test_browser::decision::deny;
    } else if (arg == "--ca-file" && i + 1 < argc) {
      tls.ca_file = argv[++i];
    } else if (arg.starts_with("--ca-file=")) {
      tls.ca_file = std::string(arg.substr(10));
    } else if (!arg.starts_with("-") && start.empty()) {
      start = std::string(arg);
    } else {
      std::cerr << "fake-browser: bad argument: " << arg << '\n' << usage_text;
      return 2;
    }
  }
  if (start.empty()) {
    std::cerr << "fake-browser: missing URL\n" << usage_text;
    return 2;
  }

  asio::io_context io(1);
  int result = 1;
  asio::co_spawn(io, run(std::move(start), std::move(tls), decision), [&](std::exception_ptr e, int code) {
    result = e ? 1 : code;
  });
  io.run();
  return result;
}
