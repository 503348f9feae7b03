// The fault matrix: hostile servers and broken networks. Every fault must end in a
// clear typed error (or a success where success is right) within its deadline, and
// the SAME session must then make a normal request and refresh with the grant its
// store still holds. Secrets carry "SENTINEL" markers (client secret, every access
// and refresh token), and no message or error detail may show one.
//
// The API origin is tests/support/hostile_server (TLS on loopback, one scripted plan
// per connection, normal answers after); the token endpoint is the fake Atlassian
// server with its fault switches. Outcomes (errc / condition; "none": the code has no
// condition, as README.md documents):
//
//   API origin                                  outcome
//   connection refused                          connect_failed / retry_later
//   reset before the response (SO_LINGER 0)     network_error / retry_later
//   reset mid-body                              network_error / retry_later
//   garbage instead of a ServerHello            tls_handshake_failed / retry_later
//   expired certificate                         certificate_rejected / fix_configuration
//   certificate for another host                certificate_rejected / fix_configuration
//   certificate from an unknown CA              certificate_rejected / fix_configuration
//   peer offering only TLS 1.0 and 1.1          tls_handshake_failed / retry_later
//   slowloris (a byte a second)                 timeout / retry_later, at the request deadline
//   silent past the deadline                    timeout / retry_later, at the request deadline
//   oversized status line                       header_too_large / none
//   oversized headers (200 of them)             header_too_large / none
//   oversized body (chunked past the limit)     body_too_large / none
//   negative Content-Length                     protocol_error / retry_later
//   two different Content-Length headers        protocol_error / retry_later
//   Content-Length with chunked encoding        protocol_error / retry_later
//   chunk size overflowing 64 bits              protocol_error / retry_later
//   LF-only line endings                        success (tolerated, as section 6 documents)
//   truncated chunked body                      connection_closed / retry_later
//   close-delimited body, TCP close without     connection_closed / retry_later (RFC 9112 9.8: it
//     TLS close_notify                            may be a truncation)
//   HTTP/1.0 close-delimited body               success
//   100 Continue before the answer              success
//
//   token endpoint (a refresh is due)
//   500 on every try                            server_unavailable / retry_later, max_attempts tries
//   429 storm                                   rate_limited / retry_later, max_attempts tries
//   200 with an OAuth error body                oauth_error_response / fix_configuration, one try,
//                                               the secrets it echoes redacted
//   not JSON                                    invalid_token_response / none, one try
//   expires_in a word                           invalid_token_response / none, one try
//   access_token a number                       invalid_token_response / none, one try
//   expires_in a numeric string                 success (tolerated)
//   Retry-After: 1                              success after waiting at least 1 s
//   Retry-After as an HTTP date 3 s ahead       success after waiting at least 1 s
//   Retry-After as an HTTP date an hour ahead   rate_limited / retry_later at once, retry_after() = 1 h;
//                                               later refreshes of the session fail at once, unsent
//   Retry-After malformed                       success after the fallback backoff
//   refresh token revoked                       invalid_grant / reauthenticate, not retried, the
//                                               store keeps the grant; a new consent recovers
//   token_store throws on save                  store_error / retry_later; the next call saves the
//                                               rotated token without refreshing again
//   full disk (RLIMIT_FSIZE: EFBIG)             store_error / retry_later; the file keeps the old
//                                               grant, the next call saves the rotated one
//
//   redirect listener
//   idle connections and garbage requests       the idle ones closed at the read deadline, garbage
//                                               gets 400, the callback completes; no fd leaked
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "hostile_server.hpp"
#include "test_util.hpp"

#include <sys/resource.h>

#include <array>
#include <atomic>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <functional>

// Its own namespace, so that the unity build can put test files together.
namespace test_faults {

namespace {

namespace cfo = confluence_oauth;
using cfo::errc;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using tcp = asio::ip::tcp;

constexpr const char* sentinel = "SENTINEL";
constexpr const char* client_secret = "SENTINEL-CLIENT-SECRET-9f3c1a";
constexpr const char* token_marker = "SENTINEL-TOKEN-";
constexpr const char* redirect = "http://localhost:3000/callback";
constexpr const char* scopes = "read:page:confluence offline_access";
constexpr const char* api_path = "/wiki/api/v2/pages";
constexpr auto slack = 5s;  // CI machines are loaded: timing checks are coarse

const std::string ok_body = R"({"ok":true})";
const std::string ok_head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";

fake_atlassian::options auth_options() {
  fake_atlassian::options o;
  o.client_id = "fault-client-id";
  o.client_secret = client_secret;
  o.redirect_uris = {redirect};
  o.token_prefix = token_marker;
  return o;
}

cfo::session_options quick_options() {
  cfo::session_options o;
  o.retry.max_attempts = 3;
  o.retry.base_delay = 10ms;
  o.retry.max_delay = 50ms;
  o.retry.max_wait = 4s;
  o.max_response_bytes = 64 * 1024;
  return o;
}

/// What one call did: its error (none on success), all its texts, and how long it took.
struct observed {
  std::error_code code;
  std::string texts;  // what() and every detail of the oauth_error
  std::optional<std::chrono::seconds> retry_after;
  std::optional<nlohmann::json> body;  // a JSON answer, when the call gives one
  std::chrono::milliseconds elapsed{0};
};

template <typename T>
asio::awaitable<observed> observe(asio::awaitable<T> op) {
  observed o;
  const auto start = steady::now();
  try {
    if constexpr (std::is_same_v<T, nlohmann::json>)
      o.body = co_await std::move(op);
    else
      co_await std::move(op);
  } catch (const cfo::oauth_error& e) {
    o.code = e.code();
    o.texts = std::string(e.what()) + '\n' + e.details().error + '\n' + e.details().error_description + '\n' + e.details().error_uri + '\n' +
              e.details().www_authenticate;
    o.retry_after = e.details().retry_after;
  }
  o.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
  co_return o;
}

/// A grant from the fake Atlassian server, a hostile API origin, and a session
/// configuration that trusts both.
struct fixture {
  using fault_call = std::function<asio::awaitable<observed>(cfo::session&)>;
  using step = std::function<asio::awaitable<void>(cfo::session&)>;

  fake_atlassian::server auth{auth_options()};
  hostile::server api;
  cfo::client_config cfg;
  cfo::session_options options = quick_options();
  std::shared_ptr<cfo::token_store> store;
  cfo::token_set granted;
  fault_call fault = [](cfo::session& s) { return observe(s.get_json(api_path)); };
  step between = [](cfo::session&) -> asio::awaitable<void> { co_return; };  // after the fault

  explicit fixture(bool api_listening = true,
                   std::shared_ptr<cfo::token_store> token_store = std::make_shared<cfo::memory_token_store>())
      : api(api_listening), cfg(config()), store(std::move(token_store)), granted(test_util::grant_from(auth, cfg, scopes)) {
    save(granted);
  }

  cfo::client_config config() const {
    cfo::client_config c;
    c.client_id = "fault-client-id";
    c.client_secret = cfo::secret(client_secret);
    c.redirect_uri = redirect;
    c.authorize_url = auth.base_url() + "/authorize";
    c.token_url = auth.base_url() + "/oauth/token";
    c.api_url = api.base_url();
    c.tls.ca_pem = auth.ca_pem() + api.ca_pem();
    c.tls.use_system_trust = false;
    c.timeouts.request = 3s;
    return c;
  }

  void save(const cfo::token_set& t) {
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store->save(t); });
  }

  /// The client thinks the access token has expired: the next call refreshes.
  void expire_locally() {
    granted.expires_at = cfo::token_set::clock::now() - 1s;
    save(granted);
  }
};

/// The fault call, then through the same session a normal request and a refresh.
struct recovery {
  observed fault, after, refresh;
  std::optional<cfo::token_set> stored, held, stored_after_refresh;
};

recovery run_fault(fixture& f) {
  return test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<recovery> {
        cfo::session s(ex, f.cfg, f.store, f.options);
        co_await s.load();
        recovery r;
        r.fault = co_await f.fault(s);
        co_await f.between(s);
        r.after = co_await observe(s.get_json(api_path));
        r.stored = co_await f.store->load();
        r.held = co_await s.grant();
        r.refresh = co_await observe(s.refresh());
        r.stored_after_refresh = co_await f.store->load();
        co_return r;
      },
      60s);
}

void check_no_sentinel(const observed& o) {
  CAPTURE(o.texts);
  CHECK(o.texts.find(sentinel) == std::string::npos);
}

/// `ec` matches `expected` and no other condition (none at all when nullopt).
void check_condition(std::error_code ec, std::optional<cfo::remedy> expected) {
  for (auto c : {cfo::remedy::reauthenticate, cfo::remedy::retry_later, cfo::remedy::fix_configuration}) {
    CAPTURE(static_cast<int>(c));
    CHECK((ec == c) == (expected == c));
  }
}

/// The session works again: a normal request, a store holding what the session
/// holds, and a refresh with it that the token endpoint accepts and that is saved.
void check_recovered(const recovery& r) {
  check_no_sentinel(r.fault);
  check_no_sentinel(r.after);
  check_no_sentinel(r.refresh);
  CAPTURE(r.after.texts);
  CHECK_FALSE(r.after.code);
  CHECK(r.after.body == nlohmann::json::parse(ok_body));
  REQUIRE(r.stored);
  REQUIRE(r.held);
  CHECK(r.stored->refresh_token == r.held->refresh_token);
  CHECK(r.stored->refresh_token.reveal().rfind(token_marker, 0) == 0);
  CAPTURE(r.refresh.texts);
  CHECK_FALSE(r.refresh.code);
  REQUIRE(r.stored_after_refresh);
  CHECK_FALSE(r.stored_after_refresh->refresh_token == r.stored->refresh_token);  // rotated and saved
}

/// One row of the table-driven part of the matrix.
struct fault_row {
  const char* name;
  std::function<void(fixture&)> inject;
  std::optional<errc> code;               // nullopt: the call succeeds
  std::optional<cfo::remedy> condition;
  std::chrono::milliseconds budget;       // what the configuration allows the call (deadlines, retries, waits)
  std::chrono::milliseconds at_least{0};  // what it must take (a deadline or a Retry-After honoured)
  int token_requests = -1;                // token endpoint requests the call makes; -1: not counted
  bool needs_refresh = false;             // the grant has expired, so the call refreshes first
  std::chrono::milliseconds request_timeout = 3s;
  bool api_listening = true;              // false: the API origin refuses connections until after the fault
  bool holds_back = false;                // the server asked for a wait past max_wait: the session's later
                                          // refreshes fail at once, unsent, instead of recovering
};

void run_row(const fault_row& row) {
  fixture f(row.api_listening);
  f.cfg.timeouts.request = row.request_timeout;
  if (row.needs_refresh) f.expire_locally();
  row.inject(f);
  const auto before = f.auth.stats();
  auto r = run_fault(f);
  CAPTURE(r.fault.texts);
  if (row.code) {
    CHECK(r.fault.code == *row.code);
    check_condition(r.fault.code, row.condition);
  } else {
    CHECK_FALSE(r.fault.code);
    CHECK(r.fault.body == nlohmann::json::parse(ok_body));
  }
  CHECK(r.fault.elapsed < row.budget + slack);
  CHECK(r.fault.elapsed >= row.at_least);
  // The fault call's own token requests: recovery adds one for the normal
  // request when a refresh is due, and one for the final refresh.
  if (row.token_requests >= 0) {
    const auto after = f.auth.stats();
    const auto recovering = row.holds_back ? 0 : (row.needs_refresh && row.code ? 1 : 0) + 1;
    CHECK(after.token_requests - before.token_requests == static_cast<std::uint64_t>(row.token_requests + recovering));
  }
  CHECK(f.api.queued() == 0);  // every scripted plan was met
  CHECK(f.auth.queued_faults() == 0);
  if (!row.holds_back) return check_recovered(r);
  for (const auto* later : {&r.after, &r.refresh}) {
    CAPTURE(later->texts);
    CHECK(later->code == errc::rate_limited);
    CHECK(later->texts.find("not sent") != std::string::npos);
    CHECK((later->retry_after && *later->retry_after > 3000s));
  }
}

hostile::plan answer(std::string response) {
  hostile::plan p;
  p.response = std::move(response);
  return p;
}

hostile::plan handshake(hostile::handshake h) {
  hostile::plan p;
  p.tls = h;
  return p;
}

std::function<void(fixture&)> api_plan(hostile::plan p) {
  return [p](fixture& f) { f.api.push(p); };
}

std::vector<fault_row> api_rows() {
  std::vector<fault_row> rows;
  auto fails = [&](const char* name, hostile::plan p, errc code, std::optional<cfo::remedy> condition) {
    rows.push_back({name, api_plan(std::move(p)), code, condition, 3s});
  };
  const auto retry = cfo::remedy::retry_later;
  const auto fix = cfo::remedy::fix_configuration;
  const std::optional<cfo::remedy> none;

  fault_row refused{"fault matrix: connection refused", [](fixture& f) {
                      f.between = [&f](cfo::session&) -> asio::awaitable<void> {
                        f.api.listen();
                        co_return;
                      };
                    },
                    errc::connect_failed, retry, 3s};
  refused.api_listening = false;
  rows.push_back(refused);

  hostile::plan reset_early;
  reset_early.reset = true;
  fails("fault matrix: reset before the response", reset_early, errc::network_error, retry);
  hostile::plan reset_mid = answer(ok_head + "Content-Length: 4000\r\n\r\n{\"ok\":" + std::string(1000, ' '));
  reset_mid.reset = true;
  fails("fault matrix: reset mid-body", reset_mid, errc::network_error, retry);

  hostile::plan garbage = handshake(hostile::handshake::garbage);
  garbage.response = "garbage instead of a ServerHello " + std::string(200, '\x7f');
  fails("fault matrix: TLS handshake answered with garbage", garbage, errc::tls_handshake_failed, retry);
  fails("fault matrix: expired certificate", handshake(hostile::handshake::expired_certificate),
        errc::certificate_rejected, fix);
  fails("fault matrix: certificate for another host", handshake(hostile::handshake::wrong_host_certificate),
        errc::certificate_rejected, fix);
  fails("fault matrix: certificate from an unknown CA", handshake(hostile::handshake::untrusted_certificate),
        errc::certificate_rejected, fix);
  fails("fault matrix: peer offering only TLS 1.0 and 1.1", handshake(hostile::handshake::tls1_1_only),
        errc::tls_handshake_failed, retry);

  hostile::plan trickle = answer(ok_head + "X-Slow: " + std::string(100, 's') + "\r\nContent-Length: 11\r\n\r\n" + ok_body);
  trickle.trickle = 1s;
  fault_row slowloris{"fault matrix: slowloris server at a byte a second", api_plan(trickle), errc::timeout, retry,
                      1500ms, 1400ms};
  slowloris.request_timeout = 1500ms;
  rows.push_back(slowloris);
  hostile::plan silent;
  silent.answer = false;
  fault_row quiet{"fault matrix: silent server past the deadline", api_plan(silent), errc::timeout, retry, 1s, 900ms};
  quiet.request_timeout = 1s;
  rows.push_back(quiet);

  fails("fault matrix: oversized status line",
        answer("HTTP/1.1 200 " + std::string(70 * 1024, 'O') + "\r\nContent-Length: 11\r\n\r\n" + ok_body),
        errc::header_too_large, none);
  std::string many_headers = ok_head;
  for (int i = 0; i < 200; ++i) many_headers += "X-Flood-" + std::to_string(i) + ": v\r\n";
  fails("fault matrix: oversized headers", answer(many_headers + "Content-Length: 11\r\n\r\n" + ok_body),
        errc::header_too_large, none);
  std::string chunks = ok_head + "Transfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 20; ++i) chunks += "1000\r\n" + std::string(4096, 'b') + "\r\n";  // 80 KiB over a 64 KiB limit
  fails("fault matrix: oversized body", answer(chunks + "0\r\n\r\n"), errc::body_too_large, none);

  fails("fault matrix: negative Content-Length", answer(ok_head + "Content-Length: -1\r\n\r\n" + ok_body),
        errc::protocol_error, retry);
  fails("fault matrix: duplicate and different Content-Length",
        answer(ok_head + "Content-Length: 11\r\nContent-Length: 12\r\n\r\n" + ok_body + " "), errc::protocol_error, retry);
  fails("fault matrix: Content-Length with Transfer-Encoding chunked",
        answer(ok_head + "Content-Length: 11\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n" + ok_body + "\r\n0\r\n\r\n"),
        errc::protocol_error, retry);
  fails("fault matrix: chunk size overflow",
        answer(ok_head + "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n" + ok_body + "\r\n0\r\n\r\n"),
        errc::protocol_error, retry);
  fails("fault matrix: truncated chunked body",
        answer(ok_head + "Transfer-Encoding: chunked\r\n\r\n20\r\n" + ok_body), errc::connection_closed, retry);

  hostile::plan cut = answer("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + ok_body);
  cut.close_notify = false;
  fails("fault matrix: close-delimited body cut without TLS close_notify", cut, errc::connection_closed, retry);

  auto succeeds = [&](const char* name, std::string response) {
    rows.push_back({name, api_plan(answer(std::move(response))), std::nullopt, std::nullopt, 3s});
  };
  succeeds("fault matrix: LF-only line endings",
           "HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 11\n\n" + ok_body);
  succeeds("fault matrix: HTTP/1.0 close-delimited body",
           "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + ok_body);
  succeeds("fault matrix: 100 Continue before the answer",
           "HTTP/1.1 100 Continue\r\n\r\n" + ok_head + "Content-Length: 11\r\n\r\n" + ok_body);
  return rows;
}

std::string raw_response(const std::string& status_line, const std::string& type, const std::string& body) {
  return status_line + "\r\nContent-Type: " + type + "\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

std::vector<fault_row> token_rows() {
  const auto quick = quick_options();
  // A refresh may take every attempt to its deadline plus every wait between them.
  const std::chrono::milliseconds retries = (quick.retry.max_wait + 3s) * quick.retry.max_attempts;
  const int attempts = quick.retry.max_attempts;
  const auto retry = cfo::remedy::retry_later;
  const std::optional<cfo::remedy> none;
  std::vector<fault_row> rows;
  auto row = [&](const char* name, std::function<void(fixture&)> inject, std::optional<errc> code,
                 std::optional<cfo::remedy> condition, int token_requests,
                 std::chrono::milliseconds at_least = 0ms) {
    rows.push_back({name, std::move(inject), code, condition, retries, at_least, token_requests, true});
  };

  row("fault matrix: token endpoint 500 on every try", [attempts](fixture& f) {
        for (int i = 0; i < attempts; ++i)
          f.auth.push_raw_response("/oauth/token", raw_response("HTTP/1.1 500 Internal Server Error", "text/html",
                                                                "<html>upstream failed</html>"));
      }, errc::server_unavailable, retry, attempts);
  row("fault matrix: token endpoint 429 storm", [attempts](fixture& f) {
        for (int i = 0; i < attempts; ++i) f.auth.push_status("/oauth/token", 429, R"({"message":"slow down"})");
      }, errc::rate_limited, retry, attempts);
  row("fault matrix: token endpoint 200 with an OAuth error body", [](fixture& f) {
        // An error page that echoes what it was sent: the secrets must not reach a message.
        nlohmann::json body = {{"error", "unsupported_grant_type"},
                               {"error_description", std::string("echo ") + client_secret + " " +
                                                         f.granted.refresh_token.reveal()}};
        f.auth.push_status("/oauth/token", 200, body.dump());
      }, errc::oauth_error_response, cfo::remedy::fix_configuration, 1);
  row("fault matrix: non-JSON token answer", [](fixture& f) {
        f.auth.push_raw_response("/oauth/token", raw_response("HTTP/1.1 200 OK", "text/html", "<html>sign in</html>"));
      }, errc::invalid_token_response, none, 1);
  row("fault matrix: token answer with expires_in a word", [](fixture& f) {
        f.auth.push_status("/oauth/token", 200,
                           R"({"access_token":"SENTINEL-TOKEN-pushed","token_type":"Bearer","expires_in":"an hour"})");
      }, errc::invalid_token_response, none, 1);
  row("fault matrix: token answer with access_token a number", [](fixture& f) {
        f.auth.push_status("/oauth/token", 200, R"({"access_token":12345,"token_type":"Bearer","expires_in":3600})");
      }, errc::invalid_token_response, none, 1);
  row("fault matrix: token answer with expires_in a numeric string", [](fixture& f) {
        // No refresh_token in it: the session keeps the one it has, which the server still honours.
        f.auth.push_status("/oauth/token", 200,
                           R"({"access_token":"SENTINEL-TOKEN-pushed","token_type":"Bearer","expires_in":"3600"})");
      }, std::nullopt, std::nullopt, 1);
  row("fault matrix: Retry-After in seconds", [](fixture& f) {
        f.auth.push_status("/oauth/token", 429, "{}", {{"Retry-After", "1"}});
      }, std::nullopt, std::nullopt, 2, 900ms);
  row("fault matrix: Retry-After as an HTTP date", [](fixture& f) {
        f.auth.push_status("/oauth/token", 429, "{}", {{"Retry-After", test_util::http_date(3s)}});  // whole seconds: room for a slow start
      }, std::nullopt, std::nullopt, 2, 900ms);
  row("fault matrix: Retry-After as an HTTP date beyond the retry budget", [](fixture& f) {
        f.auth.push_status("/oauth/token", 429, "{}", {{"Retry-After", test_util::http_date(1h)}});
      }, errc::rate_limited, retry, 1);
  rows.back().budget = 3s;  // not waited for
  rows.back().holds_back = true;
  row("fault matrix: Retry-After malformed", [](fixture& f) {
        f.auth.push_status("/oauth/token", 429, "{}", {{"Retry-After", "soon, perhaps"}});
      }, std::nullopt, std::nullopt, 2);
  return rows;
}

/// A store whose next `failures` saves throw, as a database client might.
class store_failing_saves final : public cfo::token_store {
 public:
  std::atomic<int> failures{0};
  std::atomic<int> saves{0};  // attempted, failed ones included
  cfo::memory_token_store inner;

  asio::awaitable<std::optional<cfo::token_set>> load() override { co_return co_await inner.load(); }
  asio::awaitable<void> save(const cfo::token_set& t) override {
    ++saves;
    if (failures > 0) {
      --failures;
      throw std::runtime_error("the database went away (test)");
    }
    co_await inner.save(t);
  }
  asio::awaitable<void> clear() override { co_await inner.clear(); }
};

/// Caps the size of files this process writes, as a full disk would, and makes
/// a write past it fail with EFBIG instead of raising SIGXFSZ. Only the soft
/// limit moves, so no privilege is needed to put it back.
class file_size_cap {
 public:
  explicit file_size_cap(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit capped = saved_;
    capped.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &capped);
  }
  ~file_size_cap() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }
  file_size_cap(const file_size_cap&) = delete;
  file_size_cap& operator=(const file_size_cap&) = delete;

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = nullptr;
};

std::size_t open_fds() {
  return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                                std::filesystem::directory_iterator()));
}

/// The descriptor count once the servers' threads have closed their ends of the
/// test's connections (they do so a moment after the client closes its end).
std::size_t settled_fds(std::size_t target) {
  std::size_t n = open_fds();
  for (auto end = steady::now() + 5s; n > target && steady::now() < end; n = open_fds())
    std::this_thread::sleep_for(20ms);
  return n;
}

/// What the flood saw of the redirect listener.
struct flood_report {
  int garbage_answered_400 = 0;
  int idle_closed = 0;                       // of the idle connections under the connection limit
  std::chrono::milliseconds earliest_close{std::chrono::hours(1)};  // from each one's connect
  std::chrono::milliseconds latest_close{0};
  std::string callback_answer;               // the status line the real callback got
  std::string error;                         // an exception that ended the flood
};

asio::awaitable<std::string> read_all(tcp::socket& s) {
  std::string in;
  co_await asio::async_read(s, asio::dynamic_buffer(in), cfo::detail::use_tuple);  // to eof, or whatever error ends it
  co_return in;
}

/// Plays a hostile neighbour and then the browser: idle connections and garbage
/// requests under the listener's connection limit (the idle ones must be closed at
/// the read deadline), then idle connections over the limit, then the real callback.
asio::awaitable<void> flood_then_callback(fake_atlassian::server& auth, std::string authorize_url,
                                          flood_report& out) {
  auto ex = co_await asio::this_coro::executor;
  std::string redirect_uri, state, challenge;
  for (auto& [name, value] : cfo::detail::parse_query(authorize_url.substr(authorize_url.find('?') + 1))) {
    if (name == "redirect_uri") redirect_uri = value;
    if (name == "state") state = value;
    if (name == "code_challenge") challenge = value;
  }
  const cfo::detail::url listener = cfo::detail::parse_url(redirect_uri);
  const tcp::endpoint endpoint(asio::ip::make_address(listener.host), listener.port);

  std::vector<std::pair<std::shared_ptr<tcp::socket>, steady::time_point>> idle;
  for (int i = 0; i < 24; ++i) {
    auto s = std::make_shared<tcp::socket>(ex);
    const auto connected = steady::now();
    co_await s->async_connect(endpoint, asio::use_awaitable);
    idle.emplace_back(s, connected);
  }
  for (int i = 0; i < 6; ++i) {
    tcp::socket garbage(ex);
    co_await garbage.async_connect(endpoint, asio::use_awaitable);
    const std::string junk = "\x16\x03\x01 not HTTP at all\r\n\r\n";
    co_await asio::async_write(garbage, asio::buffer(junk), asio::use_awaitable);
    auto page = co_await read_all(garbage);
    if (page.rfind("HTTP/1.1 400 ", 0) == 0) ++out.garbage_answered_400;
  }
  for (auto& [s, connected] : idle) {
    std::array<char, 64> buf;
    auto [ec, n] = co_await s->async_read_some(asio::buffer(buf), cfo::detail::use_tuple);
    if (ec == asio::error::eof || ec == asio::error::connection_reset) ++out.idle_closed;
    auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - connected);
    out.earliest_close = std::min(out.earliest_close, waited);
    out.latest_close = std::max(out.latest_close, waited);
  }

  std::vector<tcp::socket> crowd;  // more than max_connections: the oldest make room
  for (int i = 0; i < 40; ++i) {
    crowd.emplace_back(ex);
    co_await crowd.back().async_connect(endpoint, asio::use_awaitable);
  }
  tcp::socket browser(ex);
  co_await browser.async_connect(endpoint, asio::use_awaitable);
  const std::string code = auth.issue_code(redirect_uri, scopes, challenge);  // as /authorize would bind it
  const std::string request = "GET " + std::string(listener.path()) + "?code=" + cfo::detail::percent_encode(code) +
                              "&state=" + cfo::detail::percent_encode(state) + " HTTP/1.1\r\nHost: " +
                              listener.authority() + "\r\nConnection: close\r\n\r\n";
  co_await asio::async_write(browser, asio::buffer(request), asio::use_awaitable);
  auto page = co_await read_all(browser);
  out.callback_answer = page.substr(0, page.find("\r\n"));
}

}  // namespace

TEST_SUITE("faults") {

TEST_CASE("fault matrix: the API origin misbehaves") {
  for (const auto& row : api_rows())
    SUBCASE(row.name) { run_row(row); }
}

TEST_CASE("fault matrix: the token endpoint misbehaves") {
  for (const auto& row : token_rows())
    SUBCASE(row.name) { run_row(row); }
}

TEST_CASE("fault matrix: refresh token revoked") {
  fixture f;
  f.expire_locally();
  f.auth.revoke_all();
  observed again;
  std::optional<cfo::token_set> stored_after_fault;
  f.between = [&](cfo::session& s) -> asio::awaitable<void> {
    again = co_await observe(s.get_json(api_path));  // final: not tried again
    stored_after_fault = co_await f.store->load();
    // The user consents again: a new grant recovers the same session.
    cfo::authorization consent;
    consent.redirect_uri = redirect;
    auto tokens = co_await s.client().exchange_code(cfo::secret(f.auth.issue_code(redirect, scopes)), consent);
    co_await s.adopt(std::move(tokens));
  };
  const auto before = f.auth.stats();
  auto r = run_fault(f);
  CAPTURE(r.fault.texts);
  CHECK(r.fault.code == errc::invalid_grant);
  check_condition(r.fault.code, cfo::remedy::reauthenticate);
  CHECK(r.fault.elapsed < 3s + slack);
  CHECK(again.code == errc::invalid_grant);
  check_no_sentinel(again);
  // One refused refresh, the new consent's exchange, and the final refresh.
  CHECK(f.auth.stats().token_requests - before.token_requests == 3);
  // README: invalid_grant leaves the store as it was.
  REQUIRE(stored_after_fault);
  CHECK(stored_after_fault->refresh_token == f.granted.refresh_token);
  check_recovered(r);
  CHECK_FALSE(r.stored->refresh_token == f.granted.refresh_token);  // the new grant replaced it
}

TEST_CASE("fault matrix: token_store throws on save") {
  auto store = std::make_shared<store_failing_saves>();
  fixture f(true, store);
  f.expire_locally();
  store->failures = 1;
  const int saves_before = store->saves;
  const auto before = f.auth.stats();
  auto r = run_fault(f);
  CAPTURE(r.fault.texts);
  CHECK(r.fault.code == errc::store_error);
  check_condition(r.fault.code, cfo::remedy::retry_later);
  CHECK(r.fault.elapsed < 3s + slack);
  // The refreshed tokens were kept and saved by the next call, which did not refresh
  // again: the rotated refresh token was not lost. The final refresh is the second.
  CHECK(f.auth.stats().refresh_grants - before.refresh_grants == 2);
  CHECK(store->saves - saves_before == 3);  // failed, retried, and the final refresh's
  check_recovered(r);
  CHECK_FALSE(r.stored->refresh_token == f.granted.refresh_token);
}

TEST_CASE("fault matrix: full disk under a file_token_store") {
  // RLIMIT_FSIZE in this process (a soft limit, so no root needed) while the fault
  // call runs: writing the token file fails with EFBIG, as on a full disk.
  test_util::temp_dir dir;
  const auto path = dir.path() / "tokens.json";
  auto store = std::make_shared<cfo::file_token_store>(path);
  fixture f(true, store);
  f.expire_locally();
  std::optional<cfo::token_set> on_disk_after_fault;
  f.fault = [&](cfo::session& s) -> asio::awaitable<observed> {
    observed o;
    {
      file_size_cap full(16);
      o = co_await observe(s.get_json(api_path));
    }
    on_disk_after_fault = co_await store->load();
    co_return o;
  };
  const auto before = f.auth.stats();
  auto r = run_fault(f);
  CAPTURE(r.fault.texts);
  CHECK(r.fault.code == errc::store_error);
  check_condition(r.fault.code, cfo::remedy::retry_later);
  CHECK(r.fault.texts.find("File too large") != std::string::npos);
  CHECK(r.fault.elapsed < 3s + slack);
  REQUIRE(on_disk_after_fault);  // the atomic replace left the old file whole
  CHECK(on_disk_after_fault->refresh_token == f.granted.refresh_token);
  CHECK(f.auth.stats().refresh_grants - before.refresh_grants == 2);  // the fault call's and the final one
  check_recovered(r);
  CHECK_FALSE(r.stored->refresh_token == f.granted.refresh_token);
  std::size_t leftovers = 0;  // no temporary file survives the failed write
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    if (entry.path().filename().string().find(".tmp-") != std::string::npos) ++leftovers;
  CHECK(leftovers == 0);
}

TEST_CASE("fault matrix: redirect listener flooded with idle connections and garbage requests") {
  fixture f;
  f.cfg.redirect_uri = "http://127.0.0.1:0/callback";
  f.options.listener.read_timeout = 600ms;
  f.options.listener.timeout = 15s;
  flood_report flood;
  f.fault = [&](cfo::session& s) -> asio::awaitable<observed> {
    auto ex = co_await asio::this_coro::executor;
    cfo::browser_opener open = [&, ex](const std::string& url) -> asio::awaitable<void> {
      asio::co_spawn(ex, flood_then_callback(f.auth, url, flood), [&flood](std::exception_ptr e) {
        try {
          if (e) std::rethrow_exception(e);
        } catch (const std::exception& x) {
          flood.error = x.what();
        }
      });
      co_return;
    };
    co_return co_await observe(s.authorize(open));
  };
  const auto fds_before = open_fds();
  auto r = run_fault(f);
  CAPTURE(r.fault.texts);
  CAPTURE(flood.error);
  CHECK_FALSE(r.fault.code);
  CHECK(r.fault.elapsed < f.options.listener.timeout);
  CHECK(flood.error.empty());
  CHECK(flood.garbage_answered_400 == 6);
  CHECK(flood.idle_closed == 24);
  CHECK(flood.earliest_close >= 500ms);  // not before the read deadline...
  CHECK(flood.latest_close < f.options.listener.read_timeout + slack);  // ...but by it
  CHECK(flood.callback_answer == "HTTP/1.1 200 OK");
  check_recovered(r);
  CHECK_FALSE(r.stored->refresh_token == f.granted.refresh_token);  // the new sign-in's grant
  CHECK(settled_fds(fds_before) <= fds_before);
}

}  // TEST_SUITE("faults")

}  // namespace test_faults
