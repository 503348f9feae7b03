// fake_atlassian.hpp — a fake Atlassian OAuth 2.0 (3LO) + Confluence server for tests.
//
// It behaves as /work/shared/ATLASSIAN.md describes Atlassian: exact redirect_uri match,
// single-use expiring codes, JSON or form token requests, rotating refresh tokens with
// a reuse window and family revocation, a service account's client credentials grant,
// accessible-resources (a Jira-only site listed before the Confluence one), the public
// /_edge/tenant_info, paginated Confluence v2
// `pages` and `spaces` behind granular scopes (cursor, `Link` header and `_links.next`),
// Confluence v1 `space` behind the classic or the granular scope (`start`/`limit`,
// `_links.next` relative to `/wiki`, no `Link` header) while every other v1 path answers
// 410 Gone, and, when asked, the gateway's 403/404 for tokens close to expiry. It
// listens on loopback over real TLS with a CA generated in memory at construction (or
// plain HTTP), serves on its own thread, and has switches for the faults a client must
// survive: raw bytes, stalls, injected statuses (429/503 with Retry-After) and delayed
// answers; and, when asked, Atlassian's rate limits (a burst limit and a quota).
//
// This header is deliberately light (no Asio, OpenSSL or JSON): the implementation
// lives behind a pimpl in fake_atlassian.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fake_atlassian {

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

// One entry of GET /oauth/token/accessible-resources. `id` is the cloud id used in
// /ex/confluence/{id}/... An empty `scopes` lists the token's granted scopes.
struct site {
  std::string id, name, url;
  std::vector<std::string> scopes;
  std::string avatar_url;
};

struct options {
  std::string host = "127.0.0.1";  // bind address: an IPv4 or IPv6 literal ("::1" or "[::1]")
  unsigned short port = 0;         // 0 = any free port
  bool tls = true;                 // https with an in-memory CA; false = plain http
  std::vector<std::string> cert_hosts = {"localhost", "127.0.0.1", "::1"};  // leaf SANs (DNS or IP)
  std::string client_id = "test-client-id";
  std::string client_secret = "test-client-secret";
  std::vector<std::string> redirect_uris = {"http://localhost:3000/callback"};  // exact match
  std::chrono::seconds access_token_lifetime{3600};
  std::chrono::seconds code_lifetime{600};         // also bounds how long a consent page stays valid
  std::chrono::seconds refresh_reuse_window{600};  // a superseded refresh token still works this long
  bool auto_approve = false;         // GET /authorize redirects at once instead of showing the consent page
  bool echo_state_on_deny = true;    // the access_denied redirect carries `state`
  bool omit_refresh_token_on_refresh = false;  // refresh responses lack refresh_token; no rotation then
  // Empty = two default sites, in this order (Atlassian's has none): a Jira-only site
  // (id b2c3d4e5-0000-4000-8000-000000000002, jira scopes, no Confluence behind it) and
  // the Confluence site (id a1b2c3d4-0000-4000-8000-000000000001, the token's scopes).
  std::vector<site> sites;
  int page_count = 12;      // Confluence pages per site
  int space_count = 3;      // Confluence spaces per site; page n lives in space ((n-1) % space_count) + 1
  // The gateway's answer to a still-valid access token that expires within the window
  // (reported by developers): a /ex/... request gets near_expiry_status (403 or 404)
  // instead of its normal answer. 0 = off.
  std::chrono::seconds near_expiry_window{0};
  int near_expiry_status = 403;
  std::string token_prefix;  // prepended to every access and refresh token issued (e.g. a marker tests look for)

  // Rate limits as ATLASSIAN.md "Rate limits" describes them, on the API (accessible-resources
  // and /ex/...); off by default. A limited request gets `status` with Retry-After and
  // Beta-Retry-After (the wait left, in whole seconds rounded up) and RateLimit-Reason
  // ("burst" or "quota"), and is not counted against either limit.
  struct rate_limits {
    // Burst: `burst` requests, then every request gets a 429 for `burst_reset` (one sent
    // before it ends gets the wait left), then `burst` more. Requests are counted, not
    // timed, so that a slow machine cannot change which request is refused. 0 = off.
    int burst = 0;
    std::chrono::seconds burst_reset{1};
    // Quota: `quota` requests per `quota_period` of the server's clock (advance_clock moves
    // it), the period starting with its first request; past it, 429 until the period ends.
    // With a quota every API answer carries X-RateLimit-Limit, -Remaining, -Reset (ISO 8601)
    // and X-RateLimit-NearLimit ("true" when under 20% of the quota is left). 0 = off.
    int quota = 0;
    std::chrono::seconds quota_period{3600};
    int status = 429;          // or 503, which Atlassian also sends with Retry-After
    std::string retry_after;   // sent verbatim instead of the wait left: "9223372036854775807", an HTTP date
    bool send_retry_after = true;  // false: no Retry-After nor Beta-Retry-After (the client backs off)
  };
  rate_limits limits;
  // An Atlassian service account: grant_type=client_credentials with this id and secret
  // gives an access token with service_account_scope and no refresh token; a wrong
  // secret gets 401 invalid_client. Empty id: none.
  std::string service_account_id = "test-service-account";
  std::string service_account_secret = "test-service-secret";
  std::string service_account_scope = "read:page:confluence read:space:confluence";
  std::chrono::seconds service_token_lifetime{3600};  // Atlassian's: 60 minutes
  // GET /_edge/tenant_info answers {"cloudId": ...} without authentication: this id,
  // or when empty the first site that is not Jira-only.
  std::string tenant_cloud_id;
};

// Cumulative since start. A request answered by an injected fault still counts in
// `requests` and in `token_requests` / `api_requests` (by path), and in none of the
// others but `injected_retry_statuses`. A delayed answer is a normal one and counts as such.
struct counters {
  std::uint64_t connections = 0;                // accepted TCP connections
  std::uint64_t tls_resumptions = 0;            // TLS handshakes that resumed an earlier session
  std::uint64_t requests = 0;                   // requests answered (or stalled), protocol errors included
  std::uint64_t authorize_pages = 0;            // GET /authorize handled (consent page, redirect or error page)
  std::uint64_t authorize_decisions = 0;        // valid Allow/Deny submissions
  std::uint64_t token_requests = 0;             // requests to /oauth/token
  std::uint64_t authorization_code_grants = 0;  // successful code exchanges
  std::uint64_t refresh_grants = 0;             // successful refreshes (reuse-window ones included)
  std::uint64_t client_credentials_grants = 0;  // service account tokens issued
  std::uint64_t token_errors = 0;               // error answers from /oauth/token
  std::uint64_t api_requests = 0;               // accessible-resources and /ex/... requests
  std::uint64_t api_unauthorized = 0;           // 401s from those (bad token or scope mismatch)
  std::uint64_t api_near_expiry = 0;            // near_expiry_status answers from /ex/...
  std::uint64_t injected_retry_statuses = 0;    // push_status faults served with status 429 or 503
  std::uint64_t families_revoked = 0;           // by refresh-token reuse after the window, or revoke_all()
  std::uint64_t rate_limited = 0;               // answers of the rate limits (options::limits)
};

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

class server {
 public:
  // Generates the CA and leaf certificate, binds, listens and starts serving on its own
  // thread and io_context. Throws on failure (e.g. the port is in use).
  explicit server(options = {});
  ~server();  // stops every connection and joins the thread
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // All member functions are thread-safe.
  unsigned short port() const;
  std::string base_url() const;  // "https://127.0.0.1:PORT", "http://...", "https://[::1]:PORT"
  std::string ca_pem() const;    // the CA certificate clients should trust; empty without TLS
  void write_ca_pem(const std::string& path) const;  // throws std::runtime_error on failure
  counters stats() const;

  // Test clock: the server's "now" is the real time plus the sum of all advances. Every
  // expiry (codes, access tokens, refresh reuse window, 90/365-day limits) uses it; the
  // TLS certificate validity does not.
  void advance_clock(std::chrono::seconds);

  // Fault injection. Each call queues one fault; each request whose path (without the
  // query) starts with path_prefix consumes the oldest matching fault, after the request
  // has been read completely, instead of the normal answer.
  // Write these exact bytes; then close the connection if close_after (or if the client asked).
  void push_raw_response(std::string path_prefix, std::string raw_bytes, bool close_after = true);
  // Never answer: hold the connection open until the client closes it or the server stops.
  void push_stall(std::string path_prefix);
  // Answer `status` with this JSON body and extra headers (e.g. 429 + Retry-After).
  void push_status(std::string path_prefix, int status, std::string json_body,
                   std::vector<std::pair<std::string, std::string>> headers = {});
  // Answer normally, but only after `delay`; the answer is computed when the delay ends
  // (clock and token state as they are then). Other connections are served meanwhile.
  void push_delay(std::string path_prefix, std::chrono::milliseconds delay);
  // How many queued faults no request has consumed yet (a test cancels a stalled request
  // only once the stall has it).
  std::size_t queued_faults() const;

  // A valid code, as if the user had consented, bound to `code_challenge` (S256; empty:
  // none) as /authorize would bind it. redirect_uri is not checked against the
  // registered ones, so tests can also make mismatching codes.
  std::string issue_code(const std::string& redirect_uri, const std::string& scope,
                         const std::string& code_challenge = {});
  void revoke_all();  // revoke every token family (refresh and access tokens)

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// ---------------------------------------------------------------------------
// The in-memory PKI, for the other servers tests run (tests/support/hostile_server.cpp)
// ---------------------------------------------------------------------------

// A server certificate and its private key, both PEM.
struct certified_key {
  std::string certificate_pem;
  std::string private_key_pem;
};

// A fresh self-signed P-256 CA that issues server certificates.
class test_ca {
 public:
  test_ca();
  ~test_ca();
  test_ca(const test_ca&) = delete;
  test_ca& operator=(const test_ca&) = delete;

  std::string pem() const;  // the CA certificate clients trust
  // A certificate for `hosts` (DNS names or IP literals) valid from now + not_before to
  // now + not_after: negative both for one that has expired.
  certified_key issue(const std::vector<std::string>& hosts, std::chrono::seconds not_before = std::chrono::hours(-1),
                      std::chrono::seconds not_after = std::chrono::hours(24)) const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace fake_atlassian
