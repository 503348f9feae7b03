// confluence_oauth.hpp — Atlassian OAuth 2.0 (3LO) for Confluence Cloud, as C++20
// coroutines on your own Asio executor.
//
// One header. Sections, top to bottom; each uses only what is above it:
//   1. Version, includes, Asio compatibility
//   2. Errors and completion tokens
//   3. Text and crypto helpers
//   4. secret
//   5. URLs
//   6. HTTP/1.1 messages and parser
//   7. Settings: client_config and session_options
//   8. Transport: TCP/TLS connections with deadlines, keep-alive pool
//   9. Tokens and stores
//  10. The OAuth client
//  11. The redirect listener and the browser
//  12. The session: refresh, rotation, authenticated requests, sites
//  13. Confluence: the site handle and pagination
//
// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The confluence_oauth authors
#pragma once

// ============================================================================
// 1. Version, includes, Asio compatibility
//    Everything the header needs from outside. Asio 1.22 only knows clang's
//    coroutines TS, so C++20 coroutines are switched on here for clang.
// ============================================================================

#define CONFLUENCE_OAUTH_VERSION_MAJOR 1        ///< The major version: 1.
#define CONFLUENCE_OAUTH_VERSION_MINOR 0        ///< The minor version: 0.
#define CONFLUENCE_OAUTH_VERSION_PATCH 0        ///< The patch version: 0.
#define CONFLUENCE_OAUTH_VERSION "1.0.0"        ///< The version as a string literal.

// Two ways to build (docs/INSTALL.md). Header-only by default: every file
// that includes this one compiles all of it. With
// CONFLUENCE_OAUTH_SEPARATE_COMPILATION defined in every file that includes
// it, files see declarations only and the one file that also defines
// CONFLUENCE_OAUTH_IMPLEMENTATION compiles the implementation once; the
// parts between `#if CONFLUENCE_OAUTH_DETAIL_DEFINE` and its `#endif` are
// that implementation, and CONFLUENCE_OAUTH_DETAIL_INLINE marks the
// functions declared above it and defined there.
#if defined(CONFLUENCE_OAUTH_IMPLEMENTATION) && !defined(CONFLUENCE_OAUTH_SEPARATE_COMPILATION)
#error "CONFLUENCE_OAUTH_IMPLEMENTATION goes with CONFLUENCE_OAUTH_SEPARATE_COMPILATION, defined in every file"
#endif
#if !defined(CONFLUENCE_OAUTH_SEPARATE_COMPILATION)
#define CONFLUENCE_OAUTH_DETAIL_DEFINE 1
#define CONFLUENCE_OAUTH_DETAIL_INLINE inline
#elif defined(CONFLUENCE_OAUTH_IMPLEMENTATION)
#define CONFLUENCE_OAUTH_DETAIL_DEFINE 1
#define CONFLUENCE_OAUTH_DETAIL_INLINE
#else
#define CONFLUENCE_OAUTH_DETAIL_DEFINE 0
#define CONFLUENCE_OAUTH_DETAIL_INLINE
#endif

#if defined(__clang__) && defined(__cpp_impl_coroutine) && !defined(ASIO_HAS_CO_AWAIT)
#define ASIO_HAS_CO_AWAIT 1
#define ASIO_HAS_STD_COROUTINE 1
#endif

// Standard headers first: Asio picks its allocation functions from macros
// the standard library defines, and must see the same ones in every unit.
#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <deque>
#include <ctime>
#include <fcntl.h>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <span>
#include <spawn.h>
#include <string>
#include <string_view>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <system_error>
#include <tuple>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <asio/version.hpp>
#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#if ASIO_VERSION < 102200
#error "confluence_oauth needs Asio 1.22 or newer"
#endif
#if ASIO_VERSION >= 102300
#include <asio/as_tuple.hpp>
#else
#include <asio/experimental/as_tuple.hpp>
#endif

extern char** environ;

namespace confluence_oauth {
namespace detail {
#if ASIO_VERSION >= 102300
using asio::as_tuple;
#else
using asio::experimental::as_tuple;
#endif
inline constexpr auto use_tuple = as_tuple(asio::use_awaitable);
}  // namespace detail

// ============================================================================
// 2. Errors and completion tokens
//    Every failure is an `oauth_error` (a std::system_error) whose code is in
//    `confluence_oauth::errc` or is Asio's operation_aborted for cancellation.
//    Compare a code with a `remedy` to know what to do about it: ask the user
//    to consent again, retry later, or fix the configuration.
// ============================================================================

/// Every failure the library reports, as the code of an oauth_error. Compare a
/// code with a `remedy` to know what to do about it.
enum class errc {
  /// a setting or an argument is malformed; the message says which. Remedy: fix_configuration; fix it.
  invalid_config = 1,
  /// `http://` to a host that is not loopback. Remedy: fix_configuration; use `https`.
  insecure_transport,
  /// a URL that cannot be parsed, or a target not starting with `/`. Remedy: fix_configuration; fix the URL or path.
  invalid_url,
  /// DNS lookup failed. Remedy: retry_later; check the network, retry.
  resolve_failed,
  /// TCP connect failed. Remedy: retry_later; retry.
  connect_failed,
  /// TLS failed for a reason other than the certificate. Remedy: retry_later; retry; check proxies if it persists.
  tls_handshake_failed,
  /// the certificate is untrusted or names another host. Remedy: fix_configuration; add the CA in `tls_options`; never ignore it.
  certificate_rejected,
  /// `timeouts.request` passed. Remedy: retry_later; retry, or raise the timeout.
  timeout,
  /// the peer closed before the message ended. Remedy: retry_later; retry.
  connection_closed,
  /// any other socket error. Remedy: retry_later; retry.
  network_error,
  /// malformed HTTP, an API answer that is not JSON, a listing without `results`, a next-page link to another origin or to the same page. Remedy: retry_later; retry; report it if it persists.
  protocol_error,
  /// an HTTP head over 64 KiB or 128 headers. Remedy: no remedy; a server fault: report it.
  header_too_large,
  /// an answer over its limit (`max_token_response_bytes`, `max_response_bytes`). Remedy: no remedy; raise the limit, or ask for smaller pages.
  body_too_large,
  /// a token endpoint answer without `access_token`, not JSON, with a bad `expires_in` or a non-Bearer `token_type`, or an error status without an OAuth error. Remedy: no remedy; check `token_url`.
  invalid_token_response,
  /// the refresh token is unknown, expired, revoked or reused too late; or the grant has no refresh token (no `offline_access`). Remedy: reauthenticate; authorize again.
  invalid_grant,
  /// the token endpoint refused the request (Atlassian: code expired or used twice). Remedy: reauthenticate; authorize again.
  invalid_request,
  /// client id or secret rejected (`invalid_client`, `unauthorized_client`, Atlassian's 401 `access_denied`). Remedy: fix_configuration; fix `client_id` / `client_secret`.
  invalid_client,
  /// any other OAuth error from the token endpoint (see `details().error`). Remedy: fix_configuration; read `details().error_description`.
  oauth_error_response,
  /// 500, 502, 503, 504, or `temporarily_unavailable` / `server_error`. Remedy: retry_later; retry later.
  server_unavailable,
  /// 429 (or `slow_down`), after the retries the policy allows. Remedy: retry_later; wait `details().retry_after`.
  rate_limited,
  /// an API status the library does not expect: 403, 404, a redirect it did not follow, .... Remedy: no remedy; look at `details().http_status`.
  http_error,
  /// the user declined (`error=access_denied`). Remedy: reauthenticate; ask again, or stop.
  authorization_denied,
  /// the redirect came back with another error, or with neither code nor error. Remedy: reauthenticate; authorize again; see `details().error`.
  authorization_failed,
  /// the state belongs to another authorization. Remedy: reauthenticate; start a new authorization.
  state_mismatch,
  /// nobody came back to the listener within `listener_options::timeout`. Remedy: reauthenticate; authorize again.
  listener_timeout,
  /// the redirect URI's port is taken. Remedy: fix_configuration; free the port, or register another redirect URI.
  address_in_use,
  /// the browser command was not found or did not start. Remedy: fix_configuration; set `$BROWSER`, or print the URL.
  browser_launch_failed,
  /// the store could not read or write, a lock wait timed out, or refreshed tokens could not be saved (they are kept and saved first next time). Remedy: retry_later; fix the disk or database, retry.
  store_error,
  /// the store holds no readable token set, or an encrypted file was altered. Remedy: reauthenticate; sign in again.
  store_corrupt,
  /// an encrypted file and the key given do not belong together. Remedy: fix_configuration; give the right key, or none.
  store_key_mismatch,
  /// the session holds no grant. Remedy: reauthenticate; `load()` or authorize.
  not_signed_in,
  /// the API refused a freshly refreshed access token. Remedy: reauthenticate; sign in again.
  unauthorized,
  /// the access token lacks a scope the endpoint needs. Remedy: fix_configuration; add the scope in the developer console and `scopes`, sign in again.
  scope_mismatch,
  /// 410 Gone: the endpoint is retired for OAuth apps (Confluence v1). Remedy: fix_configuration; use `/wiki/api/v2/...`.
  api_gone,
  /// `site::find` found no match, or the grant reaches no site. Remedy: fix_configuration; pick a listed site, or consent to one.
  site_not_found,
};

/// What to do about a failure; `ec == remedy::retry_later` works for any errc code.
enum class remedy {
  reauthenticate = 1,  ///< the grant is gone: run the authorization again
  retry_later,         ///< transient: the same call may succeed later
  fix_configuration,   ///< wrong settings: retrying will not help
};

namespace detail {

inline const char* errc_message(errc e) noexcept {
  switch (e) {
    case errc::invalid_config: return "invalid configuration";
    case errc::insecure_transport: return "plain http is only allowed to loopback hosts";
    case errc::invalid_url: return "invalid URL";
    case errc::resolve_failed: return "host name lookup failed";
    case errc::connect_failed: return "connection failed";
    case errc::tls_handshake_failed: return "TLS handshake failed";
    case errc::certificate_rejected: return "server certificate rejected";
    case errc::timeout: return "deadline exceeded";
    case errc::connection_closed: return "connection closed by peer";
    case errc::network_error: return "network error";
    case errc::protocol_error: return "malformed HTTP message";
    case errc::header_too_large: return "HTTP header too large";
    case errc::body_too_large: return "HTTP body too large";
    case errc::invalid_token_response: return "invalid token response";
    case errc::invalid_grant: return "grant is invalid, expired or revoked: consent again";
    case errc::invalid_request: return "token request rejected";
    case errc::invalid_client: return "client authentication failed";
    case errc::oauth_error_response: return "authorization server returned an error";
    case errc::server_unavailable: return "server unavailable";
    case errc::rate_limited: return "rate limited";
    case errc::http_error: return "unexpected HTTP status";
    case errc::authorization_denied: return "authorization denied by the user";
    case errc::authorization_failed: return "authorization failed";
    case errc::state_mismatch: return "authorization response does not match the request (state mismatch)";
    case errc::listener_timeout: return "timed out waiting for the authorization redirect";
    case errc::address_in_use: return "redirect listener address already in use";
    case errc::browser_launch_failed: return "could not start the browser";
    case errc::store_error: return "token store failed";
    case errc::store_corrupt: return "stored token set is unreadable: sign in again";
    case errc::store_key_mismatch: return "token store encryption key does not match the stored file";
    case errc::not_signed_in: return "not signed in: authorize first";
    case errc::unauthorized: return "the API refused a freshly refreshed access token: sign in again";
    case errc::scope_mismatch: return "the access token lacks a scope this endpoint needs";
    case errc::api_gone: return "this API endpoint is no longer available (410 Gone)";
    case errc::site_not_found: return "no accessible Confluence site matches";
  }
  return "unknown confluence_oauth error";
}

inline std::optional<remedy> remedy_of(errc e) noexcept {
  switch (e) {
    case errc::invalid_grant:
    case errc::invalid_request:
    case errc::authorization_denied:
    case errc::authorization_failed:
    case errc::state_mismatch:
    case errc::listener_timeout:
    case errc::store_corrupt:
    case errc::not_signed_in:
    case errc::unauthorized:
      return remedy::reauthenticate;
    case errc::resolve_failed:
    case errc::connect_failed:
    case errc::tls_handshake_failed:
    case errc::timeout:
    case errc::connection_closed:
    case errc::network_error:
    case errc::protocol_error:
    case errc::server_unavailable:
    case errc::rate_limited:
    case errc::store_error:
      return remedy::retry_later;
    case errc::invalid_config:
    case errc::insecure_transport:
    case errc::invalid_url:
    case errc::certificate_rejected:
    case errc::invalid_client:
    case errc::oauth_error_response:
    case errc::address_in_use:
    case errc::browser_launch_failed:
    case errc::store_key_mismatch:
    case errc::scope_mismatch:
    case errc::api_gone:
    case errc::site_not_found:
      return remedy::fix_configuration;
    default:
      return std::nullopt;
  }
}

class errc_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "confluence_oauth"; }
  std::string message(int ev) const override { return errc_message(static_cast<errc>(ev)); }
  bool equivalent(int ev, const std::error_condition& cond) const noexcept override;
};

class remedy_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "confluence_oauth.remedy"; }
  std::string message(int ev) const override {
    switch (static_cast<remedy>(ev)) {
      case remedy::reauthenticate: return "the user must authorize again";
      case remedy::retry_later: return "transient failure: retry later";
      case remedy::fix_configuration: return "configuration error";
    }
    return "unknown remedy";
  }
};

inline const std::error_category& error_category() noexcept {
  static const errc_category_impl category;
  return category;
}

inline const std::error_category& remedy_category() noexcept {
  static const remedy_category_impl category;
  return category;
}

}  // namespace detail

/// An errc as a std::error_code, so that `ec == errc::timeout` works.
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), detail::error_category()}; }
/// A remedy as a std::error_condition, so that `ec == remedy::retry_later` works.
inline std::error_condition make_error_condition(remedy c) noexcept {
  return {static_cast<int>(c), detail::remedy_category()};
}

inline bool detail::errc_category_impl::equivalent(int ev, const std::error_condition& cond) const noexcept {
  if (cond.category() != remedy_category()) return false;
  auto c = remedy_of(static_cast<errc>(ev));
  return c && static_cast<int>(*c) == cond.value();
}

}  // namespace confluence_oauth

template <>
struct std::is_error_code_enum<confluence_oauth::errc> : std::true_type {};
template <>
struct std::is_error_condition_enum<confluence_oauth::remedy> : std::true_type {};

namespace confluence_oauth {

/// What a server said about a failure, as far as it said anything.
struct error_details {
  /// Atlassian's rate-limit headers, as far as an answer carried them
  /// (ATLASSIAN.md "Rate limits"); also http_response::rate_limit().
  struct rate_limit_info {
    std::optional<std::uint64_t> limit;             ///< X-RateLimit-Limit: requests in the period
    std::optional<std::uint64_t> remaining;         ///< X-RateLimit-Remaining: requests left in it
    std::optional<std::chrono::sys_seconds> reset;  ///< X-RateLimit-Reset (ISO 8601): when the period ends
    bool near_limit = false;                        ///< X-RateLimit-NearLimit: under 20% of the budget is left
    std::string reason;                             ///< RateLimit-Reason: which limit was hit (sanitized)
    std::optional<std::chrono::seconds> beta_retry_after;  ///< Beta-Retry-After, read as Retry-After is
  };

  std::string error;              ///< RFC 6749 `error`
  std::string error_description;  ///< RFC 6749 `error_description`, or the API's message (secrets redacted)
  std::string error_uri;          ///< RFC 6749 `error_uri`
  int http_status = 0;            ///< 0 when no HTTP response was involved
  std::string www_authenticate;   ///< the WWW-Authenticate header
  /// Retry-After, when the server sent one (seconds or an HTTP date; a huge
  /// value saturates at seconds::max()), or the wait this session still owes
  /// the host when the call failed before sending.
  std::optional<std::chrono::seconds> retry_after;
  rate_limit_info rate_limit;  ///< the answer's rate-limit headers
  /// confluence::get_all: the items of the pages read before the one that
  /// failed, in order.
  std::vector<nlohmann::json> partial_results;
  /// confluence::get_all: the page that failed, as a path on the site: give
  /// it to get_all again to go on where it stopped (empty for other calls).
  std::string resume_path;
};

namespace detail {
struct error_access;
}

/// The one exception type: a std::system_error with the server's details.
class oauth_error : public std::system_error {
 public:
  /// `context` says what failed; what the server said goes in `details`.
  oauth_error(std::error_code ec, const std::string& context, error_details details = {})
      : std::system_error(ec, compose(context, details)), context_(context), details_(std::move(details)) {}

  /// All of what the server said.
  const error_details& details() const noexcept { return details_; }

 private:
  friend struct detail::error_access;

  static std::string compose(const std::string& context, const error_details& d) {
    std::string text = context;
    if (d.http_status == 0 && d.error.empty()) return text;
    text += " (";
    if (d.http_status != 0) text += "HTTP " + std::to_string(d.http_status);
    if (!d.error.empty()) {
      if (d.http_status != 0) text += "; ";
      text += d.error;
      if (!d.error_description.empty()) text += ": " + d.error_description;
    }
    text += ')';
    return text;
  }

  std::string context_;
  error_details details_;
};

namespace detail {
[[noreturn]] inline void fail(errc e, const std::string& context, error_details details = {}) {
  throw oauth_error(make_error_code(e), context, std::move(details));
}

/// The same failure with more details (get_all's partial results): same code, same message.
struct error_access {
  static oauth_error with_details(const oauth_error& e, error_details details) {
    return oauth_error(e.code(), e.context_, std::move(details));
  }
};
}  // namespace detail

// ----------------------------------------------------------------------------
// Completion tokens
//   Every asynchronous operation takes an Asio completion token last. The
//   default, use_awaitable, returns an awaitable that throws oauth_error. Any
//   other token (a callback, use_future, deferred, as_tuple...) completes with
//   (std::error_code, T), or (std::error_code) when there is no result; wrap
//   it in with_error_details to also receive the oauth_error behind the code.
// ----------------------------------------------------------------------------

namespace detail {
/// The completion token operations use when given none: `co_await` them.
using default_completion_token = asio::use_awaitable_t<>;

/// A completion token adapter, like asio::redirect_error: the operation
/// completes `token` with (error_code, T) and, when it fails, also stores the
/// full oauth_error (HTTP status, server error, Retry-After) in `out`. It must
/// be the outermost adapter.
template <typename CompletionToken>
struct with_error_details_t {
  CompletionToken token;            ///< the wrapped completion token
  std::optional<oauth_error>* out;  ///< where a failure's oauth_error goes
};
}  // namespace detail

/// Wraps `token` so that a failed operation also stores its oauth_error in
/// `out`. `out` must outlive the operation.
template <typename CompletionToken>
detail::with_error_details_t<std::decay_t<CompletionToken>> with_error_details(CompletionToken&& token,
                                                                      std::optional<oauth_error>& out) {
  return {std::forward<CompletionToken>(token), &out};
}

namespace detail {

template <typename T>
struct completion_of {
  using type = void(std::error_code, T);
};
template <>
struct completion_of<void> {
  using type = void(std::error_code);
};

/// The code an exception stands for; the exception itself goes to `out`.
inline std::error_code error_code_of(std::exception_ptr failure, std::optional<oauth_error>* out) {
  if (!failure) return {};
  try {
    std::rethrow_exception(failure);
  } catch (const oauth_error& e) {
    if (out) *out = e;
    return e.code();
  } catch (const std::system_error& e) {
    if (out) out->emplace(e.code(), e.what());
    return e.code();
  } catch (const std::bad_alloc&) {
    if (out) out->emplace(std::make_error_code(std::errc::not_enough_memory), "out of memory");
    return std::make_error_code(std::errc::not_enough_memory);
  } catch (const std::exception& e) {  // from user code (a store, a browser opener): not ours to type
    auto ec = std::make_error_code(std::errc::state_not_recoverable);
    if (out) out->emplace(ec, std::string("unexpected exception: ") + e.what());
    return ec;
  } catch (...) {
    auto ec = std::make_error_code(std::errc::state_not_recoverable);
    if (out) out->emplace(ec, "unexpected exception");
    return ec;
  }
}

/// Completes a co_spawned operation's handler with an error code in place of
/// the exception. Keeps the handler's executor, cancellation slot and
/// allocator, so co_spawn connects the caller's cancellation to the operation.
template <typename Handler>
class error_code_handler {
 public:
  using executor_type = asio::associated_executor_t<Handler, asio::any_io_executor>;
  using cancellation_slot_type = asio::associated_cancellation_slot_t<Handler>;
  using allocator_type = asio::associated_allocator_t<Handler>;

  error_code_handler(Handler handler, asio::any_io_executor ex, std::optional<oauth_error>* out)
      : handler_(std::move(handler)), ex_(std::move(ex)), out_(out) {}

  executor_type get_executor() const noexcept { return asio::get_associated_executor(handler_, ex_); }
  cancellation_slot_type get_cancellation_slot() const noexcept {
    return asio::get_associated_cancellation_slot(handler_);
  }
  allocator_type get_allocator() const noexcept { return asio::get_associated_allocator(handler_); }

  template <typename... Result>
  void operator()(std::exception_ptr failure, Result&&... result) {
    std::move(handler_)(error_code_of(failure, out_), std::forward<Result>(result)...);
  }

 private:
  Handler handler_;
  asio::any_io_executor ex_;
  std::optional<oauth_error>* out_;
};

template <typename T>
struct spawn_initiation {
  asio::any_io_executor ex;
  std::optional<oauth_error>* out;

  template <typename Handler>
  void operator()(Handler&& handler, asio::awaitable<T> op) const {
    asio::co_spawn(ex, std::move(op), error_code_handler<std::decay_t<Handler>>(std::forward<Handler>(handler), ex, out));
  }
};

/// Awaits the operation `make()` returns while owning `make`, so what it
/// captured (the operation's arguments) lives as long as the operation.
template <typename T, typename Make>
asio::awaitable<T> run_owned(Make make) {
  if constexpr (std::is_void_v<T>)
    co_await make();
  else
    co_return co_await make();
}

template <typename CompletionToken>
struct is_with_error_details : std::false_type {};
template <typename CompletionToken>
struct is_with_error_details<with_error_details_t<CompletionToken>> : std::true_type {};

/// Starts the operation `make()` returns (an awaitable<T>) the way `token`
/// asks: returned as it is for the default token, else co_spawned on `ex`
/// and completed with an error code.
template <typename T, typename CompletionToken, typename Make>
auto launch(const asio::any_io_executor& ex, CompletionToken&& token, Make&& make) {
  using token_type = std::decay_t<CompletionToken>;
  using signature = typename completion_of<T>::type;
  if constexpr (std::is_same_v<token_type, default_completion_token>) {
    return run_owned<T>(std::forward<Make>(make));
  } else if constexpr (is_with_error_details<token_type>::value) {
    auto inner = token.token;
    return asio::async_initiate<decltype(inner), signature>(spawn_initiation<T>{ex, token.out}, inner,
                                                            run_owned<T>(std::forward<Make>(make)));
  } else {
    return asio::async_initiate<CompletionToken, signature>(spawn_initiation<T>{ex, nullptr}, token,
                                                            run_owned<T>(std::forward<Make>(make)));
  }
}

}  // namespace detail

// ============================================================================
// 3. Text and crypto helpers
//    Percent-encoding, query strings, base64url, HTML escaping, and the few
//    OpenSSL primitives the library needs: random bytes, SHA-256, AES-256-GCM.
// ============================================================================

namespace detail {

/// ASCII lower case, whatever the locale: what URLs and HTTP names need.
constexpr char ascii_lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

/// `s` in ASCII lower case.
inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

/// An HTTP token (RFC 9110 tchar+): a method or a header name.
inline bool is_http_token(std::string_view s) noexcept {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

inline std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

inline bool is_unreserved(unsigned char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
inline void percent_encode_to(std::string& out, std::string_view in) {
  static constexpr char hex[] = "0123456789ABCDEF";
  for (unsigned char c : in) {
    if (is_unreserved(c)) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
}

inline std::string percent_encode(std::string_view in) {
  std::string out;
  out.reserve(in.size() * 3);
  percent_encode_to(out, in);
  return out;
}

inline int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// Decodes %XX (and '+' as space, as forms and query strings use it).
/// Malformed escapes are kept literally rather than rejected, as browsers do.
inline std::string percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%' && i + 2 < in.size() && hex_value(in[i + 1]) >= 0 && hex_value(in[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2]));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

using param_list = std::vector<std::pair<std::string, std::string>>;

/// Splits `a=1&b=2` into decoded pairs, in order; empty segments are skipped.
inline param_list parse_query(std::string_view query) {
  param_list out;
  while (!query.empty()) {
    auto amp = query.find('&');
    auto part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (part.empty()) continue;
    auto eq = part.find('=');
    if (eq == std::string_view::npos)
      out.emplace_back(percent_decode(part), std::string{});
    else
      out.emplace_back(percent_decode(part.substr(0, eq)), percent_decode(part.substr(eq + 1)));
  }
  return out;
}

/// `application/x-www-form-urlencoded` (and query string) composition.
inline void append_param(std::string& out, std::string_view name, std::string_view value) {
  if (!out.empty()) out += '&';
  percent_encode_to(out, name);
  out += '=';
  percent_encode_to(out, value);
}

inline std::string base64url_encode(const unsigned char* data, std::size_t size) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((size * 4 + 2) / 3);
  std::size_t i = 0;
  for (; i + 3 <= size; i += 3) {
    std::uint32_t n = (std::uint32_t{data[i]} << 16) | (std::uint32_t{data[i + 1]} << 8) | data[i + 2];
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += alphabet[(n >> 6) & 63];
    out += alphabet[n & 63];
  }
  if (size - i == 1) {
    std::uint32_t n = std::uint32_t{data[i]} << 16;
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
  } else if (size - i == 2) {
    std::uint32_t n = (std::uint32_t{data[i]} << 16) | (std::uint32_t{data[i + 1]} << 8);
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += alphabet[(n >> 6) & 63];
  }
  return out;
}

inline std::string base64url_encode(std::string_view data) {
  return base64url_encode(reinterpret_cast<const unsigned char*>(data.data()), data.size());
}

/// Decodes base64url or standard base64, padding optional; nullopt when malformed.
inline std::optional<std::string> base64_decode(std::string_view in) {
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  std::string out;
  out.reserve(in.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '-' || c == '+') v = 62;
    else if (c == '_' || c == '/') v = 63;
    else return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  if (bits >= 6) return std::nullopt;
  return out;
}

inline std::string html_escape(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (char c : in) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

/// The length of the well-formed UTF-8 sequence at the start of `s` (1 to 4)
/// and its code point; 0 when it is not one (overlong, surrogate, cut short).
inline std::size_t utf8_sequence(std::string_view s, char32_t& cp) noexcept {
  const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = b(0);
  std::size_t n = lead < 0x80 ? 1 : lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3
                : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
  if (n == 0 || n > s.size()) return 0;
  cp = n == 1 ? lead : lead & (0x7F >> n);
  for (std::size_t i = 1; i < n; ++i) {
    if ((b(i) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i) & 0x3F);
  }
  const bool overlong = (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000);
  if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

/// Makes text from outside (server messages, error fields, file names) safe
/// to print, log or put in an exception, and short: C0 and C1 controls and
/// line separators become spaces, bidirectional overrides, isolates and marks
/// (which can make a terminal show text in another order) are dropped, and
/// bytes that are not UTF-8 become '?'. At most `max` bytes of the text,
/// never half a character, then "..." when it was cut.
inline std::string sanitize_text(std::string_view in, std::size_t max = 300) {
  std::string out;
  out.reserve(std::min(in.size(), max) + 3);
  std::size_t i = 0;
  while (i < in.size()) {
    char32_t cp = 0;
    std::size_t n = utf8_sequence(in.substr(i), cp);
    if (i + std::max<std::size_t>(n, 1) > max) break;
    if (n == 0) {
      out += '?';
      n = 1;
    } else if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029) {
      out += ' ';
    } else if (!(cp == 0x061C || cp == 0x200E || cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) ||
                 (cp >= 0x2066 && cp <= 0x2069))) {
      out.append(in.substr(i, n));
    }
    i += n;
  }
  if (i < in.size()) out += "...";
  return out;
}

inline void random_bytes(unsigned char* out, std::size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) fail(errc::network_error, "RAND_bytes failed");
}

/// A random string of `n` bytes of entropy, base64url encoded.
inline std::string random_token(std::size_t n = 32) {
  std::vector<unsigned char> buf(n);
  random_bytes(buf.data(), n);
  auto out = base64url_encode(buf.data(), n);
  OPENSSL_cleanse(buf.data(), n);
  return out;
}

inline std::array<unsigned char, 32> sha256(std::string_view data) {
  std::array<unsigned char, 32> digest{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest.data(), &len, EVP_sha256(), nullptr) != 1)
    fail(errc::network_error, "SHA-256 failed");
  return digest;
}

/// Overwrites a string's bytes before it is freed, however the scope ends.
struct wipe_on_exit {
  std::string& s;
  ~wipe_on_exit() { OPENSSL_cleanse(s.data(), s.size()); }
};

inline bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

/// Owns an OpenSSL object of type T, which `Free` frees.
template <class T, auto Free>
struct openssl_free {
  void operator()(T* p) const noexcept { Free(p); }
};
template <class T, auto Free>
using openssl_ptr = std::unique_ptr<T, openssl_free<T, Free>>;

/// AES-256-GCM: returns nonce (12) || ciphertext || tag (16).
inline std::string aes256gcm_seal(std::string_view key, std::string_view plaintext, std::string_view aad = {}) {
  if (key.size() != 32) fail(errc::invalid_config, "AES-256-GCM key must be 32 bytes");
  std::string out(12 + plaintext.size() + 16, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  random_bytes(o, 12);
  openssl_ptr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  const auto* k = reinterpret_cast<const unsigned char*>(key.data());
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, k, o) != 1 ||
      (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                                         static_cast<int>(aad.size())) != 1) ||
      EVP_EncryptUpdate(ctx.get(), o + 12, &len, reinterpret_cast<const unsigned char*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), o + 12 + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, o + 12 + plaintext.size()) != 1)
    fail(errc::store_error, "AES-256-GCM encryption failed");
  return out;
}

/// Inverse of aes256gcm_seal; nullopt when the key is wrong or the data was altered.
inline std::optional<std::string> aes256gcm_open(std::string_view key, std::string_view sealed,
                                                 std::string_view aad = {}) {
  if (key.size() != 32) fail(errc::invalid_config, "AES-256-GCM key must be 32 bytes");
  if (sealed.size() < 28) return std::nullopt;
  const auto* in = reinterpret_cast<const unsigned char*>(sealed.data());
  const std::size_t n = sealed.size() - 28;
  std::string out(n, '\0');
  openssl_ptr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  std::array<unsigned char, 16> tag{};
  std::memcpy(tag.data(), in + 12 + n, 16);
  bool ok = ctx && EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr,
                                      reinterpret_cast<const unsigned char*>(key.data()), in) == 1 &&
            (aad.empty() || EVP_DecryptUpdate(ctx.get(), nullptr, &len,
                                              reinterpret_cast<const unsigned char*>(aad.data()),
                                              static_cast<int>(aad.size())) == 1) &&
            EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len, in + 12,
                              static_cast<int>(n)) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, 16, tag.data()) == 1 &&
            EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()) + len, &len) == 1;
  if (!ok) {
    OPENSSL_cleanse(out.data(), out.size());
    return std::nullopt;
  }
  return out;
}

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
/// The string `j` holds under `key`, or nullptr when `j` is no object or the
/// value is missing or not a string: how every answer and file is read.
inline const std::string* json_string(const nlohmann::json& j, const char* key) noexcept {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? &it->get_ref<const std::string&>() : nullptr;
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// Parses a whole string as a non-negative decimal integer.
template <typename Int>
inline std::optional<Int> parse_uint(std::string_view s) noexcept {
  Int v{};
  if (s.empty() || s.front() == '-' || s.front() == '+') return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace detail

// ============================================================================
// 4. secret
//    A string that never prints: streams show a short SHA-256 fingerprint.
//    Compares in constant time; wipes its storage when it goes away.
// ============================================================================

/// A string that never prints, compares in constant time and is wiped when it
/// goes away. Streams show its fingerprint().
class secret {
 public:
  /// An empty secret.
  secret() = default;
  ///@{
  /// Holds `value`.
  explicit secret(std::string value) : value_(std::move(value)) {}
  explicit secret(std::string_view value) : value_(value) {}
  explicit secret(const char* value) : value_(value) {}
  ///@}
  /// A copy; both are wiped when they go.
  secret(const secret& other) : value_(other.value_) {}
  /// Takes the value; `other` is wiped.
  secret(secret&& other) noexcept : value_(std::move(other.value_)) { other.wipe(); }
  /// Wipes the old value, copies the new one.
  secret& operator=(const secret& other) {
    if (this != &other) {
      wipe();
      value_ = other.value_;
    }
    return *this;
  }
  /// Wipes the old value, takes the new one; `other` is wiped.
  secret& operator=(secret&& other) noexcept {
    if (this != &other) {
      wipe();
      value_ = std::move(other.value_);
      other.wipe();
    }
    return *this;
  }
  ~secret() { wipe(); }

  /// The plain value. Every call site of this is a place a secret leaves the vault.
  const std::string& reveal() const noexcept { return value_; }
  /// True when there is no value.
  bool empty() const noexcept { return value_.empty(); }

  /// "sha256:1a2b3c4d": enough to tell two secrets apart in a log, useless to an attacker.
  std::string fingerprint() const {
    if (value_.empty()) return "empty";
    auto d = detail::sha256(value_);
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "sha256:";
    for (int i = 0; i < 4; ++i) {
      out += hex[d[i] >> 4];
      out += hex[d[i] & 15];
    }
    return out;
  }

  /// Compares in constant time.
  friend bool operator==(const secret& a, const secret& b) noexcept {
    return detail::constant_time_equal(a.value_, b.value_);
  }
  /// Prints "secret(<fingerprint>)", never the value.
  friend std::ostream& operator<<(std::ostream& os, const secret& s) {
    return os << "secret(" << s.fingerprint() << ')';
  }

 private:
  // Resizing to capacity zero-fills the short-string buffer too, so no byte of
  // the old value survives a move or destruction.
  void wipe() noexcept {
    value_.resize(value_.capacity());
    OPENSSL_cleanse(value_.data(), value_.size());
    value_.clear();
  }

  std::string value_;
};

namespace detail {

/// Overwrites a string's whole buffer, the bytes past its size included.
inline void wipe(std::string& s) noexcept { OPENSSL_cleanse(s.data(), s.capacity()); }

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
/// The ways a secret can come back in text: as it is; as this library sends
/// it (percent-encoded in a form or query, escaped in JSON) and as servers
/// re-encode what they echo (lower-case hex, '+' for space, JSON's "\/");
/// and inside base64 (an HTTP Basic credential "id:secret", a JWT). Base64
/// of a longer text carries the secret at one of three alignments: the
/// characters that depend only on the secret's bytes are listed for each.
/// Each form once, longest first.
inline std::vector<std::string> encodings_of(const std::string& value) {
  std::vector<std::string> forms;
  forms.push_back(value);
  std::string percent = percent_encode(value), plus;
  for (std::size_t i = 0; i < percent.size(); ++i) {
    if (percent.compare(i, 3, "%20") == 0) {
      plus += '+';
      i += 2;
    } else {
      plus += percent[i];
    }
  }
  for (const std::string* form : {&percent, &plus}) {
    std::string lower = *form;
    for (std::size_t i = 0; i + 2 < lower.size(); ++i)
      if (lower[i] == '%')
        for (std::size_t k = i + 1; k <= i + 2; ++k)
          if (lower[k] >= 'A' && lower[k] <= 'F') lower[k] = static_cast<char>(lower[k] + 32);
    forms.push_back(*form);
    forms.push_back(std::move(lower));
  }
  wipe(percent);
  wipe(plus);
  nlohmann::json as_json = value;
  std::string escaped = as_json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  wipe(as_json.get_ref<std::string&>());
  escaped = escaped.substr(1, escaped.size() - 2);  // without the quotes
  std::string solidus;
  for (char c : escaped) solidus += c == '/' ? std::string("\\/") : std::string(1, c);
  forms.push_back(std::move(escaped));
  forms.push_back(std::move(solidus));
  for (std::size_t lead = 0; lead < 3; ++lead) {
    std::string padded(lead, '\0');
    padded += value;
    std::string url = base64url_encode(padded);
    wipe(padded);
    // Skip what the lead bytes touch, and the last group, which the next bytes touch.
    const std::size_t from = (lead * 4 + 2) / 3, to = (padded.size() / 3) * 4;
    if (to > from + 8) {
      std::string core = url.substr(from, to - from), standard = core;
      for (char& c : standard) c = c == '-' ? '+' : c == '_' ? '/' : c;
      forms.push_back(std::move(core));
      forms.push_back(std::move(standard));
    }
    wipe(url);
  }
  std::sort(forms.begin(), forms.end(), [](const auto& a, const auto& b) { return a.size() > b.size() || (a.size() == b.size() && a < b); });
  for (auto dup = std::unique(forms.begin(), forms.end()); dup != forms.end(); ++dup) wipe(*dup);
  forms.erase(std::unique(forms.begin(), forms.end()), forms.end());
  return forms;
}

/// Replaces every occurrence of the given secrets in text from outside, in
/// every encoding of encodings_of, with "[redacted]". White space and line
/// breaks inside an occurrence of a long secret do not hide it (a server or a
/// log that wraps long lines), and a piece of at least 8 characters of one
/// that starts or ends the text is taken for the rest of a secret cut at a
/// line's edge. Linear in the text for each form: it also runs on large
/// error bodies.
inline std::string redact(std::string text, std::span<const secret* const> secrets) {
  static constexpr std::string_view mark = "[redacted]";
  static constexpr std::size_t min_piece = 8, min_wrapped = 12;
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  std::vector<std::string> forms;
  for (const secret* s : secrets)
    if (s && s->reveal().size() >= 4)
      for (auto& form : encodings_of(s->reveal())) forms.push_back(std::move(form));
  // [begin, end) ranges of the text to replace, from both passes.
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  // Whole occurrences, as they are: a secret made mostly of white space too.
  for (const auto& form : forms)
    if (form.size() >= 4)
      for (auto at = text.find(form); at != std::string::npos; at = text.find(form, at + form.size()))
        spans.emplace_back(at, at + form.size());
  // Then occurrences that white space broke up, and pieces at the edges, in
  // the text without white space ("compact"). A compact index maps back by
  // the white space before it: the j-th white space character stands after
  // `spaces[j] - j` compact characters.
  std::vector<std::uint32_t> spaces;
  std::string compact;
  const bool has_space = text.size() <= UINT32_MAX && std::any_of(text.begin(), text.end(), is_space);
  if (has_space) {
    compact.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (is_space(text[i])) spaces.push_back(static_cast<std::uint32_t>(i - spaces.size()));
      else compact += text[i];
    }
  }
  const std::string_view squeezed = has_space ? std::string_view(compact) : std::string_view(text);
  auto original = [&](std::size_t c) {
    return c + static_cast<std::size_t>(std::upper_bound(spaces.begin(), spaces.end(), c) - spaces.begin());
  };
  for (auto& form : forms) {
    std::string solid = form;
    std::erase_if(solid, is_space);
    if (solid.size() < min_wrapped) {
      wipe(solid);
      continue;
    }
    if (has_space)
      for (auto at = squeezed.find(solid); at != std::string_view::npos; at = squeezed.find(solid, at + solid.size()))
        spans.emplace_back(original(at), original(at + solid.size() - 1) + 1);
    // The text ends with the start of a secret...
    const std::string_view head(solid.data(), min_piece);
    const std::size_t window = std::min(squeezed.size(), solid.size() - 1);
    for (auto at = squeezed.find(head, squeezed.size() - window); at != std::string_view::npos; at = squeezed.find(head, at + 1))
      if (solid.compare(0, squeezed.size() - at, squeezed.data() + at, squeezed.size() - at) == 0) {
        spans.emplace_back(original(at), text.size());
        break;
      }
    // ...or starts with the end of one.
    if (squeezed.size() >= min_piece) {
      const std::string_view start = squeezed.substr(0, min_piece);
      for (auto at = solid.find(start, 1); at != std::string::npos; at = solid.find(start, at + 1))
        if (solid.size() - at <= squeezed.size() && squeezed.compare(0, solid.size() - at, std::string_view(solid).substr(at)) == 0) {
          spans.emplace_back(0, original(solid.size() - at - 1) + 1);
          break;
        }
    }
    wipe(solid);
  }
  for (auto& f : forms) wipe(f);
  wipe(compact);
  if (spans.empty()) return text;
  std::sort(spans.begin(), spans.end());
  std::string out;
  out.reserve(text.size());
  std::size_t copied = 0;
  for (std::size_t i = 0; i < spans.size();) {
    std::size_t begin = spans[i].first, end = spans[i].second;
    for (++i; i < spans.size() && spans[i].first <= end; ++i) end = std::max(end, spans[i].second);
    out.append(text, copied, begin - copied);
    out += mark;
    copied = end;
  }
  out.append(text, copied);
  wipe(text);
  return out;
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

}  // namespace detail

// ============================================================================
// 5. URLs
//    Just what OAuth needs: http and https URLs with host, port and target,
//    composed back to text, and relative references resolved against a base.
// ============================================================================

namespace detail {

/// An absolute http(s) URL, as parse_url reads it.
struct url {
  std::string scheme;       ///< "http" or "https", lower case
  std::string host;         ///< name or address; IPv6 without brackets
  std::uint16_t port = 0;   ///< explicit or the scheme's default
  std::string target = "/"; ///< path and query, never empty

  /// True when the scheme is https.
  bool is_https() const noexcept { return scheme == "https"; }
  /// The target without its query.
  std::string_view path() const noexcept { return std::string_view(target).substr(0, target.find('?')); }
  /// The query without its '?'; empty when there is none.
  std::string_view query() const noexcept {
    auto q = target.find('?');
    return q == std::string::npos ? std::string_view{} : std::string_view(target).substr(q + 1);
  }
  /// Host as it goes into a Host header or a URL: brackets around IPv6, port unless default.
  std::string authority() const {
    std::string out = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if (port != (is_https() ? 443 : 80)) out += ":" + std::to_string(port);
    return out;
  }
  /// "scheme://authority".
  std::string origin() const { return scheme + "://" + authority(); }
  /// The whole URL as text.
  std::string str() const { return origin() + target; }
};


/// parse_url, quoting `shown` in its errors: a copy of the text with the
/// secrets it may hold redacted.
inline url parse_url_showing(std::string_view text, std::string_view shown) {
  auto bad = [&](const char* why) -> url { fail(errc::invalid_url, std::string(why) + ": " + sanitize_text(shown, 200)); };
  url u;
  auto colon = text.find("://");
  if (colon == std::string_view::npos) return bad("missing scheme");
  u.scheme = ascii_lower(text.substr(0, colon));
  if (u.scheme != "http" && u.scheme != "https") return bad("scheme must be http or https");
  auto rest = text.substr(colon + 3);
  if (rest.find('#') != std::string_view::npos) return bad("fragments are not allowed");
  auto slash = rest.find_first_of("/?");
  auto authority = rest.substr(0, slash);
  u.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (u.target.front() == '?') u.target.insert(0, "/");
  if (authority.find('@') != std::string_view::npos) return bad("user information is not allowed");
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 literal");
    u.host = std::string(authority.substr(1, close - 1));
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("junk after IPv6 literal");
      port_text = after.substr(1);
    }
  } else {
    auto c = authority.rfind(':');
    u.host = std::string(authority.substr(0, c));
    if (c != std::string_view::npos) port_text = authority.substr(c + 1);
  }
  if (u.host.empty()) return bad("missing host");
  u.host = ascii_lower(u.host);
  for (char c : u.host) {
    // Brackets only delimit an IPv6 literal: in a name they would change what authority() means.
    if (static_cast<unsigned char>(c) <= 0x20 || c == '/' || c == '\\' || c == '%' || c == '[' || c == ']')
      return bad("invalid host");
  }
  for (char c : u.target)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return bad("invalid character in path");
  if (!port_text.empty()) {
    auto p = parse_uint<std::uint16_t>(port_text);
    if (!p) return bad("invalid port");
    u.port = *p;
  } else {
    u.port = u.is_https() ? 443 : 80;
  }
  return u;
}


/// Parses an absolute http(s) URL. Userinfo and fragments are refused: neither
/// belongs in an OAuth endpoint or redirect URI.
inline url parse_url(std::string_view text) { return parse_url_showing(text, text); }

/// True for a literal loopback address: 127.0.0.0/8 and ::1 (with or without
/// brackets). A name, "localhost" included, is not trusted by its spelling:
/// plain http to one is allowed only once every address it resolves to is
/// loopback (checked when connecting).
inline bool is_loopback(std::string_view host) noexcept {
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::error_code ec;
  auto addr = asio::ip::make_address(std::string(host), ec);
  return !ec && addr.is_loopback();
}

/// A loopback address, or "localhost", whose addresses are checked when it is
/// resolved (the transport) or never looked up (the listener binds literals).
inline bool names_loopback(std::string_view host) noexcept { return iequals(host, "localhost") || is_loopback(host); }

/// `base` followed by `path`, which must start with '/' (else invalid_url,
/// naming `what`): how a path on an API base or a site becomes a URL.
inline std::string path_under(std::string_view base, std::string_view path, std::string_view what) {
  if (path.empty() || path.front() != '/')
    fail(errc::invalid_url, std::string(what) + " must start with '/': \"" + sanitize_text(path, 100) + "\"");
  std::string out;
  out.reserve(base.size() + path.size());
  out.append(base).append(path);
  return out;
}

/// Resolves an absolute URL, an absolute path ("/wiki/...") or a path relative
/// to a prefix, as pagination links from the Atlassian gateway need.
inline url resolve_reference(const url& base, std::string_view ref) {
  if (ref.find("://") != std::string_view::npos) return parse_url(ref);
  url out = base;
  if (ref.empty()) return out;
  if (ref.substr(0, 2) == "//") return parse_url(base.scheme + ":" + std::string(ref));
  if (ref.front() == '/') {
    out.target = std::string(ref);
  } else if (ref.front() == '?') {
    out.target = std::string(base.path()) + std::string(ref);
  } else {
    auto dir = base.path().substr(0, base.path().rfind('/') + 1);
    out.target = std::string(dir) + std::string(ref);
  }
  return out;
}

}  // namespace detail

// ============================================================================
// 6. HTTP/1.1 messages and parser
//    One incremental parser for requests and responses: Content-Length,
//    chunked (trailers discarded), close-delimited bodies, 1xx skipped, and
//    hard limits on head and body sizes. Tolerates bare LF line endings.
// ============================================================================

namespace detail {
/// One header of an HTTP message.
struct http_header {
  std::string name;   ///< header name
  std::string value;  ///< header value
};
}  // namespace detail

/// An ordered list of headers, looked up case-insensitively.
class http_headers {
 public:
  /// Appends a header, keeping any of the same name.
  void add(std::string name, std::string value) {
    make_room();
    items_.push_back({std::move(name), std::move(value)});
  }
  /// Sets a header, replacing every earlier one of the same name.
  void set(std::string_view name, std::string value) {
    erase(name);
    make_room();
    items_.push_back({std::string(name), std::move(value)});
  }
  /// Removes every header of that name.
  void erase(std::string_view name) {
    std::erase_if(items_, [&](const detail::http_header& h) { return detail::iequals(h.name, name); });
  }
  /// The first value of a header, case-insensitive; nullopt if absent.
  std::optional<std::string_view> get(std::string_view name) const noexcept {
    for (const auto& h : items_)
      if (detail::iequals(h.name, name)) return std::string_view(h.value);
    return std::nullopt;
  }
  /// How many headers have that name.
  std::size_t count(std::string_view name) const noexcept {
    return static_cast<std::size_t>(
        std::count_if(items_.begin(), items_.end(), [&](const detail::http_header& h) { return detail::iequals(h.name, name); }));
  }
  /// Iteration over the http_headers in order.
  auto begin() const noexcept { return items_.begin(); }
  /// The end of the iteration.
  auto end() const noexcept { return items_.end(); }
  /// The number of headers.
  std::size_t size() const noexcept { return items_.size(); }
  /// Removes all headers.
  void clear() noexcept { items_.clear(); }

 private:
  // Messages carry a handful of headers: one allocation instead of four.
  void make_room() {
    if (items_.capacity() == 0) items_.reserve(8);
  }

  std::vector<detail::http_header> items_;
};

/// An HTTP request to send through a session or a confluence site.
struct http_request {
  std::string method = "GET";  ///< the request method
  std::string target = "/";    ///< a path under api_url or an absolute URL on its origin (a path on the site for confluence)
  http_headers headers;        ///< Host, Content-Length and Transfer-Encoding are set by the library
  std::string body;            ///< sent with a Content-Length
};

/// An HTTP response, read whole.
struct http_response {
  int status = 0;        ///< the status code
  std::string reason;    ///< the reason phrase
  http_headers headers;  ///< the response headers
  std::string body;      ///< the whole body

  /// The rate-limit headers (X-RateLimit-*, RateLimit-Reason, Beta-Retry-After) read from `headers`.
  error_details::rate_limit_info rate_limit() const;
};

namespace detail {
/// Limits on one HTTP message the library reads; over them is header_too_large or body_too_large.
struct http_limits {
  std::size_t max_head_bytes = 64 * 1024;        ///< start line plus headers
  std::size_t max_header_count = 128;            ///< headers in one message
  std::size_t max_body_bytes = 8 * 1024 * 1024;  ///< set by the library from max_token_response_bytes or max_response_bytes
};
}  // namespace detail

namespace detail {

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
/// True when a comma-separated header value holds `token` (case-insensitive).
inline bool header_has_token(std::string_view value, std::string_view token) noexcept {
  while (!value.empty()) {
    auto comma = value.find(',');
    if (iequals(trim(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

inline std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

/// A non-negative decimal of any length, saturating at `most` instead of
/// overflowing: Atlassian's edge has sent `Retry-After: 9223372036854775807`
/// (ATLASSIAN.md "Rate limits").
inline std::optional<std::uint64_t> parse_saturating(std::string_view s, std::uint64_t most) noexcept {
  if (s.empty()) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<std::uint64_t>(c - '0');
    v = v > (most - digit) / 10 ? most : v * 10 + digit;
  }
  return v;
}

/// Retry-After as delta-seconds of any size (saturating at seconds::max()) or
/// an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
inline std::optional<std::chrono::seconds> parse_retry_after(std::string_view v,
                                                             std::chrono::system_clock::time_point now) {
  v = trim(v);
  if (!v.empty() && v.front() >= '0' && v.front() <= '9') {
    auto secs = parse_saturating(v, static_cast<std::uint64_t>(std::chrono::seconds::max().count()));
    if (!secs) return std::nullopt;
    return std::chrono::seconds(static_cast<std::chrono::seconds::rep>(*secs));
  }
  static constexpr std::string_view months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (v.size() != 29 || v[3] != ',' || v.substr(25) != " GMT") return std::nullopt;
  auto day = parse_uint<unsigned>(v.substr(5, 2));
  auto year = parse_uint<unsigned>(v.substr(12, 4));
  auto hh = parse_uint<unsigned>(v.substr(17, 2));
  auto mm = parse_uint<unsigned>(v.substr(20, 2));
  auto ss = parse_uint<unsigned>(v.substr(23, 2));
  auto month = std::find(std::begin(months), std::end(months), v.substr(8, 3));
  if (!day || !year || !hh || !mm || !ss || month == std::end(months) || *day < 1 || *day > 31 || *hh > 23 ||
      *mm > 59 || *ss > 60)
    return std::nullopt;
  auto m = static_cast<unsigned>(month - std::begin(months)) + 1;
  // In seconds since the epoch: a date after 2262 would overflow the clock's nanoseconds.
  const std::int64_t when = days_from_civil(*year, m, *day) * 86400 + *hh * 3600 + *mm * 60 + *ss;
  const std::int64_t at = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  return std::chrono::seconds(when > at ? when - at : 0);
}

/// X-RateLimit-Reset: an ISO 8601 date and time ("2026-01-31T12:00:00Z",
/// fractions of a second ignored, "Z" or an offset such as "+01:00").
inline std::optional<std::chrono::sys_seconds> parse_iso8601(std::string_view v) {
  v = trim(v);
  if (v.size() < 20 || v[4] != '-' || v[7] != '-' || (v[10] != 'T' && v[10] != 't') || v[13] != ':' || v[16] != ':')
    return std::nullopt;
  auto year = parse_uint<unsigned>(v.substr(0, 4));
  auto month = parse_uint<unsigned>(v.substr(5, 2));
  auto day = parse_uint<unsigned>(v.substr(8, 2));
  auto hh = parse_uint<unsigned>(v.substr(11, 2));
  auto mm = parse_uint<unsigned>(v.substr(14, 2));
  auto ss = parse_uint<unsigned>(v.substr(17, 2));
  if (!year || !month || !day || !hh || !mm || !ss || *month < 1 || *month > 12 || *day < 1 || *day > 31 ||
      *hh > 23 || *mm > 59 || *ss > 60)
    return std::nullopt;
  auto zone = v.substr(19);
  if (!zone.empty() && zone.front() == '.') {
    std::size_t digits = 1;
    while (digits < zone.size() && zone[digits] >= '0' && zone[digits] <= '9') ++digits;
    if (digits == 1) return std::nullopt;
    zone.remove_prefix(digits);
  }
  std::int64_t offset = 0;
  if (zone != "Z" && zone != "z") {
    if ((zone.size() != 6 || zone[3] != ':') && zone.size() != 5) return std::nullopt;
    if (zone.front() != '+' && zone.front() != '-') return std::nullopt;
    auto oh = parse_uint<unsigned>(zone.substr(1, 2));
    auto om = parse_uint<unsigned>(zone.substr(zone.size() - 2));
    if (!oh || !om || *oh > 23 || *om > 59) return std::nullopt;
    offset = (zone.front() == '-' ? -1 : 1) * static_cast<std::int64_t>(*oh * 3600 + *om * 60);
  }
  const std::int64_t when = days_from_civil(*year, *month, *day) * 86400 + *hh * 3600 + *mm * 60 + *ss - offset;
  return std::chrono::sys_seconds(std::chrono::seconds(when));
}

}  // namespace detail

CONFLUENCE_OAUTH_DETAIL_INLINE error_details::rate_limit_info http_response::rate_limit() const {
  constexpr auto most = std::numeric_limits<std::uint64_t>::max();
  error_details::rate_limit_info r;
  if (auto v = headers.get("X-RateLimit-Limit")) r.limit = detail::parse_saturating(detail::trim(*v), most);
  if (auto v = headers.get("X-RateLimit-Remaining")) r.remaining = detail::parse_saturating(detail::trim(*v), most);
  if (auto v = headers.get("X-RateLimit-Reset")) r.reset = detail::parse_iso8601(*v);
  if (auto v = headers.get("X-RateLimit-NearLimit")) r.near_limit = detail::iequals(detail::trim(*v), "true");
  if (auto v = headers.get("RateLimit-Reason")) r.reason = detail::sanitize_text(*v, 200);
  if (auto v = headers.get("Beta-Retry-After"))
    r.beta_retry_after = detail::parse_retry_after(*v, std::chrono::system_clock::now());
  return r;
}

namespace detail {

class http_parser {
 public:
  enum class kind { request, response };

  http_parser(kind k, const http_limits& limits) : kind_(k), limits_(limits) {}

  /// Consumes bytes; returns how many were used. Stops at the end of one
  /// message; the rest belongs to whatever follows on the connection.
  std::size_t feed(std::string_view data) {
    std::size_t used = 0;
    if (!data.empty()) started_ = true;
    while (used < data.size() && !done() && !ec_) used += step(data.substr(used));
    return used;
  }

  /// The peer closed the connection.
  void on_eof() {
    if (done() || ec_) return;
    if (state_ == state::close_body) {
      state_ = state::done;
    } else {
      ec_ = make_error_code(errc::connection_closed);
      error_text_ = started_ ? "connection closed before the message was complete" : "connection closed before any response";
    }
  }

  /// The response answers a HEAD request: no body whatever the headers say.
  void expect_no_body() noexcept { no_body_ = true; }

  bool done() const noexcept { return state_ == state::done; }
  /// The part of a Content-Length body still to come, to read straight into
  /// (no copy through a receive buffer); empty in any other state.
  std::span<char> body_space() noexcept {
    if (state_ != state::length_body) return {};
    const auto remaining = static_cast<std::size_t>(remaining_);
    return {body_.data() + (body_.size() - remaining), remaining};
  }
  /// `n` bytes were written at the start of body_space().
  void body_received(std::size_t n) noexcept {
    remaining_ -= n;
    if (remaining_ == 0) state_ = state::done;
  }
  /// The body runs until the peer closes the connection (no length, not chunked).
  bool reading_to_close() const noexcept { return state_ == state::close_body; }
  bool started() const noexcept { return started_; }
  std::error_code error() const noexcept { return ec_; }
  const std::string& error_text() const noexcept { return error_text_; }
  bool keep_alive() const noexcept { return keep_alive_ && state_ == state::done; }

  http_request take_request() { return {std::move(method_), std::move(target_), std::move(headers_), std::move(body_)}; }
  http_response take_response() { return {status_, std::move(reason_), std::move(headers_), std::move(body_)}; }
  int status() const noexcept { return status_; }
  const http_headers& headers() const noexcept { return headers_; }

 private:
  enum class state { head, length_body, chunk_size, chunk_data, chunk_data_end, trailers, close_body, done };

  std::size_t error(errc e, std::string text) {
    ec_ = make_error_code(e);
    error_text_ = std::move(text);
    return 0;
  }

  enum class line_status { partial, complete, too_long };
  struct line_take {
    std::size_t used;
    line_status status;
  };

  // Appends bytes to line_ up to and including '\n', unless the line would
  // then exceed `limit`.
  line_take take_line(std::string_view data, std::size_t limit) {
    auto nl = data.find('\n');
    std::size_t n = nl == std::string_view::npos ? data.size() : nl + 1;
    if (line_.size() + n > limit) return {n, line_status::too_long};
    line_.append(data.substr(0, n));
    return {n, nl == std::string_view::npos ? line_status::partial : line_status::complete};
  }

  // Appends up to remaining_ bytes of a chunk; its CRLF follows them.
  std::size_t take_chunk_data(std::string_view data) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, data.size()));
    body_.append(data.substr(0, n));
    remaining_ -= n;
    if (remaining_ == 0) state_ = state::chunk_data_end;
    return n;
  }

  static std::string_view chomp(std::string_view line) noexcept {
    if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
  }

  std::size_t step(std::string_view data) {
    switch (state_) {
      case state::head: return step_head(data);
      case state::length_body: {
        const auto space = body_space();
        const auto n = std::min(space.size(), data.size());
        std::memcpy(space.data(), data.data(), n);
        body_received(n);
        return n;
      }
      case state::chunk_size: {
        auto [n, status] = take_line(data, 1024);
        if (status == line_status::too_long) return error(errc::protocol_error, "chunk size line too long");
        if (status == line_status::partial) return n;
        auto text = chomp(line_);
        text = trim(text.substr(0, text.find(';')));
        std::uint64_t size = 0;
        auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), size, 16);
        if (text.empty() || ec != std::errc{} || p != text.data() + text.size())
          return error(errc::protocol_error, "invalid chunk size");
        line_.clear();
        if (size > limits_.max_body_bytes - body_.size())
          return error(errc::body_too_large, "body exceeds " + std::to_string(limits_.max_body_bytes) + " bytes");
        remaining_ = size;
        state_ = size == 0 ? state::trailers : state::chunk_data;
        return n;
      }
      case state::chunk_data: return take_chunk_data(data);
      case state::chunk_data_end: {
        auto [n, status] = take_line(data, 2);
        if (status == line_status::partial) return n;
        if (status == line_status::too_long || !chomp(line_).empty())
          return error(errc::protocol_error, "chunk not followed by CRLF");
        line_.clear();
        state_ = state::chunk_size;
        return n;
      }
      case state::trailers: {
        auto [n, status] = take_line(data, limits_.max_head_bytes);
        if (status == line_status::too_long) return error(errc::header_too_large, "trailers too large");
        if (status == line_status::partial) return n;
        trailer_bytes_ += line_.size();
        if (trailer_bytes_ > limits_.max_head_bytes) return error(errc::header_too_large, "trailers too large");
        bool last = chomp(line_).empty();
        line_.clear();
        if (last) state_ = state::done;
        return n;
      }
      case state::close_body: {
        if (data.size() > limits_.max_body_bytes - body_.size())
          return error(errc::body_too_large, "body exceeds " + std::to_string(limits_.max_body_bytes) + " bytes");
        body_.append(data);
        return data.size();
      }
      case state::done: return 0;
    }
    return 0;
  }

  std::size_t step_head(std::string_view data) {
    // Find the blank line that ends the head, scanning each byte once.
    std::size_t used = 0;
    while (used < data.size()) {
      auto nl = data.find('\n', used);
      std::size_t end = nl == std::string_view::npos ? data.size() : nl + 1;
      if (head_.size() + (end - used) > limits_.max_head_bytes)
        return error(errc::header_too_large, "HTTP head exceeds " + std::to_string(limits_.max_head_bytes) + " bytes");
      if (head_.capacity() < typical_head_bytes) head_.reserve(typical_head_bytes);  // one allocation, not six
      head_.append(data.substr(used, end - used));
      used = end;
      if (nl == std::string_view::npos) break;
      std::string_view last_line(head_);
      last_line = last_line.substr(line_start_);
      line_start_ = head_.size();
      if (chomp(last_line).empty()) {
        if (head_.size() == last_line.size()) {  // blank lines before a message are skipped
          head_.clear();
          line_start_ = 0;
          continue;
        }
        if (!parse_head()) return used;
        head_.clear();
        line_start_ = 0;
        if (state_ == state::head) continue;  // a 1xx interim response: the real one follows
        break;
      }
    }
    return used;
  }

  bool parse_head() {
    std::string_view head(head_);
    auto line_end = head.find('\n');
    auto start = chomp(head.substr(0, line_end + 1));
    head.remove_prefix(line_end + 1);
    if (start.find('\r') != std::string_view::npos) return error(errc::protocol_error, "bare CR in the start line"), false;
    if (!(kind_ == kind::response ? parse_status_line(start) : parse_request_line(start))) return false;
    headers_.clear();
    while (!head.empty()) {
      auto nl = head.find('\n');
      auto line = chomp(head.substr(0, nl + 1));
      head.remove_prefix(nl + 1);
      if (line.empty()) break;
      if (line.front() == ' ' || line.front() == '\t') return error(errc::protocol_error, "obsolete header folding"), false;
      // A bare CR ends a line for some parsers and not for others: request smuggling.
      if (line.find('\r') != std::string_view::npos) return error(errc::protocol_error, "bare CR in a header line"), false;
      auto colon = line.find(':');
      if (colon == std::string_view::npos || colon == 0) return error(errc::protocol_error, "malformed header line"), false;
      auto name = line.substr(0, colon);
      if (!is_http_token(name)) return error(errc::protocol_error, "invalid header name"), false;
      if (headers_.size() >= limits_.max_header_count) return error(errc::header_too_large, "too many headers"), false;
      headers_.add(std::string(name), std::string(trim(line.substr(colon + 1))));
    }
    return choose_framing();
  }

  bool parse_version(std::string_view v) {
    if (v == "HTTP/1.1") {
      keep_alive_ = true;
      return true;
    }
    if (v == "HTTP/1.0") {
      keep_alive_ = false;
      return true;
    }
    return false;
  }

  bool parse_status_line(std::string_view line) {
    auto sp = line.find(' ');
    if (sp == std::string_view::npos || !parse_version(line.substr(0, sp)))
      return error(errc::protocol_error, "bad status line"), false;
    auto rest = line.substr(sp + 1);
    auto code = parse_uint<int>(rest.substr(0, 3));
    if (!code || *code < 100 || *code > 599 || (rest.size() > 3 && rest[3] != ' '))
      return error(errc::protocol_error, "bad status line"), false;
    status_ = *code;
    reason_ = std::string(rest.size() > 4 ? rest.substr(4) : std::string_view{});
    return true;
  }

  bool parse_request_line(std::string_view line) {
    auto sp1 = line.find(' ');
    auto sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp1 == sp2 || !parse_version(line.substr(sp2 + 1)))
      return error(errc::protocol_error, "bad request line"), false;
    method_ = std::string(line.substr(0, sp1));
    target_ = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
    if (method_.empty() || target_.empty() || target_.find(' ') != std::string::npos)
      return error(errc::protocol_error, "bad request line"), false;
    return true;
  }

  bool choose_framing() {
    if (auto c = headers_.get("Connection")) {
      if (header_has_token(*c, "close")) keep_alive_ = false;
      else if (header_has_token(*c, "keep-alive")) keep_alive_ = true;
    }
    if (kind_ == kind::response && status_ >= 100 && status_ < 200 && status_ != 101) {
      headers_.clear();
      return true;  // stay in state::head
    }
    auto te = headers_.get("Transfer-Encoding");
    auto cl_count = headers_.count("Content-Length");
    if (te && cl_count) return error(errc::protocol_error, "both Transfer-Encoding and Content-Length"), false;
    bool bodiless = kind_ == kind::response &&
                    (no_body_ || status_ == 204 || status_ == 304 || status_ == 101);
    if (bodiless) {
      state_ = state::done;
      return true;
    }
    if (te) {
      if (!iequals(trim(*te), "chunked")) return error(errc::protocol_error, "unsupported Transfer-Encoding"), false;
      state_ = state::chunk_size;
      return true;
    }
    if (cl_count) {
      std::optional<std::uint64_t> length;
      for (const auto& h : headers_) {
        if (!iequals(h.name, "Content-Length")) continue;
        auto v = parse_uint<std::uint64_t>(trim(h.value));
        if (!v || (length && *length != *v)) return error(errc::protocol_error, "invalid Content-Length"), false;
        length = v;
      }
      if (*length > limits_.max_body_bytes)
        return error(errc::body_too_large, "body of " + std::to_string(*length) + " bytes exceeds " +
                                               std::to_string(limits_.max_body_bytes)),
               false;
      body_.resize(static_cast<std::size_t>(*length));  // filled in place: see body_space()
      remaining_ = *length;
      state_ = remaining_ == 0 ? state::done : state::length_body;
      return true;
    }
    if (kind_ == kind::request) {
      state_ = state::done;
    } else {
      keep_alive_ = false;
      state_ = state::close_body;
    }
    return true;
  }

  static constexpr std::size_t typical_head_bytes = 1024;

  kind kind_;
  http_limits limits_;
  state state_ = state::head;
  std::error_code ec_;
  std::string error_text_;
  bool started_ = false;
  bool no_body_ = false;
  bool keep_alive_ = false;
  std::string head_;
  std::size_t line_start_ = 0;
  std::string line_;
  std::size_t trailer_bytes_ = 0;
  std::uint64_t remaining_ = 0;
  int status_ = 0;
  std::string reason_, method_, target_;
  http_headers headers_;
  std::string body_;
};

/// The head of a request to `u` (its target, not req.target); the body is
/// written after it without a copy.
/// Refuses what would let a caller smuggle a second request onto a pooled
/// connection or contradict the framing this client writes itself.
inline void check_request(const http_request& req) {
  if (!is_http_token(req.method)) fail(errc::invalid_config, "invalid HTTP method \"" + sanitize_text(req.method, 40) + "\"");
  for (const auto& h : req.headers) {
    if (!is_http_token(h.name)) fail(errc::invalid_config, "invalid header name \"" + sanitize_text(h.name, 40) + "\"");
    if (h.value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
      fail(errc::invalid_config, "header " + h.name + " holds a line break or NUL");
    for (std::string_view framing : {"Host", "Content-Length", "Transfer-Encoding"})
      if (iequals(h.name, framing)) fail(errc::invalid_config, "header " + h.name + " is set by the client itself");
  }
}

inline std::string serialize_head(const http_request& req, const url& u) {
  std::string out;
  std::size_t size = 96 + req.method.size() + u.target.size() + u.host.size();  // with the fixed parts
  for (const auto& h : req.headers) size += h.name.size() + h.value.size() + 4;
  out.reserve(size);  // one allocation: an Atlassian access token alone is over a kilobyte
  out += req.method;
  out += ' ';
  out += u.target;
  out += " HTTP/1.1\r\nHost: ";
  out += u.authority();
  out += "\r\n";
  for (const auto& h : req.headers) {
    out += h.name;
    out += ": ";
    out += h.value;
    out += "\r\n";
  }
  if (!req.body.empty() || req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
    out += "Content-Length: ";
    out += std::to_string(req.body.size());
    out += "\r\n";
  }
  out += "\r\n";
  return out;
}

inline std::string serialize_response(const http_response& res) {
  std::string out = "HTTP/1.1 " + std::to_string(res.status) + ' ' + res.reason + "\r\n";
  for (const auto& h : res.headers) out += h.name + ": " + h.value + "\r\n";
  out += "Content-Length: " + std::to_string(res.body.size()) + "\r\n\r\n";
  out += res.body;
  return out;
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

}  // namespace detail

// ============================================================================
// 7. Settings
//    What a program chooses: the app's registration, endpoints, TLS trust and
//    HTTP deadlines (client_config), and how a session refreshes, retries and
//    listens for the sign-in (session_options). Plain values, checked when a
//    client or session is made.
// ============================================================================

/// The app's registration and the endpoints; docs/GUIDE.md, "Configuration
/// reference", gives the rules. Checked by validate() when a client is made.
struct client_config {
  /// Whom TLS trusts. Peer verification and host-name checking are always on.
  struct tls_options {
    std::string ca_file;            ///< extra trusted CA certificates, PEM file
    std::string ca_pem;             ///< extra trusted CA certificates, PEM text
    bool use_system_trust = true;   ///< the system's default trust store
  };

  /// Deadlines of the HTTP client.
  struct http_timeouts {
    std::chrono::milliseconds request{std::chrono::seconds(30)};  ///< one HTTP exchange, connect included
    std::chrono::milliseconds idle{std::chrono::seconds(30)};     ///< a pooled connection unused this long is dropped
  };

  /// How token request bodies are encoded.
  enum class token_encoding {
    json,  ///< application/json, as Atlassian wants
    form   ///< application/x-www-form-urlencoded (RFC 6749)
  };

  std::string client_id;  ///< the app's client id
  secret client_secret;   ///< the app's secret; may be empty only with use_pkce, and never for Atlassian
  std::string redirect_uri = "http://localhost:3000/callback";  ///< the registered callback URL
  std::vector<std::string> scopes = {"read:page:confluence", "read:space:confluence", "offline_access"};  ///< requested scopes
  std::string audience = "api.atlassian.com";  ///< empty: parameter left out
  std::string prompt = "consent";              ///< empty: parameter left out
  std::string authorize_url = "https://auth.atlassian.com/authorize";  ///< where the user consents
  std::string token_url = "https://auth.atlassian.com/oauth/token";    ///< where codes and refresh tokens are traded
  std::string api_url = "https://api.atlassian.com";                   ///< the base of session requests
  token_encoding encoding = token_encoding::json;  ///< token request bodies
  /// PKCE S256 (RFC 7636) with every authorization: on by default, for
  /// Atlassian too (the secret is still sent; a server that ignores the
  /// challenge loses nothing). A code stolen from the loopback redirect is then
  /// worthless without this run's verifier. Off only for a server that rejects it.
  bool use_pkce = true;
  std::vector<std::pair<std::string, std::string>> extra_authorize_params;  ///< more authorization URL parameters; empty values left out
  tls_options tls;        ///< whom TLS trusts
  http_timeouts timeouts;  ///< HTTP deadlines
  std::size_t max_token_response_bytes = 1024 * 1024;  ///< largest token endpoint answer
  std::string user_agent = "confluence_oauth/" CONFLUENCE_OAUTH_VERSION;  ///< sent with every request
  /// The client id and secret are an Atlassian service account's: a session
  /// gets its tokens with the client credentials grant (no browser, no refresh
  /// token; a new 60-minute token before the old one expires), and
  /// redirect_uri and scopes go unused (the admin chose the scopes).
  bool service_account = false;

  /// Throws oauth_error(invalid_config / invalid_url / insecure_transport) on the first problem.
  void validate() const;
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE void client_config::validate() const {
  // A secret pasted into another field (a URL, a scope) must not reach a message.
  const secret* own[] = {&client_secret};
  auto shown = [&](const std::string& field) { return detail::redact(field, own); };
  auto bad = [](const std::string& why) { detail::fail(errc::invalid_config, why); };
  auto printable = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) > 0x20 && c != 0x7f; });
  };
  if (client_id.empty()) bad("client_id is empty");
  if (!printable(client_id)) bad("client_id contains spaces or control characters");
  // A public client of a standard server may go without a secret, given PKCE; Atlassian's never.
  const bool atlassian = detail::iequals(detail::parse_url_showing(token_url, shown(token_url)).host, "auth.atlassian.com");
  if (client_secret.empty() && (!use_pkce || atlassian || service_account))
    bad("client_secret is empty (Atlassian apps are confidential clients)");
  if (scopes.empty()) bad("no scopes requested");
  for (const auto& s : scopes)
    if (s.empty() || !printable(s))
      bad("scope \"" + detail::sanitize_text(shown(s), 60) + "\" is empty or contains spaces");
  for (const auto* endpoint : {&authorize_url, &token_url, &api_url}) {
    auto u = detail::parse_url_showing(*endpoint, shown(*endpoint));
    if (!u.is_https() && !detail::names_loopback(u.host))
      detail::fail(errc::insecure_transport, "endpoint " + detail::sanitize_text(shown(u.origin()), 200) + " must use https");
  }
  auto r = detail::parse_url_showing(redirect_uri, shown(redirect_uri));
  if (!r.is_https() && !detail::names_loopback(r.host))
    detail::fail(errc::insecure_transport, "redirect_uri must be https or a loopback http URL");
  if (timeouts.request.count() <= 0) bad("request timeout must be positive");
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// The session's settings; the session checks them when it is made.
struct session_options {
  /// Deadlines and limits of the redirect listener.
  struct listener_options {
    std::chrono::milliseconds timeout{std::chrono::minutes(5)};        ///< whole wait for the redirect
    std::chrono::milliseconds read_timeout{std::chrono::seconds(10)};  ///< one connection: request in, page out
    std::size_t max_connections = 32;                                  ///< connections at once; when full, the oldest is closed
    std::string app_name = "confluence_oauth";                         ///< shown on the pages
    /// With a browser_command, authorize() opens a private local
    /// page (mode 0600 in a 0700 folder, removed when the sign-in ends) that
    /// redirects to the authorization URL: the URL, state included, never
    /// appears on a command line, which every local user can read. False passes
    /// the URL itself, for a browser that cannot read local files (snap confinement).
    bool redirect_page = true;
  };

  /// How 429 and 503 answers, and token requests that failed in transit, are
  /// retried. A Retry-After is honoured as sent (never sooner, ATLASSIAN.md
  /// "Rate limits"); without one, the defaults are Atlassian's own example
  /// backoff: 5 s, doubling up to 30 s, each wait times a random 0.7-1.3, at
  /// most 4 retries. A wait the server asks of one request holds back the
  /// session's other requests to the same host until the same moment.
  struct retry_policy {
    int max_attempts = 5;  ///< tries per request, the first included (Atlassian: 4 retries); 1 = no retry
    std::chrono::milliseconds base_delay{std::chrono::seconds(5)};  ///< first backoff wait, doubled for each retry after it
    std::chrono::milliseconds max_delay{std::chrono::seconds(30)};  ///< backoff cap (not of Retry-After)
    double jitter = 0.3;  ///< each backoff wait times a random factor in [1 - jitter, 1 + jitter]; 0 to 1
    /// The longest wait slept through, the server's or the session's shared
    /// one: a longer one fails the call at once with rate_limited (or
    /// server_unavailable for a 503), details().retry_after saying how long.
    std::chrono::milliseconds max_wait{std::chrono::seconds(60)};
    /// After an answer with `X-RateLimit-NearLimit: true` (under 20% of the
    /// budget left), the session's next request to that host starts no sooner
    /// than this later; 0 = no slow-down.
    std::chrono::milliseconds near_limit_pause{0};
  };

  std::chrono::seconds refresh_skew{60};  ///< refresh this long before the access token expires
  std::chrono::seconds near_expiry{300};  ///< a 403 or 404 this close to expiry counts as a 401
  retry_policy retry;                     ///< retries of 429, 503 and refreshes that failed in transit
  std::size_t max_response_bytes = 16 * 1024 * 1024;  ///< largest API answer
  listener_options listener;              ///< for authorize()
  /// Told, once a day at most per session and kind, in a sentence that names
  /// no secret, when the grant held ages or lacks a scope asked for: the
  /// refresh token expires within 14 days (Atlassian's 90-day inactivity or
  /// 365-day absolute limit), or the server granted fewer scopes than
  /// client_config::scopes (an admin removed one: a configuration problem).
  /// Runs on the session's strand: it must not block; what it throws is ignored.
  std::function<void(const std::string& warning)> grant_warning;
};

// ============================================================================
// 8. Transport
//    HTTP/1.1 over TCP or TLS. Each exchange runs on its connection's strand
//    under one deadline that covers resolve, connect, handshake, write and
//    read. TLS 1.2+, peer verification with host-name (or IP) checking and SNI
//    always on; trust is the system store plus an optional extra CA. Plain
//    http only to loopback. Idle connections are kept per origin and reused,
//    at most 256 per origin (more requests wait for one), TLS sessions
//    resumed; a reused one that fails before any response byte is retried
//    once fresh.
// ============================================================================



namespace detail {

class http_client;

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
/// Runs `op` on `strand` and returns its result. The caller's cancellation is
/// posted to the strand instead of being emitted from the caller's thread (as
/// Asio 1.22's co_spawn would), so the child's cancellation slots are only
/// ever touched on the child's own strand.
template <typename T>
asio::awaitable<T> on_strand(asio::strand<asio::any_io_executor> strand, asio::awaitable<T> op) {
  asio::cancellation_state state = co_await asio::this_coro::cancellation_state;
  asio::cancellation_slot slot = state.slot();
  if (!slot.is_connected()) co_return co_await asio::co_spawn(strand, std::move(op), asio::use_awaitable);
  auto signal = std::make_shared<asio::cancellation_signal>();
  slot.assign([signal, strand](asio::cancellation_type type) {
    asio::post(strand, [signal, type] { signal->emit(type); });
  });
  struct clear_slot {
    asio::cancellation_slot& slot;
    ~clear_slot() {
      if (slot.is_connected()) slot.clear();
    }
  } guard{slot};
  co_return co_await asio::co_spawn(strand, std::move(op), asio::bind_cancellation_slot(signal->slot(), asio::use_awaitable));
}

/// Keeps a socket out of programs we start (the browser): Asio opens sockets
/// without close-on-exec, and an inherited listener would hold its port.
inline void set_cloexec(int fd) noexcept {
  if (fd >= 0) ::fcntl(fd, F_SETFD, ::fcntl(fd, F_GETFD) | FD_CLOEXEC);
}

inline std::shared_ptr<asio::ssl::context> make_tls_context(const client_config::tls_options& options) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  // OpenSSL's two record buffers (17 KB each) go back to the heap while a
  // connection waits: hundreds of keep-alive connections mostly wait.
  SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_RELEASE_BUFFERS);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_compression);
  ctx->set_verify_mode(asio::ssl::verify_peer);
  std::error_code ec;
  if (options.use_system_trust) ctx->set_default_verify_paths(ec);
  if (ec) fail(errc::invalid_config, "cannot load the system trust store: " + ec.message());
  if (!options.ca_file.empty()) {
    ctx->load_verify_file(options.ca_file, ec);
    if (ec) fail(errc::invalid_config, "cannot load CA file " + sanitize_text(options.ca_file) + ": " + ec.message());
  }
  if (!options.ca_pem.empty()) {
    ctx->add_certificate_authority(asio::buffer(options.ca_pem), ec);
    if (ec) fail(errc::invalid_config, "cannot load CA certificate from PEM: " + ec.message());
  }
  return ctx;
}

/// TLS sessions by host and port, to resume: a new connection to a server
/// met before skips the certificate exchange and its checks, most of a
/// handshake's cost (OpenSSL 3.0: about 2 ms of CPU for a full one). The
/// session comes from a connection whose certificate passed, to the same
/// name. Thread-safe.
class tls_sessions {
 public:
  void put(const std::string& authority, SSL_SESSION* session) {
    std::lock_guard lock(mutex_);
    if (by_authority_.size() >= max_authorities && !by_authority_.contains(authority)) by_authority_.clear();
    by_authority_[authority].reset(session);
  }
  /// Offers the session kept for `authority`, if any, to `ssl`.
  void offer(const std::string& authority, SSL* ssl) const {
    std::lock_guard lock(mutex_);
    auto it = by_authority_.find(authority);
    if (it != by_authority_.end()) SSL_set_session(ssl, it->second.get());
  }

 private:
  static constexpr std::size_t max_authorities = 64;  // a session talks to two or three
  mutable std::mutex mutex_;
  std::unordered_map<std::string, openssl_ptr<SSL_SESSION, SSL_SESSION_free>> by_authority_;
};

/// OpenSSL's I/O on a connection's own socket: recv and send on the
/// descriptor, with MSG_NOSIGNAL (OpenSSL's socket BIO writes with write(2),
/// which raises SIGPIPE in the program when the server has gone). Asio's
/// ssl::stream puts a BIO pair and two vectors, 68 KB, between OpenSSL and
/// the socket, kept for the connection's life; over this BIO a connection
/// waiting in the pool holds only its SSL object, whose record buffers are
/// released (SSL_MODE_RELEASE_BUFFERS).
class socket_bio {
 public:
  /// A BIO on `fd`, which it never closes; null when out of memory.
  static BIO* make(int fd) {
    BIO_METHOD* m = method();
    BIO* b = m ? BIO_new(m) : nullptr;
    if (b) BIO_set_data(b, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd)));
    return b;
  }

 private:
  static BIO_METHOD* method() {
    static BIO_METHOD* const m = [] {
      BIO_METHOD* made = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "confluence_oauth socket");
      if (made && (BIO_meth_set_read(made, &read) != 1 || BIO_meth_set_write(made, &write) != 1 ||
                   BIO_meth_set_ctrl(made, &ctrl) != 1 || BIO_meth_set_create(made, &create) != 1)) {
        BIO_meth_free(made);
        made = nullptr;
      }
      return made;
    }();
    return m;
  }
  static int fd(BIO* b) { return static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b))); }
  static int create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
  }
  // Not ready yet: OpenSSL reports WANT_READ or WANT_WRITE, and the
  // connection waits for the socket with Asio.
  static bool again(ssize_t n) { return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR); }
  static int read(BIO* b, char* data, int size) {
    const ssize_t n = ::recv(fd(b), data, static_cast<std::size_t>(size), 0);
    BIO_clear_retry_flags(b);
    if (again(n)) BIO_set_retry_read(b);
    return static_cast<int>(n);
  }
  static int write(BIO* b, const char* data, int size) {
    const ssize_t n = ::send(fd(b), data, static_cast<std::size_t>(size), MSG_NOSIGNAL);
    BIO_clear_retry_flags(b);
    if (again(n)) BIO_set_retry_write(b);
    return static_cast<int>(n);
  }
  static long ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
};

class connection : public std::enable_shared_from_this<connection> {
 public:
  using clock = std::chrono::steady_clock;

  struct result {
    std::error_code ec;
    std::string error_text;
    bool response_started = false;
    bool keep_alive = false;
    http_response response;
  };

  connection(const asio::any_io_executor& ex, const std::shared_ptr<asio::ssl::context>& tls,
             const std::shared_ptr<tls_sessions>& sessions, bool use_tls)
      : strand_(asio::make_strand(ex)), tls_ctx_(tls), sessions_(sessions), socket_(ex), deadline_(strand_),
        resolved_(strand_), resolver_(strand_), use_tls_(use_tls) {}

  /// Has OpenSSL hand the sessions servers grant to the connection that
  /// got them (new_session below), for tls_sessions.
  static void keep_sessions(asio::ssl::context& tls) {
    SSL_CTX_set_session_cache_mode(tls.native_handle(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(tls.native_handle(), &connection::new_session);
  }

  const asio::strand<asio::any_io_executor>& strand() const noexcept { return strand_; }
  clock::time_point last_used() const noexcept { return last_used_; }

  /// One request and its response; never throws. Every step runs on
  /// strand(), wherever the caller runs: the deadline's handler, which closes
  /// the socket, never runs beside one.
  asio::awaitable<result> exchange(const url& u, const std::string& head, const std::string& body,
                                   http_limits limits, std::chrono::milliseconds timeout, bool head_request) {
    co_await asio::this_coro::throw_if_cancelled(false);  // cancellation arrives as error codes, handled below
    co_await asio::dispatch(asio::bind_executor(strand_, asio::use_awaitable));
    timed_out_ = false;
    const auto generation = ++generation_;
    deadline_.expires_after(timeout);
    deadline_.async_wait([weak = weak_from_this(), generation](std::error_code ec) {
      if (ec) return;
      // A handler already queued when the exchange ended must not touch the
      // connection, which may be back in the pool by now.
      if (auto self = weak.lock(); self && self->generation_ == generation) self->on_deadline();
    });
    result r = co_await run(u, head, body, limits, head_request);
    ++generation_;
    deadline_.cancel();
    if (r.ec && timed_out_) {
      r.ec = make_error_code(errc::timeout);
      r.error_text = "no complete response within " + std::to_string(timeout.count()) + " ms";
    }
    if (r.ec) close();
    last_used_ = clock::now();
    co_return r;
  }

  void close() noexcept {
    std::error_code ignored;
    socket_.close(ignored);
    connected_ = false;
  }

 private:
  // Where an SSL keeps its connection.
  static int connection_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
  }

  // OpenSSL calls this inside a read or handshake of the connection the SSL
  // names (connect()), so the connection is alive. A copy is kept: OpenSSL
  // marks the SSL's own session unusable when the connection is dropped
  // without a TLS shutdown, as pooled connections are.
  static int new_session(SSL* ssl, SSL_SESSION* session) {
    auto* self = static_cast<connection*>(SSL_get_ex_data(ssl, connection_index()));
    SSL_SESSION* copy = self ? SSL_SESSION_dup(session) : nullptr;
    if (copy) self->sessions_->put(self->authority_, copy);
    return 0;  // OpenSSL keeps no reference for us
  }

  void on_deadline() {
    timed_out_ = true;
    resolved_.cancel();
    close();
  }

  /// The completion token of the steps: each resumes the exchange on the strand.
  auto on_strand_tuple() const { return asio::bind_executor(strand_, use_tuple); }

  enum class tls_step { handshake, read, write };

  /// One TLS step on the non-blocking socket: OpenSSL reads and writes it
  /// (socket_bio) and the step waits with Asio for what OpenSSL asks of it,
  /// so a deadline or a cancellation ends the wait. A read may need to write
  /// (a TLS 1.3 key update), a write to read. `data` is where a read puts
  /// its bytes or what a write sends (which it only reads).
  asio::awaitable<std::tuple<std::error_code, std::size_t>> tls(tls_step step, void* data, std::size_t size) {
    for (;;) {
      ERR_clear_error();
      errno = 0;
      std::size_t done = 0;
      int ret = 0;
      switch (step) {
        case tls_step::handshake: ret = SSL_do_handshake(ssl_.get()); break;
        case tls_step::read: ret = SSL_read_ex(ssl_.get(), data, size, &done); break;
        case tls_step::write: ret = SSL_write_ex(ssl_.get(), data, size, &done); break;
      }
      const int sys = errno;
      if (ret == 1) co_return std::tuple(std::error_code(), done);
      const int why = SSL_get_error(ssl_.get(), ret);
      if (why != SSL_ERROR_WANT_READ && why != SSL_ERROR_WANT_WRITE) co_return std::tuple(tls_failure(why, sys), done);
      const auto wait = why == SSL_ERROR_WANT_READ ? asio::socket_base::wait_read : asio::socket_base::wait_write;
      auto [ec] = co_await socket_.async_wait(wait, on_strand_tuple());
      if (ec) co_return std::tuple(ec, done);
    }
  }

  /// The codes Asio's ssl::stream gives, so that run() tells a clean close
  /// (eof: close_notify) from a cut one (stream_truncated).
  static std::error_code tls_failure(int why, int sys) {
    if (why == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
    const unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (why == SSL_ERROR_SYSCALL && e == 0)
      return sys ? std::error_code(sys, std::system_category()) : make_error_code(asio::ssl::error::stream_truncated);
    if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return asio::ssl::error::stream_truncated;
    // Never "no error" (an error code of 0), which would read as success.
    if (e == 0) return std::make_error_code(std::errc::protocol_error);
    return std::error_code(static_cast<int>(e), asio::error::get_ssl_category());
  }

  static result failure(std::error_code ec, std::string text, bool response_started = false) {
    result r;
    r.ec = ec;
    r.error_text = std::move(text);
    r.response_started = response_started;
    return r;
  }

  // Each step re-checks the deadline: when it fires while a completion is
  // already queued, cancelling finds nothing, and the next step would reopen
  // the socket (async_connect) with no deadline left to stop it.
  asio::awaitable<result> connect(const url& u) {
    // getaddrinfo runs in Asio's resolver thread and cannot be interrupted, so
    // the lookup is not awaited directly: its result arrives through shared
    // state, and the deadline or a cancellation abandons the wait for it.
    struct lookup {
      std::error_code ec;
      asio::ip::tcp::resolver::results_type endpoints;
      bool done = false;
    };
    auto found = std::make_shared<lookup>();
    resolved_.expires_at(asio::steady_timer::time_point::max());
    resolver_.async_resolve(u.host, std::to_string(u.port),
                            [found, weak = weak_from_this()](std::error_code ec, asio::ip::tcp::resolver::results_type r) {
                              *found = {ec, std::move(r), true};
                              if (auto self = weak.lock()) self->resolved_.cancel();
                            });
    co_await resolved_.async_wait(on_strand_tuple());
    if (timed_out_) co_return failure(make_error_code(errc::timeout), "deadline");
    if (!found->done) co_return failure(asio::error::operation_aborted, "cancelled");
    const std::error_code rec = found->ec;
    const auto endpoints = std::move(found->endpoints);
    if (rec) co_return failure(make_error_code(errc::resolve_failed), "cannot resolve " + u.host + ": " + rec.message());
    // Plain http goes to loopback only: a name such as "localhost" must not
    // resolve anywhere else (a tampered hosts file, a resolver that answers it).
    if (!use_tls_ && std::any_of(endpoints.begin(), endpoints.end(),
                                 [](const auto& e) { return !e.endpoint().address().is_loopback(); }))
      co_return failure(make_error_code(errc::insecure_transport),
                        "refusing plain http to " + u.authority() + ": it resolves to an address that is not loopback");
    auto [cec, ep] = co_await asio::async_connect(socket_, endpoints, on_strand_tuple());
    if (timed_out_) co_return failure(make_error_code(errc::timeout), "deadline");
    if (cec == asio::error::operation_aborted) co_return failure(cec, "cancelled");
    if (cec)
      co_return failure(make_error_code(errc::connect_failed), "cannot connect to " + u.authority() + ": " + cec.message());
    set_cloexec(socket_.native_handle());
    std::error_code ignored;
    socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
    if (use_tls_) {
      // A new SSL for each connection of this object: the socket may be a new one.
      ssl_.reset(SSL_new(tls_ctx_->native_handle()));
      BIO* bio = ssl_ ? socket_bio::make(socket_.native_handle()) : nullptr;
      std::error_code nbec;
      socket_.native_non_blocking(true, nbec);
      if (!bio || nbec) {
        ssl_.reset();
        co_return failure(make_error_code(errc::tls_handshake_failed), "cannot set up TLS with " + u.authority());
      }
      SSL* ssl = ssl_.get();
      SSL_set_bio(ssl, bio, bio);
      SSL_set_connect_state(ssl);
      // Whole TLS records in one recv, not a 5-byte header and then the rest.
      SSL_set_read_ahead(ssl, 1);
      std::error_code aec;
      asio::ip::make_address(u.host, aec);
      // Without the name or address to check, any trusted certificate would do: fail instead.
      const bool checks_set = aec ? SSL_set_tlsext_host_name(ssl, u.host.c_str()) == 1 && SSL_set1_host(ssl, u.host.c_str()) == 1
                                  : X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), u.host.c_str()) == 1;
      if (!checks_set)
        co_return failure(make_error_code(errc::certificate_rejected),
                          "cannot set up the certificate check for " + sanitize_text(u.host, 100));
      authority_ = u.authority();
      SSL_set_ex_data(ssl, connection_index(), this);
      sessions_->offer(authority_, ssl);
      auto [hec, hn] = co_await tls(tls_step::handshake, nullptr, 0);
      if (timed_out_) co_return failure(make_error_code(errc::timeout), "deadline");
      if (hec == asio::error::operation_aborted) co_return failure(hec, "cancelled");
      if (hec) {
        long verify = SSL_get_verify_result(ssl);
        if (verify != X509_V_OK)
          co_return failure(make_error_code(errc::certificate_rejected),
                            "certificate of " + u.authority() + " rejected: " + X509_verify_cert_error_string(verify));
        co_return failure(make_error_code(errc::tls_handshake_failed),
                          "TLS handshake with " + u.authority() + " failed: " + hec.message());
      }
    }
    connected_ = true;
    co_return result{};
  }

  asio::awaitable<result> run(const url& u, const std::string& head, const std::string& body,
                              http_limits limits, bool head_request) {
    if (!connected_) {
      auto c = co_await connect(u);
      if (c.ec) co_return c;
    }
    std::array<asio::const_buffer, 2> out{asio::buffer(head), asio::buffer(body)};
    // if/else, not ?: — GCC 12 destroys the result of a co_await in a conditional twice.
    std::error_code wec;
    if (use_tls_) {
      for (const asio::const_buffer& part : out) {
        if (wec || part.size() == 0) continue;
        std::tie(wec, std::ignore) = co_await tls(tls_step::write, const_cast<void*>(part.data()), part.size());
      }
    } else {
      std::tie(wec, std::ignore) = co_await asio::async_write(socket_, out, on_strand_tuple());
    }
    if (timed_out_) co_return failure(make_error_code(errc::timeout), "deadline");
    if (wec == asio::error::operation_aborted) co_return failure(wec, "cancelled");
    if (wec) co_return failure(make_error_code(errc::network_error), "write failed: " + wec.message());

    http_parser parser(http_parser::kind::response, limits);
    if (head_request) parser.expect_no_body();
    result r;
    bool leftover = false;  // bytes after the response: the connection cannot be reused
    for (;;) {
      // A body of known length is read straight into the response; the head
      // and any other framing go through buffer_.
      const std::span<char> body_space = parser.body_space();
      const asio::mutable_buffer into =
          body_space.empty() ? asio::buffer(buffer_) : asio::buffer(body_space.data(), body_space.size());
      std::error_code rec;
      std::size_t n = 0;
      if (use_tls_)
        std::tie(rec, n) = co_await tls(tls_step::read, into.data(), into.size());
      else
        std::tie(rec, n) = co_await socket_.async_read_some(into, on_strand_tuple());
      r.response_started = parser.started() || n > 0;
      if (timed_out_) co_return failure(make_error_code(errc::timeout), "deadline");
      if (rec == asio::error::operation_aborted) co_return failure(rec, "cancelled");
      // RFC 9112 9.8: over TLS only close_notify ends a body that the close delimits;
      // a bare TCP close there may be an attacker's truncation.
      if (rec == asio::ssl::error::stream_truncated && parser.reading_to_close())
        co_return failure(make_error_code(errc::connection_closed),
                          "connection closed without TLS close_notify: the body may be truncated", r.response_started);
      if (rec == asio::error::eof || rec == asio::ssl::error::stream_truncated) {
        parser.on_eof();
      } else if (rec) {
        co_return failure(make_error_code(errc::network_error), "read failed: " + rec.message(), r.response_started);
      } else if (!body_space.empty()) {
        parser.body_received(n);
      } else {
        std::size_t used = parser.feed(std::string_view(buffer_.data(), n));
        leftover = parser.done() && used < n;
      }
      if (parser.error()) co_return failure(parser.error(), parser.error_text(), r.response_started);
      if (parser.done()) break;
    }
    // Bytes after the response may also wait decrypted in OpenSSL: a body read
    // straight into the response leaves the rest of its TLS record there.
    if (use_tls_ && SSL_pending(ssl_.get()) > 0) leftover = true;
    r.keep_alive = parser.keep_alive() && !leftover;
    r.response = parser.take_response();
    if (!r.keep_alive) close();
    co_return r;
  }

  asio::strand<asio::any_io_executor> strand_;
  std::shared_ptr<asio::ssl::context> tls_ctx_;  // outlives ssl_
  std::shared_ptr<tls_sessions> sessions_;
  std::string authority_;  // whose sessions this connection's TLS gets
  asio::ip::tcp::socket socket_;
  openssl_ptr<SSL, SSL_free> ssl_;  // TLS over socket_, a new one for each connect()
  asio::steady_timer deadline_;
  asio::steady_timer resolved_;
  asio::ip::tcp::resolver resolver_;
  // Heads and chunked bodies pass through here (an Atlassian head is 1-2 KB);
  // bodies of known length do not (see run()).
  std::array<char, 4 * 1024> buffer_{};
  std::uint64_t generation_ = 0;
  clock::time_point last_used_ = clock::now();
  bool use_tls_;
  bool connected_ = false;
  bool timed_out_ = false;
};

/// HTTP client with a keep-alive pool per origin. Thread-safe.
class http_client {
 public:
  http_client(asio::any_io_executor ex, const client_config::tls_options& tls, client_config::http_timeouts t)
      : ex_(std::move(ex)), pool_strand_(asio::make_strand(ex_)), tls_(make_tls_context(tls)), timeouts_(t) {
    connection::keep_sessions(*tls_);
  }

  const asio::any_io_executor& get_executor() const noexcept { return ex_; }

  /// Sends `req` to `u` and returns the whole response, whatever its status.
  /// The request line uses u.target; req.target is ignored.
  asio::awaitable<http_response> send(const url& u, const http_request& req, http_limits limits = {}) {
    if (!u.is_https() && !names_loopback(u.host))
      fail(errc::insecure_transport, "refusing plain http to " + u.authority());
    check_request(req);
    const std::string head = serialize_head(req, u);
    for (int attempt = 0;; ++attempt) {
      bool reused = false;
      lease held{*this, u, nullptr};
      if (auto waiter = acquire(u, held.conn, reused, /*pooled=*/attempt == 0)) {
        auto waiting = wait_for_connection(u, std::move(waiter), reused);
        held.conn = co_await on_strand(pool_strand_, std::move(waiting));
      }
      held.holds = true;
      const std::shared_ptr<connection>& conn = held.conn;
      // The exchange keeps to the connection's strand by itself. A caller that
      // can be cancelled gets the costlier hop, which delivers its
      // cancellation on that strand too.
      connection::result r;
      auto exchange = conn->exchange(u, head, req.body, limits, timeouts_.request, req.method == "HEAD");
      const asio::cancellation_state cancellation = co_await asio::this_coro::cancellation_state;
      if (cancellation.slot().is_connected()) {
        r = co_await on_strand(conn->strand(), std::move(exchange));
      } else {
        std::exception_ptr failed;  // bad_alloc: the exchange reports all else in r
        try {
          r = co_await std::move(exchange);
        } catch (...) {
          failed = std::current_exception();
        }
        // The exchange ended on the connection's strand: back to the caller's
        // executor, which may be a strand of its own (a refresh round's is).
        co_await asio::dispatch(asio::use_awaitable);
        if (failed) std::rethrow_exception(failed);
      }
      if (!r.ec) {
        held.keep = r.keep_alive;
        co_return std::move(r.response);
      }
      const std::string context = req.method + " " + u.origin() + std::string(u.path());  // failures only
      if (r.ec == asio::error::operation_aborted) throw oauth_error(r.ec, context + ": cancelled");
      // A pooled connection the server already closed fails before any response
      // byte; the request never reached the application, so send it again.
      bool stale = reused && !r.response_started && r.ec != make_error_code(errc::timeout);
      if (stale && attempt == 0) {
        drop_idle(u);  // its siblings are likely dead too (server restart, idle cut-off)
        continue;
      }
      throw oauth_error(r.ec, context + ": " + r.error_text);
    }
  }

  std::size_t idle_connections() const {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& [origin, pool] : pools_) n += pool.idle.size();
    return n;
  }
  std::uint64_t connections_opened() const {
    std::lock_guard lock(mutex_);
    return opened_;
  }
  void close_idle() {
    std::lock_guard lock(mutex_);
    for (auto& [origin, pool] : pools_) pool.idle.clear();
  }

 private:
  // As many as a busy program has in flight (a session shared by hundreds of
  // concurrent requests). More requests to one origin wait for a connection
  // to come back: a burst, such as a thousand requests that waited for one
  // token refresh, then costs this many TLS handshakes, and keep-alive
  // serves the rest.
  static constexpr std::size_t max_connections_per_origin = 256;

  /// A request waiting for a connection to its origin; touched under mutex_,
  /// and its timer on pool_strand_.
  struct waiter {
    explicit waiter(const asio::strand<asio::any_io_executor>& strand)
        : woken(strand, asio::steady_timer::time_point::max()) {}
    asio::steady_timer woken;
    bool granted = false;
    std::shared_ptr<connection> conn;  // handed over; none when granted: open one
  };

  struct origin_pool {
    std::vector<std::shared_ptr<connection>> idle;  // the oldest first
    std::size_t in_use = 0;
    std::deque<std::shared_ptr<waiter>> waiting;
  };

  /// A request's connection, given back however the request ends: to the
  /// pool if `keep`, else only its place.
  struct lease {
    http_client& client;
    const url& u;
    std::shared_ptr<connection> conn;
    bool holds = false;  // a place under max_connections_per_origin
    bool keep = false;
    ~lease() {
      if (holds) client.give_back(u, keep ? std::move(conn) : nullptr);
    }
  };

  /// Sets `conn` to an idle connection or a new one; at the limit, returns
  /// the waiter to await instead.
  std::shared_ptr<waiter> acquire(const url& u, std::shared_ptr<connection>& conn, bool& reused, bool pooled) {
    std::lock_guard lock(mutex_);
    auto& pool = pools_[u.origin()];
    const auto now = connection::clock::now();
    while (pooled && !pool.idle.empty()) {
      auto c = std::move(pool.idle.back());
      pool.idle.pop_back();
      if (now - c->last_used() < timeouts_.idle) {
        ++pool.in_use;
        reused = true;
        conn = std::move(c);
        return nullptr;
      }
    }
    if (pool.in_use < max_connections_per_origin) {
      conn = std::make_shared<connection>(ex_, tls_, sessions_, u.is_https());
      ++pool.in_use;
      ++opened_;
      return nullptr;
    }
    pool.waiting.push_back(std::make_shared<waiter>(pool_strand_));
    return pool.waiting.back();
  }

  /// On pool_strand_: the connection give_back() hands `w`, or a new one in
  /// the place it frees; a timeout after the request's deadline.
  asio::awaitable<std::shared_ptr<connection>> wait_for_connection(const url& u, std::shared_ptr<waiter> w, bool& reused) {
    bool granted = false;
    {
      std::lock_guard lock(mutex_);
      granted = w->granted;
    }
    // Not yet granted: the timer's cancel, posted to this strand, comes after the wait starts.
    std::error_code ec;
    if (!granted) {
      w->woken.expires_after(timeouts_.request);
      std::tie(ec) = co_await w->woken.async_wait(use_tuple);
    }
    std::lock_guard lock(mutex_);
    if (!w->granted) {
      auto& waiting = pools_[u.origin()].waiting;
      waiting.erase(std::find(waiting.begin(), waiting.end(), w));
      const std::string context = "waiting for a connection to " + u.origin();
      if (ec == asio::error::operation_aborted) throw oauth_error(ec, context + ": cancelled");
      throw oauth_error(make_error_code(errc::timeout),
                        context + ": none within " + std::to_string(timeouts_.request.count()) + " ms");
    }
    if (w->conn) {
      reused = true;
      co_return std::move(w->conn);
    }
    ++opened_;
    co_return std::make_shared<connection>(ex_, tls_, sessions_, u.is_https());  // in the place give_back freed
  }

  /// A request is done with its connection: `c` (kept alive) or its place
  /// goes to the first waiter, else `c` to the idle ones.
  void give_back(const url& u, std::shared_ptr<connection> c) noexcept {
    std::lock_guard lock(mutex_);
    auto& pool = pools_[u.origin()];
    --pool.in_use;
    if (!pool.waiting.empty()) {
      auto w = std::move(pool.waiting.front());
      pool.waiting.pop_front();
      ++pool.in_use;
      w->granted = true;
      w->conn = std::move(c);
      asio::post(pool_strand_, [w] { w->woken.cancel(); });
      return;
    }
    if (!c) return;
    // The oldest are at the front; those idle too long go, so that a burst's
    // connections do not linger while a trickle reuses the newest.
    const auto now = connection::clock::now();
    pool.idle.erase(pool.idle.begin(), std::find_if(pool.idle.begin(), pool.idle.end(), [&](const auto& k) {
                      return now - k->last_used() < timeouts_.idle;
                    }));
    if (pool.idle.size() < max_connections_per_origin) pool.idle.push_back(std::move(c));
  }

  void drop_idle(const url& u) {
    std::lock_guard lock(mutex_);
    pools_[u.origin()].idle.clear();
  }

  asio::any_io_executor ex_;
  asio::strand<asio::any_io_executor> pool_strand_;  // where waiters wait
  std::shared_ptr<asio::ssl::context> tls_;
  std::shared_ptr<tls_sessions> sessions_ = std::make_shared<tls_sessions>();
  client_config::http_timeouts timeouts_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, origin_pool> pools_;
  std::uint64_t opened_ = 0;
};
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

}  // namespace detail

// ============================================================================
// 9. Tokens and stores
//    `token_set` is what the token endpoint grants; a `token_store` keeps it
//    between runs. The file store writes atomically (temporary file, fsync,
//    rename, fsync of the folder) with mode 0600, so a crash never leaves a
//    half-written file and a rotated refresh token is never lost. Like OpenSSH
//    with a private key, it refuses files and folders another local user could
//    have planted or could change.
// ============================================================================

/// What the token endpoint grants. Streams print the secrets as fingerprints.
struct token_set {
  using clock = std::chrono::system_clock;  ///< the clock of expires_at

  secret access_token;                               ///< the bearer token for API calls
  secret refresh_token;                              ///< empty without offline_access
  clock::time_point expires_at = clock::time_point::max();  ///< max(): the server gave no lifetime
  std::string scope;                                 ///< space separated, as granted
  std::string token_type = "Bearer";                 ///< as the server named it
  /// When the user consented (the grant's 365-day limit counts from here); epoch: unknown.
  clock::time_point first_obtained{};
  /// When the refresh token was last used (the 90-day inactivity limit counts from here); epoch: unknown.
  clock::time_point last_rotated{};

  /// Whether there is a refresh token (the grant asked for offline_access).
  bool has_refresh_token() const noexcept { return !refresh_token.empty(); }

  /// True when the access token is gone or will be within `skew`.
  bool expires_within(clock::duration skew, clock::time_point now = clock::now()) const noexcept {
    if (access_token.empty()) return true;
    if (expires_at == clock::time_point::max()) return false;
    return expires_at - now <= skew;
  }

  /// The storage form, secrets included: only for token stores.
  nlohmann::json to_json() const;

  /// Reads the storage form; throws oauth_error(store_corrupt) naming what is wrong.
  static token_set from_json(const nlohmann::json& j);

  /// Prints the secrets as fingerprints.
  friend std::ostream& operator<<(std::ostream& os, const token_set& t) {
    os << "token_set{access_token=" << t.access_token << ", refresh_token=" << t.refresh_token << ", expires_at=";
    if (t.expires_at == clock::time_point::max())
      os << "unknown";
    else
      os << std::chrono::duration_cast<std::chrono::seconds>(t.expires_at.time_since_epoch()).count();
    return os << ", scope=\"" << t.scope << "\", token_type=" << t.token_type << '}';
  }
};


namespace detail {
/// True when both hold the same grant (same access and refresh token), or both nothing.
inline bool same_grant(const std::optional<token_set>& a, const std::optional<token_set>& b) noexcept {
  if (!a || !b) return !a && !b;
  return a->access_token == b->access_token && a->refresh_token == b->refresh_token;
}
}  // namespace detail

/// Where a grant lives between runs. Implementations may be asynchronous
/// (a database) or not (a file); `save` must be durable when it completes.
///
/// A store shared by several processes or hosts also overrides `lock` and, if
/// it can do better than load-compare-save, `replace`. The session refreshes
/// under the lock: it re-reads the store, uses tokens another sharer has just
/// saved instead of refreshing again, and writes its own with `replace`. A
/// database store maps these onto a row lock (SELECT ... FOR UPDATE, or an
/// advisory lock) and a conditional UPDATE; confluence_oauth_postgres.hpp is one.
class token_store {
 public:
  /// Holds a token store's exclusive section (see lock()) until it
  /// is destroyed or unlocked. A default-constructed one holds nothing.
  class store_lock {
   public:
    store_lock() = default;
    /// Holds a section that `release` ends.
    explicit store_lock(std::function<void()> release) : release_(std::move(release)) {}
    /// Takes over the section `other` holds.
    store_lock(store_lock&& other) noexcept : release_(std::exchange(other.release_, nullptr)) {}
    /// Ends the section held, takes over the one `other` holds.
    store_lock& operator=(store_lock&& other) noexcept {
      if (this != &other) {
        unlock();
        release_ = std::exchange(other.release_, nullptr);
      }
      return *this;
    }
    ~store_lock() { unlock(); }
    /// Releases the section now; later calls do nothing.
    void unlock() noexcept {
      if (auto release = std::exchange(release_, nullptr)) release();
    }

   private:
    std::function<void()> release_;
  };

  virtual ~token_store() = default;
  /// The stored grant, or nullopt when there is none. Throws on failure.
  virtual asio::awaitable<std::optional<token_set>> load() = 0;
  /// Stores `tokens`, durably by the time it completes. Throws on failure.
  virtual asio::awaitable<void> save(const token_set& tokens) = 0;
  /// Forgets the grant. Throws on failure.
  virtual asio::awaitable<void> clear() = 0;

  /// An exclusive section across everyone who shares this grant. The default
  /// guards nothing: right for a store only one session uses.
  virtual asio::awaitable<store_lock> lock();

  /// Saves `next` only if the store still holds `expected` (the same access
  /// and refresh token, or nothing when `expected` is empty);
  /// otherwise leaves the store alone and returns false. The default is
  /// load-compare-save, atomic only under lock().
  virtual asio::awaitable<bool> replace(const std::optional<token_set>& expected, const token_set& next);
};

/// Keeps the grant in memory: for tests, and for web apps that keep their own
/// per-user storage. Thread-safe; `replace` is atomic.
class memory_token_store final : public token_store {
 public:
  /// The grant held, if any.
  asio::awaitable<std::optional<token_set>> load() override;
  /// Holds `tokens`.
  asio::awaitable<void> save(const token_set& tokens) override;
  /// Holds nothing.
  asio::awaitable<void> clear() override;
  /// An atomic compare-and-swap: holds `next` only if it holds `expected`.
  asio::awaitable<bool> replace(const std::optional<token_set>& expected, const token_set& next) override;

 private:
  std::mutex mutex_;
  std::optional<token_set> tokens_;
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE nlohmann::json token_set::to_json() const {
  nlohmann::json j = {{"version", 1},
                      {"access_token", access_token.reveal()},
                      {"token_type", token_type},
                      {"scope", scope}};
  if (has_refresh_token()) j["refresh_token"] = refresh_token.reveal();
  auto seconds = [](clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
  };
  if (expires_at != clock::time_point::max()) j["expires_at"] = seconds(expires_at);
  if (first_obtained != clock::time_point{}) j["first_obtained"] = seconds(first_obtained);
  if (last_rotated != clock::time_point{}) j["last_rotated"] = seconds(last_rotated);
  return j;
}

CONFLUENCE_OAUTH_DETAIL_INLINE token_set token_set::from_json(const nlohmann::json& j) {
  auto bad = [](const char* what) -> token_set { detail::fail(errc::store_corrupt, std::string("stored token set: ") + what); };
  if (!j.is_object()) return bad("not a JSON object");
  token_set t;
  auto access = j.find("access_token");
  if (access == j.end() || !access->is_string() || access->get_ref<const std::string&>().empty())
    return bad("missing access_token");
  t.access_token = secret(access->get<std::string>());
  if (auto r = j.find("refresh_token"); r != j.end()) {
    if (!r->is_string()) return bad("refresh_token is not a string");
    t.refresh_token = secret(r->get<std::string>());
  }
  // Each time optional (files from before 2.0.0 lack the grant's age), and up to
  // what the clock holds (the year 2262 with nanoseconds): more would overflow it.
  auto time = [&](const char* key, clock::time_point& out) {
    constexpr auto latest = std::chrono::duration_cast<std::chrono::seconds>(clock::duration::max()).count();
    auto e = j.find(key);
    if (e == j.end()) return;
    if (!e->is_number_integer() || e->get<std::int64_t>() < 0 || e->get<std::int64_t>() > latest)
      bad((std::string(key) + " is not a time").c_str());
    out = clock::time_point(std::chrono::seconds(e->get<std::int64_t>()));
  };
  time("expires_at", t.expires_at);
  time("first_obtained", t.first_obtained);
  time("last_rotated", t.last_rotated);
  if (auto s = detail::json_string(j, "scope")) t.scope = *s;
  if (auto s = detail::json_string(j, "token_type")) t.token_type = *s;
  return t;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<token_store::store_lock> token_store::lock() { co_return store_lock{}; }

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<bool> token_store::replace(const std::optional<token_set>& expected, const token_set& next) {
  auto stored = co_await load();
  if (!detail::same_grant(stored, expected)) co_return false;
  co_await save(next);
  co_return true;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<std::optional<token_set>> memory_token_store::load() {
  std::lock_guard lock(mutex_);
  co_return tokens_;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> memory_token_store::save(const token_set& tokens) {
  std::lock_guard lock(mutex_);
  tokens_ = tokens;
  co_return;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> memory_token_store::clear() {
  std::lock_guard lock(mutex_);
  tokens_.reset();
  co_return;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<bool> memory_token_store::replace(const std::optional<token_set>& expected,
                                                                                 const token_set& next) {
  std::lock_guard lock(mutex_);
  if (!detail::same_grant(tokens_, expected)) co_return false;
  tokens_ = next;
  co_return true;
}

namespace detail {

class unique_fd {
 public:
  explicit unique_fd(int fd = -1) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

[[noreturn]] inline void fail_errno(const std::string& what) {
  fail(errc::store_error, what + ": " + std::generic_category().message(errno));
}

// A refused file is invalid_config (fix the configuration): the refusal lasts
// until the user fixes the file, so store_error (retry later) would retry in
// vain, and store_corrupt (sign in again) would send the user through a login
// whose save is refused as well.
[[noreturn]] inline void refuse_file(const std::filesystem::path& path, const std::string& why) {
  fail(errc::invalid_config, path.string() + " is refused: " + why);
}

/// "0644": the permission bits of `mode`, as chmod takes them.
inline std::string octal_mode(mode_t mode) {
  std::string out = "0";
  for (int shift : {6, 3, 0}) out += static_cast<char>('0' + ((mode >> shift) & 7));
  return out;
}

/// Refuses the file `st` describes (from fstat or lstat) unless it is a
/// regular file of this user that neither group nor others may read or write.
inline void check_private_file(const struct stat& st, const std::filesystem::path& path) {
  if (S_ISLNK(st.st_mode)) refuse_file(path, "it is a symbolic link");
  if (!S_ISREG(st.st_mode)) refuse_file(path, "it is not a regular file");
  if (st.st_uid != ::geteuid())
    refuse_file(path, "it is owned by user " + std::to_string(st.st_uid) + ", not by this user (" +
                          std::to_string(::geteuid()) + ")");
  if ((st.st_mode & 077) != 0)
    refuse_file(path, "group or others may read or write it (mode " + octal_mode(st.st_mode) + "): run chmod 600 on it");
}

/// Refuses a folder in which others could replace or remove the store's
/// files: one that group or others may write, unless it is sticky (as /tmp
/// is, where only a file's owner may rename or remove it). A missing folder is
/// fine.
inline void check_private_folder(const std::filesystem::path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    fail_errno("cannot inspect " + dir.string());
  }
  if ((st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0)
    refuse_file(dir, "group or others may write this folder (mode " + octal_mode(st.st_mode) + "): run chmod go-w on it");
}

/// The folder `path` is in.
inline std::filesystem::path folder_of(const std::filesystem::path& path) {
  return path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
}

/// Opens `path` with `flags` and refuses it unless check_private_file passes,
/// checking the open descriptor, never the path again (no race between the
/// check and the use). Never follows a symbolic link, nor blocks on a FIFO;
/// creates with mode 0600. An empty descriptor when the file does not exist
/// and `flags` do not create it.
inline unique_fd open_private_file(const std::filesystem::path& path, int flags) {
  unique_fd fd(::open(path.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600));
  if (!fd) {
    if (errno == ENOENT && (flags & O_CREAT) == 0) return fd;
    if (errno == ELOOP) refuse_file(path, "it is a symbolic link");
    if (errno == EISDIR) refuse_file(path, "it is not a regular file");
    fail_errno("cannot open " + path.string());
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_errno("cannot inspect " + path.string());
  check_private_file(st, path);
  return fd;
}

/// Whether `path` still names the file open as `fd`.
inline bool still_names(const std::filesystem::path& path, int fd) {
  struct stat held {}, named {};
  return ::fstat(fd, &held) == 0 && ::lstat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
         held.st_ino == named.st_ino;
}

inline void write_all(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    auto n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno(what);
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

/// Reads a whole private file (see open_private_file) of at most `limit`
/// bytes in a private folder (see check_private_folder); nullopt if it does
/// not exist.
inline std::optional<std::string> read_private_file(const std::filesystem::path& path, std::size_t limit) {
  check_private_folder(folder_of(path));
  unique_fd fd = open_private_file(path, O_RDONLY);
  if (!fd) return std::nullopt;
  std::string out;
  std::array<char, 4096> buf;
  for (;;) {
    auto n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno("cannot read " + path.string());
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > limit) fail(errc::store_error, path.string() + " is too large");
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
  return out;
}

/// Creates every missing folder of `dir` private (0700) from the start,
/// parents included; existing folders are left as they are.
inline void create_private_folders(const std::filesystem::path& dir) {
  std::filesystem::path partial;
  for (const auto& part : dir) {
    partial /= part;
    if (::mkdir(partial.c_str(), 0700) == 0) {
      ::chmod(partial.c_str(), 0700);  // the umask may have taken bits away
    } else if (errno != EEXIST) {
      fail_errno("cannot create " + partial.string());
    }
  }
}

/// "<file>.tmp-" and this many random characters: a save's temporary file.
inline constexpr std::size_t temporary_suffix_chars = 8;  // random_token(6)

/// Removes the temporaries that saves killed before their rename left beside
/// `path`, once untouched for ten minutes: a save in progress (another
/// process's) renames its own within moments. Best effort.
inline void remove_stale_temporaries(const std::filesystem::path& path, const std::filesystem::path& dir) {
  const std::string prefix = path.filename().string() + ".tmp-";
  const auto now = std::filesystem::file_time_type::clock::now();
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() != prefix.size() + temporary_suffix_chars || name.compare(0, prefix.size(), prefix) != 0) continue;
    std::error_code time_ec;
    const auto written = it->last_write_time(time_ec);
    if (!time_ec && now - written > std::chrono::minutes(10)) ::unlink(it->path().c_str());
  }
}

/// Replaces `path` atomically with a private file: a crash leaves either the
/// old or the new file (and a temporary file, which a later save removes).
/// Refuses, writing nothing, a folder or an existing file that
/// check_private_folder or check_private_file refuses.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view data) {
  auto dir = folder_of(path);
  create_private_folders(dir);
  check_private_folder(dir);
  // A file planted between this check and the rename is replaced, never
  // written through: rename swaps the name, and O_EXCL creates the temporary.
  struct stat existing {};
  if (::lstat(path.c_str(), &existing) == 0)
    check_private_file(existing, path);
  else if (errno != ENOENT)
    fail_errno("cannot inspect " + path.string());
  auto tmp = path;
  tmp += ".tmp-" + random_token(6);
  unique_fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) fail_errno("cannot create " + tmp.string());
  try {
    write_all(fd.get(), data, "cannot write " + tmp.string());
    if (::fsync(fd.get()) != 0) fail_errno("cannot sync " + tmp.string());
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail_errno("cannot replace " + path.string());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  unique_fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd && ::fsync(dfd.get()) != 0) fail_errno("cannot sync " + dir.string());
  remove_stale_temporaries(path, dir);
}

}  // namespace detail
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// Keeps the token set in one file, mode 0600, replaced atomically; given a
/// key, sealed with AES-256-GCM, so that a wrong key or an altered file is a
/// clear error, never a garbage token. `lock` takes an advisory lock (flock)
/// on "<file>.lock", so processes sharing the file refresh once. The file work
/// is synchronous: a few small reads and writes and an fsync per save.
///
/// As OpenSSH treats a private key, the store refuses (invalid_config, naming
/// the file and the reason; nothing read or written) a token or lock file that
/// is a symbolic link, not a regular file, not owned by this user, or that
/// group or others may read or write, and a folder that group or others may
/// write unless it is sticky. A sealed file is bound to its file name: renaming
/// the file makes it unreadable (moving its folder does not).
class file_token_store final : public token_store {
 public:
  /// Keeps the grant in `path`, unencrypted (mode 0600 protects it).
  explicit file_token_store(std::filesystem::path path);

  /// Encrypts the file with `key`: exactly 32 bytes, e.g. from generate_key().
  file_token_store(std::filesystem::path path, secret key);

  /// 32 random bytes from OpenSSL, for the encrypting constructor.
  static secret generate_key();

  /// The file.
  const std::filesystem::path& path() const noexcept;
  /// Whether a key was given.
  bool encrypted() const noexcept;

  /// How long lock() waits for another process before failing with store_error.
  void set_lock_timeout(std::chrono::milliseconds timeout) noexcept;

  /// Reads the file (at most 1 MiB); nullopt when it does not exist. Throws
  /// invalid_config (a refused file or folder), store_corrupt,
  /// store_key_mismatch or store_error.
  asio::awaitable<std::optional<token_set>> load() override;

  /// Decodes text read from the file, as load() does (a sealed text only
  /// under the file's name), without touching the file. Throws store_corrupt
  /// or store_key_mismatch.
  token_set decode(std::string_view text) const;

  /// Writes the file atomically, mode 0600; missing folders are created 0700.
  /// Removes temporary files that saves killed mid-way left over ten minutes
  /// ago. Throws invalid_config (a refused file or folder) or store_error.
  asio::awaitable<void> save(const token_set& tokens) override;

  /// Removes the file and its lock file; missing ones are fine. Processes
  /// sharing the file call it under lock(), as session::logout does: one
  /// waiting for the lock meanwhile then takes the lock file made after it.
  /// Throws store_error.
  asio::awaitable<void> clear() override;

  /// Polls a non-blocking flock so that the executor never blocks. The lock
  /// file is refused as the token file is. Throws invalid_config or store_error.
  asio::awaitable<store_lock> lock() override;

 private:
  static constexpr std::string_view format = "confluence_oauth/aes-256-gcm/2";
  /// Still read, so that an upgrade signs nobody out; the next save writes `format`.
  static constexpr std::string_view first_format = "confluence_oauth/aes-256-gcm/1";

  static void remove_if_there(const std::filesystem::path& file);

  std::filesystem::path lock_path() const;

  // Sealed with the token set, so that another file sealed with the same key
  // (another grant's token file, a file of another purpose) cannot stand in
  // for this one: it fails to open as an altered file would. The file name
  // binds it, not the whole path, so that moving the folder (a new home
  // folder, a backup restored elsewhere) keeps the file working; renaming the
  // file itself signs the user out. The first format bound only itself.
  std::string associated_data() const;

  /// Names the key without revealing it, so a wrong key is told from an altered file.
  std::string key_id() const;

  std::string open_sealed(const nlohmann::json& j) const;

  std::filesystem::path path_;
  secret key_;
  std::chrono::milliseconds lock_timeout_{std::chrono::minutes(5)};  // longer than a refresh with all its retries
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE file_token_store::file_token_store(std::filesystem::path path)
    : path_(std::move(path)) {}

CONFLUENCE_OAUTH_DETAIL_INLINE file_token_store::file_token_store(std::filesystem::path path, secret key)
    : path_(std::move(path)), key_(std::move(key)) {
  if (key_.reveal().size() != 32)
    detail::fail(errc::invalid_config,
                 "file_token_store: the encryption key must be 32 bytes, not " + std::to_string(key_.reveal().size()));
}

CONFLUENCE_OAUTH_DETAIL_INLINE secret file_token_store::generate_key() {
  std::string key(32, '\0');
  detail::random_bytes(reinterpret_cast<unsigned char*>(key.data()), key.size());
  return secret(std::move(key));
}

CONFLUENCE_OAUTH_DETAIL_INLINE const std::filesystem::path& file_token_store::path() const noexcept { return path_; }

CONFLUENCE_OAUTH_DETAIL_INLINE bool file_token_store::encrypted() const noexcept { return !key_.empty(); }

CONFLUENCE_OAUTH_DETAIL_INLINE void file_token_store::set_lock_timeout(std::chrono::milliseconds timeout) noexcept { lock_timeout_ = timeout; }

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<std::optional<token_set>> file_token_store::load() {
  auto text = detail::read_private_file(path_, 1024 * 1024);
  if (!text) co_return std::nullopt;
  detail::wipe_on_exit wipe{*text};
  co_return decode(*text);
}

CONFLUENCE_OAUTH_DETAIL_INLINE token_set file_token_store::decode(std::string_view text) const {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) detail::fail(errc::store_corrupt, path_.string() + " is not valid JSON");
  const bool sealed = j.is_object() && j.contains("format");
  if (sealed != encrypted())
    detail::fail(errc::store_key_mismatch,
                 sealed ? path_.string() + " is encrypted: give file_token_store its key"
                        : path_.string() + " is not encrypted, but a key was given: drop the key, or remove the "
                                           "file and sign in again");
  if (!sealed) return token_set::from_json(j);
  auto plain = open_sealed(j);
  detail::wipe_on_exit wipe_plain{plain};
  auto inner = nlohmann::json::parse(plain, nullptr, false);
  if (inner.is_discarded()) detail::fail(errc::store_corrupt, path_.string() + " holds no JSON token set");
  return token_set::from_json(inner);
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> file_token_store::save(const token_set& tokens) {
  std::string text = tokens.to_json().dump(2) + "\n";
  detail::wipe_on_exit wipe{text};
  if (encrypted()) {
    nlohmann::json sealed = {
        {"format", format},
        {"key_id", key_id()},
        {"sealed", detail::base64url_encode(detail::aes256gcm_seal(key_.reveal(), text, associated_data()))}};
    text = sealed.dump(2) + "\n";
  }
  detail::write_file_atomically(path_, text);
  co_return;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> file_token_store::clear() {
  remove_if_there(path_);  // one by one, not a braced list: GCC 12 mishandles those in coroutines
  remove_if_there(lock_path());
  co_return;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<token_store::store_lock> file_token_store::lock() {
  const auto lock_path = this->lock_path();
  const auto dir = detail::folder_of(lock_path);
  detail::create_private_folders(dir);
  detail::check_private_folder(dir);
  auto fd = std::make_shared<detail::unique_fd>();
  asio::steady_timer wait(co_await asio::this_coro::executor);
  const auto deadline = std::chrono::steady_clock::now() + lock_timeout_;
  for (std::chrono::milliseconds delay{1};; delay = std::min(delay * 2, std::chrono::milliseconds(50))) {
    if (!*fd) *fd = detail::open_private_file(lock_path, O_RDWR | O_CREAT);
    if (::flock(fd->get(), LOCK_EX | LOCK_NB) == 0) {
      if (detail::still_names(lock_path, fd->get())) break;
      fd->reset();  // clear() removed it while we waited: lock the one at the path next time
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EWOULDBLOCK) {
      detail::fail_errno("cannot lock " + lock_path.string());
    }
    if (std::chrono::steady_clock::now() >= deadline)
      detail::fail(errc::store_error, "another process has held " + lock_path.string() + " for more than " +
                                          std::to_string(lock_timeout_.count()) + " ms");
    wait.expires_after(delay);
    auto [ec] = co_await wait.async_wait(detail::use_tuple);
    if (ec) throw oauth_error(ec, "waiting for " + lock_path.string() + ": cancelled");
  }
  co_return store_lock([fd] { fd->reset(); });  // closing the descriptor releases the lock
}

CONFLUENCE_OAUTH_DETAIL_INLINE void file_token_store::remove_if_there(const std::filesystem::path& file) {
  if (::unlink(file.c_str()) != 0 && errno != ENOENT) detail::fail_errno("cannot remove " + file.string());
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::filesystem::path file_token_store::lock_path() const {
  auto path = path_;
  path += ".lock";
  return path;
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::string file_token_store::associated_data() const {
  return std::string(format) + "\ntoken_set\n" + path_.filename().string();
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::string file_token_store::key_id() const {
  auto digest = detail::sha256("confluence_oauth file_token_store key id:" + key_.reveal());
  return detail::base64url_encode(digest.data(), 9);
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::string file_token_store::open_sealed(const nlohmann::json& j) const {
  auto field = [&](const char* name) -> std::string {
    auto value = detail::json_string(j, name);
    if (!value) detail::fail(errc::store_corrupt, path_.string() + ": no " + name);
    return *value;
  };
  const auto file_format = field("format");
  if (file_format != format && file_format != first_format)
    detail::fail(errc::store_corrupt, path_.string() + " is in a format this version cannot read");
  if (!detail::constant_time_equal(field("key_id"), key_id()))
    detail::fail(errc::store_key_mismatch, path_.string() + " was encrypted with another key");
  auto data = detail::base64_decode(field("sealed"));
  const auto aad = file_format == format ? associated_data() : std::string(first_format);
  auto plain = data ? detail::aes256gcm_open(key_.reveal(), *data, aad) : std::nullopt;
  // The right key, but a tag that does not match: an altered file, or one
  // sealed for another name or purpose. Either way it holds no grant of
  // ours, so store_corrupt (sign in again), not store_key_mismatch (the key
  // is the right one).
  if (!plain)
    detail::fail(errc::store_corrupt, path_.string() +
                                          " has been altered, or was sealed for another file: its authentication "
                                          "tag does not match");
  return std::move(*plain);
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

// ============================================================================
// 10. The OAuth client
//    Configuration, the authorization URL (state, optional PKCE S256), and the
//    two token requests — code exchange and refresh — as JSON (Atlassian) or
//    form-encoded (RFC 6749). Every answer is checked: an error body is an
//    error whatever the status, and a grant must hold an access token.
// ============================================================================




/// One authorization attempt: send the user to `url`, keep the rest for the callback.
struct authorization {
  std::string url;           ///< where to send the user
  secret state;              ///< 256 bits, single use
  secret code_verifier;      ///< PKCE; empty when not used
  std::string redirect_uri;  ///< the redirect URI this attempt used
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
namespace detail {

/// The query of a redirect back from the authorization server.
struct callback_params {
  secret code;                    ///< the authorization code; empty when absent
  std::optional<secret> state;    ///< the state echoed back, if any
  std::string error;              ///< the `error` parameter
  std::string error_description;  ///< the `error_description` parameter
  std::string error_uri;          ///< the `error_uri` parameter
};

/// Parses a callback target ("/callback?code=...&state=..."), a full URL, or a bare query.
inline callback_params parse_callback(std::string_view target) {
  if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(q + 1);
  else if (target.find('=') == std::string_view::npos) target = {};
  if (auto h = target.find('#'); h != std::string_view::npos) target = target.substr(0, h);
  callback_params p;
  for (auto& [name, value] : parse_query(target)) {
    if (name == "code" && p.code.empty()) p.code = secret(std::move(value));
    else if (name == "state" && !p.state) p.state = secret(std::move(value));
    else if (name == "error" && p.error.empty()) p.error = std::move(value);
    else if (name == "error_description" && p.error_description.empty()) p.error_description = std::move(value);
    else if (name == "error_uri" && p.error_uri.empty()) p.error_uri = std::move(value);
    OPENSSL_cleanse(value.data(), value.size());
  }
  return p;
}

/// How a callback relates to the authorization it may answer.
enum class callback_match {
  code,            ///< the state matches and there is a code
  denied,          ///< the state matches and error=access_denied
  failed,          ///< the state matches and there is another error
  state_mismatch,  ///< the state is missing or belongs to another authorization
  incomplete       ///< the state matches, but there is neither a code nor an error
};

/// Classifies a callback without throwing. Only a callback carrying this
/// authorization's state may answer it, with a code or with an error: any
/// web page can send the listener `?error=access_denied`, and such a
/// callback must not end a sign-in in progress.
inline callback_match match_callback(const callback_params& p, const authorization& auth) {
  if (!p.state || auth.state.empty() || !(*p.state == auth.state)) return callback_match::state_mismatch;
  if (!p.error.empty()) return p.error == "access_denied" ? callback_match::denied : callback_match::failed;
  return p.code.empty() ? callback_match::incomplete : callback_match::code;
}

/// Returns the code of a callback that answers `auth`, or throws the typed error.
inline secret verify_callback(const callback_params& p, const authorization& auth) {
  // The server's words are kept, but not what they echo of this authorization.
  const secret* own[] = {&p.code, &auth.state, &auth.code_verifier};
  error_details d;
  d.error = sanitize_text(redact(p.error, own), 60);
  d.error_description = sanitize_text(redact(p.error_description, own));
  d.error_uri = sanitize_text(redact(p.error_uri, own));
  switch (match_callback(p, auth)) {
    case callback_match::code: return p.code;
    case callback_match::denied: fail(errc::authorization_denied, "the user declined the authorization", d);
    case callback_match::failed: fail(errc::authorization_failed, "the authorization server returned an error", d);
    case callback_match::state_mismatch:
      fail(errc::state_mismatch, "the callback's state is missing or does not match");
    case callback_match::incomplete: break;
  }
  fail(errc::authorization_failed, "callback carries neither a code nor an error");
}

/// Refuses nesting deeper than `max_depth` before nlohmann::json sees it,
/// and a NUL outside a string: JSON has none, and nlohmann::json would take
/// it for the end of the text and accept whatever came before (`1\0{{{`).
/// Strings, most of an API answer, are skipped with memchr: on a 1.9 KB
/// pages answer the check costs 7,700 instructions (a byte-by-byte scan
/// 20,000; nlohmann's parse itself 228,000).
inline nlohmann::json parse_json(std::string_view text, int max_depth = 64) {
  int depth = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') {
      // To the closing quote: the next one not escaped by an odd run of backslashes.
      for (;;) {
        i = text.find('"', i + 1);
        if (i == std::string_view::npos) return nlohmann::json::parse(text, nullptr, false);  // unterminated: its error
        std::size_t backslashes = 0;  // the opening quote stops the count
        while (text[i - 1 - backslashes] == '\\') ++backslashes;
        if (backslashes % 2 == 0) break;
      }
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return nlohmann::json(nlohmann::json::value_t::discarded);
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == '\0') {
      return nlohmann::json(nlohmann::json::value_t::discarded);
    }
  }
  return nlohmann::json::parse(text, nullptr, false);
}

inline errc errc_for_oauth_error(std::string_view error, int status) noexcept {
  if (status == 429) return errc::rate_limited;
  if (error == "invalid_grant") return errc::invalid_grant;
  if (error == "invalid_request") return errc::invalid_request;
  if (error == "invalid_client" || error == "unauthorized_client" || error == "access_denied") return errc::invalid_client;
  if (error == "temporarily_unavailable" || error == "server_error") return errc::server_unavailable;
  if (error == "slow_down") return errc::rate_limited;
  return errc::oauth_error_response;
}

inline errc errc_for_status(int status) noexcept {
  if (status == 429) return errc::rate_limited;
  if (status == 502 || status == 503 || status == 504 || status == 500) return errc::server_unavailable;
  return errc::http_error;
}

/// `redact` as for parse_token_response: redacted before shortened, or a cut could hide an echo.
inline error_details response_details(const http_response& res, std::span<const secret* const> redact = {}) {
  error_details d;
  d.http_status = res.status;
  if (auto w = res.headers.get("WWW-Authenticate")) d.www_authenticate = sanitize_text(detail::redact(std::string(*w), redact));
  if (auto r = res.headers.get("Retry-After")) d.retry_after = parse_retry_after(*r, std::chrono::system_clock::now());
  d.rate_limit = res.rate_limit();
  return d;
}

/// Turns a token endpoint answer into a token_set or the precise oauth_error.
/// `redact` lists the secrets that were sent, so an echo of one never reaches a message.
inline token_set parse_token_response(const http_response& res, std::span<const secret* const> redact) {
  auto details = response_details(res, redact);
  auto j = parse_json(res.body);
  const bool success = res.status >= 200 && res.status < 300;
  if (j.is_object() && j.contains("error")) {
    auto text = [&](const char* key) {
      auto value = json_string(j, key);
      // Redact first: truncation could cut an echoed secret past recognition.
      return value ? sanitize_text(detail::redact(*value, redact)) : std::string{};
    };
    details.error = text("error");
    details.error_description = text("error_description");
    details.error_uri = text("error_uri");
    fail(errc_for_oauth_error(details.error, res.status),
         success ? "token endpoint returned an error with a success status" : "token request failed", details);
  }
  if (!success) {
    fail(errc_for_status(res.status) == errc::http_error ? errc::invalid_token_response : errc_for_status(res.status),
         "token endpoint answered without an OAuth error body", details);
  }
  if (j.is_discarded()) fail(errc::invalid_token_response, "token response is not JSON", details);
  if (!j.is_object()) fail(errc::invalid_token_response, "token response is not a JSON object", details);
  auto access = j.find("access_token");
  if (access == j.end() || !access->is_string() || access->get_ref<const std::string&>().empty())
    fail(errc::invalid_token_response, "token response has no access_token", details);
  token_set t;
  t.access_token = secret(access->get_ref<const std::string&>());
  if (auto type = j.find("token_type"); type != j.end()) {
    if (!type->is_string() || !iequals(type->get_ref<const std::string&>(), "Bearer"))
      fail(errc::invalid_token_response, "token_type is not Bearer", details);
  }
  if (auto r = j.find("refresh_token"); r != j.end() && !r->is_null()) {
    if (!r->is_string()) fail(errc::invalid_token_response, "refresh_token is not a string", details);
    t.refresh_token = secret(r->get_ref<const std::string&>());
  }
  if (auto e = j.find("expires_in"); e != j.end() && !e->is_null()) {
    std::optional<std::int64_t> secs;
    if (e->is_number_integer() || e->is_number_unsigned()) secs = e->get<std::int64_t>();
    else if (e->is_number_float() && e->get<double>() >= 0 && e->get<double>() < 1e12)
      secs = static_cast<std::int64_t>(e->get<double>());
    else if (e->is_string()) secs = parse_uint<std::int64_t>(e->get_ref<const std::string&>());
    if (!secs || *secs < 0 || *secs > 10LL * 365 * 86400)
      fail(errc::invalid_token_response, "expires_in is not a valid number of seconds", details);
    t.expires_at = token_set::clock::now() + std::chrono::seconds(*secs);
  }
  if (auto s = json_string(j, "scope")) t.scope = *s;
  return t;
}

}  // namespace detail
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

class oauth_client;
namespace detail {
http_client& http_of(const oauth_client& client) noexcept;
}  // namespace detail

/// Builds authorization URLs and makes the two token requests (code exchange
/// and refresh). A cheap handle: copies share the configuration and HTTP client.
class oauth_client {
 public:
  /// Validates the configuration and prepares TLS; throws oauth_error.
  oauth_client(asio::any_io_executor ex, client_config config);

  /// The validated configuration.
  const client_config& config() const noexcept;
  /// Where operations given a completion token other than use_awaitable run.
  const asio::any_io_executor& get_executor() const noexcept;

  /// A new authorization: the URL to send the user to, a fresh 256-bit state
  /// and, with PKCE, a verifier. `redirect_uri` overrides the configured one
  /// (a listener on port 0 reports the port it got).
  authorization begin_authorization(std::string_view redirect_uri = {}) const;

  /// Trades an authorization code for tokens. Completes with (error_code, token_set).
  template <typename CompletionToken = detail::default_completion_token>
  auto exchange_code(secret code, authorization auth, CompletionToken&& token = {}) const {
    return detail::launch<token_set>(get_executor(), std::forward<CompletionToken>(token),
                                     [self = *this, code = std::move(code), auth = std::move(auth)] {
                                       return self.exchange_code_op(code, auth);
                                     });
  }

  /// Trades the refresh token of `current` for a new token set. When the
  /// server rotates, the new refresh token is in the result; when it sends
  /// none, the current one is kept. Completes with (error_code, token_set).
  template <typename CompletionToken = detail::default_completion_token>
  auto refresh(token_set current, CompletionToken&& token = {}) const {
    return detail::launch<token_set>(get_executor(), std::forward<CompletionToken>(token),
                                     [self = *this, current = std::move(current)] { return self.refresh_op(current); });
  }

  /// A service account's token (grant_type=client_credentials with the
  /// configured id and secret): Atlassian's live 60 minutes and come without
  /// a refresh token. Completes with (error_code, token_set).
  template <typename CompletionToken = detail::default_completion_token>
  auto client_credentials(CompletionToken&& token = {}) const {
    return detail::launch<token_set>(get_executor(), std::forward<CompletionToken>(token),
                                     [self = *this] { return self.client_credentials_op(); });
  }

 private:
  asio::awaitable<token_set> exchange_code_op(const secret& code, const authorization& auth) const;

  asio::awaitable<token_set> refresh_op(const token_set& current) const;

  asio::awaitable<token_set> client_credentials_op() const;

  /// The secrets a token request carries (and, for a refresh, the access token
  /// the server knows), so that an echo of one is redacted.
  std::vector<const secret*> redact_list(const secret* a, const secret* b) const;

  static client_config validated(client_config c);

  asio::awaitable<token_set> token_request(const std::vector<std::pair<std::string_view, std::string_view>>& fields,
                                           std::vector<const secret*> redact) const;

  friend detail::http_client& detail::http_of(const oauth_client& client) noexcept;

  std::shared_ptr<const client_config> config_;
  std::shared_ptr<detail::http_client> http_;
  detail::url token_url_;
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE oauth_client::oauth_client(asio::any_io_executor ex, client_config config)
    : config_(std::make_shared<const client_config>(validated(std::move(config)))),
        http_(std::make_shared<detail::http_client>(std::move(ex), config_->tls, config_->timeouts)),
        token_url_(detail::parse_url(config_->token_url)) {}

CONFLUENCE_OAUTH_DETAIL_INLINE const client_config& oauth_client::config() const noexcept { return *config_; }

CONFLUENCE_OAUTH_DETAIL_INLINE const asio::any_io_executor& oauth_client::get_executor() const noexcept { return http_->get_executor(); }

CONFLUENCE_OAUTH_DETAIL_INLINE authorization oauth_client::begin_authorization(std::string_view redirect_uri) const {
  authorization a;
  a.redirect_uri = redirect_uri.empty() ? config_->redirect_uri : std::string(redirect_uri);
  detail::parse_url(a.redirect_uri);
  a.state = secret(detail::random_token(32));
  std::string scope;
  for (const auto& s : config_->scopes) scope += (scope.empty() ? "" : " ") + s;
  std::string query;
  if (!config_->audience.empty()) detail::append_param(query, "audience", config_->audience);
  detail::append_param(query, "client_id", config_->client_id);
  detail::append_param(query, "scope", scope);
  detail::append_param(query, "redirect_uri", a.redirect_uri);
  detail::append_param(query, "state", a.state.reveal());
  detail::append_param(query, "response_type", "code");
  if (!config_->prompt.empty()) detail::append_param(query, "prompt", config_->prompt);
  if (config_->use_pkce) {
    a.code_verifier = secret(detail::random_token(32));
    auto digest = detail::sha256(a.code_verifier.reveal());
    detail::append_param(query, "code_challenge", detail::base64url_encode(digest.data(), digest.size()));
    detail::append_param(query, "code_challenge_method", "S256");
  }
  for (const auto& [name, value] : config_->extra_authorize_params)
    if (!value.empty()) detail::append_param(query, name, value);
  a.url = config_->authorize_url + (config_->authorize_url.find('?') == std::string::npos ? "?" : "&") + query;
  return a;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<token_set> oauth_client::exchange_code_op(const secret& code, const authorization& auth) const {
  if (code.empty()) detail::fail(errc::invalid_config, "authorization code is empty");
  // Filled one by one: GCC 12 rejects some braced lists in coroutines ("array used as initializer").
  std::vector<std::pair<std::string_view, std::string_view>> fields;
  fields.emplace_back("grant_type", "authorization_code");
  fields.emplace_back("client_id", config_->client_id);
  fields.emplace_back("code", code.reveal());
  fields.emplace_back("redirect_uri", auth.redirect_uri);
  if (!config_->client_secret.empty()) fields.emplace_back("client_secret", config_->client_secret.reveal());
  if (!auth.code_verifier.empty()) fields.emplace_back("code_verifier", auth.code_verifier.reveal());
  auto granted = co_await token_request(fields, redact_list(&code, &auth.code_verifier));
  granted.first_obtained = granted.last_rotated = token_set::clock::now();
  co_return granted;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<token_set> oauth_client::refresh_op(const token_set& current) const {
  if (!current.has_refresh_token())
    detail::fail(errc::invalid_grant, "no refresh token: the grant lacks offline_access");
  std::vector<std::pair<std::string_view, std::string_view>> fields;
  fields.emplace_back("grant_type", "refresh_token");
  fields.emplace_back("client_id", config_->client_id);
  fields.emplace_back("refresh_token", current.refresh_token.reveal());
  if (!config_->client_secret.empty()) fields.emplace_back("client_secret", config_->client_secret.reveal());
  auto next = co_await token_request(fields, redact_list(&current.refresh_token, &current.access_token));
  if (!next.has_refresh_token()) next.refresh_token = current.refresh_token;
  if (next.scope.empty()) next.scope = current.scope;
  next.first_obtained = current.first_obtained;
  next.last_rotated = token_set::clock::now();  // a use, rotating or not, restarts the inactivity limit
  co_return next;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<token_set> oauth_client::client_credentials_op() const {
  std::vector<std::pair<std::string_view, std::string_view>> fields;
  fields.emplace_back("grant_type", "client_credentials");
  fields.emplace_back("client_id", config_->client_id);
  fields.emplace_back("client_secret", config_->client_secret.reveal());
  auto granted = co_await token_request(fields, redact_list(nullptr, nullptr));
  granted.refresh_token = secret();  // nothing to refresh: a new grant replaces this one
  granted.first_obtained = granted.last_rotated = token_set::clock::now();
  co_return granted;
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::vector<const secret*> oauth_client::redact_list(const secret* a, const secret* b) const {
  std::vector<const secret*> out;
  out.push_back(&config_->client_secret);
  for (const secret* s : {a, b})
    if (s) out.push_back(s);
  return out;
}

CONFLUENCE_OAUTH_DETAIL_INLINE client_config oauth_client::validated(client_config c) {
  c.validate();
  return c;
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<token_set> oauth_client::token_request(const std::vector<std::pair<std::string_view, std::string_view>>& fields,
    std::vector<const secret*> redact) const {
  http_request req;
  req.method = "POST";
  detail::wipe_on_exit wipe{req.body};
  if (config_->encoding == client_config::token_encoding::json) {
    nlohmann::json body = nlohmann::json::object();
    for (const auto& [name, value] : fields) body[std::string(name)] = value;
    req.body = body.dump();
    if (auto it = body.find("client_secret"); it != body.end()) {
      auto& s = it->get_ref<std::string&>();
      OPENSSL_cleanse(s.data(), s.size());
    }
    req.headers.add("Content-Type", "application/json");
  } else {
    for (const auto& [name, value] : fields) detail::append_param(req.body, name, value);
    req.headers.add("Content-Type", "application/x-www-form-urlencoded");
  }
  req.headers.add("Accept", "application/json");
  req.headers.add("User-Agent", config_->user_agent);
  detail::http_limits limits;
  limits.max_body_bytes = config_->max_token_response_bytes;
  auto res = co_await http_->send(token_url_, req, limits);
  detail::wipe_on_exit wipe_response{res.body};
  co_return detail::parse_token_response(res, redact);
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// The HTTP client and connection pool `client` sends with.
inline detail::http_client& detail::http_of(const oauth_client& client) noexcept { return *client.http_; }

// ============================================================================
// 11. The redirect listener and the browser
//     A loopback HTTP listener for the authorization redirect. It binds what
//     redirect_uri names (localhost: 127.0.0.1 and ::1; port 0: any free port,
//     reported back), serves many connections at once with a read deadline
//     each, answers only the callback path, keeps waiting through callbacks
//     for other states, and stops at the first code or error for its own
//     state, or at its overall deadline. Its pages never carry the code.
// ============================================================================


#if CONFLUENCE_OAUTH_DETAIL_DEFINE
namespace detail {

inline std::string html_page(std::string_view app, std::string_view title, std::string_view message) {
  std::string out = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>";
  out += html_escape(title);
  out += " - ";
  out += html_escape(app);
  out += "</title><style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em}"
         "</style></head><body><h1>";
  out += html_escape(title);
  out += "</h1><p>";
  out += html_escape(message);
  out += "</p></body></html>\n";
  return out;
}

inline http_response page_response(int status, std::string reason, std::string body) {
  http_response res;
  res.status = status;
  res.reason = std::move(reason);
  res.headers.add("Content-Type", "text/html; charset=utf-8");
  res.headers.add("Cache-Control", "no-store");
  res.headers.add("Connection", "close");
  res.headers.add("Referrer-Policy", "no-referrer");
  res.headers.add("X-Content-Type-Options", "nosniff");
  res.headers.add("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'");
  res.body = std::move(body);
  return res;
}

class listener_state : public std::enable_shared_from_this<listener_state> {
 public:
  listener_state(const asio::any_io_executor& ex, session_options::listener_options options)
      : strand_(asio::make_strand(ex)), options_(std::move(options)), done_(strand_), deadline_(strand_) {}

  asio::strand<asio::any_io_executor>& strand() noexcept { return strand_; }
  std::vector<asio::ip::tcp::acceptor>& acceptors() noexcept { return acceptors_; }
  void set_callback_path(std::string path) { callback_path_ = std::move(path); }
  /// The Host values a browser sends to the listener: each address it is
  /// bound to, and "localhost", with the port (which port 80 may leave out).
  void set_own_hosts(const std::vector<asio::ip::address>& addresses, std::uint16_t port) {
    std::vector<std::string> names = {"localhost"};
    for (const auto& a : addresses) {
      std::string name = a.to_string();  // appended, not "[" + name: g++ 12 -O3 warns a false -Wrestrict
      if (a.is_v6()) name = std::string(1, '[').append(name).append(1, ']');
      names.push_back(std::move(name));
    }
    own_hosts_.clear();
    for (const auto& name : names) {
      own_hosts_.push_back(name + ":" + std::to_string(port));
      if (port == 80) own_hosts_.push_back(name);
    }
  }

  /// One wait for the callback that answers `auth`; runs on the strand.
  asio::awaitable<secret> run(const authorization& auth) {
    if (waiting_) fail(errc::invalid_config, "redirect_listener: a wait is already in progress");
    if (acceptors_.empty()) fail(errc::invalid_config, "redirect_listener is closed");
    waiting_ = true;
    finished_ = false;
    timed_out_ = false;
    code_.reset();
    failure_ = nullptr;
    auth_ = &auth;
    auto self = shared_from_this();
    const auto generation = ++generation_;
    deadline_.expires_after(options_.timeout);
    deadline_.async_wait([self, generation](std::error_code ec) {
      // A deadline of an earlier wait, already queued when that wait ended,
      // must not end this one.
      if (ec || self->finished_ || self->generation_ != generation) return;
      self->timed_out_ = true;
      self->finish();
    });
    for (auto& acceptor : acceptors_) asio::co_spawn(strand_, accept_loop(self, acceptor), asio::detached);
    done_.expires_at(asio::steady_timer::time_point::max());
    co_await done_.async_wait(use_tuple);
    finished_ = true;
    end_wait();
    if (code_) co_return std::move(*code_);
    if (failure_) std::rethrow_exception(failure_);
    if (timed_out_)
      fail(errc::listener_timeout, "no authorization redirect within " +
                                       std::to_string(options_.timeout.count() / 1000) + " s");
    throw oauth_error(asio::error::operation_aborted, "waiting for the authorization redirect was cancelled");
  }

  void close() {
    std::error_code ignored;
    for (auto& a : acceptors_) a.close(ignored);
    acceptors_.clear();
    close_connections();
    finish();
  }

 private:
  void finish() {
    finished_ = true;
    done_.cancel();
  }

  void end_wait() {
    waiting_ = false;
    auth_ = nullptr;
    deadline_.cancel();
    std::error_code ignored;
    for (auto& a : acceptors_) a.cancel(ignored);
    close_connections();
  }

  void close_connections() {
    for (auto& weak : connections_)
      if (auto s = weak.lock()) {
        std::error_code ignored;
        s->close(ignored);
      }
    connections_.clear();
  }

  static asio::awaitable<void> accept_loop(std::shared_ptr<listener_state> self, asio::ip::tcp::acceptor& acceptor) {
    asio::steady_timer backoff(self->strand_);
    while (!self->finished_ && acceptor.is_open()) {
      auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
      if (self->finished_ || ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) co_return;
      if (ec) {  // out of descriptors and the like: breathe, then go on
        backoff.expires_after(std::chrono::milliseconds(50));
        co_await backoff.async_wait(use_tuple);
        continue;
      }
      set_cloexec(socket.native_handle());
      std::erase_if(self->connections_, [](const auto& w) { return w.expired(); });
      if (self->connections_.size() >= self->options_.max_connections) {
        // Make room by dropping the oldest: closing newcomers instead would let
        // a few silent connections, renewed in turn, lock the browser out.
        if (auto oldest = self->connections_.front().lock()) {
          std::error_code ignored;
          oldest->close(ignored);
        }
        self->connections_.erase(self->connections_.begin());
      }
      auto conn = std::make_shared<asio::ip::tcp::socket>(std::move(socket));
      self->connections_.push_back(conn);
      asio::co_spawn(self->strand_, serve(self, std::move(conn)), asio::detached);
    }
  }

  static asio::awaitable<void> serve(std::shared_ptr<listener_state> self, std::shared_ptr<asio::ip::tcp::socket> socket) {
    asio::steady_timer timer(self->strand_);
    timer.expires_after(self->options_.read_timeout);
    timer.async_wait([weak = std::weak_ptr(socket)](std::error_code ec) {
      if (ec) return;
      if (auto s = weak.lock()) {
        std::error_code ignored;
        s->close(ignored);
      }
    });
    http_limits limits;
    limits.max_head_bytes = 16 * 1024;
    limits.max_header_count = 64;
    limits.max_body_bytes = 16 * 1024;
    http_parser parser(http_parser::kind::request, limits);
    std::array<char, 4096> buffer;
    while (!parser.done() && !parser.error()) {
      auto [ec, n] = co_await socket->async_read_some(asio::buffer(buffer), use_tuple);
      if (ec == asio::error::eof) parser.on_eof();
      else if (ec) co_return;  // closed by the read deadline, or reset
      else parser.feed(std::string_view(buffer.data(), n));
    }
    if (parser.error() == make_error_code(errc::connection_closed) || self->finished_) co_return;
    bool ended_wait = false;
    http_response page = parser.error() ? self->bad_request() : self->route(parser.take_request(), ended_wait);
    auto bytes = serialize_response(page);
    co_await asio::async_write(*socket, asio::buffer(bytes), use_tuple);
    if (ended_wait) self->finish();
    // Closing with unread input would reset the connection and could destroy
    // the page in flight: half-close, then drain what the client still sends.
    std::error_code ignored;
    socket->shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
    for (;;) {
      auto [ec, n] = co_await socket->async_read_some(asio::buffer(buffer), use_tuple);
      if (ec) break;
    }
    timer.cancel();
    socket->close(ignored);
  }

  bool is_own_host(std::optional<std::string_view> host) const {
    return host && std::any_of(own_hosts_.begin(), own_hosts_.end(), [&](const std::string& h) { return iequals(*host, h); });
  }

  http_response bad_request() const {
    return page_response(400, "Bad Request",
                         html_page(options_.app_name, "Bad request", "This request could not be understood."));
  }

  // Decides the answer to one request; sets ended_wait when it ends the wait
  // (the wait is woken only after the page is written, so the browser gets it).
  http_response route(http_request req, bool& ended_wait) {
    const auto& app = options_.app_name;
    // DNS rebinding: a page on another site whose name resolves to 127.0.0.1
    // reaches this port, but its requests name that site in Host.
    if (!is_own_host(req.headers.get("Host")))
      return page_response(400, "Bad Request", html_page(app, "Wrong host", "This address does not serve the sign-in."));
    auto path = std::string_view(req.target).substr(0, req.target.find('?'));
    if (path != callback_path_)
      return page_response(404, "Not Found", html_page(app, "Not found", "There is nothing here."));
    if (req.method != "GET")
      return page_response(405, "Method Not Allowed", html_page(app, "Method not allowed", "Use GET."));
    if (finished_ || !auth_)
      return page_response(400, "Bad Request", html_page(app, "Authorization already handled", "This sign-in has already finished. You can close this tab."));
    auto params = parse_callback(req.target);
    OPENSSL_cleanse(req.target.data(), req.target.size());
    switch (match_callback(params, *auth_)) {
      case callback_match::code:
        code_ = params.code;
        finished_ = ended_wait = true;
        return page_response(200, "OK", html_page(app, "Authorization complete",
                                                  "You can close this tab and return to the application."));
      case callback_match::denied:
      case callback_match::failed: {
        bool denied = params.error == "access_denied";
        try {
          verify_callback(params, *auth_);
        } catch (...) {
          failure_ = std::current_exception();
        }
        finished_ = ended_wait = true;
        // Fixed text: the server's words go to the application's error, sanitized, never to the page.
        return page_response(denied ? 403 : 400, denied ? "Forbidden" : "Bad Request",
                             denied ? html_page(app, "Authorization denied",
                                                "Access was not granted, so the application cannot continue.")
                                    : html_page(app, "Authorization failed",
                                                "The authorization server reported an error. The application "
                                                "shows the details."));
      }
      case callback_match::state_mismatch:
        // A server may drop the state from its error redirect (Atlassian's
        // denial: not confirmed either way): then it was likely the user's own.
        return page_response(400, "Bad Request",
                             html_page(app, "Authorization mismatch",
                                       params.state || params.error.empty()
                                           ? "This response does not belong to the sign-in in progress, which goes "
                                             "on. If it was not yours, close this tab."
                                           : "This error does not carry the sign-in's state, so it cannot end the "
                                             "sign-in, which goes on. If you declined, cancel it in the application."));
      case callback_match::incomplete: break;
    }
    return page_response(400, "Bad Request",
                         html_page(app, "Incomplete authorization response", "The response lacks a code."));
  }

  asio::strand<asio::any_io_executor> strand_;
  session_options::listener_options options_;
  std::vector<asio::ip::tcp::acceptor> acceptors_;
  std::vector<std::weak_ptr<asio::ip::tcp::socket>> connections_;
  std::string callback_path_;
  std::vector<std::string> own_hosts_;
  asio::steady_timer done_;
  asio::steady_timer deadline_;
  const authorization* auth_ = nullptr;
  std::optional<secret> code_;
  std::exception_ptr failure_;
  std::uint64_t generation_ = 0;
  bool waiting_ = false;
  bool finished_ = false;
  bool timed_out_ = false;
};

/// The loopback listener for the authorization redirect. Binds in the
/// constructor, so a taken port is reported before the browser opens.
class redirect_listener {
 public:
  redirect_listener(const asio::any_io_executor& ex, std::string_view redirect_uri, session_options::listener_options options = {})
      : state_(std::make_shared<detail::listener_state>(ex, std::move(options))) {
    url u = parse_url(redirect_uri);
    if (u.is_https() || !detail::names_loopback(u.host))
      detail::fail(errc::invalid_config, "the redirect listener needs an http:// loopback redirect_uri, not " + u.origin());
    state_->set_callback_path(std::string(u.path()));
    std::vector<asio::ip::address> addresses;
    if (detail::iequals(u.host, "localhost"))
      addresses = {asio::ip::make_address("127.0.0.1"), asio::ip::make_address("::1")};
    else
      addresses = {asio::ip::make_address(u.host)};
    bind_all(addresses, u.port);
    state_->set_own_hosts(addresses, port_);
    if (u.port != 0) {
      redirect_uri_ = std::string(redirect_uri);  // exactly as registered
    } else {
      u.port = port_;
      redirect_uri_ = u.str();
    }
  }

  redirect_listener(const redirect_listener&) = delete;
  redirect_listener& operator=(const redirect_listener&) = delete;
  ~redirect_listener() { close(); }

  /// The redirect URI with the port actually bound (differs when asked for port 0).
  const std::string& redirect_uri() const noexcept { return redirect_uri_; }
  /// The port bound.
  std::uint16_t port() const noexcept { return port_; }

  /// Where operations given a completion token other than use_awaitable run.
  asio::any_io_executor get_executor() const { return state_->strand().get_inner_executor(); }

  /// Waits for the callback answering `auth` and completes with (error_code,
  /// secret code): authorization_denied, authorization_failed,
  /// listener_timeout, or operation_aborted when cancelled. Callbacks for
  /// other states are answered with a 400 page and the wait goes on.
  template <typename CompletionToken = detail::default_completion_token>
  auto wait(authorization auth, CompletionToken&& token = {}) {
    return detail::launch<secret>(get_executor(), std::forward<CompletionToken>(token),
                                  [state = state_, auth = std::move(auth)] {
                                    return detail::on_strand(state->strand(), state->run(auth));
                                  });
  }

  /// Stops listening; a pending wait ends with operation_aborted.
  void close() {
    if (!state_) return;
    asio::dispatch(state_->strand(), [state = state_] { state->close(); });
  }

 private:
  void bind_all(const std::vector<asio::ip::address>& addresses, std::uint16_t port) {
    // With port 0 the first address picks the port and the others must get the
    // same one; if another program holds it there, start over.
    auto& acceptors = state_->acceptors();
    for (int attempt = 0; attempt < (port == 0 ? 8 : 1); ++attempt) {
      acceptors.clear();
      port_ = port;
      std::error_code ec;
      for (std::size_t i = 0; i < addresses.size() && !ec; ++i) {
        asio::ip::tcp::acceptor acceptor(state_->strand());
        asio::ip::tcp::endpoint ep(addresses[i], port_);
        acceptor.open(ep.protocol(), ec);
        if (!ec) detail::set_cloexec(acceptor.native_handle());
        if (!ec && ep.address().is_v6()) acceptor.set_option(asio::ip::v6_only(true), ec);
        if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec) acceptor.bind(ep, ec);
        if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
        if (!ec) {
          if (port_ == 0) port_ = acceptor.local_endpoint().port();
          acceptors.push_back(std::move(acceptor));
        } else if (i > 0 && ep.address().is_v6() &&
                   (ec == asio::error::address_family_not_supported || ec.value() == EADDRNOTAVAIL)) {
          ec.clear();  // a host without IPv6 still serves localhost on 127.0.0.1
        }
      }
      if (!ec) return;
      acceptors.clear();
      // Asio's own system category does not compare equal to std::errc.
      if (ec == asio::error::address_in_use && port == 0) continue;
      if (ec == asio::error::address_in_use)
        detail::fail(errc::address_in_use, "port " + std::to_string(port) +
                                               " is already in use; stop the program using it or register a "
                                               "redirect URI with another port");
      detail::fail(errc::invalid_config, "cannot listen for the redirect: " + ec.message());
    }
    detail::fail(errc::address_in_use, "could not get one free port on every loopback address");
  }

  std::shared_ptr<detail::listener_state> state_;
  std::string redirect_uri_;
  std::uint16_t port_ = 0;
};

}  // namespace detail
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// Opens a URL in a browser. Must not wait for the browser to close.
using browser_opener = std::function<asio::awaitable<void>(const std::string& url)>;

namespace detail {

#if CONFLUENCE_OAUTH_DETAIL_DEFINE

inline bool command_exists(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (!dirs.empty()) {
    auto colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    if (!dir.empty() && ::access((dir + "/" + name).c_str(), X_OK) == 0) return true;
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return false;
}

/// The environment a browser needs (display, locale, folders, proxies, the
/// browser's own settings) and nothing else: a caller's
/// ATLASSIAN_CLIENT_SECRET, cloud keys or database passwords stay behind.
inline bool browser_needs(std::string_view entry) {
  const auto name = entry.substr(0, entry.find('='));
  static constexpr std::string_view names[] = {
      "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "DISPLAY",
      "WAYLAND_DISPLAY", "XAUTHORITY", "DBUS_SESSION_BUS_ADDRESS", "DESKTOP_SESSION", "BROWSER", "http_proxy",
      "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"};
  static constexpr std::string_view prefixes[] = {"LC_", "XDG_", "MOZ_", "CHROME_", "GTK_", "GDK_", "QT_", "KDE_", "GNOME_"};
  return std::find(std::begin(names), std::end(names), name) != std::end(names) ||
         std::any_of(std::begin(prefixes), std::end(prefixes), [&](std::string_view p) { return name.starts_with(p); });
}

/// Starts argv in the background through `sh -c '"$@" &'` (the URL is an
/// argument, never shell text), so the browser is not our child, and reaps
/// the short-lived shell without blocking the executor. The browser gets
/// only the environment it needs (browser_needs).
inline asio::awaitable<void> spawn_detached(std::vector<std::string> argv) {
  if (argv.empty() || !command_exists(argv.front()))
    fail(errc::browser_launch_failed, "browser command not found: " + (argv.empty() ? std::string("(empty)") : sanitize_text(argv.front(), 100)));
  std::vector<std::string> args = {"sh", "-c", "\"$@\" </dev/null >/dev/null 2>&1 &", "sh"};
  args.insert(args.end(), argv.begin(), argv.end());
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  std::vector<char*> env;
  for (char** e = environ; e && *e; ++e)
    if (browser_needs(*e)) env.push_back(*e);
  env.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  // Besides close-on-exec on our own sockets: nothing of this process but
  // stdin, stdout and stderr reaches the browser.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
#endif
  pid_t pid = 0;
  int err = ::posix_spawn(&pid, "/bin/sh", &actions, nullptr, cargs.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) fail(errc::browser_launch_failed, "cannot start /bin/sh: " + std::generic_category().message(err));
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (int i = 0; i < 400; ++i) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) co_return;
    timer.expires_after(std::chrono::milliseconds(5));
    co_await timer.async_wait(asio::use_awaitable);
  }
}

#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// A browser started as a command: `argv` with the URL as its last argument,
/// or, with no argv, the system's (the first command of $BROWSER, `%s`
/// standing for the URL, else `xdg-open`).
struct browser_command_opener {
  std::vector<std::string> argv;

  asio::awaitable<void> operator()(const std::string& url) const;

 private:
  std::vector<std::string> with_url(const std::string& url) const;
  static std::vector<std::string> system_browser(const std::string& url);
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> browser_command_opener::operator()(const std::string& url) const {
  auto args = argv.empty() ? system_browser(url) : with_url(url);  // GCC 12 frees a ?: temporary in a co_await twice
  co_await spawn_detached(std::move(args));
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::vector<std::string> browser_command_opener::with_url(const std::string& url) const {
  auto args = argv;
  args.push_back(url);
  return args;
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::vector<std::string> browser_command_opener::system_browser(const std::string& url) {
  std::vector<std::string> args;
  bool url_placed = false;
  if (const char* b = std::getenv("BROWSER"); b && *b) {
    std::string_view cmd = b;
    cmd = cmd.substr(0, cmd.find(':'));
    while (!cmd.empty()) {
      auto sp = cmd.find(' ');
      if (sp != 0) {
        std::string arg(cmd.substr(0, sp));
        if (auto at = arg.find("%s"); at != std::string::npos) {
          arg.replace(at, 2, url);
          url_placed = true;
        }
        args.push_back(std::move(arg));
      }
      if (sp == std::string_view::npos) break;
      cmd.remove_prefix(sp + 1);
    }
  }
  if (args.empty()) args.emplace_back("xdg-open");
  if (!url_placed) args.push_back(url);
  return args;
}

/// The page of redirect_page: a script first (it leaves before the page has
/// loaded, which headless browsers wait for), a refresh for browsers without
/// one, a link last.
inline std::string redirect_page_html(const std::string& target) {
  const std::string to = html_escape(target);
  std::string in_script = nlohmann::json(target).dump();
  for (auto lt = in_script.find('<'); lt != std::string::npos; lt = in_script.find('<', lt)) in_script.replace(lt, 1, "\\u003c");
  std::string page = "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">"
                     "<script>location.replace(" + in_script + ")</script>"
                     "<meta http-equiv=\"refresh\" content=\"0;url=" + to + "\"><title>Sign in</title></head>"
                     "<body><p><a href=\"" + to + "\">Continue to sign in</a></p></body></html>\n";
  wipe(in_script);
  return page;
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

}  // namespace detail

/// A private local page that sends the browser on to a URL: mode 0600, in a
/// folder of its own (0700) under $XDG_RUNTIME_DIR, $TMPDIR or /tmp; both go
/// when it does. A browser's command line is public (ps, /proc), a private
/// file is not (Jupyter's redirect file does the same). authorize() makes one
/// for a browser_command; an opener of your own that starts a
/// browser can open one's url() instead of the authorization URL, and keep it
/// until the sign-in ends.
class redirect_page {
 public:
  /// Writes the page; throws oauth_error(browser_launch_failed) when it cannot.
  explicit redirect_page(const std::string& target);
  redirect_page(const redirect_page&) = delete;
  redirect_page& operator=(const redirect_page&) = delete;
  ~redirect_page();

  /// The page as a file: URL.
  std::string url() const;

 private:
  static constexpr const char* file_name = "sign-in.html";

  std::string path() const;

  [[noreturn]] static void fail_here(const std::string& what, int err);

  // Through the folder's descriptor, once it is known to be ours and private:
  // where others may rename folders (a TMPDIR without the sticky bit), the
  // name may no longer lead to the one mkdtemp made.
  void write(const std::string& page) const;

  void remove() noexcept;

  std::string dir_;
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE redirect_page::redirect_page(const std::string& target) {
  std::string page = detail::redirect_page_html(target);
  detail::wipe_on_exit wipe{page};
  std::string base = "/tmp";
  for (const char* var : {"XDG_RUNTIME_DIR", "TMPDIR"})
    if (const char* v = std::getenv(var); v && *v == '/') {
      base = v;
      break;
    }
  std::string dir = base + "/confluence_oauth-XXXXXX";
  if (!::mkdtemp(dir.data()))
    fail_here("cannot create a private folder in " + detail::sanitize_text(base, 200), errno);
  dir_ = dir;
  try {
    write(page);
  } catch (...) {
    remove();
    throw;
  }
}

CONFLUENCE_OAUTH_DETAIL_INLINE redirect_page::~redirect_page() { remove(); }

CONFLUENCE_OAUTH_DETAIL_INLINE std::string redirect_page::url() const {
  std::string out = "file://";
  for (char c : path()) {
    if (c == '/') out += c;
    else detail::percent_encode_to(out, std::string_view(&c, 1));
  }
  return out;
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::string redirect_page::path() const { return dir_ + "/" + file_name; }

CONFLUENCE_OAUTH_DETAIL_INLINE void redirect_page::fail_here(const std::string& what, int err) {
  detail::fail(errc::browser_launch_failed, what + ": " + std::generic_category().message(err));
}

CONFLUENCE_OAUTH_DETAIL_INLINE void redirect_page::write(const std::string& page) const {
  detail::unique_fd folder(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (!folder || ::fstat(folder.get(), &st) != 0) fail_here("cannot open the private folder", errno);
  if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0)
    detail::fail(errc::browser_launch_failed, "the sign-in page's folder was replaced by another");
  detail::unique_fd file(::openat(folder.get(), file_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!file) fail_here("cannot create the sign-in page", errno);
  for (std::string_view rest = page; !rest.empty();) {
    const auto n = ::write(file.get(), rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_here("cannot write the sign-in page", errno);
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
}

CONFLUENCE_OAUTH_DETAIL_INLINE void redirect_page::remove() noexcept {
  ::unlink(path().c_str());
  ::rmdir(dir_.c_str());
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// A browser_opener that starts a browser as a command with the URL as its
/// last argument. `browser_command{}` is the system's browser: the first
/// command of $BROWSER (colon-separated, `%s` standing for the URL) if set,
/// else `xdg-open`; `browser_command({"firefox", "--new-window"})` is that
/// command. session::authorize gives it a private redirect page instead of
/// the URL (session_options::listener_options::redirect_page).
class browser_command {
 public:
  /// The system's browser.
  browser_command() = default;
  /// Runs `argv` with the URL appended.
  explicit browser_command(std::vector<std::string> argv) : opener_{std::move(argv)} {}
  /// Starts the browser on `url`; does not wait for it to close.
  asio::awaitable<void> operator()(const std::string& url) const { return opener_(url); }

 private:
  detail::browser_command_opener opener_;
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
namespace detail {

/// The whole interactive authorization: listen on the redirect URI, send the
/// browser to the authorization URL, wait for the callback, trade the code.
inline asio::awaitable<token_set> authorize(oauth_client client, browser_opener open, session_options::listener_options options) {
  redirect_listener listener(client.get_executor(), client.config().redirect_uri, options);
  auto auth = client.begin_authorization(listener.redirect_uri());
  // A browser started as a command gets a private page, not the URL; any
  // other opener (one that prints the URL, say) gets the URL itself.
  std::optional<confluence_oauth::redirect_page> page;
  if (options.redirect_page && open.target<browser_command>()) page.emplace(auth.url);
  const std::string target = page ? page->url() : auth.url;  // not a ?: inside the co_await: GCC 12 frees it twice
  co_await open(target);
  auto code = co_await listener.wait(auth);
  page.reset();
  listener.close();
  co_return co_await client.exchange_code(std::move(code), std::move(auth));
}

/// authorize with the default session_options::listener_options. Not a default argument: GCC 12
/// destroys a coroutine's default argument twice.
inline asio::awaitable<token_set> authorize(oauth_client client, browser_opener open) {
  return authorize(std::move(client), std::move(open), session_options::listener_options{});
}

}  // namespace detail
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

// ============================================================================
// 12. The session
//     The token lifecycle and authenticated requests. The session's state
//     lives on one strand. Refresh is single-flight: whoever needs a refresh
//     joins the one round in flight, which runs detached, so a caller that
//     gives up does not stop it for the others. A round holds the store's
//     lock, re-reads the store (another process may have refreshed already),
//     refreshes, and saves before anyone is handed the new tokens.
// ============================================================================



#if CONFLUENCE_OAUTH_DETAIL_DEFINE
namespace detail {

/// The backoff before retry number `retry` (1-based) when the server named no
/// wait: base_delay doubled per retry up to max_delay, times a random factor
/// in [1 - jitter, 1 + jitter] (Atlassian's example: 5 s, 30 s, 0.7-1.3).
inline std::chrono::milliseconds backoff_delay(const session_options::retry_policy& policy, int retry) {
  auto nominal = policy.base_delay;
  for (int i = 1; i < retry && nominal < policy.max_delay; ++i) nominal *= 2;
  nominal = std::min(nominal, policy.max_delay);
  std::uint64_t r = 0;
  random_bytes(reinterpret_cast<unsigned char*>(&r), sizeof r);
  const double uniform = static_cast<double>(r >> 11) * 0x1.0p-53;  // in [0, 1)
  const double factor = 1.0 - policy.jitter + 2.0 * policy.jitter * uniform;
  return std::chrono::milliseconds(std::llround(static_cast<double>(nominal.count()) * factor));
}

/// `wait` in milliseconds, rounded up and saturating (a Retry-After may be seconds::max()).
inline std::chrono::milliseconds saturating_ms(std::chrono::seconds wait) noexcept {
  constexpr auto most = std::chrono::milliseconds::max().count() / 1000;
  return std::chrono::milliseconds(std::min(wait.count(), most) * 1000);
}

/// The tries one operation has left under a retry policy. The request loop
/// and the refresh loop share it.
class retry_budget {
 public:
  explicit retry_budget(const session_options::retry_policy& policy) : policy_(policy) {}

  /// The wait before the next try: the server's Retry-After as sent, else the
  /// backoff; nullopt when the policy allows no more tries.
  std::optional<std::chrono::milliseconds> next_delay(std::optional<std::chrono::seconds> retry_after) {
    if (attempt_ >= policy_.max_attempts) return std::nullopt;
    const int retry = attempt_++;
    return retry_after ? saturating_ms(*retry_after) : backoff_delay(policy_, retry);
  }

 private:
  const session_options::retry_policy& policy_;
  int attempt_ = 1;
};

/// Waits on the current executor; a cancellation throws oauth_error(operation_aborted).
inline asio::awaitable<void> sleep_for(std::chrono::milliseconds delay, std::string_view what) {
  asio::steady_timer timer(co_await asio::this_coro::executor, delay);
  auto [ec] = co_await timer.async_wait(use_tuple);
  if (ec) throw oauth_error(ec, std::string(what) + ": cancelled");
}

/// The server's own words from an API error body: Atlassian puts them in
/// "message", "errorMessage" or "errors[0].title".
inline std::string api_message(const http_response& res) {
  auto j = parse_json(res.body);
  if (j.is_object()) {
    for (const char* key : {"message", "errorMessage"})
      if (auto message = json_string(j, key)) return sanitize_text(*message);
    if (auto errors = j.find("errors"); errors != j.end() && errors->is_array() && !errors->empty()) {
      const auto& first = errors->front();
      for (const char* key : {"title", "detail", "message"})
        if (auto message = json_string(first, key)) return sanitize_text(*message);
    }
  }
  return sanitize_text(res.reason);
}

/// Atlassian's answer to a token without the scope an endpoint needs: a 401
/// that refreshing cannot fix.
inline bool is_scope_mismatch(const http_response& res) {
  if (res.status != 401) return false;
  if (auto w = res.headers.get("WWW-Authenticate"); w && w->find("insufficient_scope") != std::string_view::npos)
    return true;  // RFC 6750
  return ascii_lower(std::string_view(res.body).substr(0, 4096)).find("scope does not match") != std::string::npos;
}

/// Removes the secrets from everything of `res` that may reach a message:
/// reason, header values (WWW-Authenticate, Location) and body.
inline void redact_response(http_response& res, std::span<const secret* const> secrets) {
  res.reason = redact(std::move(res.reason), secrets);
  http_headers headers;
  for (const auto& h : res.headers) headers.add(h.name, redact(h.value, secrets));
  res.headers = std::move(headers);
  res.body = redact(std::move(res.body), secrets);
}

/// Throws the typed error for an API answer that is not a success.
[[noreturn]] inline void fail_api(const http_response& res, const std::string& what) {
  auto details = response_details(res);
  details.error_description = api_message(res);
  std::string said = details.error_description.empty() ? "" : ": " + details.error_description;
  while (!said.empty() && said.back() == '.') said.pop_back();  // sentences follow
  if (res.status >= 300 && res.status < 400) {
    auto location = res.headers.get("Location");
    fail(errc::http_error, what + ": redirect to " + sanitize_text(location.value_or("nowhere"), 200) +
                               " not followed (the access token goes only to the API)", details);
  }
  if (is_scope_mismatch(res))
    fail(errc::scope_mismatch, what + said + ". The access token lacks a scope this endpoint needs: add it (for the v2 "
                               "API, granular scopes such as read:page:confluence) to the app in the developer "
                               "console and to client_config::scopes, then sign in again", details);
  if (res.status == 401)
    fail(errc::unauthorized, what + " refused a freshly refreshed access token" + said +
                                 ". The grant may have been revoked: sign in again", details);
  if (res.status == 410)
    fail(errc::api_gone, what + said + ". Atlassian retired this endpoint for OAuth apps: use the Confluence REST v2 "
                                       "API (/wiki/api/v2/...) with granular scopes", details);
  if (res.status == 403)
    fail(errc::http_error, what + " is forbidden" + said + " (the user or the app may not see this)", details);
  if (res.status == 404) fail(errc::http_error, what + " was not found" + said, details);
  fail(errc_for_status(res.status), what + " failed" + said, details);
}

/// The JSON body of a successful API answer, or the typed error.
/// `body` as JSON text; a string in it that is not UTF-8 is a caller's error.
inline std::string dump_json(const nlohmann::json& body) {
  try {
    return body.dump();
  } catch (const nlohmann::json::exception&) {
    fail(errc::invalid_config, "the JSON body holds a string that is not valid UTF-8");
  }
}

/// "GET https://api.atlassian.com/ex/confluence/..." without the query, for messages.
inline std::string describe(std::string_view method, const url& u) {
  return std::string(method) + " " + u.origin() + sanitize_text(u.path(), 200);
}

/// The JSON body of a 2xx answer to `method` on `u`; the request is described
/// only in an error, so that a success pays nothing for it.
inline nlohmann::json parse_api_json(const http_response& res, std::string_view method, const url& u) {
  if (res.status < 200 || res.status >= 300) fail_api(res, describe(method, u));
  if (res.body.empty()) return nullptr;
  auto j = parse_json(res.body);
  if (j.is_discarded())
    fail(errc::protocol_error, describe(method, u) + ": the response is not JSON", response_details(res));
  return j;
}

/// An http(s) URL, as opposed to a path (which may hold "://" in its query).
inline bool is_absolute_url(std::string_view target) noexcept {
  return iequals(target.substr(0, 7), "http://") || iequals(target.substr(0, 8), "https://");
}

// Atlassian's refresh tokens expire after 90 days unused and 365 days after
// consent (ATLASSIAN.md, "Refresh tokens rotate"); grant_warning speaks up 14 days before.
inline constexpr std::chrono::hours refresh_inactivity_limit{24 * 90};
inline constexpr std::chrono::hours refresh_absolute_limit{24 * 365};
inline constexpr std::chrono::hours grant_warning_window{24 * 14};

/// Whether the space-separated `list` (a granted scope) holds `word`.
inline bool lists_word(std::string_view list, std::string_view word) {
  for (std::size_t at = 0; at <= list.size();) {
    const auto end = std::min(list.find(' ', at), list.size());
    if (list.substr(at, end - at) == word) return true;
    at = end + 1;
  }
  return false;
}

/// What grant_warning says about `t`: its age, and scopes asked for that the
/// server did not grant. Whole days, so a message repeats only once a day.
inline std::vector<std::string> grant_warnings(const token_set& t, const client_config& config,
                                               token_set::clock::time_point now) {
  using days = std::chrono::duration<std::int64_t, std::ratio<86400>>;
  auto in_days = [](token_set::clock::duration d) { return std::to_string(std::chrono::floor<days>(d).count()); };
  std::vector<std::string> out;
  const token_set::clock::time_point unknown{};
  if (t.has_refresh_token() && t.first_obtained != unknown) {
    const auto end = t.first_obtained + refresh_absolute_limit;
    if (end - now <= grant_warning_window)
      out.push_back("the grant ends in " + in_days(std::max(end - now, token_set::clock::duration::zero())) +
                    " days: Atlassian's refresh tokens expire 365 days after consent; sign in again before then");
  }
  if (t.has_refresh_token() && t.last_rotated != unknown) {
    const auto end = t.last_rotated + refresh_inactivity_limit;
    if (end - now <= grant_warning_window)
      out.push_back("the refresh token was last used " + in_days(now - t.last_rotated) +
                    " days ago: Atlassian expires it after 90 days unused; a refresh restarts that count");
  }
  if (!t.scope.empty() && !config.service_account) {  // a service account's scopes are the admin's choice
    std::string missing;
    for (const auto& s : config.scopes)  // a refresh token is offline_access granted, listed or not
      if (!lists_word(t.scope, s) && !(s == "offline_access" && t.has_refresh_token()))
        missing += (missing.empty() ? "" : " ") + s;
    if (!missing.empty())
      out.push_back("the grant lacks scopes asked for: " + sanitize_text(missing, 200) + " (granted: " +
                    sanitize_text(t.scope, 400) + "); add them to the app in the developer console, or an admin "
                    "removed them");
  }
  return out;
}

/// A token the session hands out, with the expiry it was granted with.
struct usable_token {
  secret access;
  token_set::clock::time_point expires_at;

  bool valid_for(std::chrono::seconds span) const {
    return expires_at == token_set::clock::time_point::max() || expires_at - token_set::clock::now() >= span;
  }
};

/// One refresh round; everyone who needs it waits on `done`, which is
/// cancelled when the round ends.
struct refresh_round {
  explicit refresh_round(const asio::strand<asio::any_io_executor>& strand)
      : done(strand, asio::steady_timer::time_point::max()) {}
  asio::steady_timer done;
  bool finished = false;
  std::exception_ptr error;
};

class session_state : public std::enable_shared_from_this<session_state> {
 public:
  using clock = token_set::clock;

  session_state(oauth_client client, std::shared_ptr<token_store> store, session_options options)
      : client_(std::move(client)), store_holder_(std::move(store)), store_(checked(store_holder_)),
        options_(std::move(options)), api_(parse_url(client_.config().api_url)),
        token_origin_(parse_url(client_.config().token_url).origin()),
        strand_(asio::make_strand(client_.get_executor())) {
    if (options_.refresh_skew.count() < 0 || options_.near_expiry.count() < 0)
      fail(errc::invalid_config, "session_options: refresh_skew and near_expiry must not be negative");
    const auto& retry = options_.retry;
    if (retry.max_attempts < 1) fail(errc::invalid_config, "retry_policy::max_attempts must be at least 1");
    for (auto wait : {retry.base_delay, retry.max_delay, retry.max_wait, retry.near_limit_pause})
      if (wait.count() < 0 || wait > std::chrono::hours(24))
        fail(errc::invalid_config, "retry_policy: every delay and wait must be between 0 and a day");
    if (!(retry.jitter >= 0 && retry.jitter <= 1)) fail(errc::invalid_config, "retry_policy::jitter must be between 0 and 1");
    api_prefix_ = std::string(api_.path());
    while (!api_prefix_.empty() && api_prefix_.back() == '/') api_prefix_.pop_back();
  }

  const oauth_client& client() const noexcept { return client_; }
  const session_options& options() const noexcept { return options_; }
  const asio::strand<asio::any_io_executor>& strand() const noexcept { return strand_; }
  /// The API base without a trailing slash: "https://api.atlassian.com".
  std::string api_base() const { return api_.origin() + api_prefix_; }

  /// A target for the API: a path under api_url, or an absolute URL on its
  /// origin. The access token goes nowhere else.
  url resolve(std::string_view target) const {
    if (is_absolute_url(target)) {
      url u = parse_url(target);
      if (u.origin() != api_.origin())
        fail(errc::invalid_config, "refusing to send the access token to " + u.origin() + ": it goes only to " + api_.origin());
      return u;
    }
    return parse_url(path_under(api_base(), target, "a request target that is no URL on " + api_.origin()));
  }

  /// Whether `res` to a request made with `used` calls for a new token: a 401
  /// that is not a scope problem, or a 403/404 close to expiry.
  bool rejects(const http_response& res, const usable_token& used) const {
    if (res.status == 401) return !is_scope_mismatch(res);
    if (res.status != 403 && res.status != 404) return false;
    return used.expires_at != clock::time_point::max() && used.expires_at - clock::now() <= options_.near_expiry;
  }

  // Back-pressure shared by the session's requests, per origin: Atlassian
  // counts per app and per site, and a request sent before its Retry-After
  // ends "will fail and return the same or longer Retry-After period"
  // (ATLASSIAN.md "Rate limits"). Any thread.

  /// Nothing goes to `origin` before `wait` from now (the later moment wins).
  /// A hold lasts an hour at most, Atlassian's longest (quota) period: a
  /// Retry-After of 2^63-1 s does not stop the session for good.
  void defer(const std::string& origin, std::chrono::milliseconds wait) {
    const auto until = std::chrono::steady_clock::now() + std::min<std::chrono::milliseconds>(wait, std::chrono::hours(1));
    std::lock_guard lock(hold_mutex_);
    auto& moment = not_before_[origin];
    moment = std::max(moment, until);
  }

  /// How long `origin` is still held back.
  std::chrono::milliseconds held_for(const std::string& origin) const {
    using steady = std::chrono::steady_clock;
    std::lock_guard lock(hold_mutex_);
    auto it = not_before_.find(origin);
    const auto now = steady::now();
    if (it == not_before_.end() || it->second <= now) return std::chrono::milliseconds(0);
    return std::chrono::ceil<std::chrono::milliseconds>(it->second - now);
  }

  /// Waits until `origin` may be sent to; fails at once with rate_limited
  /// when that is further away than retry_policy::max_wait.
  asio::awaitable<void> hold_back(std::string origin, std::string what) {
    for (auto wait = held_for(origin); wait.count() > 0; wait = held_for(origin)) {
      if (wait > options_.retry.max_wait) {
        error_details details;
        details.retry_after = std::chrono::ceil<std::chrono::seconds>(wait);
        fail(errc::rate_limited, what + ": not sent, as the server asked this session to wait " +
                                     std::to_string(details.retry_after->count()) + " s more, longer than retry_policy::max_wait",
             details);
      }
      co_await sleep_for(wait, what + ": waiting as the server asked");
    }
  }

  /// Shares the wait a 429 or 503 asked for with the session's other
  /// requests to `origin`; true when it is longer than retry_policy::max_wait.
  bool beyond_wait(const std::string& origin, std::optional<std::chrono::seconds> retry_after) {
    if (!retry_after) return false;
    const auto wait = saturating_ms(*retry_after);
    defer(origin, wait);
    return wait > options_.retry.max_wait;
  }

  /// Holds `origin` back until the next try; false when the policy allows no more.
  bool retry_later(const std::string& origin, std::optional<std::chrono::seconds> retry_after, retry_budget& budget) {
    const auto delay = budget.next_delay(retry_after);
    if (delay) defer(origin, *delay);
    return delay.has_value();
  }

  /// retry_policy::near_limit_pause: after an answer that says the budget is
  /// nearly spent, the next request to `origin` waits that long.
  void pace(const std::string& origin, const http_response& res) {
    if (options_.retry.near_limit_pause.count() > 0 && res.rate_limit().near_limit)
      defer(origin, options_.retry.near_limit_pause);
  }

  /// The token token() would hand out, without the strand, while no refresh
  /// is due: nullopt sends the caller to token(). Any thread.
  std::optional<usable_token> published_token() const {
    std::lock_guard lock(published_mutex_);
    if (published_ && clock::now() < published_until_) return published_;
    return std::nullopt;
  }

  // Everything below runs on the strand.

  // load, adopt and logout hold the store's lock: they neither interleave
  // with a refresh round (here or in another process) nor undo its save.

  asio::awaitable<bool> load() {
    for (;;) {
      // Tokens newer than the store are saved, not dropped: those a round
      // left unsaved, also while this call waited for the lock.
      if (unsaved_) co_await join_round();
      auto guard = co_await store_.lock();
      if (unsaved_) continue;
      install(co_await store_.load());
      co_return tokens_.has_value();
    }
  }

  asio::awaitable<void> adopt(token_set tokens) {
    auto guard = co_await store_.lock();
    std::string failure;
    errc kind = errc::store_error;
    try {
      co_await store_.save(tokens);
    } catch (const oauth_error& e) {
      failure = e.what();
      // A store that refuses its file (another user's, a link) needs fixing, not retrying.
      if (e.code() == errc::invalid_config) kind = errc::invalid_config;
    } catch (const std::exception& e) {
      failure = e.what();
    }
    install(std::move(tokens));
    if (!failure.empty()) {
      // The code that bought these tokens is spent: keep them, save them before use.
      unsaved_ = true;
      unsaved_overwrites_ = true;
      fail(kind, "the new grant could not be saved (" + failure + "); it is kept in memory and saved before it is used");
    }
  }

  asio::awaitable<void> logout() {
    auto guard = co_await store_.lock();
    co_await store_.clear();
    install(std::nullopt);
  }

  asio::awaitable<std::optional<token_set>> grant() { co_return tokens_; }

  std::string redact(std::string text) const {
    std::vector<secret> known;
    {
      std::lock_guard lock(known_mutex_);  // only for the copy: remember() runs on the strand
      known = known_;
    }
    std::vector<const secret*> secrets{&client_.config().client_secret};
    for (const auto& s : known) secrets.push_back(&s);
    return detail::redact(std::move(text), secrets);
  }

  /// A token fit to send now. A token inside the refresh skew is still handed
  /// out while a round refreshes it in the background.
  asio::awaitable<usable_token> token() {
    if (usable() && !round_ && renewable() && tokens_->expires_within(skew()) &&
        std::chrono::steady_clock::now() >= next_proactive_)
      start_round();  // may finish at once and change tokens_: checked again below
    if (!usable()) co_await settle();
    usable_token out{tokens_->access_token, tokens_->expires_at};
    if (usable() && !round_ && !needs_refresh()) publish(out);
    co_return out;
  }

  /// After the API refused `used`: a new token, unless someone got one already.
  asio::awaitable<void> replace_rejected(const secret& used) {
    // A round already past its decision when `rejected_` is set may end
    // without refreshing; the second pass starts one that sees it.
    for (int pass = 0; pass < 2 && tokens_ && tokens_->access_token == used; ++pass) {
      if (grant_error_) std::rethrow_exception(grant_error_);
      rejected_ = used;
      co_await join_round();
    }
    if (!tokens_) fail(errc::not_signed_in, "signed out while refreshing");
    // The resend is the last try. A newer token that is already inside its
    // refresh window may expire on the way as well: wait for the refresh it
    // is due: the round in flight, or a new one unless proactive refreshes
    // are backing off after a failure. If that fails, the current token still goes.
    if (!grant_error_ && renewable() && tokens_->expires_within(skew()) &&
        (round_ || std::chrono::steady_clock::now() >= next_proactive_)) {
      try {
        co_await join_round();
      } catch (const oauth_error& e) {
        if (e.code() == asio::error::operation_aborted) throw;
      }
      if (!tokens_) fail(errc::not_signed_in, "signed out while refreshing");
    }
  }

  /// A token still valid `span` from now, refreshed first when the one held
  /// expires sooner. No refresh can outlast the server's lifetime: once one
  /// fell short, asking for as much again fails at once.
  asio::awaitable<usable_token> token_for(std::chrono::seconds span) {
    auto t = co_await token();
    if (t.valid_for(span)) co_return t;
    auto short_of = [&](const std::string& why) {
      fail(errc::invalid_config, "asked for an access token valid for " + std::to_string(span.count()) + " s; " + why);
    };
    if (!renewable()) short_of("this one expires sooner and the grant has no refresh token");
    if (granted_lifetime_ && *granted_lifetime_ < span) short_of("the server grants shorter ones");
    co_await replace_rejected(t.access);  // unless someone has refreshed already
    t = co_await token();
    if (!t.valid_for(span)) {
      granted_lifetime_ = tokens_->expires_at - obtained_at_;
      short_of("the server grants shorter ones");
    }
    co_return t;
  }

  asio::awaitable<token_set> refresh_now() {
    const bool service_account = client_.config().service_account;
    if (!tokens_ && service_account) co_await load();  // the cached token, to replace
    if (!tokens_ && service_account) {
      co_await join_round();  // the first token: new already
    } else {
      if (!tokens_) fail(errc::not_signed_in, "no grant to refresh: authorize first");
      const secret current = tokens_->access_token;
      co_await replace_rejected(current);
    }
    if (!tokens_) fail(errc::not_signed_in, "signed out while refreshing");
    co_return *tokens_;
  }

 private:
  /// The skew, but never more than half the token's lifetime: a short-lived
  /// token would otherwise be refreshed on every call.
  clock::duration skew() const {
    if (tokens_->expires_at == clock::time_point::max()) return options_.refresh_skew;
    return std::min<clock::duration>(options_.refresh_skew, (tokens_->expires_at - obtained_at_) / 2);
  }

  bool usable() const {
    return !grant_error_ && tokens_ && !unsaved_ && !tokens_->expires_within(clock::duration::zero());
  }

  bool needs_refresh() const {
    return tokens_->expires_within(skew()) || (!rejected_.empty() && tokens_->access_token == rejected_);
  }

  /// Whether a new access token can be had without the user: by refresh, or
  /// a service account's client credentials.
  bool renewable() const {
    return client_.config().service_account || (tokens_ && tokens_->has_refresh_token());
  }

  /// Whether a round must get a new token: a service account without one
  /// asks for its first.
  bool wants_new_token() const { return tokens_ ? needs_refresh() : client_.config().service_account; }

  void publish(const usable_token& t) {
    std::lock_guard lock(published_mutex_);
    published_ = t;
    published_until_ = t.expires_at == clock::time_point::max() ? t.expires_at : t.expires_at - skew();
  }
  void withdraw_published() {
    std::lock_guard lock(published_mutex_);
    published_.reset();
  }

  void install(std::optional<token_set> tokens) {
    withdraw_published();
    hold(std::move(tokens));
    ++epoch_;
    unsaved_ = false;
    unsaved_overwrites_ = false;
    grant_error_ = nullptr;
    rejected_ = secret();
  }

  /// Waits until the session holds a token it may hand out, refreshing at most once.
  asio::awaitable<void> settle() {
    if (grant_error_) {
      // Refused for good; but another process may have signed in again since.
      auto guard = co_await store_.lock();
      auto stored = co_await store_.load();
      // Another call may have settled it while this one waited: look again.
      if (grant_error_) {
        if (!stored || same_grant(stored, tokens_)) std::rethrow_exception(grant_error_);
        install(std::move(stored));
      }
    }
    if (!tokens_ && !client_.config().service_account)
      fail(errc::not_signed_in, "no grant: authorize first, or load() a saved one");
    if (!unsaved_ && !renewable())
      fail(errc::invalid_grant, "the access token has expired and the grant has no refresh token (ask for the "
                                "offline_access scope)");
    co_await join_round();
    if (!tokens_) fail(errc::not_signed_in, "signed out while refreshing");
  }

  asio::awaitable<void> join_round() {
    auto round = round_ ? round_ : start_round();
    while (!round->finished) {
      co_await round->done.async_wait(use_tuple);
      if (!round->finished) throw oauth_error(asio::error::operation_aborted, "waiting for the token refresh: cancelled");
    }
    if (round->error) std::rethrow_exception(round->error);
  }

  std::shared_ptr<refresh_round> start_round() {
    withdraw_published();  // while the round runs, the grant may change under it
    auto round = std::make_shared<refresh_round>(strand_);
    round_ = round;
    // co_spawn dispatches: on the strand already, the round runs at once and,
    // with a synchronous store, may even be over when this returns.
    asio::co_spawn(strand_, run_round(shared_from_this(), round), asio::detached);
    return round;
  }

  static asio::awaitable<void> run_round(std::shared_ptr<session_state> self, std::shared_ptr<refresh_round> round) {
    try {
      co_await self->sync();
    } catch (...) {
      round->error = std::current_exception();
    }
    if (round->error) {
      // A failed background refresh is tried again a little later, not on every call.
      auto pause = std::clamp(self->options_.refresh_skew / 4, std::chrono::seconds(1), std::chrono::seconds(15));
      self->next_proactive_ = std::chrono::steady_clock::now() + pause;
    }
    round->finished = true;
    self->round_.reset();
    round->done.cancel();
  }

  /// One round: under the store's lock, catch up with the store, save tokens
  /// a failed save left behind, and refresh if still needed. The grant may be
  /// replaced (load, adopt, logout) while the round waits; whatever happens,
  /// a refresh the server granted is saved, since it spent the old token.
  asio::awaitable<void> sync() {
    const auto epoch = epoch_;
    const std::optional<token_set> held = tokens_;
    auto superseded = [&] { return epoch != epoch_ && !same_grant(tokens_, held); };
    auto guard = co_await store_.lock();
    auto stored = co_await store_.load();
    if (superseded()) co_return;
    if (unsaved_) {
      const token_set pending = *tokens_;
      bool saved = true;
      if (unsaved_overwrites_)
        co_await store_.save(pending);
      else
        saved = co_await store_.replace(unsaved_base_, pending);
      if (superseded()) co_return;
      if (!saved) hold(std::move(stored));  // a sharer saved first: theirs is as good
      unsaved_ = false;
      unsaved_overwrites_ = false;
      co_return;
    }
    if (!same_grant(stored, tokens_)) {
      hold(stored);  // another process refreshed, signed in again, or signed out
      if (!wants_new_token()) co_return;
    } else if (!wants_new_token()) {
      co_return;
    }
    if (!renewable())
      fail(errc::invalid_grant, "the grant has no refresh token to renew the access token with (ask for the "
                                "offline_access scope)");
    const std::optional<token_set> base = tokens_;
    token_set next;
    try {
      next = co_await renew_with_retries(base);
    } catch (const oauth_error& e) {
      if (e.code() == errc::invalid_grant && !superseded()) grant_error_ = std::current_exception();  // never retried
      throw;
    }
    bool replaced = false;
    std::string save_failure;
    try {
      replaced = co_await store_.replace(stored, next);
    } catch (const std::exception& e) {
      save_failure = e.what();
    }
    const bool ours = !superseded() && same_grant(tokens_, stored);
    if (!save_failure.empty()) {
      if (ours) {  // keep the new grant (the old refresh token is spent) and save it before use
        hold(std::move(next));
        unsaved_ = true;
        unsaved_base_ = stored;
      }
      fail(errc::store_error, "the tokens were refreshed but could not be saved (" + save_failure +
                                  "); they are kept in memory and saved before they are used");
    }
    if (!ours) co_return;  // the grant was replaced meanwhile; the store decided between us
    if (!replaced) {
      // A store without a lock changed under us: the sharer that saved first wins.
      auto winner = co_await store_.load();
      if (!superseded()) hold(std::move(winner));
      co_return;
    }
    hold(std::move(next));
  }

  /// The grant the session holds from now on, obtained now.
  void hold(std::optional<token_set> tokens) {
    tokens_ = std::move(tokens);
    remember(tokens_);
    obtained_at_ = clock::now();
    warn_about_grant();
  }

  /// Tells grant_warning what it has not been told today.
  void warn_about_grant() {
    if (!options_.grant_warning || !tokens_) return;
    for (auto& warning : grant_warnings(*tokens_, client_.config(), clock::now())) {
      if (std::find(warned_.begin(), warned_.end(), warning) != warned_.end()) continue;
      warned_.push_back(warning);
      try {
        options_.grant_warning(warning);
      } catch (...) {  // a warning must not undo the grant change it reports
      }
    }
  }

  // The tokens the session has held lately, for redact(): a server may echo
  // the one before the current. Under a mutex: redact() runs off the strand.
  void remember(const std::optional<token_set>& t) {
    if (!t) return;
    std::lock_guard lock(known_mutex_);
    for (const secret* s : {&t->access_token, &t->refresh_token})
      if (!s->empty() && std::find(known_.begin(), known_.end(), *s) == known_.end()) {
        known_.push_back(*s);
        if (known_.size() > 8) known_.erase(known_.begin());
      }
  }

  static bool transient(const std::error_code& ec) {
    return ec == errc::rate_limited || ec == errc::server_unavailable || ec == errc::timeout ||
           ec == errc::connection_closed || ec == errc::network_error || ec == errc::connect_failed;
  }

  /// Refresh (or a service account's new token), retried within the policy
  /// on 429, 503 and failures in transit: Atlassian accepts the same refresh
  /// token again within its reuse window. The token endpoint's Retry-After is
  /// honoured and shared like the API's; a failure in transit, which names no
  /// wait, gets the policy's backoff (an endpoint that drops connections is as
  /// likely overloaded).
  asio::awaitable<token_set> renew_with_retries(const std::optional<token_set>& base) {
    retry_budget budget(options_.retry);
    for (;;) {
      co_await hold_back(token_origin_, "refreshing the access token");
      try {
        if (client_.config().service_account) co_return co_await client_.client_credentials();
        co_return co_await client_.refresh(*base);
      } catch (const oauth_error& e) {
        const auto retry_after = e.details().retry_after;
        if (!transient(e.code()) || beyond_wait(token_origin_, retry_after) || !retry_later(token_origin_, retry_after, budget))
          throw;
      }
    }
  }

  static token_store& checked(const std::shared_ptr<token_store>& store) {
    if (!store) fail(errc::invalid_config, "session: no token store");
    return *store;
  }

  oauth_client client_;
  std::shared_ptr<token_store> store_holder_;  // a round in flight may outlive every session handle
  token_store& store_;
  session_options options_;
  url api_;
  std::string token_origin_;
  std::string api_prefix_;
  asio::strand<asio::any_io_executor> strand_;
  mutable std::mutex hold_mutex_;
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> not_before_;  // per origin

  std::optional<token_set> tokens_;
  clock::time_point obtained_at_ = clock::now();
  std::optional<clock::duration> granted_lifetime_;  // of a refresh that fell short of token_for's span
  // The fast path of requests, which then skip the strand: the token token()
  // handed out last, until its refresh is due. Withdrawn by anything that
  // replaces the grant (install) and by every refresh round.
  mutable std::mutex published_mutex_;
  std::optional<usable_token> published_;
  clock::time_point published_until_;
  // The tokens held lately, for redact(), which runs off the strand.
  mutable std::mutex known_mutex_;
  std::vector<secret> known_;
  std::uint64_t epoch_ = 0;               // bumped when the grant is replaced from outside a round
  std::shared_ptr<refresh_round> round_;  // the round in flight
  secret rejected_;                       // an access token the API refused
  bool unsaved_ = false;                  // tokens_ is newer than the store: a save failed
  bool unsaved_overwrites_ = false;       // ...and is a new grant, which replaces whatever is stored
  std::optional<token_set> unsaved_base_; // what the store held when that refresh began
  std::exception_ptr grant_error_;        // invalid_grant: no more refreshing until a new grant
  std::vector<std::string> warned_;       // what grant_warning has been told
  std::chrono::steady_clock::time_point next_proactive_{};
};

}  // namespace detail
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

namespace detail {
class session_state;
}  // namespace detail

/// A site the grant reaches, from accessible-resources. `id` is the cloud id.
struct site {
  std::string id;                   ///< the cloud id
  std::string name;                 ///< the site's name
  std::string url;                  ///< e.g. "https://example.atlassian.net"
  std::vector<std::string> scopes;  ///< the scopes granted on it, joined across products
  std::string avatar_url;           ///< the site's avatar

  /// The site in `sites` whose cloud id, URL ("https://example.atlassian.net",
  /// scheme and trailing slash optional) or name (any case) is `key`; with no
  /// key, the only Confluence site (one with a scope naming "confluence": the
  /// list has no order and holds Jira sites too). Throws site_not_found naming
  /// the sites there are.
  static site find(const std::vector<site>& sites, std::string_view key = {});
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
namespace detail {

/// Reads accessible-resources. The same site can be listed once per product;
/// it is kept once, with the scopes of all its entries.
inline std::vector<site> parse_sites(const nlohmann::json& j) {
  if (!j.is_array()) fail(errc::protocol_error, "accessible-resources did not return a JSON array");
  std::vector<site> out;
  for (const auto& entry : j) {
    auto text = [&](const char* key) {
      auto value = json_string(entry, key);
      return value ? *value : std::string{};
    };
    site s{text("id"), text("name"), text("url"), {}, text("avatarUrl")};
    if (s.id.empty()) fail(errc::protocol_error, "accessible-resources lists a site without an id");
    auto same = std::find_if(out.begin(), out.end(), [&](const site& o) { return o.id == s.id; });
    site& target = same != out.end() ? *same : out.emplace_back(std::move(s));
    if (auto scopes = entry.find("scopes"); scopes != entry.end() && scopes->is_array())
      for (const auto& scope : *scopes)
        if (scope.is_string() && std::find(target.scopes.begin(), target.scopes.end(), scope) == target.scopes.end())
          target.scopes.push_back(scope.get<std::string>());
  }
  return out;
}

/// "https://Example.atlassian.net/" and "example.atlassian.net" name the same site.
inline std::string site_key(std::string_view url) {
  if (auto scheme = url.find("://"); scheme != std::string_view::npos) url.remove_prefix(scheme + 3);
  while (!url.empty() && url.back() == '/') url.remove_suffix(1);
  return ascii_lower(url);
}

}  // namespace detail
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE site site::find(const std::vector<site>& sites, std::string_view key) {
  auto is_confluence = [](const site& s) {
    return std::any_of(s.scopes.begin(), s.scopes.end(),
                       [](const std::string& scope) { return scope.find("confluence") != std::string::npos; });
  };
  std::vector<const site*> matches;
  for (const auto& s : sites)
    if (key.empty() ? is_confluence(s)
                    : s.id == key || (!s.url.empty() && detail::site_key(s.url) == detail::site_key(key)) ||
                          detail::iequals(s.name, key))
      matches.push_back(&s);
  if (key.empty() ? matches.size() == 1 : !matches.empty()) return *matches.front();
  if (sites.empty())
    detail::fail(errc::site_not_found, "the grant reaches no site: sign in again and pick a site on the consent page");
  auto list = [](const std::vector<const site*>& of) {
    std::string text;
    for (const site* s : of) text += (text.empty() ? "" : ", ") + s->name + " (" + s->url + ")";
    return detail::sanitize_text(text, 600);
  };
  std::vector<const site*> all;
  for (const auto& s : sites) all.push_back(&s);
  if (!key.empty())
    detail::fail(errc::site_not_found, "no site matches \"" + detail::sanitize_text(key, 100) + "\"; the grant reaches " +
                                           list(all));
  if (matches.empty())
    detail::fail(errc::site_not_found, "none of the sites the grant reaches is a Confluence site (" + list(all) +
                                           "): consent again and pick a Confluence site");
  detail::fail(errc::site_not_found, "the grant reaches several Confluence sites: choose one by URL, name or cloud id: " +
                                         list(matches));
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// The token lifecycle and authenticated requests for one grant. A cheap
/// handle: copies share the same state. Thread-safe.
class session {
 public:
  /// Validates the configuration; throws oauth_error. The session shares
  /// ownership of `store`: a refresh running in the background keeps it alive.
  session(asio::any_io_executor ex, client_config config, std::shared_ptr<token_store> store,
          session_options options = {});

  /// A session on an existing client, whose connections and TLS context it
  /// shares: a web app keeps one oauth_client for all its users' sessions.
  session(oauth_client client, std::shared_ptr<token_store> store, session_options options = {});

  /// The OAuth client the session refreshes with.
  const oauth_client& client() const noexcept;
  /// The session's settings.
  const session_options& options() const noexcept;
  /// The API base without a trailing slash, e.g. "https://api.atlassian.com".
  std::string api_base() const;

  /// `text` with the client secret and every token the session has held lately
  /// replaced by "[redacted]", raw or encoded as the library sends them (and as
  /// servers echo them): for printing what a server answered, which may echo a
  /// token (an echo endpoint, a misconfigured proxy).
  std::string redact(std::string text) const;

  /// Where operations given a completion token other than use_awaitable run.
  const asio::any_io_executor& get_executor() const noexcept;

  /// The first half of a sign-in that a web app drives itself: send the
  /// browser to the result's `url` and keep the whole value, server side, for
  /// the browser that went (it holds the state and the PKCE verifier).
  /// `redirect_uri` overrides the configured one.
  authorization begin_authorization(std::string_view redirect_uri = {}) const;

  // Each operation below takes an Asio completion token last (default:
  // use_awaitable) and completes with (error_code, T) or (error_code).

  /// The second half: checks `callback` (the redirect's target, URL or query)
  /// against `pending`, trades the code and saves and uses the grant. Its
  /// errors (state_mismatch, authorization_denied, the token endpoint's) hold
  /// fixed text and the server's words sanitized and redacted: safe to show,
  /// HTML-escaped. A grant the store could not save (store_error) also names
  /// what the store said (a file's path): log that one.
  template <typename CompletionToken = detail::default_completion_token>
  auto complete_authorization(std::string callback, authorization pending, CompletionToken&& token = {}) {
    return detail::launch<void>(get_executor(), std::forward<CompletionToken>(token),
                                [state = state_, callback = std::move(callback), pending = std::move(pending)]() mutable {
                                  return complete_authorization_op(state, std::move(callback), std::move(pending));
                                });
  }

  /// Reads the grant from the store: true when there is one.
  template <typename CompletionToken = detail::default_completion_token>
  auto load(CompletionToken&& token = {}) {
    return detail::launch<bool>(get_executor(), std::forward<CompletionToken>(token),
                                [state = state_] { return load_op(state); });
  }

  /// Signs in interactively (listener, browser, code exchange) and saves the
  /// grant; `open` shows the user the authorization URL (default: the
  /// system's browser, browser_command{}).
  template <typename CompletionToken = detail::default_completion_token>
  auto authorize(browser_opener open = browser_command{}, CompletionToken&& token = {}) {
    return detail::launch<void>(get_executor(), std::forward<CompletionToken>(token),
                                [state = state_, open = std::move(open)] { return authorize_op(state, open); });
  }

  /// Saves a grant obtained elsewhere (a web app's exchange_code) and uses it.
  template <typename CompletionToken = detail::default_completion_token>
  auto adopt(token_set tokens, CompletionToken&& token = {}) {
    return detail::launch<void>(get_executor(), std::forward<CompletionToken>(token),
                                [state = state_, tokens = std::move(tokens)]() mutable {
                                  return adopt_op(state, std::move(tokens));
                                });
  }

  /// Forgets the grant: clears the store and the session.
  template <typename CompletionToken = detail::default_completion_token>
  auto logout(CompletionToken&& token = {}) {
    return detail::launch<void>(get_executor(), std::forward<CompletionToken>(token),
                                [state = state_] { return logout_op(state); });
  }

  /// A valid access token, refreshed when needed.
  template <typename CompletionToken = detail::default_completion_token>
    requires(!std::is_convertible_v<CompletionToken, std::chrono::seconds>)
  auto token(CompletionToken&& token = {}) {
    return this->token(std::chrono::seconds(0), std::forward<CompletionToken>(token));
  }

  /// An access token still valid `min_validity` (up to a year) from now, for
  /// a job that hands it on, say: refreshed first when the one held expires
  /// sooner. invalid_config when no refresh can give one: the grant has no
  /// refresh token, or the server's tokens live shorter (known after one
  /// refresh, which later calls do not repeat).
  template <typename CompletionToken = detail::default_completion_token>
  auto token(std::chrono::seconds min_validity, CompletionToken&& token = {}) {
    return detail::launch<secret>(get_executor(), std::forward<CompletionToken>(token),
                                  [state = state_, min_validity] { return token_op(state, min_validity); });
  }

  /// Refreshes now (joining a refresh in flight) and returns the new token set.
  template <typename CompletionToken = detail::default_completion_token>
  auto refresh(CompletionToken&& token = {}) {
    return detail::launch<token_set>(get_executor(), std::forward<CompletionToken>(token),
                                     [state = state_] { return refresh_op(state); });
  }

  /// The grant the session holds now (its token_set), if any.
  template <typename CompletionToken = detail::default_completion_token>
  auto grant(CompletionToken&& token = {}) {
    return detail::launch<std::optional<token_set>>(get_executor(), std::forward<CompletionToken>(token),
                                                    [state = state_] { return grant_op(state); });
  }

  /// Sends `req` with the access token to `req.target`: a path under api_url,
  /// or an absolute URL on its origin. Refreshes once on 401 (or a 403/404
  /// close to expiry) and sends again; retries 429 and 503 within the policy,
  /// and waits first while the server has asked the session to (see
  /// retry_policy). Completes with the final response whatever its status,
  /// except a 401 that persists (unauthorized) or names a missing scope
  /// (scope_mismatch), and a wait longer than retry_policy::max_wait
  /// (rate_limited, or server_unavailable for a 503; details().retry_after).
  template <typename CompletionToken = detail::default_completion_token>
  auto request(http_request req, CompletionToken&& token = {}) {
    return detail::launch<http_response>(get_executor(), std::forward<CompletionToken>(token),
                                         [state = state_, req = std::move(req)]() mutable {
                                           return request_op(state, std::move(req));
                                         });
  }

  /// The sites the grant reaches (GET /oauth/token/accessible-resources).
  template <typename CompletionToken = detail::default_completion_token>
  auto accessible_resources(CompletionToken&& token = {}) {
    return detail::launch<std::vector<site>>(get_executor(), std::forward<CompletionToken>(token),
                                             [state = state_] { return accessible_resources_op(state); });
  }

  /// The cloud id of the site at `site_url` ("https://example.atlassian.net",
  /// scheme optional) from its public `/_edge/tenant_info`, asked without a
  /// token: for a service account, which may reach no accessible-resources.
  /// https only, except to loopback; site_not_found when the site has none.
  template <typename CompletionToken = detail::default_completion_token>
  auto cloud_id(std::string site_url, CompletionToken&& token = {}) {
    return detail::launch<std::string>(get_executor(), std::forward<CompletionToken>(token),
                                       [state = state_, site_url = std::move(site_url)]() mutable {
                                         return cloud_id_op(state, std::move(site_url));
                                       });
  }

  /// GET `target` and its JSON body; any status but 2xx fails with the typed error.
  template <typename CompletionToken = detail::default_completion_token>
  auto get_json(std::string target, CompletionToken&& token = {}) {
    http_request req;
    req.target = std::move(target);
    return json_request(std::move(req), std::nullopt, std::forward<CompletionToken>(token));
  }

  /// Sends `body` as JSON with `method` (POST, PUT, PATCH, DELETE) and
  /// completes with the JSON answer (null when it has no body).
  template <typename CompletionToken = detail::default_completion_token>
  auto send_json(std::string method, std::string target, nlohmann::json body, CompletionToken&& token = {}) {
    http_request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.headers.add("Content-Type", "application/json");
    return json_request(std::move(req), std::move(body), std::forward<CompletionToken>(token));
  }

 private:
  using state_ptr = std::shared_ptr<detail::session_state>;

  template <typename CompletionToken>
  auto json_request(http_request req, std::optional<nlohmann::json> body, CompletionToken&& token) {
    return detail::launch<nlohmann::json>(get_executor(), std::forward<CompletionToken>(token),
                                          [state = state_, req = std::move(req), body = std::move(body)]() mutable {
                                            return json_op(state, std::move(req), std::move(body));
                                          });
  }

  // What the operations above run: compiled once in separate compilation.
  static asio::awaitable<void> complete_authorization_op(state_ptr state, std::string callback, authorization pending);
  static asio::awaitable<bool> load_op(state_ptr state);
  static asio::awaitable<void> authorize_op(state_ptr state, browser_opener open);
  static asio::awaitable<void> adopt_op(state_ptr state, token_set tokens);
  static asio::awaitable<void> logout_op(state_ptr state);
  static asio::awaitable<secret> token_op(state_ptr state, std::chrono::seconds min_validity);
  static asio::awaitable<token_set> refresh_op(state_ptr state);
  static asio::awaitable<std::optional<token_set>> grant_op(state_ptr state);
  static asio::awaitable<http_response> request_op(state_ptr state, http_request req);
  // request_op's work on a request `target` resolves: json_op describes it
  // with the same `target`, only should it fail.
  static asio::awaitable<http_response> send_op(state_ptr state, http_request& req, const detail::url& target);
  static asio::awaitable<std::vector<site>> accessible_resources_op(state_ptr state);
  static asio::awaitable<std::string> cloud_id_op(state_ptr state, std::string site_url);
  static asio::awaitable<nlohmann::json> json_op(state_ptr state, http_request req, std::optional<nlohmann::json> body);

  state_ptr state_;
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE session::session(asio::any_io_executor ex, client_config config,
                                                std::shared_ptr<token_store> store, session_options options)
    : session(oauth_client(std::move(ex), std::move(config)), std::move(store), std::move(options)) {}

CONFLUENCE_OAUTH_DETAIL_INLINE session::session(oauth_client client, std::shared_ptr<token_store> store,
                                                session_options options)
    : state_(std::make_shared<detail::session_state>(std::move(client), std::move(store), std::move(options))) {}

CONFLUENCE_OAUTH_DETAIL_INLINE const oauth_client& session::client() const noexcept { return state_->client(); }

CONFLUENCE_OAUTH_DETAIL_INLINE const session_options& session::options() const noexcept { return state_->options(); }

CONFLUENCE_OAUTH_DETAIL_INLINE std::string session::api_base() const { return state_->api_base(); }

CONFLUENCE_OAUTH_DETAIL_INLINE std::string session::redact(std::string text) const {
  return state_->redact(std::move(text));
}

CONFLUENCE_OAUTH_DETAIL_INLINE const asio::any_io_executor& session::get_executor() const noexcept {
  return state_->client().get_executor();
}

CONFLUENCE_OAUTH_DETAIL_INLINE authorization session::begin_authorization(std::string_view redirect_uri) const {
  return state_->client().begin_authorization(redirect_uri);
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> session::complete_authorization_op(state_ptr state, std::string callback,
                                                                                        authorization pending) {
  detail::wipe_on_exit wipe{callback};
  auto code = detail::verify_callback(detail::parse_callback(callback), pending);
  auto tokens = co_await state->client().exchange_code(std::move(code), std::move(pending));
  co_await detail::on_strand(state->strand(), state->adopt(std::move(tokens)));
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<bool> session::load_op(state_ptr state) {
  co_return co_await detail::on_strand(state->strand(), state->load());
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> session::authorize_op(state_ptr state, browser_opener open) {
  auto tokens = co_await detail::authorize(state->client(), std::move(open), state->options().listener);
  co_await detail::on_strand(state->strand(), state->adopt(std::move(tokens)));
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> session::adopt_op(state_ptr state, token_set tokens) {
  co_await detail::on_strand(state->strand(), state->adopt(std::move(tokens)));
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<void> session::logout_op(state_ptr state) {
  co_await detail::on_strand(state->strand(), state->logout());
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<secret> session::token_op(state_ptr state, std::chrono::seconds min_validity) {
  // Up to a year: no access token lives longer, and the clock arithmetic stays in range.
  if (min_validity.count() < 0 || min_validity > std::chrono::hours(24 * 366))
    detail::fail(errc::invalid_config, "min_validity must be between 0 and a year");
  auto t = state->published_token();
  if (!t || !t->valid_for(min_validity)) t = co_await detail::on_strand(state->strand(), state->token_for(min_validity));
  co_return std::move(t->access);
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<token_set> session::refresh_op(state_ptr state) {
  co_return co_await detail::on_strand(state->strand(), state->refresh_now());
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<std::optional<token_set>> session::grant_op(state_ptr state) {
  co_return co_await detail::on_strand(state->strand(), state->grant());
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<std::vector<site>> session::accessible_resources_op(state_ptr state) {
  http_request req;
  req.target = "/oauth/token/accessible-resources";
  co_return detail::parse_sites(co_await json_op(std::move(state), std::move(req), std::nullopt));
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<std::string> session::cloud_id_op(state_ptr state, std::string site_url) {
  if (!detail::is_absolute_url(site_url)) site_url.insert(0, "https://");
  detail::url u = detail::parse_url(site_url);
  u.target = "/_edge/tenant_info";
  http_request req;
  req.headers.add("Accept", "application/json");
  req.headers.add("User-Agent", state->client().config().user_agent);
  detail::http_limits limits;
  limits.max_body_bytes = 64 * 1024;
  auto res = co_await detail::http_of(state->client()).send(u, req, limits);
  if (res.status == 404)
    detail::fail(errc::site_not_found, detail::describe(req.method, u) + ": no Atlassian site there",
                 detail::response_details(res));
  const auto body = detail::parse_api_json(res, req.method, u);
  const std::string* id = detail::json_string(body, "cloudId");
  if (!id || id->empty())
    detail::fail(errc::protocol_error, detail::describe(req.method, u) + ": the answer holds no cloudId",
                 detail::response_details(res));
  co_return detail::sanitize_text(*id, 100);
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<nlohmann::json> session::json_op(state_ptr state, http_request req,
                                                                                std::optional<nlohmann::json> body) {
  if (body) req.body = detail::dump_json(*body);
  req.headers.add("Accept", "application/json");
  const detail::url target = state->resolve(req.target);
  auto res = co_await send_op(std::move(state), req, target);
  co_return detail::parse_api_json(res, req.method, target);
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<http_response> session::request_op(state_ptr state, http_request req) {
  const detail::url target = state->resolve(req.target);
  co_return co_await send_op(std::move(state), req, target);
}

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<http_response> session::send_op(state_ptr state, http_request& req,
                                                                               const detail::url& target) {
  const std::string origin = target.origin();
  const auto& options = state->options();
  detail::http_limits limits;
  limits.max_body_bytes = options.max_response_bytes;
  if (!req.headers.get("User-Agent")) req.headers.add("User-Agent", state->client().config().user_agent);
  // A 429 was not processed; a 503 may have been, so only idempotent requests repeat it.
  const bool idempotent = req.method == "GET" || req.method == "HEAD" || req.method == "PUT" ||
                          req.method == "DELETE" || req.method == "OPTIONS";
  bool refreshed = false;
  detail::retry_budget budget(options.retry);
  for (;;) {
    // (No wait and no description of the request on the fast path: the
    // description is for errors.)
    if (state->held_for(origin).count() > 0) co_await state->hold_back(origin, detail::describe(req.method, target));
    auto used = state->published_token();
    if (!used) used = co_await detail::on_strand(state->strand(), state->token());
    req.headers.set("Authorization", "Bearer " + used->access.reveal());
    auto res = co_await detail::http_of(state->client()).send(target, req, limits);
    if (res.status >= 300) {  // an error answer that echoes the token must not carry it into a message
      const secret* sent[] = {&used->access};
      detail::redact_response(res, sent);
    }
    state->pace(origin, res);
    if (!refreshed && state->rejects(res, *used)) {
      refreshed = true;
      co_await detail::on_strand(state->strand(), state->replace_rejected(used->access));
      continue;
    }
    if (res.status == 401) detail::fail_api(res, detail::describe(req.method, target));
    if (res.status == 429 || res.status == 503) {
      auto details = detail::response_details(res);
      if (state->beyond_wait(origin, details.retry_after)) {
        details.error_description = detail::api_message(res);
        detail::fail(detail::errc_for_status(res.status), detail::describe(req.method, target) + ": the server asks to wait " +
                                                             std::to_string(details.retry_after->count()) +
                                                             " s, longer than retry_policy::max_wait", details);
      }
      if ((res.status == 429 || idempotent) && state->retry_later(origin, details.retry_after, budget)) continue;
    }
    co_return res;
  }
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

// ============================================================================
// 13. Confluence
//     A site handle that sends requests through the API gateway under
//     /ex/confluence/{cloudid}, and pagination that follows the `Link` header
//     (REST v2) or `_links.next` (v1), resolving the gateway-relative links.
// ============================================================================

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
namespace detail {

/// The target of the rel="next" entry of a Link header, if there is one.
inline std::optional<std::string> next_link(std::string_view header) {
  std::size_t i = 0;
  while (i < header.size()) {
    auto open = header.find('<', i);
    if (open == std::string_view::npos) break;
    auto close = header.find('>', open);
    if (close == std::string_view::npos) break;
    auto end = close + 1;
    for (bool quoted = false; end < header.size() && (quoted || header[end] != ','); ++end)
      if (header[end] == '"') quoted = !quoted;
    auto params = header.substr(close + 1, end - close - 1);
    while (!params.empty()) {
      auto semi = params.find(';');
      auto param = trim(params.substr(0, semi));
      params = semi == std::string_view::npos ? std::string_view{} : params.substr(semi + 1);
      auto eq = param.find('=');
      if (eq == std::string_view::npos || !iequals(trim(param.substr(0, eq)), "rel")) continue;
      auto rel = trim(param.substr(eq + 1));
      if (rel.size() >= 2 && rel.front() == '"' && rel.back() == '"') rel = rel.substr(1, rel.size() - 2);
      while (!rel.empty()) {
        auto space = rel.find(' ');
        if (iequals(rel.substr(0, space), "next")) return std::string(header.substr(open + 1, close - open - 1));
        rel = space == std::string_view::npos ? std::string_view{} : trim(rel.substr(space + 1));
      }
    }
    i = end + 1;
  }
  return std::nullopt;
}

}  // namespace detail
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

/// One Confluence site, reached through the gateway. Cheap to copy.
class confluence {
 public:
  /// The site with cloud id `cloud_id`, reached through `s`; throws invalid_config for a malformed id.
  confluence(session s, std::string cloud_id);
  /// The site `site`, reached through `s`.
  confluence(session s, const site& site);

  /// The site's cloud id.
  const std::string& cloud_id() const noexcept;
  /// "https://api.atlassian.com/ex/confluence/{cloudid}": paths go after it.
  const std::string& base_url() const noexcept;

  // Each operation below takes an Asio completion token last (default:
  // use_awaitable) and completes with (error_code, T). A path on the site
  // starts with '/', e.g. "/wiki/api/v2/pages?limit=25".

  /// Sends `req`, req.target being a path on the site; see session::request.
  template <typename CompletionToken = detail::default_completion_token>
  auto request(http_request req, CompletionToken&& token = {}) {
    return detail::launch<http_response>(get_executor(), std::forward<CompletionToken>(token),
                                         [self = *this, req = std::move(req)]() mutable {
                                           req.target = self.on_site(req.target);
                                           return self.session_.request(std::move(req));
                                         });
  }

  /// GET `path` and its JSON body; any status but 2xx fails with the typed error.
  template <typename CompletionToken = detail::default_completion_token>
  auto get(std::string path, CompletionToken&& token = {}) {
    return detail::launch<nlohmann::json>(get_executor(), std::forward<CompletionToken>(token),
                                          [self = *this, path = std::move(path)]() mutable {
                                            return self.session_.get_json(self.on_site(path));
                                          });
  }

  /// Sends `body` as JSON to `path` with `method`; see session::send_json.
  template <typename CompletionToken = detail::default_completion_token>
  auto send_json(std::string method, std::string path, nlohmann::json body, CompletionToken&& token = {}) {
    return detail::launch<nlohmann::json>(
        get_executor(), std::forward<CompletionToken>(token),
        [self = *this, method = std::move(method), path = std::move(path), body = std::move(body)]() mutable {
          return self.session_.send_json(std::move(method), self.on_site(path), std::move(body));
        });
  }

  /// Walks a paginated listing one page at a time. Keep it alive until a
  /// call to next() completes; one call at a time.
  class pager {
   public:
    /// Completes with (error_code, the next page's JSON body), nullopt after
    /// the last. After a failure the same page is asked for again.
    template <typename CompletionToken = detail::default_completion_token>
    auto next(CompletionToken&& token = {}) {
      return detail::launch<std::optional<nlohmann::json>>(get_executor(), std::forward<CompletionToken>(token),
                                                           [this] { return next_page(); });
    }

    /// True after the last page.
    bool done() const noexcept { return !next_; }

   private:
    friend class confluence;
    const asio::any_io_executor& get_executor() const noexcept { return session_.get_executor(); }
    pager(session s, std::string base, std::string first)
        : session_(std::move(s)), base_(std::move(base)), next_(std::move(first)) {}

    asio::awaitable<std::optional<nlohmann::json>> next_page();

    /// The absolute URL of the page after `current`. v2 links ("/wiki/api/v2/...")
    /// are relative to the site base; v1 links ("/rest/api/...") to its context.
    std::optional<std::string> following(const std::string& current, const nlohmann::json& page,
                                         const std::optional<std::string>& link_header) const;

    session session_;
    std::string base_;
    std::optional<std::string> next_;
  };

  /// A pager over the paginated listing at `path`; nothing is fetched until next().
  pager pages(std::string path) const;

  /// Every item of every page's "results", up to `max_items`. Completes with
  /// (error_code, std::vector<nlohmann::json>). A failure on a page after the
  /// first (a rate limit that outlasts retry_policy::max_wait, say) keeps what
  /// was read: details().partial_results holds the items of the pages before
  /// it, and get_all(details().resume_path) goes on from the failed page.
  /// Next-page links are followed only on the gateway's origin: one to any
  /// other host is protocol_error, and the access token is not sent there.
  template <typename CompletionToken = detail::default_completion_token>
  auto get_all(std::string path, std::size_t max_items, CompletionToken&& token = {}) {
    return detail::launch<std::vector<nlohmann::json>>(get_executor(), std::forward<CompletionToken>(token),
                                                       [self = *this, path = std::move(path), max_items]() mutable {
                                                         return self.collect(std::move(path), max_items);
                                                       });
  }

  /// get_all with at most 10,000 items.
  template <typename CompletionToken = detail::default_completion_token>
    requires(!std::is_convertible_v<CompletionToken, std::size_t>)
  auto get_all(std::string path, CompletionToken&& token = {}) {
    return get_all(std::move(path), 10000, std::forward<CompletionToken>(token));
  }

 private:
  const asio::any_io_executor& get_executor() const noexcept;

  asio::awaitable<std::vector<nlohmann::json>> collect(std::string path, std::size_t max_items);

  std::string on_site(std::string_view path) const;

  session session_;
  std::string cloud_id_;
  std::string base_;
};

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE confluence::confluence(session s, std::string cloud_id)
    : session_(std::move(s)), cloud_id_(std::move(cloud_id)) {
  if (cloud_id_.empty() || !std::all_of(cloud_id_.begin(), cloud_id_.end(), [](unsigned char c) {
        return std::isalnum(c) || c == '-' || c == '_';
      }))
    detail::fail(errc::invalid_config, "a cloud id holds letters, digits and dashes, not \"" +
                                           detail::sanitize_text(cloud_id_, 60) + "\"");
  base_ = session_.api_base() + "/ex/confluence/" + cloud_id_;
}

CONFLUENCE_OAUTH_DETAIL_INLINE confluence::confluence(session s, const site& site)
    : confluence(std::move(s), site.id) {}

CONFLUENCE_OAUTH_DETAIL_INLINE const std::string& confluence::cloud_id() const noexcept { return cloud_id_; }

CONFLUENCE_OAUTH_DETAIL_INLINE const std::string& confluence::base_url() const noexcept { return base_; }

CONFLUENCE_OAUTH_DETAIL_INLINE const asio::any_io_executor& confluence::get_executor() const noexcept { return session_.get_executor(); }

CONFLUENCE_OAUTH_DETAIL_INLINE confluence::pager confluence::pages(std::string path) const { return pager(session_, base_, on_site(path)); }

CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<std::vector<nlohmann::json>> confluence::collect(std::string path, std::size_t max_items) {
  std::vector<nlohmann::json> items;
  auto walk = pages(std::move(path));
  std::string at;       // the page being read: where a failed walk resumes
  int empty_pages = 0;  // a server that keeps sending empty pages with new links is not followed forever
  try {
    while (items.size() < max_items && walk.next_) {
      at = *walk.next_;
      auto page = co_await walk.next();
      if (!page) break;
      auto results = page->is_object() ? page->find("results") : page->end();
      if (results == page->end() || !results->is_array())
        detail::fail(errc::protocol_error, "a page of the listing has no \"results\" array");
      empty_pages = results->empty() ? empty_pages + 1 : 0;
      if (empty_pages > 8) detail::fail(errc::protocol_error, "the listing keeps sending empty pages");
      for (auto& item : *results) {
        if (items.size() == max_items) break;
        items.push_back(std::move(item));
      }
    }
  } catch (const oauth_error& e) {
    // What was read is handed back with the error, and the page to go on from.
    error_details details = e.details();
    details.partial_results = std::move(items);
    details.resume_path = at.starts_with(base_ + "/") ? at.substr(base_.size()) : at;
    throw detail::error_access::with_details(e, std::move(details));
  }
  co_return items;
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::string confluence::on_site(std::string_view path) const {
  return detail::path_under(base_, path, "a path on the site");
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

#if CONFLUENCE_OAUTH_DETAIL_DEFINE
CONFLUENCE_OAUTH_DETAIL_INLINE asio::awaitable<std::optional<nlohmann::json>> confluence::pager::next_page() {
  if (!next_) co_return std::nullopt;
  http_request req;
  req.target = *next_;  // kept until the page arrives, so a failed call can be repeated
  req.headers.add("Accept", "application/json");
  const std::string current = req.target;
  auto res = co_await session_.request(std::move(req));
  auto page = detail::parse_api_json(res, "GET", detail::parse_url(current));
  std::optional<std::string> link;
  for (const auto& h : res.headers)
    if (detail::iequals(h.name, "Link") && (link = detail::next_link(h.value))) break;
  next_ = following(current, page, link);
  co_return std::optional<nlohmann::json>(std::move(page));
}

CONFLUENCE_OAUTH_DETAIL_INLINE std::optional<std::string> confluence::pager::following(
    const std::string& current, const nlohmann::json& page, const std::optional<std::string>& link_header) const {
  std::optional<std::string> link = link_header;
  std::string context = "/wiki";
  if (auto links = page.is_object() ? page.find("_links") : page.end(); links != page.end()) {
    if (auto c = detail::json_string(*links, "context")) context = *c;
    if (auto n = detail::json_string(*links, "next"); !link && n) link = *n;
  }
  if (!link || link->empty()) return std::nullopt;
  std::string target;
  if (detail::is_absolute_url(*link)) {
    detail::url u = detail::parse_url(*link);
    if (u.origin() != detail::parse_url(base_).origin())
      detail::fail(errc::protocol_error, "a next-page link leads to " + u.origin() + ": not following it with the access token");
    target = u.str();
  } else if (link->front() != '/') {
    target = detail::resolve_reference(detail::parse_url(current), *link).str();
  } else if (link->starts_with("/ex/")) {
    target = detail::parse_url(base_).origin() + *link;
  } else if (link->starts_with(context + "/") || context.empty()) {
    target = base_ + *link;
  } else {
    target = base_ + context + *link;
  }
  if (target == current) detail::fail(errc::protocol_error, "the next-page link points back to the same page");
  return target;
}
#endif  // CONFLUENCE_OAUTH_DETAIL_DEFINE

}  // namespace confluence_oauth
