// bench-ours — confluence_oauth in the side-by-side benchmark (bench/run,
// bench/README.md), plus the fake Atlassian server of its refresh storm.
//
//   bench-ours load --url URL --token TOKEN --ca CA_PEM --requests N --concurrency C [--threads T]
//                   [--via request|get_json]
//   bench-ours storm --grant GRANT_JSON --ca CA_PEM --requests R
//   bench-ours storm-server --ca-out F --grant-out F --stats-out F
//
// load: N authenticated GETs of URL through session::request, at most C in
// flight, on T threads running one io_context; --via get_json has each GET
// parse its body as JSON (session::get_json) instead. storm: R concurrent GETs that
// all meet an expired access token. Both print one JSON line (bench/README.md)
// and exit 0 when every request got a 200 with a body, 1 otherwise, 2 on bad
// arguments. storm-server runs the fake server with a grant whose access token
// it has expired, and writes its counters when SIGTERM or SIGINT stops it.
#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "program_args.hpp"
#include "clients/load_client.hpp"
#ifdef CFO_WITH_POSTGRES
#include "confluence_oauth_postgres.hpp"
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

namespace cfo = confluence_oauth;
using steady = std::chrono::steady_clock;

constexpr std::string_view usage_text =
    "usage: bench-ours load --url URL --token TOKEN --ca CA_PEM --requests N --concurrency C [--threads T]\n"
    "                       [--via request|get_json]\n"
    "       bench-ours storm --grant GRANT_JSON --ca CA_PEM --requests R\n"
    "       bench-ours storm-server --ca-out F --grant-out F --stats-out F\n"
#ifdef CFO_WITH_POSTGRES
    "       bench-ours pg-seed --grant GRANT_JSON --token-db CONNINFO --grant-key NAME --key-file F\n"
    "       bench-ours storm ... --token-db CONNINFO --grant-key NAME --key-file F\n"
    "       bench-ours pg-cost --grant GRANT_JSON --ca CA_PEM --requests N --token-db CONNINFO --grant-key NAME --key-file F\n"
#endif
    "See bench/README.md.\n";

[[noreturn]] void usage_error(const std::string& why) { program_args::usage_error("bench-ours", why, usage_text); }

struct arguments {
  std::string mode, url, token, ca, grant, ca_out, grant_out, stats_out, token_db, grant_key, key_file;
  long requests = 0;
  int concurrency = 0;
  int threads = 1;
  bool json = false;  // --via get_json
};

arguments parse(int argc, char** argv) {
  if (argc < 2) usage_error("a mode is needed: load, storm or storm-server");
  arguments a;
  a.mode = argv[1];
  auto number = [](const std::string& flag, const std::string& value) {
    return program_args::to_number("bench-ours", flag, value, 1L, usage_text);
  };
  for (const auto& [flag, value] : program_args::options(argc - 1, argv + 1, "bench-ours", usage_text)) {
    if (flag == "--url") a.url = value;
    else if (flag == "--token") a.token = value;
    else if (flag == "--ca") a.ca = value;
    else if (flag == "--grant") a.grant = value;
    else if (flag == "--ca-out") a.ca_out = value;
    else if (flag == "--grant-out") a.grant_out = value;
    else if (flag == "--stats-out") a.stats_out = value;
    else if (flag == "--requests") a.requests = number(flag, value);
    else if (flag == "--concurrency") a.concurrency = static_cast<int>(number(flag, value));
    else if (flag == "--threads") a.threads = static_cast<int>(number(flag, value));
#ifdef CFO_WITH_POSTGRES
    else if (flag == "--token-db") a.token_db = value;
    else if (flag == "--grant-key") a.grant_key = value;
    else if (flag == "--key-file") a.key_file = value;
#endif
    else if (flag == "--via" && (value == "request" || value == "get_json")) a.json = value == "get_json";
    else usage_error("unknown argument " + flag);
  }
  auto need = [](bool present, const char* what) {
    if (!present) usage_error(std::string("missing ") + what);
  };
  if (a.mode == "load") {
    need(!a.url.empty() && !a.token.empty() && !a.ca.empty(), "--url, --token or --ca");
    need(a.requests > 0 && a.concurrency > 0, "--requests or --concurrency");
  } else if (a.mode == "storm") {
    need(!a.grant.empty() && !a.ca.empty() && a.requests > 0, "--grant, --ca or --requests");
  } else if (a.mode == "storm-server") {
    need(!a.ca_out.empty() && !a.grant_out.empty() && !a.stats_out.empty(), "--ca-out, --grant-out or --stats-out");
#ifdef CFO_WITH_POSTGRES
  } else if (a.mode == "pg-seed" || a.mode == "pg-cost") {
    need(!a.grant.empty() && !a.token_db.empty() && !a.grant_key.empty() && !a.key_file.empty(),
         "--grant, --token-db, --grant-key or --key-file");
    need(a.mode == "pg-seed" || (!a.ca.empty() && a.requests > 0), "--ca or --requests");
#endif
  } else {
    usage_error("unknown mode " + a.mode);
  }
  return a;
}

/// What the requests of one run came to.
struct tally {
  std::atomic<long> next{0};  // requests started
  std::atomic<long> ok{0};
  std::atomic<long> failed{0};
  std::atomic<long long> body_bytes{0};
  std::mutex mutex;
  std::vector<double> latencies_ms;
  std::vector<std::string> errors;  // the first few distinct ones

  void failure(std::string what) {
    ++failed;
    std::lock_guard lock(mutex);
    if (errors.size() < 5 && std::find(errors.begin(), errors.end(), what) == errors.end()) errors.push_back(std::move(what));
  }
};

/// A worker: requests `target` until `total` have started; with `json`,
/// through get_json (the body parsed), else through request.
asio::awaitable<void> request_loop(cfo::session s, std::string target, long total, bool json, tally& t) {
  std::vector<double> mine;
  while (t.next.fetch_add(1) < total) {
    const auto sent = steady::now();
    try {
      if (json) {
        const auto page = co_await s.get_json(target);
        mine.push_back(std::chrono::duration<double, std::milli>(steady::now() - sent).count());
        if (page.contains("results")) ++t.ok;
        else t.failure("a JSON answer without results");
      } else {
        cfo::http_request req;
        req.target = target;
        req.headers.add("Accept", "application/json");
        auto res = co_await s.request(std::move(req));
        mine.push_back(std::chrono::duration<double, std::milli>(steady::now() - sent).count());
        if (res.status == 200 && !res.body.empty()) {
          ++t.ok;
          t.body_bytes += static_cast<long long>(res.body.size());
        } else {
          t.failure("HTTP status " + std::to_string(res.status));
        }
      }
    } catch (const std::exception& e) {
      t.failure(e.what());
    }
  }
  std::lock_guard lock(t.mutex);
  t.latencies_ms.insert(t.latencies_ms.end(), mine.begin(), mine.end());
}

/// Sends `total` GETs of `target` through `s` with `concurrency` workers on
/// `threads` threads, prints the JSON line; the exit status.
int run_requests(asio::io_context& io, const cfo::session& s, const std::string& target, long total, int concurrency,
                 int threads, bool json, bool with_latencies) {
  tally t;
  const auto began = steady::now();
  for (int i = 0; i < concurrency; ++i) asio::co_spawn(io, request_loop(s, target, total, json, t), asio::detached);
  std::vector<std::thread> runners;
  for (int i = 1; i < threads; ++i) runners.emplace_back([&] { io.run(); });
  io.run();
  for (auto& r : runners) r.join();
  const double seconds = std::chrono::duration<double>(steady::now() - began).count();

  std::sort(t.latencies_ms.begin(), t.latencies_ms.end());
  for (const auto& e : t.errors) std::cerr << "bench-ours: " << e << '\n';
  nlohmann::json line = {{"ok", t.ok.load()}, {"failed", t.failed.load()}, {"seconds", seconds}};
  if (with_latencies) {
    line["p50_ms"] = load_client::percentile_ms(t.latencies_ms, 50);
    line["p99_ms"] = load_client::percentile_ms(t.latencies_ms, 99);
    line["body_bytes"] = t.body_bytes.load();
  } else {
    line["refreshes"] = -1;  // the server counts them
  }
  std::cout << line.dump() << std::endl;
  return t.failed == 0 && t.ok == total ? 0 : 1;
}

/// Runs `op` to completion on `io`; its result, or what it throws.
template <typename Awaitable>
auto run_to_end(asio::io_context& io, Awaitable op) {
  auto done = asio::co_spawn(io, std::move(op), asio::use_future);
  io.run();
  io.restart();
  return done.get();
}

int load(const arguments& a) {
  const auto target = cfo::detail::parse_url(a.url);
  cfo::client_config cfg;
  cfg.client_id = "bench-client";
  cfg.client_secret = cfo::secret("bench-secret");
  cfg.api_url = target.origin();
  cfg.token_url = target.origin() + "/oauth/token";  // never called: the token outlives the run
  cfg.tls.ca_file = a.ca;
  cfg.tls.use_system_trust = false;

  cfo::token_set tokens;
  tokens.access_token = cfo::secret(a.token);
  tokens.refresh_token = cfo::secret("unused");
  tokens.expires_at = cfo::token_set::clock::now() + std::chrono::hours(1);

  asio::io_context io(a.threads);
  cfo::session s(io.get_executor(), cfg, std::make_shared<cfo::memory_token_store>());
  run_to_end(io, s.adopt(tokens));
  return run_requests(io, s, target.target, a.requests, a.concurrency, a.threads, a.json, true);
}

/// The storm server's grant file: the client and the expired grant.
struct storm_grant {
  cfo::client_config config;
  std::string target;
  cfo::token_set tokens;
};

storm_grant read_grant(const arguments& a) {
  std::ifstream in(a.grant);
  const auto grant = nlohmann::json::parse(in);
  const auto api = cfo::detail::parse_url(grant.at("api_url").get<std::string>());
  storm_grant g;
  g.config.client_id = grant.at("client_id").get<std::string>();
  g.config.client_secret = cfo::secret(grant.at("client_secret").get<std::string>());
  g.config.token_url = grant.at("token_url").get<std::string>();
  g.config.api_url = api.origin();
  g.config.tls.ca_file = a.ca;
  g.config.tls.use_system_trust = false;
  g.target = api.target;
  g.tokens.access_token = cfo::secret(grant.at("access_token").get<std::string>());
  g.tokens.refresh_token = cfo::secret(grant.at("refresh_token").get<std::string>());
  g.tokens.expires_at = cfo::token_set::clock::now() - std::chrono::minutes(1);
  return g;
}

#ifdef CFO_WITH_POSTGRES
std::shared_ptr<cfo::postgres_token_store> postgres_store(const arguments& a, asio::io_context& io) {
  std::ifstream in(a.key_file, std::ios::binary);
  cfo::secret key{std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>())};
  auto db = std::make_shared<cfo::postgres_token_store::database>(io.get_executor(), a.token_db, std::move(key));
  return std::make_shared<cfo::postgres_token_store>(db, a.grant_key);
}

int pg_seed(const arguments& a) {
  const auto g = read_grant(a);
  asio::io_context io;
  auto store = postgres_store(a, io);
  run_to_end(io, store->save(g.tokens));
  return 0;
}

/// Milliseconds per refresh and nanoseconds per token() of `s`, which holds a grant.
std::pair<double, double> costs(asio::io_context& io, cfo::session& s, long refreshes) {
  auto began = steady::now();
  for (long i = 0; i < refreshes; ++i) run_to_end(io, s.refresh());
  const double refresh_ms = std::chrono::duration<double, std::milli>(steady::now() - began).count() / refreshes;
  const long calls = 1000 * refreshes;
  auto many_tokens = [&s, calls]() -> asio::awaitable<void> {
    for (long i = 0; i < calls; ++i) co_await s.token();
  };
  began = steady::now();
  run_to_end(io, many_tokens());
  const double token_ns = std::chrono::duration<double, std::nano>(steady::now() - began).count() / calls;
  return {refresh_ms, token_ns};
}

int pg_cost(const arguments& a) {
  const auto g = read_grant(a);
  asio::io_context io;
  cfo::session in_memory(io.get_executor(), g.config, std::make_shared<cfo::memory_token_store>());
  run_to_end(io, in_memory.adopt(g.tokens));
  const auto [memory_refresh_ms, memory_token_ns] = costs(io, in_memory, a.requests);
  auto store = postgres_store(a, io);
  run_to_end(io, store->save(*run_to_end(io, in_memory.grant())));
  cfo::session on_postgres(io.get_executor(), g.config, store);
  run_to_end(io, on_postgres.load());
  const auto [postgres_refresh_ms, postgres_token_ns] = costs(io, on_postgres, a.requests);
  const nlohmann::json line = {{"refreshes", a.requests},
                               {"refresh_ms_memory", memory_refresh_ms},
                               {"refresh_ms_postgres", postgres_refresh_ms},
                               {"token_ns_memory", memory_token_ns},
                               {"token_ns_postgres", postgres_token_ns}};
  std::cout << line.dump() << std::endl;
  return 0;
}
#endif

int storm(const arguments& a) {
  const auto g = read_grant(a);
  asio::io_context io;
#ifdef CFO_WITH_POSTGRES
  if (!a.token_db.empty()) {  // one of several hosts: the grant pg-seed saved
    cfo::session s(io.get_executor(), g.config, postgres_store(a, io));
    run_to_end(io, s.load());
    return run_requests(io, s, g.target, a.requests, static_cast<int>(a.requests), 1, false, false);
  }
#endif
  cfo::session s(io.get_executor(), g.config, std::make_shared<cfo::memory_token_store>());
  run_to_end(io, s.adopt(g.tokens));
  return run_requests(io, s, g.target, a.requests, static_cast<int>(a.requests), 1, false, false);
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

int storm_server(const arguments& a) {
  fake_atlassian::options o;
  o.host = "127.0.0.1";
  fake_atlassian::server srv(o);
  const auto cfg = test_util::client_config_for(srv, "http://localhost:3000/callback");
  const auto granted = test_util::grant_from(srv, cfg, "read:page:confluence read:space:confluence offline_access");
  srv.advance_clock(o.access_token_lifetime + std::chrono::seconds(1));  // the access token is now expired
  const auto base = srv.stats();

  srv.write_ca_pem(a.ca_out);
  const nlohmann::json grant = {
      {"token_url", cfg.token_url},
      {"api_url", srv.base_url() + "/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/pages?limit=5"},
      {"client_id", cfg.client_id},
      {"client_secret", cfg.client_secret.reveal()},
      {"access_token", granted.access_token.reveal()},
      {"refresh_token", granted.refresh_token.reveal()}};
  write_file(a.grant_out + ".tmp", grant.dump());
  std::filesystem::rename(a.grant_out + ".tmp", a.grant_out);  // readers never see half a file

  asio::io_context io;
  asio::signal_set stop(io, SIGTERM, SIGINT);
  stop.async_wait([](const std::error_code&, int) {});
  io.run();

  const auto now = srv.stats();
  const nlohmann::json stats = {{"token_requests", now.token_requests - base.token_requests},
                                {"refresh_grants", now.refresh_grants - base.refresh_grants},
                                {"token_errors", now.token_errors - base.token_errors},
                                {"api_requests", now.api_requests - base.api_requests},
                                {"api_unauthorized", now.api_unauthorized - base.api_unauthorized},
                                {"connections", now.connections - base.connections},
                                {"tls_resumptions", now.tls_resumptions - base.tls_resumptions},
                                {"families_revoked", now.families_revoked - base.families_revoked}};
  write_file(a.stats_out, stats.dump() + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const arguments a = parse(argc, argv);
  program_args::raise_fd_limit(8192);
  try {
    if (a.mode == "load") return load(a);
    if (a.mode == "storm") return storm(a);
#ifdef CFO_WITH_POSTGRES
    if (a.mode == "pg-seed") return pg_seed(a);
    if (a.mode == "pg-cost") return pg_cost(a);
#endif
    return storm_server(a);
  } catch (const std::exception& e) {
    std::cerr << "bench-ours " << a.mode << ": " << e.what() << '\n';
    return 1;
  }
}
