// Crash safety of file_token_store: a process killed (SIGKILL) at a random
// moment while it saves leaves the file as it was or with the set it was
// saving, whole; never empty, torn or a mix of two sets. The saving process is
// store-writer, which saves numbered sets until it is killed.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

// Its own namespace, so that the unity build can put test files together.
namespace test_crash_safety {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

/// Set N as store-writer saves it: every field derived from N.
cfo::token_set expected_set(std::int64_t n) {
  cfo::token_set t;
  t.access_token = cfo::secret("access-" + std::to_string(n));
  t.refresh_token = cfo::secret("refresh-" + std::to_string(n));
  t.scope = "scope-" + std::to_string(n);
  t.expires_at = cfo::token_set::clock::time_point(std::chrono::seconds(1'700'000'000 + n));
  return t;
}

/// The N of a complete, unmixed set N; nullopt for anything else.
std::optional<std::int64_t> sequence_of(const cfo::token_set& t) {
  const std::string& access = t.access_token.reveal();
  const std::string prefix = "access-";
  if (access.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  auto n = cfo::detail::parse_uint<std::int64_t>(std::string_view(access).substr(prefix.size()));
  if (!n) return std::nullopt;
  const auto want = expected_set(*n);
  if (t.refresh_token != want.refresh_token || t.scope != want.scope || t.expires_at != want.expires_at ||
      t.token_type != want.token_type)
    return std::nullopt;
  return n;
}

std::string hex_of(const std::string& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

/// What one killed store-writer said before it died.
struct writer_run {
  std::optional<std::int64_t> last_done;  // the last save it reported complete
};

/// Reads from `fd` into `out` until it holds `lines` lines or the writer's
/// end is closed; false on EOF before. Throws after 60 s (a hung writer).
bool read_lines(int fd, std::string& out, std::size_t lines) {
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (static_cast<std::size_t>(std::count(out.begin(), out.end(), '\n')) < lines) {
    pollfd p{fd, POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw std::runtime_error("store-writer wrote nothing for 60 s");
    if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) throw std::runtime_error("poll failed");
    char buf[4096];
    auto n = ::read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return true;
}

/// Starts store-writer on `path`, waits until it is ready (and, with
/// `after_first_save`, until its first save is done), lets it save for
/// `delay`, kills it with SIGKILL and reaps it.
writer_run kill_writer_after(const std::string& path, const std::string& key_hex, std::int64_t start,
                             bool after_first_save, std::chrono::microseconds delay, const std::string& err_path) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  cfo::detail::unique_fd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  std::vector<std::string> args = {CFO_STORE_WRITER_PATH, path};
  if (!key_hex.empty()) {
    args.push_back("--key");
    args.push_back(key_hex);
  }
  args.push_back(std::to_string(start));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = 0;
  const int err = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) throw std::runtime_error(std::string("cannot start store-writer: ") + std::strerror(err));
  write_end.reset();  // the writer's death closes the last write end: EOF

  // Killed and reaped on every way out, a hung writer's failure included.
  struct killer {
    pid_t pid;
    int status = 0;
    void operator()() {
      if (pid <= 0) return;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      pid = 0;
    }
    ~killer() { (*this)(); }
  } writer{pid};
  std::string out;
  const bool ready = read_lines(read_end.get(), out, after_first_save ? 2 : 1);
  if (ready) std::this_thread::sleep_for(delay);  // a random moment, not a synchronisation
  writer();
  const int status = writer.status;
  read_lines(read_end.get(), out, SIZE_MAX);  // the rest, up to EOF
  if (!ready || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
    throw std::runtime_error("store-writer ended on its own: " + test_util::read_text(err_path));

  writer_run r;
  std::size_t at = out.find('\n') + 1;  // after "ready"
  for (std::size_t end; (end = out.find('\n', at)) != std::string::npos; at = end + 1) {
    auto n = cfo::detail::parse_uint<std::int64_t>(std::string_view(out).substr(at, end - at));
    if (!n) throw std::runtime_error("store-writer wrote an unexpected line: " + out.substr(at, end - at));
    r.last_done = n;
  }
  return r;
}

std::size_t temporaries_of(const std::filesystem::path& file) {
  const std::string prefix = file.filename().string() + ".tmp-";
  std::size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(file.parent_path()))
    if (entry.path().filename().string().compare(0, prefix.size(), prefix) == 0) ++n;
  return n;
}

/// Kills `rounds` writers at random moments, checking the file after each.
/// Even rounds kill within a few milliseconds of the writer's start: its first
/// save is the one killed, and every tenth round starts without a file, which
/// must then still be absent. Odd rounds kill a writer that has saved once at
/// a random point of a later save (a save takes 5 to 60 ms with its fsync on a
/// loaded CI machine).
void kill_writers(const std::optional<cfo::secret>& key, int rounds) {
  test_util::temp_dir dir;
  const auto path = dir.path() / "tokens.json";
  const std::string key_hex = key ? hex_of(key->reveal()) : "";
  const std::random_device::result_type seed = std::random_device{}();
  INFO("random seed " << seed);
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> early_delay(0, 2000), later_delay(0, 15000);

  std::optional<std::int64_t> on_file;  // the set the file holds
  std::int64_t next = 0;
  int first_save_killed = 0, previous_kept = 0, saved = 0;
  const auto began = std::chrono::steady_clock::now();
  int round = 0;
  for (; round < rounds; ++round) {
    // A slow (sanitized, loaded) build stops after 100 rounds past 40 s.
    if (round >= 100 && std::chrono::steady_clock::now() - began > 40s) break;
    if (round % 10 == 0) {
      std::filesystem::remove(path);
      on_file.reset();
    }
    const std::int64_t start = next;
    const bool after_first_save = round % 2 == 1;
    const auto delay = std::chrono::microseconds(after_first_save ? later_delay(random) : early_delay(random));
    const auto run = kill_writer_after(path.string(), key_hex, start, after_first_save, delay, dir / "writer-stderr");
    CAPTURE(round);
    CAPTURE(start);
    CAPTURE(run.last_done.value_or(-1));

    cfo::file_token_store fresh = key ? cfo::file_token_store(path, *key) : cfo::file_token_store(path);
    std::optional<cfo::token_set> loaded;
    try {
      loaded = test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> { co_return co_await fresh.load(); });
    } catch (const cfo::oauth_error& e) {
      FAIL("the file is unreadable after the kill: " << e.what());
    }
    if (!loaded) {
      REQUIRE_MESSAGE(!on_file, "the previous set is gone");
      REQUIRE_MESSAGE(!run.last_done, "a save reported complete is gone");
      ++first_save_killed;
      continue;
    }
    const auto n = sequence_of(*loaded);
    REQUIRE_MESSAGE(n, "the file holds a torn or mixed set: " << *loaded);
    if (*n < start) {  // no save of this writer completed: the file is as it was
      REQUIRE(n == on_file);
      REQUIRE(!run.last_done);
      ++previous_kept;
    } else {
      // Every reported save is on file, and at most one more (done, not yet reported).
      REQUIRE(*n <= run.last_done.value_or(start - 1) + 1);
      REQUIRE(*n >= run.last_done.value_or(start));
      ++saved;
    }
    on_file = n;
    next = std::max(*n, run.last_done.value_or(start)) + 1;
  }
  MESSAGE(std::string(key ? "encrypted" : "plain") << ": " << round << " writers killed in "
                                        << std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count()
                                        << " s; " << first_save_killed << " left no file, " << previous_kept
                                        << " left the previous set, " << saved << " a set of their own; "
                                        << temporaries_of(path) << " temporaries left behind");
  CHECK(first_save_killed + previous_kept > 0);  // some kills hit the first save

  // Temporaries of killed saves are removed by a later save once they are old.
  const auto long_ago = std::filesystem::file_time_type::clock::now() - 1h;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    if (entry.path().filename().string().find(".tmp-") != std::string::npos)
      std::filesystem::last_write_time(entry.path(), long_ago);
  cfo::file_token_store store = key ? cfo::file_token_store(path, *key) : cfo::file_token_store(path);
  test_util::run([&](auto) -> asio::awaitable<void> { co_await store.save(expected_set(next)); });
  CHECK(temporaries_of(path) == 0);
}

}  // namespace

TEST_SUITE("crash safety") {

TEST_CASE("crash safety: a writer killed while saving leaves the old or the new set, whole") {
  kill_writers(std::nullopt, 200);
}

TEST_CASE("crash safety: the same holds for an encrypted file") {
  kill_writers(cfo::file_token_store::generate_key(), 200);
}

TEST_CASE("crash safety: a save removes its own file's temporaries once they are old") {
  test_util::temp_dir dir;
  const auto path = dir.path() / "tokens.json";
  const auto long_ago = std::filesystem::file_time_type::clock::now() - 1h;
  auto make = [&](const std::string& name, bool old) {
    std::ofstream(dir.path() / name) << "{\"access_token\":\"leftover\"}";
    if (old) std::filesystem::last_write_time(dir.path() / name, long_ago);
  };
  make("tokens.json.tmp-AAAAAAAA", true);    // a save killed an hour ago
  make("tokens.json.tmp-BBBBBBBB", false);   // maybe another process's save in progress
  make("other.json.tmp-CCCCCCCC", true);     // another store's
  make("tokens.json.tmp-notmine.bak", true);  // not a temporary of ours
  cfo::file_token_store store(path);
  test_util::run([&](auto) -> asio::awaitable<void> { co_await store.save(expected_set(1)); });
  CHECK(!std::filesystem::exists(dir.path() / "tokens.json.tmp-AAAAAAAA"));
  CHECK(std::filesystem::exists(dir.path() / "tokens.json.tmp-BBBBBBBB"));
  CHECK(std::filesystem::exists(dir.path() / "other.json.tmp-CCCCCCCC"));
  CHECK(std::filesystem::exists(dir.path() / "tokens.json.tmp-notmine.bak"));
  CHECK(std::filesystem::exists(path));
}

}  // TEST_SUITE("crash safety")

}  // namespace test_crash_safety
