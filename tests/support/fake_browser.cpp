// fake-browser — an HTTP client that plays the user's browser in the OAuth
// authorization flow: it opens the URL (or the local redirect page that
// authorize() hands browsers, a file:// URL), follows redirects, answers the fake
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
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
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

/// Where a local page's `<meta http-equiv="refresh" content="0;url=...">` leads, as a browser reads it.
std::string follow_local_page(std::string_view file_url) {
  std::ifstream in(std::string(file_url.substr(7)));
  std::string page((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string_view marker = "http-equiv=\"refresh\" content=\"0;url=";
  auto at = page.find(marker);
  if (!in || at == std::string::npos) throw std::runtime_error("no redirect in the local page " + std::string(file_url));
  at += marker.size();
  std::string target = page.substr(at, page.find('"', at) - at);
  for (auto amp = target.find("&amp;"); amp != std::string::npos; amp = target.find("&amp;", amp + 1)) target.erase(amp + 1, 4);
  return target;
}

asio::awaitable<int> run(std::string start, cfo::client_config::tls_options tls, test_browser::decision decision) {
  try {
    cfo::detail::http_client http(co_await asio::this_coro::executor, tls, cfo::client_config::http_timeouts{});
    if (start.starts_with("file://")) start = follow_local_page(start);
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
  cfo::client_config::tls_options tls;
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
