// postgres_token_store against a real PostgreSQL 15 server of the test's own
// (scripts/pg-cluster.sh: a fresh cluster in a temporary folder, a Unix
// socket there, stopped at the end). Without PostgreSQL these tests fail:
// they never skip.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "confluence_oauth_postgres.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "process_group.hpp"
#include "test_util.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace test_postgres {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";
constexpr const char* pages_target = "/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/pages?limit=1";

/// A PostgreSQL cluster of this test's own, removed with the object.
class pg_cluster {
 public:
  pg_cluster() : dir_("/tmp/cfo-pg-" + std::to_string(::getpid()) + "-" + std::to_string(++count())) {
    conninfo_ = script("start");
    while (!conninfo_.empty() && conninfo_.back() == '\n') conninfo_.pop_back();
  }
  ~pg_cluster() { test_util::run_process({script_path(), "remove", dir_}); }
  pg_cluster(const pg_cluster&) = delete;
  pg_cluster& operator=(const pg_cluster&) = delete;

  const std::string& conninfo() const { return conninfo_; }
  void stop() { script("stop"); }
  void start() { script("start"); }

  /// One statement through a blocking libpq connection: test-only, no executor involved.
  std::string sql(const std::string& statement) const {
    PGconn* c = PQconnectdb(conninfo_.c_str());
    detail_guard guard{c};
    if (PQstatus(c) != CONNECTION_OK) throw std::runtime_error(std::string("psql: ") + PQerrorMessage(c));
    cfo::detail::pg_result r(PQexec(c, statement.c_str()));
    const auto status = PQresultStatus(r.get());
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
      throw std::runtime_error(std::string("psql: ") + PQresultErrorMessage(r.get()));
    return status == PGRES_TUPLES_OK && PQntuples(r.get()) > 0 ? PQgetvalue(r.get(), 0, 0) : PQcmdTuples(r.get());
  }

 private:
  struct detail_guard {
    PGconn* c;
    ~detail_guard() { PQfinish(c); }
  };
  static int& count() {
    static int n = 0;
    return n;
  }
  static std::string script_path() { return std::string(CFO_SOURCE_DIR) + "/scripts/pg-cluster.sh"; }
  std::string script(const char* action) {
    auto r = test_util::run_process({script_path(), action, dir_}, 120s);
    if (r.exit_code != 0) throw std::runtime_error("pg-cluster.sh " + std::string(action) + " failed: " + r.err);
    return r.out;
  }

  std::string dir_;
  std::string conninfo_;
};

cfo::token_set tokens(const std::string& access, const std::string& refresh) {
  cfo::token_set t;
  t.access_token = cfo::secret(access);
  t.refresh_token = cfo::secret(refresh);
  t.expires_at = std::chrono::time_point_cast<std::chrono::seconds>(std::chrono::system_clock::now() + 1h);
  t.scope = scopes;
  return t;
}

cfo::secret key_of(char c) { return cfo::secret(std::string(32, c)); }

std::shared_ptr<cfo::postgres_token_store::database> database(asio::any_io_executor ex, const std::string& conninfo,
                                                             cfo::secret key) {
  cfo::postgres_token_store::settings s;
  s.lock_timeout = 1s;
  s.connect_timeout = 20s;
  return std::make_shared<cfo::postgres_token_store::database>(ex, conninfo, std::move(key), s);
}

std::shared_ptr<cfo::postgres_token_store> store(asio::any_io_executor ex, const std::string& conninfo,
                                                 const std::string& grant, cfo::secret key = key_of('k')) {
  return std::make_shared<cfo::postgres_token_store>(database(ex, conninfo, std::move(key)), grant);
}

bool same(const std::optional<cfo::token_set>& t, const cfo::token_set& expected) {
  return t && t->access_token == expected.access_token && t->refresh_token == expected.refresh_token;
}

/// "requests=N failures=F" from a worker's stdout; -1 where it is missing.
std::pair<long, long> worker_counts(const std::string& out) {
  long requests = -1, failures = -1;
  if (std::sscanf(out.c_str(), "requests=%ld failures=%ld", &requests, &failures) != 2) return {-1, -1};
  return {requests, failures};
}

/// 8 processes share one grant in PostgreSQL for `seconds` against 3-second
/// access tokens and strict rotation (no reuse window). With `restart`, the
/// database goes down for a moment half-way.
void run_hosts(int seconds, bool restart) {
  constexpr int processes = 8;
  pg_cluster pg;
  fake_atlassian::options o;
  o.access_token_lifetime = 3s;
  o.refresh_reuse_window = 0s;
  fake_atlassian::server srv(o);
  test_util::temp_dir dir;
  const auto cfg = test_util::client_config_for(srv, redirect);
  const auto ca_path = dir / "ca.pem";
  const auto key_path = dir / "key";
  srv.write_ca_pem(ca_path);
  std::ofstream(key_path, std::ios::binary) << key_of('k').reveal();
  const auto grant = test_util::grant_from(srv, cfg, scopes);
  test_util::run([&](auto ex) -> asio::awaitable<void> { co_await store(ex, pg.conninfo(), "shared")->save(grant); });

  const std::vector<std::string> argv = {CFO_PG_SESSION_WORKER_PATH, "--base-url", srv.base_url(), "--ca-file", ca_path,
                                         "--token-db", pg.conninfo(), "--grant-key", "shared", "--key-file", key_path,
                                         "--seconds", std::to_string(seconds), "--skew", "1", "--concurrency", "4"};
  test_util::process_group workers(dir.path());
  const auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < processes; ++i) workers.spawn(argv);
  if (restart) {
    std::this_thread::sleep_for(std::chrono::seconds(seconds / 2));
    pg.stop();
    pg.start();
  }
  const auto results = workers.wait(std::chrono::seconds(seconds + 120));
  const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - started;
  const auto after_run = srv.stats();

  long requests = 0, failures = 0;
  for (const auto& r : results) {
    const auto [n, failed] = worker_counts(r.out);
    INFO("worker stdout: " << r.out);
    INFO("worker stderr: " << r.err);
    CHECK(n > 0);
    if (!restart) {
      CHECK(r.exit_code == 0);
      CHECK(failed == 0);
    } else {
      // Calls that needed the database while it was down fail, and say so.
      CHECK((r.exit_code == 0 || r.err.find("PostgreSQL") != std::string::npos));
      CHECK(r.err.find("invalid_grant") == std::string::npos);
    }
    requests += n;
    failures += failed;
  }
  // doctest prints a const char* as a pointer: the text goes in as a std::string.
  const std::string how = restart ? ", restarted half-way" : "";
  MESSAGE(processes << " processes on PostgreSQL" << how << ": " << requests
                    << " requests, " << failures << " failed, in " << std::round(wall.count() * 10) / 10 << " s; "
                    << after_run.refresh_grants << " refresh grants, " << after_run.token_requests
                    << " token requests (the code exchange included)");
  // A second refresh of one expiry would reuse a spent refresh token: with
  // no reuse window that is invalid_grant and a revoked family.
  CHECK(after_run.token_errors == 0);
  CHECK(after_run.families_revoked == 0);
  CHECK(after_run.token_requests == after_run.refresh_grants + 1);
  // Tokens live 3 s and are refreshed with 1 s left: one refresh per 2 s at
  // most across all hosts (one more for rounding and start-up), at least one
  // per 3 s however slow the machine.
  CHECK(static_cast<double>(after_run.refresh_grants) <= wall.count() / 2 + 2);
  if (!restart) CHECK(static_cast<double>(after_run.refresh_grants) >= seconds / 3.0 - 1);

  // The database holds the last rotated grant, and it still works.
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session s(ex, cfg, store(ex, pg.conninfo(), "shared"));
    CHECK(co_await s.load());
    co_await s.refresh();
    co_await s.get_json(pages_target);
  });
  CHECK(srv.stats().token_errors == 0);
}

}  // namespace

TEST_SUITE("postgres") {

TEST_CASE("load, save, replace and clear keep one row per grant") {
  pg_cluster pg;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto alice = store(ex, pg.conninfo(), "alice");
    auto bob = store(ex, pg.conninfo(), "bob");
    CHECK(!(co_await alice->load()));
    const auto first = tokens("a1", "r1"), second = tokens("a2", "r2"), third = tokens("a3", "r3");
    const std::optional<cfo::token_set> none;
    CHECK(co_await alice->replace(none, first));   // no row yet: inserted
    CHECK(!(co_await alice->replace(none, second)));  // a row now: refused
    CHECK(same(co_await alice->load(), first));
    const std::optional<cfo::token_set> expected_first = first, expected_third = third;
    CHECK(co_await alice->replace(expected_first, second));
    CHECK(!(co_await alice->replace(expected_first, third)));  // stale: the row stays as it is
    CHECK(same(co_await alice->load(), second));
    co_await bob->save(third);
    CHECK(same(co_await alice->load(), second));
    CHECK(same(co_await bob->load(), third));
    co_await alice->clear();
    CHECK(!(co_await alice->load()));
    CHECK(same(co_await bob->load(), third));
    co_await alice->save(first);
    CHECK(same(co_await alice->load(), first));
  });
  CHECK(pg.sql("SELECT count(*) FROM confluence_oauth_grants") == "2");
  CHECK(pg.sql("SELECT version FROM confluence_oauth_grants WHERE grant_key = 'bob'") == "1");
}

TEST_CASE("the table is the one confluence_oauth_postgres.sql creates") {
  pg_cluster pg;
  const auto file = test_util::read_text(std::string(CFO_SOURCE_DIR) + "/confluence_oauth_postgres.sql");
  CHECK(file.find(std::string(cfo::detail::pg_create_table) + ";") != std::string::npos);
  pg.sql(file);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::postgres_token_store::settings s;
    s.create_table = false;
    auto db = std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), s);
    cfo::postgres_token_store alice(db, "alice");
    co_await alice.save(tokens("a1", "r1"));
    CHECK(same(co_await alice.load(), tokens("a1", "r1")));
  });
}

TEST_CASE("grant names are parameters, never SQL") {
  pg_cluster pg;
  const std::string hostile = "x'); DROP TABLE confluence_oauth_grants; --";
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto s = store(ex, pg.conninfo(), hostile);
    co_await s->save(tokens("a1", "r1"));
    CHECK(same(co_await s->load(), tokens("a1", "r1")));
  });
  CHECK(pg.sql("SELECT count(*) FROM confluence_oauth_grants") == "1");
  CHECK(test_util::thrown_code([&] { cfo::postgres_token_store(nullptr, "x"); }) == cfo::errc::invalid_config);
  CHECK(test_util::thrown_code([&] {
          asio::io_context io;
          cfo::postgres_token_store(database(io.get_executor(), pg.conninfo(), key_of('k')), std::string("a\0b", 3));
        }) == cfo::errc::invalid_config);
  CHECK(test_util::thrown_code([&] {
          asio::io_context io;
          cfo::postgres_token_store::database(io.get_executor(), pg.conninfo(), cfo::secret("short"));
        }) == cfo::errc::invalid_config);
}

TEST_CASE("rows are sealed: no token in the clear, another key or a swapped row is refused") {
  pg_cluster pg;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    co_await store(ex, pg.conninfo(), "alice")->save(tokens("alice-access-token", "alice-refresh-token"));
    co_await store(ex, pg.conninfo(), "bob")->save(tokens("bob-access-token", "bob-refresh-token"));
  });
  const auto row = pg.sql("SELECT key_id || sealed FROM confluence_oauth_grants WHERE grant_key = 'alice'");
  CHECK(row.find("alice-access-token") == std::string::npos);
  CHECK(row.find("alice-refresh-token") == std::string::npos);

  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          co_await store(ex, pg.conninfo(), "alice", key_of('x'))->load();
        }) == cfo::errc::store_key_mismatch);

  // Bob's row copied over Alice's: sealed under the same key, but for another grant.
  pg.sql("UPDATE confluence_oauth_grants SET sealed = (SELECT sealed FROM confluence_oauth_grants WHERE grant_key = "
         "'bob') WHERE grant_key = 'alice'");
  const auto swapped = test_util::failure_of([&](auto ex) -> asio::awaitable<void> {
    co_await store(ex, pg.conninfo(), "alice")->load();
  });
  CHECK(swapped.code == cfo::errc::store_corrupt);
  CHECK(swapped.what.find("bob-") == std::string::npos);

  pg.sql("UPDATE confluence_oauth_grants SET sealed = 'AAAA' || sealed WHERE grant_key = 'bob'");
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          co_await store(ex, pg.conninfo(), "bob")->load();
        }) == cfo::errc::store_corrupt);
}

TEST_CASE("replace compares on the row's version: a host that read an older grant cannot overwrite a newer one") {
  pg_cluster pg;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto host_a = store(ex, pg.conninfo(), "alice");
    auto host_b = store(ex, pg.conninfo(), "alice");  // a database object of its own: another host
    co_await host_a->save(tokens("a1", "r1"));
    const auto seen_by_a = co_await host_a->load();
    const auto seen_by_b = co_await host_b->load();
    CHECK(co_await host_b->replace(seen_by_b, tokens("b2", "rb2")));
    CHECK(!(co_await host_a->replace(seen_by_a, tokens("a2", "ra2"))));
    CHECK(same(co_await host_a->load(), tokens("b2", "rb2")));
  });
  CHECK(pg.sql("SELECT version FROM confluence_oauth_grants") == "2");
}

TEST_CASE("lock: one holder across hosts, a wait that ends at its deadline, released with the holder's connection") {
  pg_cluster pg;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto host_a = store(ex, pg.conninfo(), "alice");
    auto host_b = store(ex, pg.conninfo(), "alice");
    auto other_grant = store(ex, pg.conninfo(), "bob");
    {
      auto held = co_await host_a->lock();
      auto unrelated = co_await other_grant->lock();  // another grant's lock is another lock
      const auto started = std::chrono::steady_clock::now();
      std::string failure;
      std::error_code code;
      try {
        co_await host_b->lock();
      } catch (const cfo::oauth_error& e) {
        code = e.code();
        failure = e.what();
      }
      CHECK(code == cfo::errc::store_error);
      CHECK(failure.find("alice") != std::string::npos);
      CHECK(std::chrono::steady_clock::now() - started >= 1s);  // lock_timeout, set to 1 s
    }
    // Released in the background: host_b gets it, well within the test's limit.
    cfo::postgres_token_store::settings patient;
    patient.lock_timeout = 30s;
    cfo::postgres_token_store waiting(
        std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), patient), "alice");
    auto taken = co_await waiting.lock();
  });

  // A process SIGKILLed while it holds the lock: the server ends its session,
  // and the lock with it.
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(ready[0]);
    try {
      test_util::run([&](auto ex) -> asio::awaitable<void> {
        auto held = co_await store(ex, pg.conninfo(), "alice")->lock();
        (void)!::write(ready[1], "L", 1);
        asio::steady_timer forever(ex, 1h);
        co_await forever.async_wait(asio::use_awaitable);
      }, 3600s);
    } catch (...) {
    }
    ::_exit(1);
  }
  ::close(ready[1]);
  char signal_byte = 0;
  REQUIRE(::read(ready[0], &signal_byte, 1) == 1);
  ::close(ready[0]);
  CHECK(test_util::error_of([&](auto ex) -> asio::awaitable<void> {
          co_await store(ex, pg.conninfo(), "alice")->lock();
        }) == cfo::errc::store_error);  // held by the child
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::postgres_token_store::settings patient;
    patient.lock_timeout = 30s;
    cfo::postgres_token_store after(
        std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), patient), "alice");
    auto taken = co_await after.lock();
  });
}

TEST_CASE("a lock released as its store goes away is still released, and touches nothing freed") {
  // The unlock runs in the background, after the store, its database and
  // their pool may all be gone: it must keep what it uses alive (a CI run
  // once aborted on "double free" here; ASan names the read of a freed pool).
  pg_cluster pg;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    {
      auto host = store(ex, pg.conninfo(), "alice");
      auto held = co_await host->lock();
    }  // the lock, then the store and its database: the unlock has not run yet
    cfo::postgres_token_store::settings patient;
    patient.lock_timeout = 30s;
    cfo::postgres_token_store after(
        std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), patient), "alice");
    auto taken = co_await after.lock();
  });
  CHECK(pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0");
}

TEST_CASE("a host that lost the lock mid-refresh is waited for: the others take the tokens it saves, not the spent ones") {
  // Host A refreshes under the lock; the database restarts before A saves, and
  // the restart ends A's lock. A keeps the new tokens in memory (the old
  // refresh token is spent); B, taking the free lock, must not refresh with
  // the old one, but wait for A to save.
  pg_cluster pg;
  const auto old_grant = tokens("a1", "r1"), refreshed = tokens("a2", "r2");
  cfo::postgres_token_store::settings patient;
  patient.lock_timeout = 60s;
  patient.unfinished_refresh_wait = 30s;
  patient.connect_timeout = 5s;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto host_a = std::make_shared<cfo::postgres_token_store>(
        std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), patient), "alice");
    auto host_b = std::make_shared<cfo::postgres_token_store>(
        std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), patient), "alice");
    co_await host_a->save(old_grant);
    {
      auto held = co_await host_a->lock();
      pg.stop();
      std::error_code save_failed;
      try {
        co_await host_a->replace(old_grant, refreshed);
      } catch (const cfo::oauth_error& e) {
        save_failed = e.code();
      }
      CHECK(save_failed == cfo::errc::store_error);
      pg.start();
    }
    // B asks for the lock; A saves 1 s later, under a lock of its own.
    struct b_view {
      bool locked = false, done = false;
      std::optional<cfo::token_set> saw;
    };
    auto b = std::make_shared<b_view>();
    asio::co_spawn(
        ex,
        [host_b, b]() -> asio::awaitable<void> {
          auto held = co_await host_b->lock();
          b->locked = true;
          b->saw = co_await host_b->load();
          b->done = true;
        },
        asio::detached);
    asio::steady_timer later(ex, 1s);
    co_await later.async_wait(asio::use_awaitable);
    CHECK_FALSE(b->locked);  // waiting for A, not refreshing with r1
    {
      auto held = co_await host_a->lock();  // A's own marker does not stop A
      CHECK(co_await host_a->replace(old_grant, refreshed));
    }
    for (int i = 0; i < 200 && !b->done; ++i) {
      later.expires_after(50ms);
      co_await later.async_wait(asio::use_awaitable);
    }
    CHECK(b->done);
    CHECK(same(b->saw, refreshed));
  });

  // A holder that never comes back is waited for no longer than unfinished_refresh_wait.
  patient.unfinished_refresh_wait = 1s;
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto vanished = std::make_shared<cfo::postgres_token_store>(
        std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), patient), "alice");
    {
      auto held = co_await vanished->lock();
      pg.stop();
      try {
        co_await vanished->save(tokens("a3", "r3"));
      } catch (const cfo::oauth_error&) {
      }
      pg.start();
    }
    cfo::postgres_token_store other(
        std::make_shared<cfo::postgres_token_store::database>(ex, pg.conninfo(), key_of('k'), patient), "alice");
    const auto started = std::chrono::steady_clock::now();
    auto held = co_await other.lock();
    CHECK(std::chrono::steady_clock::now() - started >= 500ms);
    CHECK(same(co_await other.load(), refreshed));
  });
  // A clean release names no holder.
  CHECK(pg.sql("SELECT count(*) FROM confluence_oauth_grants WHERE locked_by IS NOT NULL") == "0");
}

TEST_CASE("a server that is unreachable is a store_error within the deadline, and a restarted one is reconnected to") {
  pg_cluster pg;
  const auto nowhere = test_util::failure_of([&](auto ex) -> asio::awaitable<void> {
    co_await store(ex, "host=/nonexistent/cfo port=5432 dbname=postgres user=postgres password=hunter2", "alice")
        ->load();
  });
  CHECK(nowhere.code == cfo::errc::store_error);
  CHECK(nowhere.what.find("hunter2") == std::string::npos);

  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto alice = store(ex, pg.conninfo(), "alice");
    co_await alice->save(tokens("a1", "r1"));
    pg.stop();  // blocks this thread: nothing else runs on this io_context meanwhile
    std::error_code down;
    try {
      co_await alice->save(tokens("a2", "r2"));
    } catch (const cfo::oauth_error& e) {
      down = e.code();
    }
    CHECK(down == cfo::errc::store_error);
    pg.start();
    CHECK(same(co_await alice->load(), tokens("a1", "r1")));  // the failed save changed nothing
    co_await alice->save(tokens("a3", "r3"));
    CHECK(same(co_await alice->load(), tokens("a3", "r3")));
  });
}

TEST_CASE("a refresh whose save fails keeps the new tokens in memory and saves them when the database is back") {
  pg_cluster pg;
  fake_atlassian::options o;
  o.refresh_reuse_window = 0s;
  fake_atlassian::server srv(o);
  const auto cfg = test_util::client_config_for(srv, redirect);
  const auto grant = test_util::grant_from(srv, cfg, scopes);
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto store = std::make_shared<cfo::postgres_token_store>(database(ex, pg.conninfo(), key_of('k')), "alice");
    co_await store->save(grant);
    cfo::session s(ex, cfg, store);
    CHECK(co_await s.load());

    // The fast path: a valid cached token needs no database.
    pg.stop();
    CHECK((co_await s.token()) == grant.access_token);
    pg.start();

    // Writes of tokens fail (the lock, the holder's name in the row and the
    // read still work): the refresh's save fails.
    pg.sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$");
    pg.sql("CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OF sealed ON confluence_oauth_grants FOR EACH ROW EXECUTE "
           "FUNCTION refuse()");
    std::string failure;
    try {
      co_await s.refresh();
    } catch (const cfo::oauth_error& e) {
      CHECK(e.code() == cfo::errc::store_error);
      failure = e.what();
    }
    CHECK(failure.find("kept in memory") != std::string::npos);
    CHECK(failure.find("disk full") != std::string::npos);
    const auto held = co_await s.grant();
    REQUIRE(held);
    CHECK(held->refresh_token != grant.refresh_token);  // refreshed: the old refresh token is spent
    CHECK(same(co_await store->load(), grant));         // the row is as it was

    pg.sql("DROP TRIGGER refuse ON confluence_oauth_grants");
    co_await s.get_json(pages_target);  // saves the held tokens first
    CHECK(same(co_await store->load(), *held));

    // A database that refuses every write refuses the lock too (the holder
    // cannot be named): nothing is refreshed that could not be saved.
    pg.sql("CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON confluence_oauth_grants FOR EACH ROW EXECUTE FUNCTION "
           "refuse()");
    std::error_code refused;
    try {
      co_await s.refresh();
    } catch (const cfo::oauth_error& e) {
      refused = e.code();
    }
    CHECK(refused == cfo::errc::store_error);
    CHECK(same(co_await store->load(), *held));
  });
  CHECK(srv.stats().token_errors == 0);
  CHECK(srv.stats().refresh_grants == 1);
}

TEST_CASE("confluence-cli --token-db: login, token, logout on a grant in PostgreSQL") {
  pg_cluster pg;
  const auto port = test_util::free_port();
  const std::string callback = "http://127.0.0.1:" + std::to_string(port) + "/callback";
  fake_atlassian::options o;
  o.redirect_uris = {callback};
  fake_atlassian::server srv(o);
  test_util::temp_dir dir;
  const auto ca = dir / "ca.pem";
  srv.write_ca_pem(ca);
  const auto key_file = dir / "key";
  std::ofstream(key_file) << std::string(64, '6');
  REQUIRE(::chmod(key_file.c_str(), 0600) == 0);
  auto cli = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {CFO_CLI_PATH, "--client-id", "test-client-id", "--client-secret",
                                     "test-client-secret", "--redirect-uri", callback, "--authorize-url",
                                     srv.base_url() + "/authorize", "--token-url", srv.base_url() + "/oauth/token",
                                     "--api-url", srv.base_url(), "--ca-file", ca, "--token-file", dir / "unused.json",
                                     "--token-db", pg.conninfo(), "--key-file", key_file};
    args.insert(args.end(), extra.begin(), extra.end());
    return test_util::run_process(args, 60s);
  };
  const std::string browser = std::string(CFO_FAKE_BROWSER_PATH) + " --ca-file " + ca;
  auto login = cli({"--browser", browser, "--timeout", "30", "login"});
  INFO("login: " << login.out << login.err);
  REQUIRE(login.exit_code == 0);
  CHECK(login.out.find("PostgreSQL (grant confluence-cli:test-client-id)") != std::string::npos);
  CHECK(!std::filesystem::exists(dir / "unused.json"));
  CHECK(pg.sql("SELECT grant_key FROM confluence_oauth_grants") == "confluence-cli:test-client-id");

  auto token = cli({"token"});
  CHECK(token.exit_code == 0);
  auto refreshed = cli({"token", "--refresh"});  // another process, another connection: the same row
  CHECK(refreshed.exit_code == 0);
  CHECK(refreshed.out != token.out);
  CHECK(cli({"token"}).out == refreshed.out);
  CHECK(cli({"--grant-key", "someone-else", "token"}).exit_code == 4);  // not logged in there

  auto logout = cli({"logout"});
  CHECK(logout.exit_code == 0);
  CHECK(pg.sql("SELECT count(*) FROM confluence_oauth_grants") == "0");
  CHECK(cli({"token"}).exit_code == 4);

  auto no_key = test_util::run_process({CFO_CLI_PATH, "--client-id", "x", "--client-secret", "y", "--token-db",
                                        pg.conninfo(), "token"});
  CHECK(no_key.exit_code == 2);
  auto down = cli({"--token-db", "host=/nonexistent/cfo dbname=postgres password=hunter2", "token"});
  CHECK(down.exit_code == 1);  // store_error: the database, not the grant
  CHECK(down.err.find("hunter2") == std::string::npos);
  CHECK(srv.stats().token_errors == 0);
}

}  // TEST_SUITE

TEST_SUITE("postgres multiprocess") {

TEST_CASE("eight hosts sharing a grant in PostgreSQL for 60 s refresh once per expiry, with no failed call") {
  run_hosts(60, false);
}

TEST_CASE("eight hosts: a database restart mid-run loses and forks no grant") {
  run_hosts(20, true);
}

}  // TEST_SUITE

}  // namespace test_postgres
