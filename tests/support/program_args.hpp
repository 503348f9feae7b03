// program_args.hpp — the command-line helpers of the test and bench programs
// (session-worker, soak, bench-ours): "--flag value" pairs, a usage error, a
// whole number with a minimum, and room for many open files.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace program_args {

/// Prints "<program>: <why>" and the usage to stderr, then exits with status 2.
[[noreturn]] inline void usage_error(std::string_view program, const std::string& why, std::string_view usage) {
  std::cerr << program << ": " << why << '\n' << usage;
  std::exit(2);
}

/// The "--flag value" pairs of argv, in order; "--help" or "-h" prints the
/// usage and exits with status 0.
inline std::vector<std::pair<std::string, std::string>> options(int argc, char** argv, std::string_view program,
                                                                 std::string_view usage) {
  std::vector<std::pair<std::string, std::string>> out;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << usage;
      std::exit(0);
    }
    if (i + 1 >= argc) usage_error(program, "unknown argument or missing value: " + flag, usage);
    out.emplace_back(flag, argv[++i]);
  }
  return out;
}

/// `value` as a whole number of at least `min`, or a usage error naming `flag`.
template <typename Int>
Int to_number(std::string_view program, std::string_view flag, const std::string& value, Int min, std::string_view usage) {
  try {
    std::size_t used = 0;
    const long long n = std::stoll(value, &used);
    if (used == value.size() && n >= min && n <= static_cast<long long>(std::numeric_limits<Int>::max()))
      return static_cast<Int>(n);
  } catch (const std::exception&) {
  }
  usage_error(program, std::string(flag) + " needs a whole number of at least " + std::to_string(min), usage);
}

/// Raises the soft limit on open files to `want` (at most the hard limit):
/// room for every connection of a program that opens hundreds.
inline void raise_fd_limit(rlim_t want) {
  rlimit l{};
  if (::getrlimit(RLIMIT_NOFILE, &l) == 0 && l.rlim_cur < want) {
    l.rlim_cur = std::min<rlim_t>(l.rlim_max, want);
    ::setrlimit(RLIMIT_NOFILE, &l);
  }
}

}  // namespace program_args
