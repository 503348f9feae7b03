// The file store against a hostile local user, as OpenSSH treats a private
// key: a token or lock file that is a symbolic link, not the user's, not a
// regular file, or open to group or others is refused before anything is read
// or written; so is a folder others may write. A sealed file is bound to its
// name, so that another file sealed with the same key cannot stand in for it;
// files of the first format still load. logout removes the lock file too.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "test_util.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

// Its own namespace, so that the unity build can put test files together.
namespace test_store_security {

namespace cfo = confluence_oauth;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr uid_t nobody = 65534;

cfo::token_set tokens(const char* access, const char* refresh) {
  cfo::token_set t;
  t.access_token = cfo::secret(access);
  t.refresh_token = cfo::secret(refresh);
  t.expires_at = cfo::token_set::clock::time_point(std::chrono::seconds(2000000000));
  return t;
}

test_util::failure load_failure(cfo::file_token_store& store) {
  return test_util::failure_of([&](auto) -> asio::awaitable<void> { co_await store.load(); });
}

test_util::failure save_failure(cfo::file_token_store& store, const cfo::token_set& t) {
  return test_util::failure_of([&](auto) -> asio::awaitable<void> { co_await store.save(t); });
}

test_util::failure lock_failure(cfo::file_token_store& store) {
  return test_util::failure_of([&](auto) -> asio::awaitable<void> { auto held = co_await store.lock(); });
}

void save(cfo::file_token_store& store, const cfo::token_set& t) {
  test_util::run([&](auto) -> asio::awaitable<void> { co_await store.save(t); });
}

std::optional<cfo::token_set> load(cfo::file_token_store& store) {
  return test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> { co_return co_await store.load(); });
}

/// A refusal to use the file: a configuration to fix, naming the file and the reason.
void check_refused(const test_util::failure& f, const std::string& file, const std::string& reason) {
  CAPTURE(f.what);
  CHECK(f.code == cfo::errc::invalid_config);
  CHECK(f.code == cfo::remedy::fix_configuration);
  CHECK(f.what.find(file) != std::string::npos);
  CHECK(f.what.find(reason) != std::string::npos);
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

/// The first format's file, as versions before the second one wrote it.
std::string sealed_v1(const cfo::secret& key, const cfo::token_set& t) {
  constexpr std::string_view format = "confluence_oauth/aes-256-gcm/1";
  auto digest = cfo::detail::sha256("confluence_oauth file_token_store key id:" + key.reveal());
  nlohmann::json sealed = {{"format", format},
                           {"key_id", cfo::detail::base64url_encode(digest.data(), 9)},
                           {"sealed", cfo::detail::base64url_encode(
                                          cfo::detail::aes256gcm_seal(key.reveal(), t.to_json().dump(2) + "\n", format))}};
  return sealed.dump(2) + "\n";
}

/// Writes `text` to a new file of mode `mode`, whatever the umask.
void write_file(const std::string& path, const std::string& text, mode_t mode) {
  { std::ofstream(path, std::ios::binary | std::ios::trunc) << text; }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

}  // namespace

TEST_SUITE("store security") {

TEST_CASE("store security: a token file group or others may read or write is refused on load and on save") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json";
  cfo::file_token_store store(path);
  for (mode_t mode : {0644, 0640, 0604, 0620, 0602, 0660}) {
    CAPTURE(mode);
    const auto planted = tokens("planted-access", "planted-refresh").to_json().dump();
    write_file(path, planted, mode);
    check_refused(load_failure(store), path, "group or others");
    check_refused(save_failure(store, tokens("mine", "mine")), path, "group or others");
    CHECK(test_util::read_text(path) == planted);  // nothing written
    CHECK(mode_of(path) == mode);
  }
  REQUIRE(::chmod(path.c_str(), 0600) == 0);  // the user's own fix
  auto loaded = load(store);
  REQUIRE(loaded);
  CHECK(loaded->access_token.reveal() == "planted-access");
  save(store, tokens("mine", "mine"));
  CHECK(mode_of(path) == 0600);
}

TEST_CASE("store security: a token file that is a symbolic link is refused, and nothing is written through it") {
  test_util::temp_dir dir;
  const auto target = dir / "elsewhere.json", path = dir / "tokens.json";
  cfo::file_token_store real(target);
  save(real, tokens("target-access", "target-refresh"));
  const auto before = test_util::read_text(target);
  fs::create_symlink(target, path);

  cfo::file_token_store store(path);
  check_refused(load_failure(store), path, "symbolic link");
  check_refused(save_failure(store, tokens("mine", "mine")), path, "symbolic link");
  CHECK(fs::is_symlink(fs::symlink_status(path)));
  CHECK(test_util::read_text(target) == before);

  fs::remove(path);  // a dangling link is refused as well
  fs::create_symlink(dir / "absent.json", path);
  check_refused(load_failure(store), path, "symbolic link");
  check_refused(save_failure(store, tokens("mine", "mine")), path, "symbolic link");
  CHECK_FALSE(fs::exists(dir / "absent.json"));
}

TEST_CASE("store security: a token file that is not a regular file is refused") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json";
  REQUIRE(::mkdir(path.c_str(), 0700) == 0);
  cfo::file_token_store store(path);
  check_refused(load_failure(store), path, "not a regular file");
  check_refused(save_failure(store, tokens("mine", "mine")), path, "not a regular file");
  CHECK(fs::is_directory(path));
}

TEST_CASE("store security: a token or lock file another user owns is refused") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json", lock_path = dir / "tokens.json.lock";
  cfo::file_token_store store(path);
  save(store, tokens("theirs", "theirs"));
  { auto held = test_util::run([&](auto) -> asio::awaitable<cfo::token_store::store_lock> { co_return co_await store.lock(); }); }
  if (::geteuid() != 0) {
    MESSAGE("not root: cannot give a file to another user; the owner check is tested as root (as CI runs)");
    return;
  }
  REQUIRE(::chown(path.c_str(), nobody, nobody) == 0);
  REQUIRE(::chown(lock_path.c_str(), nobody, nobody) == 0);
  const auto before = test_util::read_text(path);
  check_refused(load_failure(store), path, "owned by user 65534");
  check_refused(save_failure(store, tokens("mine", "mine")), path, "owned by user 65534");
  check_refused(lock_failure(store), lock_path, "owned by user 65534");
  CHECK(test_util::read_text(path) == before);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(st.st_uid == nobody);  // not replaced by a file of ours
}

TEST_CASE("store security: a lock file that is a symbolic link or open to others is refused") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json", lock_path = dir / "tokens.json.lock", target = dir / "victim";
  write_file(target, "precious", 0600);
  fs::create_symlink(target, lock_path);
  cfo::file_token_store store(path);
  check_refused(lock_failure(store), lock_path, "symbolic link");
  CHECK(test_util::read_text(target) == "precious");
  CHECK(mode_of(target) == 0600);

  fs::remove(lock_path);
  write_file(lock_path, "", 0666);
  check_refused(lock_failure(store), lock_path, "group or others");
}

TEST_CASE("store security: a folder others may write is refused; a sticky one is not") {
  test_util::temp_dir dir;
  const auto open_folder = dir / "open", sticky_folder = dir / "sticky";
  REQUIRE(::mkdir(open_folder.c_str(), 0700) == 0);
  REQUIRE(::mkdir(sticky_folder.c_str(), 0700) == 0);
  REQUIRE(::chmod(sticky_folder.c_str(), 01777) == 0);

  cfo::file_token_store sticky(sticky_folder + "/tokens.json");
  save(sticky, tokens("a", "r"));
  CHECK(load(sticky));

  cfo::file_token_store store(open_folder + "/tokens.json");
  save(store, tokens("a", "r"));  // while the folder was private
  for (mode_t mode : {0777, 0770, 0702}) {
    CAPTURE(mode);
    REQUIRE(::chmod(open_folder.c_str(), mode) == 0);
    check_refused(load_failure(store), open_folder, "group or others");
    check_refused(save_failure(store, tokens("mine", "mine")), open_folder, "group or others");
    check_refused(lock_failure(store), open_folder, "group or others");
  }
}

TEST_CASE("store security: clear and logout remove the lock file") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json", lock_path = dir / "tokens.json.lock";
  auto store = std::make_shared<cfo::file_token_store>(path);
  test_util::run([&](auto) -> asio::awaitable<void> {
    co_await store->save(tokens("a", "r"));
    { auto held = co_await store->lock(); }
    co_await store->clear();
  });
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(fs::exists(lock_path));
  test_util::run([&](auto) -> asio::awaitable<void> { co_await store->clear(); });  // nothing to remove is fine

  save(*store, tokens("a", "r"));
  cfo::client_config cfg;
  cfg.client_id = "test-client-id";
  cfg.client_secret = cfo::secret("test-client-secret");
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    cfo::session session(ex, cfg, store);
    CHECK(co_await session.load());
    co_await session.logout();
  });
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(fs::exists(lock_path));
}

TEST_CASE("store security: a lock waiting while the holder clears follows to the new lock file") {
  // session::logout clears under the lock. A store that waited for the old
  // lock file meanwhile must end up holding the one at the path, or it and a
  // newcomer (which creates a new file) would both hold "the" lock.
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json", lock_path = dir / "tokens.json.lock";
  cfo::file_token_store holder(path), waiter(path), newcomer(path);
  newcomer.set_lock_timeout(200ms);
  save(holder, tokens("a", "r"));
  test_util::run([&](auto ex) -> asio::awaitable<void> {
    auto held = co_await holder.lock();
    std::optional<cfo::token_store::store_lock> waited;
    asio::co_spawn(ex, [&]() -> asio::awaitable<void> { waited = co_await waiter.lock(); }, asio::detached);
    asio::steady_timer pause(ex, 50ms);
    co_await pause.async_wait(asio::use_awaitable);  // the waiter polls the old lock file now
    co_await holder.clear();
    CHECK_FALSE(fs::exists(lock_path));
    held.unlock();
    while (!waited) {
      pause.expires_after(5ms);
      co_await pause.async_wait(asio::use_awaitable);
    }
    CHECK(fs::exists(lock_path));
    auto [e, unused] = co_await asio::co_spawn(ex, newcomer.lock(), cfo::detail::use_tuple);
    (void)unused;
    CHECK(e);  // the waiter holds the lock at the path
  });
}

TEST_CASE("store security: a sealed file copied over another file's name is refused") {
  test_util::temp_dir dir;
  const auto key = cfo::file_token_store::generate_key();
  const auto mine = dir / "mine.json", other = dir / "other-grant.json";
  cfo::file_token_store my_store(mine, key), other_store(other, key);
  save(my_store, tokens("my-access", "my-refresh"));
  save(other_store, tokens("other-access", "other-refresh"));
  CHECK(nlohmann::json::parse(test_util::read_text(mine))["format"] == "confluence_oauth/aes-256-gcm/2");

  write_file(mine, test_util::read_text(other), 0600);  // same key, another file's purpose
  auto f = load_failure(my_store);
  CAPTURE(f.what);
  CHECK(f.code == cfo::errc::store_corrupt);
  CHECK(f.what.find(mine) != std::string::npos);
  CHECK(f.what.find("other-access") == std::string::npos);

  // Moving the whole folder keeps the name, and the file.
  save(my_store, tokens("my-access", "my-refresh"));
  const auto moved = dir.path() / "moved";
  fs::create_directory(moved);
  fs::rename(mine, moved / "mine.json");
  cfo::file_token_store moved_store(moved / "mine.json", key);
  auto loaded = load(moved_store);
  REQUIRE(loaded);
  CHECK(loaded->access_token.reveal() == "my-access");
}

TEST_CASE("store security: a file of the first format still loads, and the next save writes the second") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json";
  const auto key = cfo::file_token_store::generate_key();
  write_file(path, sealed_v1(key, tokens("v1-access", "v1-refresh")), 0600);
  cfo::file_token_store store(path, key);
  auto loaded = load(store);
  REQUIRE(loaded);
  CHECK(loaded->access_token.reveal() == "v1-access");
  CHECK(loaded->refresh_token.reveal() == "v1-refresh");
  save(store, *loaded);
  CHECK(nlohmann::json::parse(test_util::read_text(path))["format"] == "confluence_oauth/aes-256-gcm/2");
  loaded = load(store);
  REQUIRE(loaded);
  CHECK(loaded->refresh_token.reveal() == "v1-refresh");
}

#if defined(CFO_CLI_PATH)

TEST_CASE("store security: confluence-cli refuses a key file that is a symbolic link or not the user's") {
  test_util::temp_dir dir;
  const auto key_file = dir / "key", link = dir / "key-link";
  write_file(key_file, std::string(64, 'a') + "\n", 0600);
  fs::create_symlink(key_file, link);
  auto cli = [&](const std::string& key) {
    return test_util::run_process({CFO_CLI_PATH, "--client-id", "test-client-id", "--client-secret", "test-client-secret",
                                   "--token-file", dir / "tokens.json", "--key-file", key, "token"});
  };
  auto linked = cli(link);
  CAPTURE(linked.err);
  CHECK(linked.exit_code == 2);
  CHECK(linked.err.find("symbolic link") != std::string::npos);
  CHECK(cli(key_file).exit_code == 4);  // the key itself is fine: not logged in

  if (::geteuid() != 0) {
    MESSAGE("not root: cannot give the key file to another user; the owner check is tested as root (as CI runs)");
    return;
  }
  REQUIRE(::chown(key_file.c_str(), nobody, nobody) == 0);
  auto theirs = cli(key_file);
  CAPTURE(theirs.err);
  CHECK(theirs.exit_code == 2);
  CHECK(theirs.err.find("owned by user 65534") != std::string::npos);
}

TEST_CASE("store security: confluence-cli logout removes the lock file") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json", lock_path = dir / "tokens.json.lock";
  auto logout = [&] {
    return test_util::run_process({CFO_CLI_PATH, "--client-id", "test-client-id", "--client-secret", "test-client-secret",
                                   "--token-file", path, "logout"});
  };
  cfo::file_token_store store(path);
  save(store, tokens("a", "r"));
  { auto held = test_util::run([&](auto) -> asio::awaitable<cfo::token_store::store_lock> { co_return co_await store.lock(); }); }
  auto r = logout();
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(fs::exists(lock_path));

}

#endif

}  // TEST_SUITE("store security")

}  // namespace test_store_security
