// Several processes share one file token store across many access-token
// expiries: the store's lock makes them refresh once per expiry between them,
// and no rotated refresh token is used twice or lost (ATLASSIAN.md, "Refresh
// tokens rotate"). Each process is a session-worker.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "process_group.hpp"
#include "test_util.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

// Its own namespace, so that the unity build can put test files together.
namespace test_multiprocess {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";
constexpr int run_seconds = 7;  // per variant; four variants stay well under 40 s

struct variant {
  int processes;
  bool encrypted;
  std::chrono::seconds reuse_window;
};

/// "requests=N failures=F" from a worker's stdout; -1 where it is missing.
std::pair<long, long> worker_counts(const std::string& out) {
  long requests = -1, failures = -1;
  if (std::sscanf(out.c_str(), "requests=%ld failures=%ld", &requests, &failures) != 2) return {-1, -1};
  return {requests, failures};
}

std::shared_ptr<cfo::file_token_store> store_at(const std::string& path, const std::optional<cfo::secret>& key) {
  return key ? std::make_shared<cfo::file_token_store>(path, *key) : std::make_shared<cfo::file_token_store>(path);
}

void run_variant(const variant& v) {
  fake_atlassian::options o;
  o.access_token_lifetime = 2s;
  o.refresh_reuse_window = v.reuse_window;
  fake_atlassian::server srv(o);
  test_util::temp_dir dir;
  const auto cfg = test_util::client_config_for(srv, redirect);
  const auto ca_path = dir / "ca.pem";
  const auto store_path = dir / "tokens.json";
  const auto key_path = dir / "key";
  srv.write_ca_pem(ca_path);

  std::optional<cfo::secret> key;
  if (v.encrypted) {
    key = cfo::file_token_store::generate_key();
    std::ofstream(key_path, std::ios::binary) << key->reveal();
  }
  {
    auto store = store_at(store_path, key);
    const auto grant = test_util::grant_from(srv, cfg, scopes);
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store->save(grant); });
  }

  std::vector<std::string> argv = {CFO_SESSION_WORKER_PATH, "--base-url", srv.base_url(), "--ca-file", ca_path,
                                   "--store", store_path, "--seconds", std::to_string(run_seconds), "--skew", "1",
                                   "--concurrency", "4"};
  if (v.encrypted) argv.insert(argv.end(), {"--key-file", key_path});

  test_util::process_group workers(dir.path());
  const auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < v.processes; ++i) workers.spawn(argv);
  const auto results = workers.wait(120s);
  const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - started;
  const auto after_run = srv.stats();

  long requests = 0;
  for (const auto& r : results) {
    const auto [n, failures] = worker_counts(r.out);
    INFO("worker stdout: " << r.out);
    INFO("worker stderr: " << r.err);
    CHECK(r.exit_code == 0);
    CHECK(n > 0);
    CHECK(failures == 0);
    requests += n;
  }

  // doctest prints a const char* as a pointer: the store kind goes in as a std::string.
  const std::string kind = v.encrypted ? "encrypted" : "plain";
  MESSAGE(v.processes << " processes, " << kind << " store, reuse window " << v.reuse_window.count() << " s: "
                      << requests << " requests in " << std::round(wall.count() * 10) / 10 << " s, "
                      << after_run.refresh_grants << " expiries (refresh grants), " << after_run.token_requests
                      << " token requests (the code exchange included), " << after_run.api_unauthorized
                      << " API 401s");

  // A refresh the lock failed to prevent would reuse a rotated refresh token:
  // with a 0 s reuse window that is invalid_grant and a revoked family.
  CHECK(after_run.token_errors == 0);
  CHECK(after_run.families_revoked == 0);
  CHECK(after_run.token_requests == after_run.refresh_grants + 1);

  // A token lives 2 s and is refreshed once at most the skew, 1 s, is left,
  // by whichever process gets there first; the others find its token in the
  // store. So refreshes come at least about 1 s apart: over the wall time W
  // (process start-up included, which sanitizers lengthen) at most W + 1, and
  // one more for rounding, where P processes each refreshing on their own
  // would make about P * W. Every worker sent requests, all successful, for
  // run_seconds, and a token is good for 2 s only, so at least
  // run_seconds / 2 - 1 refreshes happened however slow the machine was.
  CHECK(static_cast<double>(after_run.refresh_grants) <= wall.count() + 2);
  CHECK(static_cast<double>(after_run.refresh_grants) >= run_seconds / 2.0 - 1);

  // The store holds the last rotated refresh token: with a 0 s reuse window a
  // spent one would be invalid_grant.
  auto store = store_at(store_path, key);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, cfg, store);
    const bool loaded = co_await s.load();
    CHECK(loaded);
    co_await s.refresh();
    co_await s.get_json("/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/pages?limit=1");
  });
  const auto after_check = srv.stats();
  CHECK(after_check.refresh_grants == after_run.refresh_grants + 1);
  CHECK(after_check.token_errors == 0);
  CHECK(after_check.families_revoked == 0);
}

}  // namespace

TEST_SUITE("multiprocess") {

TEST_CASE("two processes on a plain file store refresh once per expiry between them") {
  run_variant({2, false, 600s});
}

TEST_CASE("two processes on an encrypted file store with no reuse window never reuse a refresh token") {
  run_variant({2, true, 0s});
}

TEST_CASE("eight processes on an encrypted file store refresh once per expiry between them") {
  run_variant({8, true, 600s});
}

TEST_CASE("eight processes on a plain file store with no reuse window never reuse a refresh token") {
  run_variant({8, false, 0s});
}

}  // TEST_SUITE

}  // namespace test_multiprocess
