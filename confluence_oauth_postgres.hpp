// confluence_oauth_postgres.hpp — a token store on PostgreSQL, for grants that
// several hosts share (a web app behind a load balancer, a fleet of workers).
//
// An optional companion of confluence_oauth.hpp: include it after the main
// header and link libpq (CMake target confluence_oauth::postgres, pkg-config
// confluence_oauth_postgres). Users who do not include it do not need libpq.
//
//   One row per grant, keyed by a name the caller chooses (for a web app, the
//   Atlassian account id), in the table of confluence_oauth_postgres.sql,
//   created on first use unless settings::create_table is false.
//   lock()    a PostgreSQL advisory lock held by a connection of its own for
//             the refresh: a host that dies mid-refresh releases it with its
//             connection. A wait has a deadline (settings::lock_timeout).
//             The row also names the holder until it has written or let go
//             cleanly: a holder that lost its connection mid-refresh (a
//             database restart) may hold the only copy of a rotated refresh
//             token, and the others wait for it to save that copy
//             (settings::unfinished_refresh_wait) rather than spend the old one.
//   replace() an UPDATE conditional on the row's version column: atomic
//             without the lock.
//   Tokens    sealed with AES-256-GCM under the caller's key, the grant's name
//             bound in as associated data, so rows cannot be swapped.
//
// Everything runs on the caller's executor through libpq's non-blocking API
// (PQconnectStart/PQconnectPoll, PQsendQueryParams, PQflush, PQconsumeInput,
// PQisBusy, PQgetResult) on an Asio descriptor for PQsocket: no thread of its
// own, no blocking call on the executor, except the host name lookup libpq
// makes when a connection starts (give `hostaddr` or a Unix socket to avoid it).
//
// Both compilation modes: with CONFLUENCE_OAUTH_SEPARATE_COMPILATION, one file
// also defines CONFLUENCE_OAUTH_POSTGRES_IMPLEMENTATION (src/confluence_oauth_postgres.cpp),
// so that the main compiled library never needs libpq.
#pragma once

#include "confluence_oauth.hpp"

#include <fcntl.h>
#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#if !defined(CONFLUENCE_OAUTH_SEPARATE_COMPILATION)
#define CONFLUENCE_OAUTH_POSTGRES_DEFINE 1
#define CONFLUENCE_OAUTH_POSTGRES_INLINE inline
#elif defined(CONFLUENCE_OAUTH_POSTGRES_IMPLEMENTATION)
#define CONFLUENCE_OAUTH_POSTGRES_DEFINE 1
#define CONFLUENCE_OAUTH_POSTGRES_INLINE
#else
#define CONFLUENCE_OAUTH_POSTGRES_DEFINE 0
#define CONFLUENCE_OAUTH_POSTGRES_INLINE
#endif

namespace confluence_oauth {

// ============================================================================
// Connections
//   One libpq connection driven by Asio: connect and query with a deadline,
//   each wait on the socket's readiness. A connection that failed mid-way is
//   broken and never reused. The pool keeps a few idle ones; an operation
//   takes one, or opens one, and gives it back.
// ============================================================================

namespace detail {

struct pg_result_deleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using pg_result = std::unique_ptr<PGresult, pg_result_deleter>;

class pg_connection : public std::enable_shared_from_this<pg_connection> {
 public:
  using deadline = std::chrono::steady_clock::time_point;

  explicit pg_connection(asio::any_io_executor ex);
  pg_connection(const pg_connection&) = delete;
  pg_connection& operator=(const pg_connection&) = delete;
  ~pg_connection();

  /// Opens the connection; throws store_error naming libpq's reason. Like
  /// query, completes on the caller's executor (the work runs on the
  /// connection's strand).
  asio::awaitable<void> connect(std::string conninfo, deadline until);

  /// Runs one parameterized statement (text parameters, text results) and
  /// returns its result, whatever its status. Throws store_error when the
  /// connection fails or the deadline passes; the connection is broken then.
  asio::awaitable<pg_result> query(const char* sql, std::vector<std::string> params, deadline until);

  /// Whether the connection failed: it is not reused.
  bool broken() const noexcept;

  /// Whether the server closed the connection (rather than a statement timing out).
  bool lost() const noexcept;

  /// For an idle connection: reads what the server sent meanwhile, without
  /// waiting; false when it closed the connection (a restart, an idle timeout).
  bool still_open() noexcept;

 private:
  asio::awaitable<void> wait(asio::posix::descriptor_base::wait_type type, deadline until);
  asio::awaitable<void> connect_here(std::string conninfo, deadline until);
  asio::awaitable<pg_result> query_here(const char* sql, std::vector<std::string> params, deadline until);
  void watch_socket();
  [[noreturn]] void fail_broken(const std::string& what);
  static void ignore_notice(void*, const char*) noexcept {}
  void on_deadline();

  asio::strand<asio::any_io_executor> strand_;
  // A duplicate of libpq's socket, ours to close: libpq closes its own when it
  // moves to another address or meets the end of the stream, and Asio's
  // registration must not outlive it onto a socket that reuses the number.
  asio::posix::stream_descriptor socket_;
  asio::steady_timer timer_;
  PGconn* conn_ = nullptr;
  std::uint64_t generation_ = 0;
  bool broken_ = false;
};

/// The status of a result, or store_error naming the server's SQLSTATE and message.
void check_pg_result(const pg_result& r, const char* what);

/// The connections one database's stores share, and whether the table exists.
class pg_pool : public std::enable_shared_from_this<pg_pool> {
 public:
  pg_pool(asio::any_io_executor ex, std::string conninfo, std::size_t idle_limit,
          std::chrono::milliseconds connect_timeout, std::chrono::milliseconds query_timeout, bool create_table);

  /// One statement on a pooled connection; once more on a fresh connection
  /// when a reused one turns out dead (the server restarted). Throws store_error.
  asio::awaitable<pg_result> exec(const char* sql, std::vector<std::string> params, const char* what);

  struct held_result {
    std::shared_ptr<pg_connection> connection;
    pg_result result;
  };
  /// As exec, but the connection stays the caller's (a lock holds it).
  asio::awaitable<held_result> exec_holding(const char* sql, std::vector<std::string> params, const char* what);

  /// Back to the idle connections, unless broken or there are enough.
  void give_back(std::shared_ptr<pg_connection> c);

  /// Releases the advisory lock `id` on `c`, then gives `c` back: in the
  /// background, since a store_lock ends synchronously, and so possibly after
  /// the last store of this pool is gone (the background work keeps the pool
  /// alive). Should the unlock fail, `c` closes, which releases the lock as
  /// surely. With a `marker`, first clears the grant's holder marker if it is
  /// still that one; should `c` fail, on fresh connections until `retry_until`.
  void unlock_later(std::shared_ptr<pg_connection> c, std::string id, std::string grant_key, std::string marker,
                    pg_connection::deadline retry_until);

  asio::any_io_executor executor() const { return ex_; }
  std::chrono::milliseconds query_timeout() const noexcept { return query_timeout_; }

 private:
  asio::awaitable<std::shared_ptr<pg_connection>> acquire(bool& reused);
  asio::awaitable<void> ensure_table(pg_connection& c);
  static asio::awaitable<void> unlock(std::shared_ptr<pg_pool> pool, std::shared_ptr<pg_connection> c, std::string id,
                                      std::string grant_key, std::string marker, pg_connection::deadline retry_until);
  pg_connection::deadline query_deadline() const;

  asio::any_io_executor ex_;
  std::string conninfo_;
  std::size_t idle_limit_;
  std::chrono::milliseconds connect_timeout_, query_timeout_;
  bool create_table_;
  std::mutex mutex_;
  std::vector<std::shared_ptr<pg_connection>> idle_;
  bool table_ready_ = false;
};

}  // namespace detail

// ============================================================================
// The store
// ============================================================================

/// A token_store on PostgreSQL for grants that several hosts share: one row
/// per grant, refreshed once across all of them. Thread-safe.
///
/// Every failure throws oauth_error and leaves the stored grant as it was:
/// store_error (the server unreachable, a statement failed or timed out, a
/// lock wait passed its deadline: retry later), store_corrupt (a row that does
/// not open under its name: sign in again), store_key_mismatch (a row sealed
/// with another key), invalid_config (a bad key or grant name).
class postgres_token_store final : public token_store {
 public:
  /// How a database's stores connect, wait and keep connections.
  struct settings {
    /// Idle connections kept for reuse. An operation in flight uses one
    /// connection, a held lock one more.
    std::size_t idle_connections = 4;
    /// Longest wait for a new connection (libpq's own connect_timeout does
    /// not apply to its non-blocking connect).
    std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
    /// Longest wait for one statement's answer.
    std::chrono::milliseconds query_timeout{std::chrono::seconds(30)};
    /// Longest wait in lock() for another host's refresh: longer than a
    /// refresh with all its retries.
    std::chrono::milliseconds lock_timeout{std::chrono::minutes(5)};
    /// Longest wait in lock() for a host that lost the lock mid-refresh (its
    /// connection closed: a database restart, a crash) to save the tokens it
    /// may have refreshed; then the refresh goes ahead without them. Within
    /// Atlassian's 10-minute reuse interval, so that an old refresh token
    /// spent then still works.
    std::chrono::milliseconds unfinished_refresh_wait{std::chrono::seconds(30)};
    /// Runs the CREATE TABLE IF NOT EXISTS of confluence_oauth_postgres.sql
    /// on first use; false where the table is made by hand.
    bool create_table = true;
  };

  /// One PostgreSQL database, its connections and the key its rows are sealed
  /// with: shared by the stores of every grant kept there.
  class database {
   public:
    /// Connects (lazily) with `conninfo`, a libpq connection string or URI;
    /// seals rows with `key`, exactly 32 bytes (file_token_store::generate_key()
    /// makes one). Throws invalid_config for another key length.
    database(asio::any_io_executor ex, std::string conninfo, secret key, settings s);
    /// As above, with the default settings.
    database(asio::any_io_executor ex, std::string conninfo, secret key);

   private:
    friend class postgres_token_store;
    std::shared_ptr<detail::pg_pool> pool_;
    secret key_;
    std::string key_id_;
    std::chrono::milliseconds lock_timeout_;
    std::chrono::milliseconds unfinished_refresh_wait_;
  };

  /// The grant named `grant_key` (any non-empty text without NUL) in `db`.
  postgres_token_store(std::shared_ptr<database> db, std::string grant_key);

  /// The row's name.
  const std::string& grant_key() const noexcept;

  /// The stored grant, or nullopt when the row does not exist.
  asio::awaitable<std::optional<token_set>> load() override;
  /// Inserts or overwrites the row (INSERT ... ON CONFLICT DO UPDATE).
  asio::awaitable<void> save(const token_set& tokens) override;
  /// Deletes the row.
  asio::awaitable<void> clear() override;
  /// Takes the grant's advisory lock on a connection of its own, polling
  /// pg_try_advisory_lock until settings::lock_timeout (then store_error).
  /// While the row names another holder that lost the lock mid-refresh, lets
  /// the lock go and waits (settings::unfinished_refresh_wait), so that the
  /// holder can save what it refreshed.
  asio::awaitable<store_lock> lock() override;
  /// Reads the row and its version, then updates it only if the version is
  /// still the same: atomic without lock().
  asio::awaitable<bool> replace(const std::optional<token_set>& expected, const token_set& next) override;

 private:
  struct row {
    std::string version;
    token_set tokens;
  };
  asio::awaitable<std::optional<row>> read();
  /// exec on the pool; a failure is noted for the lock's release.
  asio::awaitable<detail::pg_result> exec(const char* sql, std::vector<std::string> params, const char* what);
  std::string seal(const token_set& tokens) const;
  token_set open(std::string_view key_id, std::string_view sealed) const;
  std::string associated_data() const;
  std::string lock_id() const;

  std::shared_ptr<database> db_;
  std::string grant_key_;
  // Names this store as the row's holder: "<id>/<n>" for its n-th lock.
  std::string holder_id_;
  std::atomic<std::uint64_t> locks_taken_{0};
  // Whether a statement failed while the current lock was held: its holder
  // may keep tokens the row does not have, so the marker stays.
  std::shared_ptr<std::atomic<bool>> failed_under_lock_ = std::make_shared<std::atomic<bool>>(false);
};

#if CONFLUENCE_OAUTH_POSTGRES_DEFINE
namespace detail {

// The statements, all parameterized. The table is confluence_oauth_postgres.sql's.
inline constexpr const char* pg_create_table =
    "CREATE TABLE IF NOT EXISTS confluence_oauth_grants (\n"
    "  grant_key  text        PRIMARY KEY,\n"
    "  version    bigint      NOT NULL,\n"
    "  key_id     text        NOT NULL,\n"
    "  sealed     text        NOT NULL,\n"
    "  locked_by  text,\n"
    "  locked_at  timestamptz,\n"
    "  updated_at timestamptz NOT NULL DEFAULT now()\n"
    ")";
inline constexpr const char* pg_select =
    "SELECT version, key_id, sealed FROM confluence_oauth_grants WHERE grant_key = $1";
inline constexpr const char* pg_upsert =
    "INSERT INTO confluence_oauth_grants (grant_key, version, key_id, sealed) VALUES ($1, 1, $2, $3) "
    "ON CONFLICT (grant_key) DO UPDATE SET version = confluence_oauth_grants.version + 1, "
    "key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed, locked_by = NULL, locked_at = NULL, updated_at = now()";
inline constexpr const char* pg_insert_new =
    "INSERT INTO confluence_oauth_grants (grant_key, version, key_id, sealed) VALUES ($1, 1, $2, $3) "
    "ON CONFLICT (grant_key) DO NOTHING";
inline constexpr const char* pg_update_if =
    "UPDATE confluence_oauth_grants SET version = version + 1, key_id = $3, sealed = $4, locked_by = NULL, "
    "locked_at = NULL, updated_at = now() WHERE grant_key = $1 AND version = $2";
inline constexpr const char* pg_delete = "DELETE FROM confluence_oauth_grants WHERE grant_key = $1";
inline constexpr const char* pg_try_lock = "SELECT pg_try_advisory_lock($1::bigint)";
inline constexpr const char* pg_unlock = "SELECT pg_advisory_unlock($1::bigint)";
// Under the advisory lock: names the holder $2 in the row, unless another
// holder is named there (one of this store's own, prefixed $3, never stops
// it) and $4 does not say to take over. True when marked, or when there is no row.
inline constexpr const char* pg_mark_holder =
    "WITH marked AS (UPDATE confluence_oauth_grants SET locked_by = $2, locked_at = now() WHERE grant_key = $1 AND "
    "(locked_by IS NULL OR starts_with(locked_by, $3) OR $4::boolean) "
    "RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM marked) OR NOT EXISTS (SELECT 1 FROM confluence_oauth_grants WHERE grant_key = $1)";
inline constexpr const char* pg_clear_holder =
    "UPDATE confluence_oauth_grants SET locked_by = NULL, locked_at = NULL WHERE grant_key = $1 AND locked_by = $2";

CONFLUENCE_OAUTH_POSTGRES_INLINE pg_connection::pg_connection(asio::any_io_executor ex)
    : strand_(asio::make_strand(ex)), socket_(strand_), timer_(strand_) {}

CONFLUENCE_OAUTH_POSTGRES_INLINE pg_connection::~pg_connection() {
  std::error_code ignored;
  socket_.close(ignored);
  if (conn_) PQfinish(conn_);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE void pg_connection::watch_socket() {
  std::error_code ignored;
  socket_.close(ignored);
  const int fd = ::fcntl(PQsocket(conn_), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) fail_broken("cannot watch the connection's socket");
  socket_.assign(fd);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE bool pg_connection::broken() const noexcept {
  return broken_ || !conn_ || PQstatus(conn_) != CONNECTION_OK;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE bool pg_connection::lost() const noexcept {
  return !conn_ || PQstatus(conn_) == CONNECTION_BAD;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE bool pg_connection::still_open() noexcept {
  return !broken() && PQconsumeInput(conn_) == 1 && PQstatus(conn_) == CONNECTION_OK;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE void pg_connection::fail_broken(const std::string& what) {
  broken_ = true;
  std::string reason = conn_ ? PQerrorMessage(conn_) : "out of memory";
  for (char& c : reason)
    if (c == '\n' || c == '\t') c = ' ';
  while (!reason.empty() && reason.back() == ' ') reason.pop_back();
  fail(errc::store_error, "PostgreSQL: " + what + (reason.empty() ? "" : ": " + reason));
}

CONFLUENCE_OAUTH_POSTGRES_INLINE void pg_connection::on_deadline() {
  std::error_code ignored;
  socket_.cancel(ignored);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<void> pg_connection::wait(asio::posix::descriptor_base::wait_type type,
                                                                        deadline until) {
  const auto generation = ++generation_;
  timer_.expires_at(until);
  timer_.async_wait([weak = weak_from_this(), generation](std::error_code ec) {
    if (ec) return;
    // A handler queued as the wait ended must not cancel the next one.
    if (auto self = weak.lock(); self && self->generation_ == generation) self->on_deadline();
  });
  // Resumed on the strand, where on_deadline runs.
  auto [ec] = co_await socket_.async_wait(type, asio::bind_executor(strand_, use_tuple));
  ++generation_;
  timer_.cancel();
  if (!ec) co_return;
  broken_ = true;  // mid-way through a statement or a connect: never reused
  if (std::chrono::steady_clock::now() >= until) fail(errc::store_error, "PostgreSQL did not answer in time");
  throw oauth_error(ec, "waiting for PostgreSQL");
}

// connect and query run on the connection's strand, where its deadline
// handler runs, and come back to the caller's executor (a session's strand),
// failed or not.
CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<void> pg_connection::connect(std::string conninfo, deadline until) {
  const auto home = co_await asio::this_coro::executor;
  std::exception_ptr failed;
  try {
    co_await connect_here(std::move(conninfo), until);
  } catch (...) {
    failed = std::current_exception();
  }
  co_await asio::dispatch(asio::bind_executor(home, asio::use_awaitable));
  if (failed) std::rethrow_exception(failed);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<pg_result> pg_connection::query(const char* sql,
                                                                              std::vector<std::string> params,
                                                                              deadline until) {
  const auto home = co_await asio::this_coro::executor;
  std::exception_ptr failed;
  pg_result r;
  try {
    r = co_await query_here(sql, std::move(params), until);
  } catch (...) {
    failed = std::current_exception();
  }
  co_await asio::dispatch(asio::bind_executor(home, asio::use_awaitable));
  if (failed) std::rethrow_exception(failed);
  co_return r;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<void> pg_connection::connect_here(std::string conninfo,
                                                                                deadline until) {
  co_await asio::dispatch(asio::bind_executor(strand_, asio::use_awaitable));
  wipe_on_exit wipe{conninfo};  // it may hold a password
  // libpq's message about a malformed string quotes pieces of it, the password among them.
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &parse_error);
  PQfreemem(parse_error);
  if (!parsed) fail(errc::store_error, "PostgreSQL: the connection string is malformed");
  PQconninfoFree(parsed);
  conn_ = PQconnectStart(conninfo.c_str());
  if (!conn_ || PQstatus(conn_) == CONNECTION_BAD) fail_broken("cannot connect");
  for (auto poll = PGRES_POLLING_WRITING; poll != PGRES_POLLING_OK; poll = PQconnectPoll(conn_)) {
    if (poll == PGRES_POLLING_FAILED) fail_broken("cannot connect");
    // libpq may change sockets between polls (another address, SSL retried):
    // watch the one it uses now.
    watch_socket();
    co_await wait(poll == PGRES_POLLING_READING ? asio::posix::descriptor_base::wait_read
                                                : asio::posix::descriptor_base::wait_write,
                  until);
  }
  watch_socket();
  PQsetNoticeProcessor(conn_, ignore_notice, nullptr);  // libpq would print them on stderr
  if (PQsetnonblocking(conn_, 1) != 0) fail_broken("cannot make the connection non-blocking");
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<pg_result> pg_connection::query_here(const char* sql,
                                                                                   std::vector<std::string> params,
                                                                                   deadline until) {
  co_await asio::dispatch(asio::bind_executor(strand_, asio::use_awaitable));
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p.c_str());
  const int sent = PQsendQueryParams(conn_, sql, static_cast<int>(values.size()), nullptr, values.data(), nullptr,
                                     nullptr, 0);
  for (auto& p : params) OPENSSL_cleanse(p.data(), p.size());
  if (sent != 1) fail_broken("cannot send a statement");
  for (int left = PQflush(conn_); left != 0; left = PQflush(conn_)) {
    if (left < 0) fail_broken("cannot send a statement");
    // What the server sent meanwhile is taken in first, as libpq asks, so
    // that a server waiting for its answer to be read cannot stall the send.
    if (PQconsumeInput(conn_) != 1) fail_broken("the connection failed");
    co_await wait(asio::posix::descriptor_base::wait_write, until);
  }
  pg_result first;
  for (;;) {
    while (PQisBusy(conn_)) {
      co_await wait(asio::posix::descriptor_base::wait_read, until);
      if (PQconsumeInput(conn_) != 1) fail_broken("the connection failed");
    }
    pg_result r(PQgetResult(conn_));
    if (!r) break;
    if (!first) first = std::move(r);
  }
  if (!first) fail_broken("no answer");
  co_return first;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE void check_pg_result(const pg_result& r, const char* what) {
  const auto status = PQresultStatus(r.get());
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return;
  const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
  const char* message = PQresultErrorField(r.get(), PG_DIAG_MESSAGE_PRIMARY);
  fail(errc::store_error, std::string("PostgreSQL: ") + what + " failed (SQLSTATE " + (state ? state : "none") +
                              "): " + (message ? message : PQresStatus(status)));
}

CONFLUENCE_OAUTH_POSTGRES_INLINE pg_pool::pg_pool(asio::any_io_executor ex, std::string conninfo,
                                                  std::size_t idle_limit, std::chrono::milliseconds connect_timeout,
                                                  std::chrono::milliseconds query_timeout, bool create_table)
    : ex_(std::move(ex)),
      conninfo_(std::move(conninfo)),
      idle_limit_(idle_limit),
      connect_timeout_(connect_timeout),
      query_timeout_(query_timeout),
      create_table_(create_table) {}

CONFLUENCE_OAUTH_POSTGRES_INLINE pg_connection::deadline pg_pool::query_deadline() const {
  return std::chrono::steady_clock::now() + query_timeout_;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<std::shared_ptr<pg_connection>> pg_pool::acquire(bool& reused) {
  for (std::shared_ptr<pg_connection> c;;) {
    {
      std::lock_guard lock(mutex_);
      if (idle_.empty()) break;
      c = std::move(idle_.back());
      idle_.pop_back();
    }
    reused = true;
    if (c->still_open()) co_return c;
  }
  reused = false;
  auto c = std::make_shared<pg_connection>(ex_);
  co_await c->connect(conninfo_, std::chrono::steady_clock::now() + connect_timeout_);
  co_await ensure_table(*c);
  co_return c;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<void> pg_pool::ensure_table(pg_connection& c) {
  {
    std::lock_guard lock(mutex_);
    if (table_ready_ || !create_table_) co_return;
  }
  auto r = co_await c.query(pg_create_table, {}, query_deadline());
  // Hosts starting together race on the catalog: someone else's table is as good.
  const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
  const std::string_view raced = state ? state : "";
  if (raced != "23505" && raced != "42P07") check_pg_result(r, "creating the table");
  std::lock_guard lock(mutex_);
  table_ready_ = true;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<pg_pool::held_result> pg_pool::exec_holding(
    const char* sql, std::vector<std::string> params, const char* what) {
  for (int attempt = 0;; ++attempt) {
    bool reused = false;
    auto c = co_await acquire(reused);
    std::exception_ptr failed;
    pg_result r;
    try {
      r = co_await c->query(sql, params, query_deadline());
    } catch (const oauth_error&) {
      failed = std::current_exception();
    }
    if (!failed) {
      if (PQresultStatus(r.get()) != PGRES_COMMAND_OK && PQresultStatus(r.get()) != PGRES_TUPLES_OK)
        give_back(c);  // the statement failed, not the connection
      check_pg_result(r, what);
      co_return held_result{std::move(c), std::move(r)};
    }
    // A reused connection the server closed (a restart): so are the other
    // idle ones. Once more on a fresh connection; a second failure is real.
    if (!reused || attempt > 0 || !c->lost()) std::rethrow_exception(failed);
    std::lock_guard lock(mutex_);
    idle_.clear();
  }
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<pg_result> pg_pool::exec(const char* sql,
                                                                      std::vector<std::string> params,
                                                                      const char* what) {
  auto held = co_await exec_holding(sql, std::move(params), what);
  give_back(std::move(held.connection));
  co_return std::move(held.result);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE void pg_pool::give_back(std::shared_ptr<pg_connection> c) {
  if (c->broken()) return;
  std::lock_guard lock(mutex_);
  if (idle_.size() < idle_limit_) idle_.push_back(std::move(c));
}

CONFLUENCE_OAUTH_POSTGRES_INLINE void pg_pool::unlock_later(std::shared_ptr<pg_connection> c, std::string id,
                                                          std::string grant_key, std::string marker,
                                                          pg_connection::deadline retry_until) {
  asio::co_spawn(ex_,
                 unlock(shared_from_this(), std::move(c), std::move(id), std::move(grant_key), std::move(marker),
                        retry_until),
                 asio::detached);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<void> pg_pool::unlock(std::shared_ptr<pg_pool> pool,
                                                                    std::shared_ptr<pg_connection> c, std::string id,
                                                                    std::string grant_key, std::string marker,
                                                                    pg_connection::deadline retry_until) {
  bool cleared = marker.empty();
  try {
    if (!cleared) {
      std::vector<std::string> holder;
      holder.push_back(grant_key);
      holder.push_back(marker);
      auto r = co_await c->query(pg_clear_holder, std::move(holder), pool->query_deadline());
      check_pg_result(r, "clearing a grant's holder");
      cleared = true;
    }
    std::vector<std::string> params;
    params.push_back(std::move(id));
    auto r = co_await c->query(pg_unlock, std::move(params), pool->query_deadline());
    if (PQresultStatus(r.get()) == PGRES_TUPLES_OK) pool->give_back(std::move(c));
  } catch (const std::exception&) {
    // `c` closes as it goes: the server releases the lock with the connection.
  }
  c.reset();
  // The marker outlives a lost connection, and others wait on it: clear it
  // once the server is back.
  asio::steady_timer wait(pool->executor());
  for (std::chrono::milliseconds delay{100}; !cleared && std::chrono::steady_clock::now() < retry_until;
       delay = std::min(delay * 2, std::chrono::milliseconds(2000))) {
    wait.expires_after(delay);
    co_await wait.async_wait(use_tuple);
    std::vector<std::string> holder;
    holder.push_back(grant_key);
    holder.push_back(marker);
    try {
      co_await pool->exec(pg_clear_holder, std::move(holder), "clearing a grant's holder");
      cleared = true;
    } catch (const std::exception&) {
    }
  }
}

}  // namespace detail

CONFLUENCE_OAUTH_POSTGRES_INLINE postgres_token_store::database::database(asio::any_io_executor ex,
                                                                         std::string conninfo, secret key,
                                                                         settings s)
    : pool_(std::make_shared<detail::pg_pool>(std::move(ex), std::move(conninfo), s.idle_connections,
                                              s.connect_timeout, s.query_timeout, s.create_table)),
      key_(std::move(key)),
      lock_timeout_(s.lock_timeout),
      unfinished_refresh_wait_(s.unfinished_refresh_wait) {
  if (key_.reveal().size() != 32)
    detail::fail(errc::invalid_config, "postgres_token_store: the encryption key must be 32 bytes, not " +
                                           std::to_string(key_.reveal().size()));
  auto digest = detail::sha256("confluence_oauth postgres_token_store key id:" + key_.reveal());
  key_id_ = detail::base64url_encode(digest.data(), 9);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE postgres_token_store::database::database(asio::any_io_executor ex,
                                                                         std::string conninfo, secret key)
    : database(std::move(ex), std::move(conninfo), std::move(key), settings{}) {}

CONFLUENCE_OAUTH_POSTGRES_INLINE postgres_token_store::postgres_token_store(std::shared_ptr<database> db,
                                                                           std::string grant_key)
    : db_(std::move(db)), grant_key_(std::move(grant_key)), holder_id_(detail::random_token(12)) {
  if (!db_) detail::fail(errc::invalid_config, "postgres_token_store: no database");
  if (grant_key_.empty() || grant_key_.find('\0') != std::string::npos)
    detail::fail(errc::invalid_config, "postgres_token_store: the grant key must be non-empty text without NUL");
}

CONFLUENCE_OAUTH_POSTGRES_INLINE const std::string& postgres_token_store::grant_key() const noexcept {
  return grant_key_;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE std::string postgres_token_store::associated_data() const {
  return "confluence_oauth/postgres/1\ntoken_set\n" + grant_key_;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE std::string postgres_token_store::lock_id() const {
  // The first 8 bytes of a digest of the row's name, as a signed bigint:
  // another grant shares it with odds of 2^-64.
  const auto digest = detail::sha256("confluence_oauth grant lock:" + grant_key_);
  std::uint64_t bits = 0;
  for (int i = 0; i < 8; ++i) bits = bits << 8 | digest[static_cast<std::size_t>(i)];
  return std::to_string(static_cast<std::int64_t>(bits));
}

CONFLUENCE_OAUTH_POSTGRES_INLINE std::string postgres_token_store::seal(const token_set& tokens) const {
  std::string text = tokens.to_json().dump();
  detail::wipe_on_exit wipe{text};
  return detail::base64url_encode(detail::aes256gcm_seal(db_->key_.reveal(), text, associated_data()));
}

CONFLUENCE_OAUTH_POSTGRES_INLINE token_set postgres_token_store::open(std::string_view key_id,
                                                                     std::string_view sealed) const {
  const std::string where = "the grant \"" + grant_key_ + "\" in PostgreSQL";
  if (!detail::constant_time_equal(key_id, db_->key_id_))
    detail::fail(errc::store_key_mismatch, where + " was sealed with another key");
  auto data = detail::base64_decode(sealed);
  auto plain = data ? detail::aes256gcm_open(db_->key_.reveal(), *data, associated_data()) : std::nullopt;
  // The right key but a tag that does not match: an altered row, or one
  // sealed for another grant and copied here.
  if (!plain)
    detail::fail(errc::store_corrupt, where + " has been altered, or was sealed for another grant");
  detail::wipe_on_exit wipe{*plain};
  auto j = nlohmann::json::parse(*plain, nullptr, false);
  if (j.is_discarded()) detail::fail(errc::store_corrupt, where + " holds no JSON token set");
  return token_set::from_json(j);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<detail::pg_result> postgres_token_store::exec(
    const char* sql, std::vector<std::string> params, const char* what) {
  try {
    co_return co_await db_->pool_->exec(sql, std::move(params), what);
  } catch (const oauth_error&) {
    *failed_under_lock_ = true;
    throw;
  }
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<std::optional<postgres_token_store::row>> postgres_token_store::read() {
  std::vector<std::string> params;
  params.push_back(grant_key_);
  auto r = co_await exec(detail::pg_select, std::move(params), "reading a grant");
  if (PQntuples(r.get()) == 0) co_return std::nullopt;
  row found{PQgetvalue(r.get(), 0, 0), open(PQgetvalue(r.get(), 0, 1), PQgetvalue(r.get(), 0, 2))};
  co_return found;
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<std::optional<token_set>> postgres_token_store::load() {
  auto found = co_await read();
  if (!found) co_return std::nullopt;
  co_return std::move(found->tokens);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<void> postgres_token_store::save(const token_set& tokens) {
  std::vector<std::string> params;
  params.push_back(grant_key_);
  params.push_back(db_->key_id_);
  params.push_back(seal(tokens));
  co_await exec(detail::pg_upsert, std::move(params), "saving a grant");
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<void> postgres_token_store::clear() {
  std::vector<std::string> params;
  params.push_back(grant_key_);
  co_await exec(detail::pg_delete, std::move(params), "deleting a grant");
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<bool> postgres_token_store::replace(
    const std::optional<token_set>& expected, const token_set& next) {
  std::vector<std::string> params;
  params.push_back(grant_key_);
  const char* statement = detail::pg_insert_new;
  const char* doing = "saving a new grant";
  if (expected) {
    auto stored = co_await read();
    if (!stored || !detail::same_grant(stored->tokens, expected)) co_return false;
    params.push_back(stored->version);
    statement = detail::pg_update_if;
    doing = "replacing a grant";
  }
  params.push_back(db_->key_id_);
  params.push_back(seal(next));
  auto r = co_await exec(statement, std::move(params), doing);
  if (std::string_view(PQcmdTuples(r.get())) == "1") co_return true;
  // Another write came first; or this one ran, and its answer was lost with
  // a connection, so it ran once more.
  auto now = co_await read();
  co_return now && detail::same_grant(now->tokens, next);
}

CONFLUENCE_OAUTH_POSTGRES_INLINE asio::awaitable<token_store::store_lock> postgres_token_store::lock() {
  const auto id = lock_id();
  const auto deadline = std::chrono::steady_clock::now() + db_->lock_timeout_;
  const std::string marker = holder_id_ + "/" + std::to_string(++locks_taken_);
  auto pool = db_->pool_;
  auto failed = failed_under_lock_;
  std::vector<std::string> params;
  params.push_back(id);
  auto held = co_await pool->exec_holding(detail::pg_try_lock, std::move(params), "taking a grant's lock");
  auto c = std::move(held.connection);
  asio::steady_timer wait(co_await asio::this_coro::executor);
  // Since when the lock was free but the row named another holder, one that
  // lost the lock mid-refresh: the wait for it is timed from when this host
  // found it (the holder may have taken the lock long before).
  std::optional<std::chrono::steady_clock::time_point> unfinished;
  // (A holder that is gone is waited for at a gentler pace than a lock.)
  for (std::chrono::milliseconds delay{1};;
       delay = std::min(delay * 2, std::chrono::milliseconds(unfinished ? 250 : 50))) {
    if (std::string_view(PQgetvalue(held.result.get(), 0, 0)) == "t") {
      std::vector<std::string> mark;
      mark.push_back(grant_key_);
      mark.push_back(marker);
      mark.push_back(holder_id_ + "/");
      const bool take_over =
          unfinished && std::chrono::steady_clock::now() - *unfinished >= db_->unfinished_refresh_wait_;
      mark.push_back(take_over ? "true" : "false");
      auto marked = co_await c->query(detail::pg_mark_holder, std::move(mark),
                                      std::chrono::steady_clock::now() + pool->query_timeout());
      detail::check_pg_result(marked, "naming a grant's holder");
      if (std::string_view(PQgetvalue(marked.get(), 0, 0)) == "t") break;
      // Let go, so that the holder named there can take the lock and save.
      if (!unfinished) unfinished = std::chrono::steady_clock::now();
      std::vector<std::string> again;
      again.push_back(id);
      auto released = co_await c->query(detail::pg_unlock, std::move(again),
                                        std::chrono::steady_clock::now() + pool->query_timeout());
      detail::check_pg_result(released, "letting a grant's lock go");
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      pool->give_back(std::move(c));
      const std::string waited = " for more than " + std::to_string(db_->lock_timeout_.count()) + " ms";
      detail::fail(errc::store_error,
                   unfinished ? "PostgreSQL: a host that lost the lock on the grant \"" + grant_key_ +
                                    "\" mid-refresh has not saved what it refreshed" + waited
                              : "PostgreSQL: another host has held the lock on the grant \"" + grant_key_ + "\"" + waited);
    }
    wait.expires_after(delay);
    auto [ec] = co_await wait.async_wait(detail::use_tuple);
    if (ec) throw oauth_error(ec, "waiting for the lock on the grant \"" + grant_key_ + "\": cancelled");
    std::vector<std::string> again;
    again.push_back(id);
    held.result = co_await c->query(detail::pg_try_lock, std::move(again),
                                    std::chrono::steady_clock::now() + pool->query_timeout());
    detail::check_pg_result(held.result, "taking a grant's lock");
  }
  *failed = false;
  const auto retry_until = std::chrono::steady_clock::now() + db_->unfinished_refresh_wait_;
  co_return store_lock([pool, c, id, grant = grant_key_, marker, failed, retry_until] {
    // A statement that failed under the lock may have left this holder with
    // tokens the row lacks (a refresh it could not save): the marker stays
    // until it saves them, or until the others stop waiting for it.
    pool->unlock_later(c, id, grant, *failed ? std::string() : marker, retry_until);
  });
}

#endif  // CONFLUENCE_OAUTH_POSTGRES_DEFINE

}  // namespace confluence_oauth
