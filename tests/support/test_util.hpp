// Helpers shared by the test suites: run a coroutine to completion on a fresh
// io_context, with a watchdog so a hang fails the test instead of CI.
#pragma once

#include "confluence_oauth.hpp"

#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <spawn.h>
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

/// Runs a program to completion (killed after `limit`), capturing its output.
/// Test-only: it blocks the calling thread, which no io_context shares.
inline process_result run_process(const std::vector<std::string>& argv, std::chrono::seconds limit = std::chrono::seconds(60),
                                  const std::vector<std::string>& extra_env = {}) {
  temp_dir io_dir;
  auto out_path = io_dir / "out", err_path = io_dir / "err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
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
  pid_t pid = 0;
  int err = ::posix_spawn(&pid, cargs[0], &actions, nullptr, cargs.data(), cenv.data());
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) throw std::runtime_error("cannot start " + argv.at(0) + ": " + std::strerror(err));
  process_result r;
  auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.err = "killed by the test watchdog\n";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.out = read_text(out_path);
  r.err += read_text(err_path);
  return r;
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
inline unsigned short free_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

}  // namespace test_util
