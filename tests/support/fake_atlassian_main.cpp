// fake-atlassian — the fake Atlassian server as a standalone program, for demos and
// examples. Serves until SIGINT or SIGTERM, then exits 0.
#include "fake_atlassian.hpp"

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <pthread.h>
#include <unistd.h>

namespace {

constexpr std::string_view usage_text =
    "usage: fake-atlassian [options]\n"
    "  --host H                      bind address, an IP literal (default 127.0.0.1)\n"
    "  --port N                      port, 0 = any free port (default 0)\n"
    "  --port-file F                 write the bound port to F once listening\n"
    "  --ca-out F                    write the CA certificate (PEM) to F\n"
    "  --plain-http                  serve plain HTTP instead of HTTPS\n"
    "  --client-id ID                registered client id (default test-client-id)\n"
    "  --client-secret S             client secret (default test-client-secret)\n"
    "  --redirect-uri URI            registered callback URL; repeatable\n"
    "                                (default http://localhost:3000/callback)\n"
    "  --auto-approve                redirect from /authorize without a consent page\n"
    "  --access-token-lifetime SECS  access token lifetime (default 3600)\n"
    "  --code-lifetime SECS          code and consent page lifetime (default 600)\n"
    "  --refresh-reuse-window SECS   a rotated refresh token still works for SECS\n"
    "                                (default 600)\n"
    "  --site ID,NAME,URL            a site: cloud id, name, URL; repeatable\n"
    "                                (default: a Jira-only site listed first, then\n"
    "                                a1b2c3d4-0000-4000-8000-000000000001,\n"
    "                                example,https://example.atlassian.net)\n"
    "  --page-count N                Confluence pages per site (default 12)\n"
    "  --space-count N               Confluence spaces per site (default 3)\n"
    "  --near-expiry-window SECS     answer /ex/... with the near-expiry status when\n"
    "                                its token expires within SECS (default 0: off)\n"
    "  --near-expiry-status N        that status, 400-599 (default 403)\n"
    "  --help                        show this help\n";

std::optional<long long> parse_number(std::string_view s, long long min, long long max) {
  long long v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || end != s.data() + s.size() || v < min || v > max) return std::nullopt;
  return v;
}

// "ID,NAME,URL": the id up to the first comma, the URL after the last, the name between
// (names may hold commas). nullopt unless all three are non-empty.
std::optional<fake_atlassian::site> parse_site(std::string_view s) {
  auto first = s.find(','), last = s.rfind(',');
  if (first == std::string_view::npos || first == last) return std::nullopt;
  fake_atlassian::site site{std::string(s.substr(0, first)), std::string(s.substr(first + 1, last - first - 1)),
                            std::string(s.substr(last + 1)), {}, {}};
  if (site.id.empty() || site.name.empty() || site.url.empty()) return std::nullopt;
  return site;
}

// Write to a temporary file next to `path`, then rename: readers never see a partial file.
void write_atomically(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  out << content;
  out.close();
  if (!out || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path);
  }
}

struct cli {
  fake_atlassian::options opts;
  std::string port_file, ca_out;
};

// nullopt: bad arguments (already reported).
std::optional<cli> parse_args(int argc, char** argv) {
  cli c;
  bool redirect_given = false;
  for (int i = 1; i < argc; ++i) {
    const int first = i;
    std::string_view arg = argv[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string(argv[++i]);
    };
    auto number = [&](long long min, long long max) -> std::optional<long long> {
      auto v = value();
      return v ? parse_number(*v, min, max) : std::nullopt;
    };
    std::optional<std::string> s;
    std::optional<long long> n;
    std::optional<fake_atlassian::site> site;
    constexpr long long ten_years = 10LL * 365 * 24 * 3600;
    if (arg == "--host" && (s = value())) {
      c.opts.host = *s;
    } else if (arg == "--port" && (n = number(0, 65535))) {
      c.opts.port = static_cast<unsigned short>(*n);
    } else if (arg == "--port-file" && (s = value())) {
      c.port_file = *s;
    } else if (arg == "--ca-out" && (s = value())) {
      c.ca_out = *s;
    } else if (arg == "--plain-http") {
      c.opts.tls = false;
    } else if (arg == "--client-id" && (s = value())) {
      c.opts.client_id = *s;
    } else if (arg == "--client-secret" && (s = value())) {
      c.opts.client_secret = *s;
    } else if (arg == "--redirect-uri" && (s = value())) {
      if (!redirect_given) c.opts.redirect_uris.clear();
      redirect_given = true;
      c.opts.redirect_uris.push_back(*s);
    } else if (arg == "--auto-approve") {
      c.opts.auto_approve = true;
    } else if (arg == "--access-token-lifetime" && (n = number(1, ten_years))) {
      c.opts.access_token_lifetime = std::chrono::seconds{*n};
    } else if (arg == "--code-lifetime" && (n = number(1, ten_years))) {
      c.opts.code_lifetime = std::chrono::seconds{*n};
    } else if (arg == "--refresh-reuse-window" && (n = number(0, ten_years))) {
      c.opts.refresh_reuse_window = std::chrono::seconds{*n};
    } else if (arg == "--site" && (s = value()) && (site = parse_site(*s))) {
      c.opts.sites.push_back(std::move(*site));
    } else if (arg == "--page-count" && (n = number(0, 1'000'000))) {
      c.opts.page_count = static_cast<int>(*n);
    } else if (arg == "--space-count" && (n = number(0, 1'000'000))) {
      c.opts.space_count = static_cast<int>(*n);
    } else if (arg == "--near-expiry-window" && (n = number(0, ten_years))) {
      c.opts.near_expiry_window = std::chrono::seconds{*n};
    } else if (arg == "--near-expiry-status" && (n = number(400, 599))) {
      c.opts.near_expiry_status = static_cast<int>(*n);
    } else {
      std::cerr << "fake-atlassian: bad argument:";
      for (int k = first; k <= i && k < argc; ++k) std::cerr << ' ' << argv[k];
      std::cerr << "\n" << usage_text;
      return std::nullopt;
    }
  }
  if (!c.ca_out.empty() && !c.opts.tls) {
    std::cerr << "fake-atlassian: --ca-out needs HTTPS (drop --plain-http)\n" << usage_text;
    return std::nullopt;
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--help") {
      std::cout << usage_text;
      return 0;
    }
  auto args = parse_args(argc, argv);
  if (!args) return 2;

  // Block the signals before the server thread starts, so only sigwait receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    fake_atlassian::server server(args->opts);
    if (!args->ca_out.empty()) write_atomically(args->ca_out, server.ca_pem());
    if (!args->port_file.empty()) write_atomically(args->port_file, std::to_string(server.port()) + "\n");
    std::cout << "fake-atlassian listening on " << server.base_url() << std::endl;
    int signal = 0;
    sigwait(&signals, &signal);
  } catch (const std::exception& e) {
    std::cerr << "fake-atlassian: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
