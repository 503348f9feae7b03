// Helpers shared by the test suites: run a coroutine to completion on a fresh
// io_context, with a watchdog so a hang fails the test instead of CI.
#pragma once

#include "confluence_oauth.hpp"

#include <chrono>
#include <exception>
#include <optional>
#include <string>

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

}  // namespace test_util
