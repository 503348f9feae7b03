// soak — many authenticated requests through one session across many
// access-token expiries, against the in-process fake Atlassian server over TLS.
// See bench/README.md.
//
//   soak [--requests N | --seconds D] [--concurrency C] [--lifetime-seconds S] [--skew-seconds K] [--threads T]
//
// Exits 0 when every request succeeded, no access token was refreshed more
// than once or before its refresh window, and resident memory did not grow
// from the first quarter of the run to the last; 1 otherwise, 2 on bad
// arguments.
#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "program_args.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

constexpr std::string_view usage_text =
    "usage: soak [--requests N | --seconds D] [--concurrency C] [--lifetime-seconds S] [--skew-seconds K]\n"
    "            [--threads T]\n"
    "  --requests N          authenticated GETs in all (default 100000)\n"
    "  --seconds D           instead, as many as fit in D seconds (the same span in fast and slow builds)\n"
    "  --concurrency C       requests in flight at once (default 256)\n"
    "  --lifetime-seconds S  the fake server's access-token lifetime (default 2)\n"
    "  --skew-seconds K      session_options::refresh_skew (default 1)\n"
    "  --threads T           threads running the io_context (default 1)\n"
    "Exit status: 0 if every criterion held, 1 otherwise, 2 on bad arguments.\n";

constexpr const char* pages_target = "/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/pages?limit=5";
constexpr const char* scopes = "read:page:confluence read:space:confluence offline_access";

// Sanitizers keep freed memory in quarantine and map shadow memory as the
// program runs: resident memory then grows by design, and says nothing of leaks.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif
#else
constexpr bool sanitized = false;
#endif

// Last-quarter peak RSS may exceed the first quarter's by this much.
constexpr double rss_growth_ratio = 0.10;
constexpr long rss_growth_slack_kib = 8 * 1024;

struct arguments {
  long requests = 100000;
  long seconds = 0;  // > 0: run this long instead of `requests`
  int concurrency = 256;
  int lifetime = 2;
  int skew = 1;
  int threads = 1;
};

[[noreturn]] void usage_error(const std::string& why) { program_args::usage_error("soak", why, usage_text); }

long to_long(std::string_view flag, const std::string& value, long min) {
  return program_args::to_number("soak", flag, value, min, usage_text);
}

arguments parse(int argc, char** argv) {
  arguments a;
  for (const auto& [flag, value] : program_args::options(argc, argv, "soak", usage_text)) {
    if (flag == "--requests") a.requests = to_long(flag, value, 1);
    else if (flag == "--seconds") a.seconds = to_long(flag, value, 1);
    else if (flag == "--concurrency") a.concurrency = static_cast<int>(to_long(flag, value, 1));
    else if (flag == "--lifetime-seconds") a.lifetime = static_cast<int>(to_long(flag, value, 1));
    else if (flag == "--skew-seconds") a.skew = static_cast<int>(to_long(flag, value, 0));
    else if (flag == "--threads") a.threads = static_cast<int>(to_long(flag, value, 1));
    else usage_error("unknown argument " + flag);
  }
  return a;
}

/// VmRSS of this process in KiB (0 if unknown).
long resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return 0;
}

/// A memory store that notes, for each refreshed grant it saves, how long
/// the replaced access token had left: a refresh of a token outside its
/// refresh window is a refresh too many.
class watching_store final : public cfo::token_store {
 public:
  explicit watching_store(cfo::token_set::clock::duration window) : window_(window) {}

  asio::awaitable<std::optional<cfo::token_set>> load() override { co_return co_await inner_.load(); }
  asio::awaitable<void> save(const cfo::token_set& t) override { co_await inner_.save(t); }
  asio::awaitable<void> clear() override { co_await inner_.clear(); }
  asio::awaitable<bool> replace(const std::optional<cfo::token_set>& expected, const cfo::token_set& next) override {
    const bool replaced = co_await inner_.replace(expected, next);
    std::lock_guard lock(mutex_);
    if (replaced) {
      ++replaced_;
      if (expected && expected->expires_at - cfo::token_set::clock::now() > window_) ++early_;
    }
    co_return replaced;
  }

  long replaced() const {
    std::lock_guard lock(mutex_);
    return replaced_;
  }
  long early() const {
    std::lock_guard lock(mutex_);
    return early_;
  }

 private:
  cfo::memory_token_store inner_;
  cfo::token_set::clock::duration window_;
  mutable std::mutex mutex_;
  long replaced_ = 0;
  long early_ = 0;
};

struct tally {
  std::atomic<long> started{0};
  std::atomic<long> ok{0};
  std::atomic<long> failed{0};
  std::mutex mutex;
  std::map<std::string, long> failures;  // error -> how often
};

/// How far the run is, from 0 to 1: by requests completed, or by time.
struct progress {
  tally& t;
  long total;  // requests, or 0 for a timed run
  std::chrono::steady_clock::time_point began;
  std::chrono::steady_clock::duration span;

  double now() const {
    if (total > 0) return static_cast<double>(t.ok + t.failed) / static_cast<double>(total);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - began) / span;
  }
  /// Whether one more request may start (and counts it).
  bool may_start() const {
    if (total > 0) return t.started.fetch_add(1) < total;
    return std::chrono::steady_clock::now() - began < span;
  }
};

/// One of the concurrent loops: requests until the run is over.
asio::awaitable<void> request_loop(cfo::session s, const progress& run, tally& t) {
  while (run.may_start()) {
    std::string failure;
    try {
      co_await s.get_json(pages_target);
    } catch (const cfo::oauth_error& e) {
      failure = e.code().category().name() + (":" + std::to_string(e.code().value())) + " " + e.code().message();
    } catch (const std::exception& e) {
      failure = std::string("exception: ") + e.what();
    }
    if (failure.empty()) {
      ++t.ok;
    } else {
      ++t.failed;
      std::lock_guard lock(t.mutex);
      ++t.failures[failure];
    }
  }
}

/// Samples resident memory until stopped, keeping each quarter's peak.
class rss_sampler {
 public:
  explicit rss_sampler(const progress& run) : thread_([this, &run] {
      while (!done_) {
        const auto quarter = std::min<std::size_t>(3, static_cast<std::size_t>(std::max(0.0, run.now() * 4)));
        const long rss = resident_kib();
        {
          std::lock_guard lock(mutex_);
          peak_[quarter] = std::max(peak_[quarter], rss);
          ++samples_[quarter];
        }
        std::this_thread::sleep_for(20ms);
      }
    }) {}
  ~rss_sampler() { stop(); }
  void stop() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::array<long, 4> peaks() const {
    std::lock_guard lock(mutex_);
    return peak_;
  }
  std::array<long, 4> samples() const {
    std::lock_guard lock(mutex_);
    return samples_;
  }

 private:
  mutable std::mutex mutex_;
  std::array<long, 4> peak_{};
  std::array<long, 4> samples_{};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  const arguments a = parse(argc, argv);
  program_args::raise_fd_limit(8192);

  fake_atlassian::options o;
  o.access_token_lifetime = std::chrono::seconds(a.lifetime);
  fake_atlassian::server srv(o);
  auto cfg = test_util::client_config_for(srv, "http://localhost:3000/callback");
  const auto granted = test_util::grant_from(srv, cfg, scopes);  // issue_code + exchange_code

  // The session refreshes a token `skew` before it expires, but never more
  // than half its lifetime before: each token is refreshed once, after
  // lifetime - window of use.
  const auto window = std::min<std::chrono::seconds>(std::chrono::seconds(a.skew), std::chrono::seconds(a.lifetime) / 2);
  auto store = std::make_shared<watching_store>(window);
  cfo::session_options options;
  options.refresh_skew = std::chrono::seconds(a.skew);

  asio::io_context io(a.threads);
  cfo::session s(io.get_executor(), cfg, store, options);
  std::exception_ptr setup_failed;
  asio::co_spawn(io, s.adopt(granted), [&](std::exception_ptr e) { setup_failed = e; });
  io.run();
  io.restart();
  if (setup_failed) {
    try {
      std::rethrow_exception(setup_failed);
    } catch (const std::exception& e) {
      std::cerr << "soak: adopting the grant failed: " << e.what() << '\n';
      return 1;
    }
  }
  const auto before = srv.stats();

  tally t;
  const long rss_start = resident_kib();
  const auto began = std::chrono::steady_clock::now();
  const progress run{t, a.seconds > 0 ? 0 : a.requests, began, std::chrono::seconds(a.seconds)};
  rss_sampler rss(run);
  for (int i = 0; i < a.concurrency; ++i) asio::co_spawn(io, request_loop(s, run, t), asio::detached);
  std::vector<std::thread> runners;
  for (int i = 1; i < a.threads; ++i) runners.emplace_back([&] { io.run(); });
  io.run();
  for (auto& r : runners) r.join();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  rss.stop();
  const auto after = srv.stats();

  const long token_requests = static_cast<long>(after.token_requests - before.token_requests);
  const long refreshes = static_cast<long>(after.refresh_grants - before.refresh_grants);
  const double lifetimes = elapsed / a.lifetime;
  const double use_seconds = static_cast<double>(a.lifetime) - static_cast<double>(window.count());
  const long allowed = static_cast<long>(std::floor(elapsed / use_seconds)) + 2;
  const auto peaks = rss.peaks();
  const auto samples = rss.samples();

  std::cout << std::fixed << std::setprecision(2);
  std::cout << "soak: ";
  if (a.seconds > 0)
    std::cout << a.seconds << " s of requests";
  else
    std::cout << a.requests << " requests";
  std::cout << ", concurrency " << a.concurrency << ", threads " << a.threads
            << ", access tokens live " << a.lifetime << " s, refreshed " << window.count() << " s before expiry\n";
  std::cout << "requests ok      " << t.ok << '\n' << "requests failed  " << t.failed << '\n';
  for (const auto& [what, count] : t.failures) std::cout << "  " << count << " x " << what << '\n';
  std::cout << "elapsed          " << elapsed << " s\n"
            << "requests/s       " << static_cast<double>(t.ok + t.failed) / elapsed << '\n'
            << "token requests   " << token_requests << " (refresh grants " << refreshes << ", saved "
            << store->replaced() << ", refreshed before their window " << store->early() << ")\n"
            << "token lifetimes  " << lifetimes << " elapsed; one refresh per " << use_seconds
            << " s of use allows at most " << allowed << " refreshes (elapsed / use + 2)\n"
            << "401s at server   " << (after.api_unauthorized - before.api_unauthorized) << '\n'
            << "connections      " << (after.connections - before.connections) << " accepted by the server\n"
            << "RSS (KiB)        at start " << rss_start << "; peak per quarter";
  for (std::size_t q = 0; q < 4; ++q) std::cout << ' ' << peaks[q] << " (" << samples[q] << " samples)";
  std::cout << '\n';

  bool passed = true;
  auto verdict = [&](bool ok, const std::string& what) {
    std::cout << (ok ? "ok    " : "FAIL  ") << what << '\n';
    passed = passed && ok;
  };
  verdict(t.failed == 0 && t.ok > 0 && (a.seconds > 0 || t.ok == a.requests), "every request succeeded");
  verdict(token_requests == refreshes && refreshes == store->replaced(),
          "every token request was a granted refresh, and each was saved once");
  verdict(store->early() == 0, "no token was refreshed before its refresh window (no second refresh of one expiry)");
  verdict(token_requests <= allowed, "token requests within elapsed / (lifetime - window) + 2");
  const long rss_limit = static_cast<long>(static_cast<double>(peaks[0]) * (1 + rss_growth_ratio)) + rss_growth_slack_kib;
  if (sanitized) {
    std::cout << "skip  RSS criterion: a sanitizer build (quarantine and shadow memory grow RSS by design)\n";
  } else if (samples[0] == 0 || samples[3] == 0) {
    std::cout << "skip  RSS criterion: the run was too short to sample its first and last quarters\n";
  } else {
    verdict(peaks[3] <= rss_limit, "last-quarter RSS peak within first-quarter peak + 10% + 8 MiB (" +
                                       std::to_string(rss_limit) + " KiB)");
  }
  return passed ? 0 : 1;
}
