// session-worker — one of several processes that share a file token store, for
// the multi-process test: it loads the saved grant and keeps calling the fake
// server's Confluence API for a while, refreshing through its session.
// Built with CFO_WITH_POSTGRES (pg-session-worker), it shares a grant in
// PostgreSQL instead (--token-db, --grant-key; --key-file is then required).
//
//   session-worker --base-url URL --ca-file PEM --store PATH [--key-file PATH]
//                  --seconds S [--skew SECS] [--concurrency C]
//
// Prints "requests=N failures=F" on stdout and each distinct failure, with its
// count, on stderr. Exits 0 if every request succeeded, 1 otherwise, 2 on bad
// arguments.
#include "confluence_oauth.hpp"
#include "program_args.hpp"
#ifdef CFO_WITH_POSTGRES
#include "confluence_oauth_postgres.hpp"
#endif

#include <chrono>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

namespace cfo = confluence_oauth;

constexpr std::string_view usage_text =
    "usage: session-worker --base-url URL --ca-file PEM --store PATH [--key-file PATH]\n"
    "                      --seconds S [--skew SECS] [--concurrency C]\n"
    "  --base-url URL   the fake Atlassian server (authorize, token and API endpoints)\n"
    "  --ca-file PEM    the CA certificate it uses\n"
    "  --store PATH     the token file, shared with the other workers\n"
    "  --key-file PATH  the file's AES-256-GCM key: 32 raw bytes (default: not encrypted)\n"
    "  --seconds S      how long to keep sending requests\n"
    "  --skew SECS      session_options::refresh_skew (default 60)\n"
    "  --concurrency C  requests in flight at once (default 4)\n"
#ifdef CFO_WITH_POSTGRES
    "  --token-db CONNINFO  keep the grant in this PostgreSQL database, not in --store\n"
    "  --grant-key NAME     the grant's row there\n"
#endif
    "Exit status: 0 if every request succeeded, 1 otherwise, 2 on bad arguments.\n";

constexpr const char* pages_target = "/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/pages?limit=1";

struct arguments {
  std::string base_url, ca_file, store, key_file, token_db, grant_key;
  int seconds = -1;
  int skew = 60;
  int concurrency = 4;
};

struct tally {
  long requests = 0;
  long failures = 0;
  std::map<std::string, long> errors;  // text -> how often
};

[[noreturn]] void usage_error(const std::string& why) { program_args::usage_error("session-worker", why, usage_text); }

int to_int(std::string_view flag, const std::string& value, int min) {
  return program_args::to_number("session-worker", flag, value, min, usage_text);
}

arguments parse(int argc, char** argv) {
  arguments a;
  for (const auto& [flag, value] : program_args::options(argc, argv, "session-worker", usage_text)) {
    if (flag == "--base-url") a.base_url = value;
    else if (flag == "--ca-file") a.ca_file = value;
    else if (flag == "--store") a.store = value;
    else if (flag == "--key-file") a.key_file = value;
    else if (flag == "--seconds") a.seconds = to_int(flag, value, 0);
    else if (flag == "--skew") a.skew = to_int(flag, value, 0);
    else if (flag == "--concurrency") a.concurrency = to_int(flag, value, 1);
#ifdef CFO_WITH_POSTGRES
    else if (flag == "--token-db") a.token_db = value;
    else if (flag == "--grant-key") a.grant_key = value;
#endif
    else usage_error("unknown argument " + flag);
  }
  if (a.base_url.empty() || a.ca_file.empty() || (a.store.empty() && a.token_db.empty()) || a.seconds < 0)
    usage_error("--base-url, --ca-file, --store (or --token-db) and --seconds are required");
  if (!a.token_db.empty() && (a.grant_key.empty() || a.key_file.empty()))
    usage_error("--token-db needs --grant-key and --key-file");
  return a;
}

cfo::client_config config_for(const arguments& a) {
  cfo::client_config c;
  c.client_id = "test-client-id";
  c.client_secret = cfo::secret("test-client-secret");
  c.authorize_url = a.base_url + "/authorize";
  c.token_url = a.base_url + "/oauth/token";
  c.api_url = a.base_url;
  c.tls.ca_file = a.ca_file;
  return c;
}

std::optional<cfo::secret> read_key(const std::string& path) {
  if (path.empty()) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read the key file " + path);
  return cfo::secret(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
}

/// One of the concurrent loops: requests until the deadline, counting failures.
asio::awaitable<void> request_loop(cfo::session s, std::chrono::steady_clock::time_point deadline, tally& t) {
  while (std::chrono::steady_clock::now() < deadline) {
    std::string failure;
    try {
      co_await s.get_json(pages_target);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    ++t.requests;
    if (!failure.empty()) {
      ++t.failures;
      ++t.errors[failure];
    }
  }
}

/// Loads the grant, then starts the loops; io_context::run returns when they end.
asio::awaitable<void> start(cfo::session s, const arguments& a, tally& t) {
  if (!co_await s.load()) throw std::runtime_error("the store holds no grant");
  auto ex = co_await asio::this_coro::executor;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(a.seconds);
  for (int i = 0; i < a.concurrency; ++i) asio::co_spawn(ex, request_loop(s, deadline, t), asio::detached);
}

}  // namespace

int main(int argc, char** argv) {
  const arguments a = parse(argc, argv);
  tally t;
  try {
    auto key = read_key(a.key_file);
    asio::io_context io(1);
    std::shared_ptr<cfo::token_store> store;
#ifdef CFO_WITH_POSTGRES
    if (!a.token_db.empty())
      store = std::make_shared<cfo::postgres_token_store>(
          std::make_shared<cfo::postgres_token_store::database>(io.get_executor(), a.token_db, std::move(*key)),
          a.grant_key);
#endif
    if (!store)
      store = key ? std::make_shared<cfo::file_token_store>(a.store, std::move(*key))
                  : std::make_shared<cfo::file_token_store>(a.store);
    cfo::session_options options;
    options.refresh_skew = std::chrono::seconds(a.skew);
    cfo::session s(io.get_executor(), config_for(a), store, options);
    std::exception_ptr failed;
    asio::co_spawn(io, start(s, a, t), [&](std::exception_ptr e) { failed = e; });
    io.run();
    if (failed) std::rethrow_exception(failed);
  } catch (const std::exception& e) {
    std::cerr << "session-worker: " << e.what() << '\n';
    return 1;
  }
  std::cout << "requests=" << t.requests << " failures=" << t.failures << std::endl;
  for (const auto& [text, count] : t.errors) std::cerr << "session-worker: " << count << " x " << text << '\n';
  return t.failures == 0 ? 0 : 1;
}
