// A token_store for grants that several hosts share, the way a database backs
// one: a row per user, a lock held across re-read, refresh and save, and a
// compare-and-swap write. The SQL (PostgreSQL) is in the comments; the calls
// go to `grant_table`, an in-memory stand-in, so that this example compiles
// and its test runs without a database. Swap in your driver's async calls.
#pragma once

#include <confluence_oauth.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

namespace example {

namespace cfo = confluence_oauth;

/// Stand-in for the table
///   CREATE TABLE oauth_grants (user_id text PRIMARY KEY, tokens text NOT NULL);
/// (Encrypt `tokens` at rest in production: they are bearer credentials.)
/// and for PostgreSQL advisory locks. Thread-safe.
class grant_table {
 public:
  std::optional<std::string> select(const std::string& user) {
    std::lock_guard lock(mutex_);
    auto it = rows_.find(user);
    return it == rows_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  void upsert(const std::string& user, std::string tokens) {
    std::lock_guard lock(mutex_);
    rows_[user] = std::move(tokens);
  }
  void erase(const std::string& user) {
    std::lock_guard lock(mutex_);
    rows_.erase(user);
  }
  /// UPDATE ... WHERE tokens = expected: true when one row changed.
  bool update_if(const std::string& user, const std::string& expected, std::string tokens) {
    std::lock_guard lock(mutex_);
    auto it = rows_.find(user);
    if (it == rows_.end() || it->second != expected) return false;
    it->second = std::move(tokens);
    return true;
  }
  bool try_advisory_lock(const std::string& user) {
    std::lock_guard lock(mutex_);
    return locked_.insert(user).second;
  }
  void advisory_unlock(const std::string& user) {
    std::lock_guard lock(mutex_);
    locked_.erase(user);
  }

 private:
  std::mutex mutex_;
  std::map<std::string, std::string> rows_;
  std::set<std::string> locked_;
};

class database_token_store final : public cfo::token_store {
 public:
  database_token_store(std::shared_ptr<grant_table> db, std::string user) : db_(std::move(db)), user_(std::move(user)) {}

  // SELECT tokens FROM oauth_grants WHERE user_id = $1
  asio::awaitable<std::optional<cfo::token_set>> load() override {
    auto text = db_->select(user_);
    if (!text) co_return std::nullopt;
    co_return cfo::token_set::from_json(nlohmann::json::parse(*text));
  }

  // INSERT INTO oauth_grants VALUES ($1, $2)
  //   ON CONFLICT (user_id) DO UPDATE SET tokens = $2
  asio::awaitable<void> save(const cfo::token_set& tokens) override {
    db_->upsert(user_, tokens.to_json().dump());
    co_return;
  }

  // DELETE FROM oauth_grants WHERE user_id = $1
  asio::awaitable<void> clear() override {
    db_->erase(user_);
    co_return;
  }

  // SELECT pg_try_advisory_lock(hashtext($1)), polled so the executor never
  // blocks; released by SELECT pg_advisory_unlock(hashtext($1)). A session
  // holds it while it re-reads, refreshes and saves: one refresh per expiry
  // however many hosts share the grant.
  asio::awaitable<cfo::token_store::store_lock> lock() override {
    asio::steady_timer wait(co_await asio::this_coro::executor);
    while (!db_->try_advisory_lock(user_)) {
      wait.expires_after(std::chrono::milliseconds(5));
      co_await wait.async_wait(asio::use_awaitable);
    }
    co_return cfo::token_store::store_lock([db = db_, user = user_] { db->advisory_unlock(user); });
  }

  // UPDATE oauth_grants SET tokens = $3 WHERE user_id = $1 AND tokens = $2
  //   -- one row changed: swapped; none: another host wrote first
  asio::awaitable<bool> replace(const std::optional<cfo::token_set>& expected, const cfo::token_set& next) override {
    if (!expected) co_return co_await cfo::token_store::replace(expected, next);  // no row yet: the default
    co_return db_->update_if(user_, expected->to_json().dump(), next.to_json().dump());
  }

 private:

  std::shared_ptr<grant_table> db_;
  std::string user_;
};

}  // namespace example
