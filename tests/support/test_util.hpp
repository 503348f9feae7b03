// Helpers shared by the test suites: run a coroutine to completion on a fresh
// io_context, with a watchdog so a hang fails the test instead of CI.
#pragma once

#include "confluence_oauth.hpp"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace test_util {

namespace cfo = confluence_oauth;

/// Runs `make(executor)` (a function returning asio::awaitable<T>) on its own
/// io_context until it finishes; rethrows what it threw. Fails loudly if the
/// coroutine is still running after `limit`.
template <typename Make>
auto run(Make make, std::chrono::seconds limit = std::chrono::seconds(60)) {
  asio::io_context io;
  using awaitable_type = decltype(make(io.get_executor()));
  using value_type = typename awaitable_type::value_type;
  std::exception_ptr error;
  bool finished = false;
  if constexpr (std::is_void_v<value_type>) {
    asio::co_spawn(io, make(io.get_executor()), [&](std::exception_ptr e) {
      error = e;
      finished = true;
    });
    io.run_for(limit);
    if (!finished) throw std::runtime_error("test coroutine did not finish within the watchdog limit");
    if (error) std::rethrow_exception(error);
  } else {
    std::optional<value_type> result;
    asio::co_spawn(io, make(io.get_executor()), [&](std::exception_ptr e, value_type v) {
      error = e;
      if (!e) result.emplace(std::move(v));
      finished = true;
    });
    io.run_for(limit);
    if (!finished) throw std::runtime_error("test coroutine did not finish within the watchdog limit");
    if (error) std::rethrow_exception(error);
    return std::move(*result);
  }
}

/// The error code a coroutine failed with, or a default one if it did not fail.
template <typename Make>
std::error_code error_of(Make make, std::chrono::seconds limit = std::chrono::seconds(60)) {
  try {
    run(std::move(make), limit);
  } catch (const cfo::oauth_error& e) {
    return e.code();
  }
  return {};
}

/// How a coroutine failed: its error code and message (both empty if it did not fail).
struct failure {
  std::error_code code;
  std::string what;
};

template <typename Make>
failure failure_of(Make make, std::chrono::seconds limit = std::chrono::seconds(60)) {
  try {
    run(std::move(make), limit);
  } catch (const cfo::oauth_error& e) {
    return {e.code(), e.what()};
  }
  return {};
}

/// The code an exception_ptr from a completion handler carries (empty when none).
inline std::error_code code_of(const std::exception_ptr& e) {
  try {
    if (e) std::rethrow_exception(e);
  } catch (const std::system_error& err) {
    return err.code();
  }
  return {};
}

/// The code of the std::system_error that `f` throws (empty when it throws none).
template <typename F>
std::error_code thrown_code(F&& f) {
  try {
    f();
  } catch (const std::system_error& err) {
    return err.code();
  }
  return {};
}

/// A fresh directory under the system temp folder, removed with the object.
class temp_dir {
 public:
  temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "cfo-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct process_result {
  int exit_code = -1;  // -1: killed by the watchdog or a signal
  std::string out, err;
};

/// A program running beside the test, its output going to files. Its
/// standard input is /dev/null, or with `typed_input` a socket the test
/// writes to as a user types at a terminal. Test-only: waiting blocks the
/// calling thread, which no io_context shares.
class child_process {
 public:
  explicit child_process(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env = {},
                         bool typed_input = false) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    int pair[2] = {-1, -1};
    if (typed_input && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
      input_ = pair[0];
      posix_spawn_file_actions_adddup2(&actions, pair[1], 0);
    } else {
      posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    }
    posix_spawn_file_actions_addopen(&actions, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::vector<std::string> args = argv;
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
    env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> cenv;
    for (auto& e : env_strings) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    int err = ::posix_spawn(&pid_, cargs[0], &actions, nullptr, cargs.data(), cenv.data());
    posix_spawn_file_actions_destroy(&actions);
    if (pair[1] >= 0) ::close(pair[1]);
    if (typed_input && input_ < 0) throw std::runtime_error("cannot create the input socket");
    if (err != 0) throw std::runtime_error("cannot start " + argv.at(0) + ": " + std::strerror(err));
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process() {
    close_input();
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  /// Types `text` on its standard input (no SIGPIPE when it has gone).
  void type(std::string_view text) {
    while (input_ >= 0 && !text.empty()) {
      const auto n = ::send(input_, text.data(), text.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      text.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  /// Ends its standard input, as Ctrl-D does.
  void close_input() {
    if (input_ >= 0) ::close(input_);
    input_ = -1;
  }

  /// Its standard error so far, once it holds `marker` (empty when the
  /// program ends or `limit` passes first).
  std::string stderr_once(std::string_view marker, std::chrono::seconds limit = std::chrono::seconds(60)) const {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      auto text = read_text(err_path_);
      if (text.find(marker) != std::string::npos) return text;
      siginfo_t ended{};
      if (pid_ <= 0 || (::waitid(P_PID, static_cast<id_t>(pid_), &ended, WEXITED | WNOHANG | WNOWAIT) == 0 && ended.si_pid == pid_))
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return {};
  }

  /// Waits for it to end (killed after `limit`) and returns its exit code and output.
  process_result wait(std::chrono::seconds limit = std::chrono::seconds(60)) {
    process_result r;
    auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    for (;;) {
      pid_t w = ::waitpid(pid_, &status, WNOHANG);
      if (w == pid_) break;
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        r.err = "killed by the test watchdog\n";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    r.out = read_text(out_path_);
    r.err += read_text(err_path_);
    return r;
  }

 private:
  temp_dir io_dir_;
  std::string out_path_ = io_dir_ / "out", err_path_ = io_dir_ / "err";
  pid_t pid_ = -1;
  int input_ = -1;
};

/// Runs a program to completion (killed after `limit`), capturing its output.
inline process_result run_process(const std::vector<std::string>& argv, std::chrono::seconds limit = std::chrono::seconds(60),
                                  const std::vector<std::string>& extra_env = {}) {
  return child_process(argv, extra_env).wait(limit);
}

/// An HTTP date, "Sun, 06 Nov 1994 08:49:37 GMT", for now + `ahead`.
inline std::string http_date(std::chrono::seconds ahead) {
  std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now() + ahead);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  std::array<char, 64> text{};
  std::strftime(text.data(), text.size(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return text.data();
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
inline unsigned short free_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

}  // namespace test_util
