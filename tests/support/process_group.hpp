// process_group.hpp — children that run at the same time, for the tests
// that start several processes sharing one token store.
#pragma once

#include "test_util.hpp"

#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

namespace test_util {

/// Children that run at the same time, started one after the other and then
/// waited for together (test_util::run_process waits for each before the next).
class process_group {
 public:
  explicit process_group(std::filesystem::path dir) : dir_(std::move(dir)) {}
  process_group(const process_group&) = delete;
  process_group& operator=(const process_group&) = delete;
  ~process_group() {
    for (auto& c : children_)
      if (c.running) {
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, nullptr, 0);
      }
  }

  void spawn(std::vector<std::string> argv) {
    const auto n = std::to_string(children_.size());
    child c{0, (dir_ / ("out-" + n)).string(), (dir_ / ("err-" + n)).string()};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, c.out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, c.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    int err = ::posix_spawn(&c.pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) throw std::runtime_error("cannot start " + argv.at(0) + ": " + std::strerror(err));
    children_.push_back(std::move(c));
  }

  /// Waits for every child; those still running after `limit` are killed (exit code -1).
  std::vector<test_util::process_result> wait(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    std::vector<test_util::process_result> results(children_.size());
    for (std::size_t left = children_.size(); left > 0;) {
      const bool late = std::chrono::steady_clock::now() > deadline;
      for (std::size_t i = 0; i < children_.size(); ++i) {
        auto& c = children_[i];
        if (!c.running) continue;
        if (late) ::kill(c.pid, SIGKILL);
        int status = 0;
        if (::waitpid(c.pid, &status, late ? 0 : WNOHANG) != c.pid) continue;
        c.running = false;
        --left;
        auto& r = results[i];
        if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
        r.out = test_util::read_text(c.out);
        r.err = (late ? "killed by the test watchdog\n" : "") + test_util::read_text(c.err);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return results;
  }

 private:
  struct child {
    pid_t pid;
    std::string out, err;
    bool running = true;
  };
  std::filesystem::path dir_;
  std::vector<child> children_;
};

}  // namespace test_util
