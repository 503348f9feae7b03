// Token stores: the encrypted file format (wrong key and altered file are told
// apart), the advisory lock that serializes processes sharing a file, and the
// compare-and-swap `replace` the session saves refreshed tokens with.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "test_util.hpp"

#include <sys/stat.h>

#include <fstream>

// Its own namespace, so that the unity build can put test files together.
namespace test_stores {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

cfo::token_set tokens(const char* access, const char* refresh) {
  cfo::token_set t;
  t.access_token = cfo::secret(access);
  t.refresh_token = cfo::secret(refresh);
  t.expires_at = cfo::token_set::clock::time_point(std::chrono::seconds(2000000000));
  t.scope = "read:page:confluence offline_access";
  return t;
}

std::error_code load_error(cfo::file_token_store& store) {
  return test_util::error_of([&](auto) -> asio::awaitable<void> { co_await store.load(); });
}

}  // namespace

TEST_SUITE("stores") {

TEST_CASE("an encrypted file store round-trips and hides the tokens") {
  test_util::temp_dir dir;
  auto path = dir / "tokens.json";
  auto key = cfo::file_token_store::generate_key();
  CHECK(key.reveal().size() == 32);
  cfo::file_token_store store(path, key);
  CHECK(store.encrypted());
  auto t = tokens("access-SENTINEL-1", "refresh-SENTINEL-1");
  auto back = test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> {
    co_await store.save(t);
    co_return co_await store.load();
  });
  REQUIRE(back);
  CHECK(back->access_token == t.access_token);
  CHECK(back->refresh_token == t.refresh_token);
  CHECK(back->expires_at == t.expires_at);
  CHECK(back->scope == t.scope);
  auto text = test_util::read_text(path);
  CHECK(text.find("SENTINEL") == std::string::npos);
  CHECK(text.find("aes-256-gcm") != std::string::npos);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("a wrong key, an altered file and a missing or unexpected key are clear errors") {
  test_util::temp_dir dir;
  auto path = dir / "tokens.json";
  cfo::file_token_store store(path, cfo::file_token_store::generate_key());
  test_util::run([&](auto) -> asio::awaitable<void> { co_await store.save(tokens("a", "r")); });

  cfo::file_token_store wrong(path, cfo::file_token_store::generate_key());
  CHECK(load_error(wrong) == cfo::errc::store_key_mismatch);
  CHECK(load_error(wrong) == cfo::remedy::fix_configuration);

  cfo::file_token_store keyless(path);
  CHECK(load_error(keyless) == cfo::errc::store_key_mismatch);

  auto sealed = nlohmann::json::parse(test_util::read_text(path));
  auto data = cfo::detail::base64_decode(sealed["sealed"].get<std::string>());
  REQUIRE(data);
  for (std::size_t at : {std::size_t{0}, std::size_t{20}, data->size() - 1}) {  // nonce, ciphertext, tag
    CAPTURE(at);
    auto altered = *data;
    altered[at] = static_cast<char>(altered[at] ^ 1);
    sealed["sealed"] = cfo::detail::base64url_encode(altered);
    { std::ofstream(path) << sealed.dump(); }
    CHECK(load_error(store) == cfo::errc::store_corrupt);
  }
  sealed["sealed"] = "not base64 !";
  { std::ofstream(path) << sealed.dump(); }
  CHECK(load_error(store) == cfo::errc::store_corrupt);
  sealed["format"] = "confluence_oauth/aes-256-gcm/99";
  { std::ofstream(path) << sealed.dump(); }
  CHECK(load_error(store) == cfo::errc::store_corrupt);

  cfo::file_token_store plain(path);
  test_util::run([&](auto) -> asio::awaitable<void> { co_await plain.save(tokens("a", "r")); });
  CHECK(load_error(store) == cfo::errc::store_key_mismatch);  // a plain file where a sealed one belongs

  CHECK_THROWS_AS(cfo::file_token_store(path, cfo::secret("short")), cfo::oauth_error);
}

TEST_CASE("the file lock is exclusive, released with its guard, and bounded in time") {
  test_util::temp_dir dir;
  auto path = dir / "sub/tokens.json";
  cfo::file_token_store first(path), second(path);
  second.set_lock_timeout(200ms);
  test_util::run([&](auto) -> asio::awaitable<void> {
    auto held = co_await first.lock();
    auto start = std::chrono::steady_clock::now();
    auto [e, unused] = co_await asio::co_spawn(co_await asio::this_coro::executor, second.lock(), cfo::detail::use_tuple);
    (void)unused;
    CHECK(e);
    CHECK(std::chrono::steady_clock::now() - start >= 200ms);
    held.unlock();
    auto mine = co_await second.lock();  // free now
    (void)mine;
  });
  struct stat st {};
  REQUIRE(::stat((dir / "sub/tokens.json.lock").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("a waiting lock gets it as soon as the holder lets go") {
  test_util::temp_dir dir;
  auto path = dir / "tokens.json";
  cfo::file_token_store a(path), b(path);
  auto waited = test_util::run([&](auto ex) -> asio::awaitable<std::chrono::steady_clock::duration> {
    auto held = std::make_shared<cfo::token_store::store_lock>(co_await a.lock());
    asio::steady_timer later(ex, 100ms);
    later.async_wait([held](std::error_code) { held->unlock(); });
    auto start = std::chrono::steady_clock::now();
    auto mine = co_await b.lock();
    co_return std::chrono::steady_clock::now() - start;
  });
  CHECK(waited >= 90ms);
  CHECK(waited < 1s);
}

TEST_CASE("replace saves only over the expected grant") {
  test_util::temp_dir dir;
  cfo::memory_token_store memory;
  cfo::file_token_store file(dir / "tokens.json");
  for (cfo::token_store* store : {static_cast<cfo::token_store*>(&memory), static_cast<cfo::token_store*>(&file)}) {
    test_util::run([&](auto) -> asio::awaitable<void> {
      auto one = tokens("a1", "r1"), two = tokens("a2", "r2"), three = tokens("a3", "r3");
      std::optional<cfo::token_set> none;
      CHECK(co_await store->replace(none, one));   // empty store, nothing expected
      CHECK_FALSE(co_await store->replace(none, two));
      std::optional<cfo::token_set> expected = one;
      CHECK(co_await store->replace(expected, two));
      CHECK_FALSE(co_await store->replace(expected, three));  // `one` is gone
      auto now = co_await store->load();
      REQUIRE(now);
      CHECK(now->refresh_token.reveal() == "r2");
    });
  }
}

}  // TEST_SUITE("stores")

}  // namespace test_stores
