// web-app — a small multi-user web app that connects each of its users to
// Confluence Cloud with OAuth 2.0 (3LO): the seed of every Confluence
// integration.
//
//   GET  /           a "Connect to Confluence" button, or this user's spaces
//   POST /connect    start an authorization for this browser (its form carries
//                    the browser's CSRF token; GET gets 405)
//   GET  /callback   Atlassian's redirect back (the path of --redirect-uri)
//   POST /logout     forget this user's grant (with the CSRF token too)
//
// Browsers are told apart by a random cookie, __Host-webapp_session when the
// app is served over HTTPS (plain webapp_session on a loopback http origin,
// where browsers refuse Secure cookies). An authorization belongs to the
// cookie that started it, so a callback carrying the state of another browser,
// or of none, is refused with a fixed message: nobody can slip their own grant
// into a victim's browser (login CSRF), and nothing from the request is shown.
//
// Anonymous traffic must not be able to knock the app over, so a visitor
// costs nothing until they have a grant:
// - one OAuth client (one TLS context, one connection pool) serves every user;
// - the start page gives each browser a cookie and a form token derived from
//   it (an HMAC under a per-process key): no server state;
// - Connect is a POST that must carry that token, and is rate limited per
//   client address (a token bucket, --connect-rate a minute);
// - an authorization awaiting its callback is a few hundred bytes (state,
//   PKCE verifier, cookie, deadline) in one map with a global and a
//   per-browser cap, expired as it goes;
// - only a browser that comes back with the state of its own authorization
//   gets a cfo::session (the app's one client, a token store of its own),
//   which completes the authorization and is kept once it holds a grant.
//
// The whole program is one asio::io_context on one thread and every request
// is a coroutine. Its HTTP server is deliberately minimal: one request per
// connection, request bodies only with Content-Length, a size limit on
// everything read and a deadline on every connection.

#include "confluence_oauth.hpp"
#ifdef CONFLUENCE_OAUTH_EXAMPLE_POSTGRES
#include "confluence_oauth_postgres.hpp"
#endif

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cctype>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <list>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;
using asio::ip::tcp;
using steady_time = std::chrono::steady_clock::time_point;

namespace {

#if ASIO_VERSION >= 102300
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
#else
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);
#endif

const std::string app_name = "Confluence web app";

// Limits on what one connection may cost.
constexpr std::size_t max_head_bytes = 16 * 1024;
constexpr std::size_t max_header_count = 64;
constexpr std::size_t max_body_bytes = 8 * 1024;  // only forms with a button and a token are ever posted here
constexpr auto read_timeout = 10s;                 // the whole request, head and body
constexpr auto write_timeout = 10s;                // the response, then the lingering close
constexpr std::size_t max_connections = 256;       // more are closed at once

// Limits on what visitors may cost.
constexpr auto pending_lifetime = 10min;  // Atlassian's codes and consent pages live about as long
constexpr std::size_t max_pending = 10000;           // authorizations awaiting their callback, all browsers
constexpr std::ptrdiff_t max_pending_per_browser = 4;
constexpr unsigned default_connect_rate = 20;        // Connect clicks a minute per client address
constexpr std::size_t max_rate_limited_clients = 10000;
constexpr std::size_t max_users = 10000;             // browsers holding a grant, each with its own session
constexpr std::size_t max_spaces_per_site = 250;

// ---------------------------------------------------------------------------
// Settings, from the command line and the environment
// ---------------------------------------------------------------------------

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string help_text() {
  const cfo::client_config d;  // the library's defaults are Atlassian's
  return "usage: web-app [options]\n"
         "\n"
         "A small multi-user web app: each browser connects its own Confluence Cloud\n"
         "account with OAuth 2.0 (3LO) and sees its spaces. Connect posts a form with\n"
         "a per-browser CSRF token; a browser holds server state only while its\n"
         "authorization is pending (a few hundred bytes, at most " + std::to_string(max_pending) + " in all) and\n"
         "once it has a grant.\n"
         "\n"
         "Options (--opt VALUE or --opt=VALUE):\n"
         "  --host ADDRESS            IP address to listen on (default 127.0.0.1)\n"
         "  --port N                  port to listen on, 0 = any free port (default 3000);\n"
         "                            prints \"listening on http://HOST:PORT\" once listening\n"
         "  --port-file PATH          also write the port to PATH\n"
         "  --client-id ID            OAuth client id (default: $ATLASSIAN_CLIENT_ID)\n"
         "  --client-secret-file PATH file holding the OAuth client secret (default: the\n"
         "                            secret in $ATLASSIAN_CLIENT_SECRET)\n"
         "  --redirect-uri URI        callback URL registered for the app (default\n"
         "                            http://HOST:PORT/callback); the app serves its path.\n"
         "                            Open the app on this URI's origin: the session cookie\n"
         "                            must come back with the callback. An https URI means\n"
         "                            the app is served over HTTPS (behind a proxy): the\n"
         "                            cookie is then __Host-webapp_session, Secure\n"
         "  --connect-rate N          Connect requests a minute per client address (IPv6:\n"
         "                            per /64), as many at once; more get 429 (default " +
         std::to_string(default_connect_rate) + ")\n"
         "  --authorize-url URL       authorization endpoint (also --auth-url; default\n"
         "                            " + d.authorize_url + ")\n"
         "  --token-url URL           token endpoint (default " + d.token_url + ")\n"
         "  --api-url URL             API base URL (default " + d.api_url + ")\n"
         "  --ca-file PEM             also trust the CA certificates in this PEM file\n"
         "  --token-db CONNINFO       keep every user's grant in PostgreSQL (a libpq\n"
         "                            connection string or URI), not in memory: copies of\n"
         "                            the app behind one address then serve the same users\n"
         "  --key-file PATH           with --token-db: 64 hex digits, the same in every\n"
         "                            copy; seals the rows and signs the forms\n"
         "  -h, --help                show this help\n"
         "\n"
         "Stops on SIGINT or SIGTERM. Exit status: 0 after a signal, 1 on a failure,\n"
         "2 on a usage or configuration error.\n";
}

struct settings {
  cfo::client_config config;
  std::string host = "127.0.0.1";
  std::uint16_t port = 3000;
  std::string port_file;
  unsigned connect_rate = default_connect_rate;
  bool redirect_given = false;  // else http://HOST:PORT/callback, once the port is known
  std::string token_db;         // --token-db: grants in PostgreSQL
  cfo::secret key;              // --key-file: 32 bytes
};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

/// A whole decimal number from `min` to `max`, or nullopt.
std::optional<unsigned> parse_unsigned(std::string_view text, unsigned min, unsigned max) {
  unsigned n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || n < min || n > max) return std::nullopt;
  return n;
}

cfo::secret read_secret_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw usage_error("--client-secret-file: cannot read " + path);
  std::string text(std::istreambuf_iterator<char>(in), {});
  if (text.size() > 4096) throw usage_error("--client-secret-file: " + path + " is too large for a secret");
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  cfo::secret s(std::move(text));
  if (s.empty()) throw usage_error("--client-secret-file: " + path + " is empty");
  return s;
}

/// --key-file: 64 hex digits (e.g. from 'openssl rand -hex 32'), as 32 bytes.
cfo::secret read_key_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw usage_error("--key-file: cannot read " + path);
  std::string text(std::istreambuf_iterator<char>(in), {});
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  auto digit = [](char c) { return c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c - '0'; };
  if (text.size() != 64 || !std::all_of(text.begin(), text.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); }))
    throw usage_error("--key-file: " + path + " must hold 64 hex digits");
  std::string key(32, '\0');
  for (std::size_t i = 0; i < 32; ++i) key[i] = static_cast<char>(digit(text[2 * i]) << 4 | digit(text[2 * i + 1]));
  OPENSSL_cleanse(text.data(), text.size());
  return cfo::secret(std::move(key));
}

settings parse_arguments(int argc, char** argv) {
  settings s;
  std::optional<std::string> client_id;
  std::optional<cfo::secret> client_secret;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto eq = arg.find('=');
    std::string name(arg.substr(0, eq));
    // The option's value, from "--opt=VALUE" or the next argument.
    auto value = [&]() -> std::string {
      if (eq != std::string_view::npos) return std::string(arg.substr(eq + 1));
      if (i + 1 >= argc) throw usage_error("option " + name + " needs a value");
      return argv[++i];
    };
    if (name == "--help" || name == "-h") {
      std::cout << help_text();
      std::exit(0);
    } else if (name == "--host") {
      s.host = value();
      std::error_code ec;
      asio::ip::make_address(s.host, ec);
      if (ec) throw usage_error("--host: expected an IP address, got \"" + s.host + "\"");
    } else if (name == "--port") {
      auto text = value();
      auto port = parse_unsigned(text, 0, 65535);
      if (!port) throw usage_error("--port: expected a port from 0 to 65535, got \"" + text + "\"");
      s.port = static_cast<std::uint16_t>(*port);
    } else if (name == "--port-file") {
      s.port_file = value();
    } else if (name == "--connect-rate") {
      auto text = value();
      auto rate = parse_unsigned(text, 1, 1000000);
      if (!rate) throw usage_error("--connect-rate: expected a number from 1 to 1000000, got \"" + text + "\"");
      s.connect_rate = *rate;
    } else if (name == "--client-id") {
      client_id = value();
    } else if (name == "--client-secret-file") {
      client_secret = read_secret_file(value());
    } else if (name == "--redirect-uri") {
      s.config.redirect_uri = value();
      s.redirect_given = true;
    } else if (name == "--authorize-url" || name == "--auth-url") {
      s.config.authorize_url = value();
    } else if (name == "--token-url") {
      s.config.token_url = value();
    } else if (name == "--api-url") {
      s.config.api_url = value();
    } else if (name == "--ca-file") {
      s.config.tls.ca_file = value();
    } else if (name == "--token-db") {
      s.token_db = value();
    } else if (name == "--key-file") {
      s.key = read_key_file(value());
    } else {
      throw usage_error("unknown option " + std::string(arg.substr(0, 60)));
    }
  }
  s.config.client_id = client_id ? *client_id : env("ATLASSIAN_CLIENT_ID");
  s.config.client_secret = client_secret ? std::move(*client_secret) : cfo::secret(env("ATLASSIAN_CLIENT_SECRET"));
  if (s.config.client_id.empty()) throw usage_error("missing client id: pass --client-id or set ATLASSIAN_CLIENT_ID");
  if (s.config.client_secret.empty())
    throw usage_error("missing client secret: pass --client-secret-file or set ATLASSIAN_CLIENT_SECRET");
  if (!s.token_db.empty() && s.key.empty()) throw usage_error("--token-db needs --key-file");
  return s;
}

// ---------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
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

/// A whole page. `id` names the page for scripts and tests; `content` is HTML.
std::string html_page(std::string_view id, std::string_view title, std::string_view content) {
  std::string out = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                    "<meta name=\"viewport\" content=\"width=device-width\"><title>";
  out += html_escape(title);
  out += " - " + app_name + "</title><style>"
         "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}"
         "button{font-size:1em;padding:.4em 1em}small{font-weight:normal;color:#555}</style></head>\n<body><main id=\"";
  out += html_escape(id);
  out += "\"><h1>";
  out += html_escape(title);
  out += "</h1>\n";
  out += content;
  out += "</main></body></html>\n";
  return out;
}

/// A form that posts only a button and the browser's CSRF token to `action`.
std::string button_form(std::string_view action, std::string_view csrf_token, std::string_view id,
                        std::string_view label) {
  return "<form method=\"post\" action=\"" + html_escape(action) + "\"><input type=\"hidden\" name=\"csrf\" value=\"" +
         html_escape(csrf_token) + "\"><button type=\"submit\" id=\"" + html_escape(id) + "\">" + html_escape(label) +
         "</button></form>\n";
}

const std::string back_link = "<p><a href=\"/\">Back to the start page</a></p>\n";

std::string paragraph(std::string_view text) { return "<p>" + html_escape(text) + "</p>\n"; }

// ---------------------------------------------------------------------------
// URLs and queries
// ---------------------------------------------------------------------------

/// Whether an absolute URL is https (the scheme in any case).
bool is_https_url(std::string_view url) {
  auto scheme = url.substr(0, url.find("://"));
  return scheme.size() == 5 && std::equal(scheme.begin(), scheme.end(), "https", [](char a, char b) {
           return (a >= 'A' && a <= 'Z' ? a + 32 : a) == b;
         });
}

/// The path of an absolute URL the OAuth client has validated
/// ("http://host:port/callback?x" -> "/callback"); "/" when it has none.
std::string url_path(std::string_view url) {
  auto scheme = url.find("://");
  auto rest = scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  auto start = rest.find_first_of("/?");
  if (start == std::string_view::npos || rest[start] == '?') return "/";
  auto path = rest.substr(start);
  return std::string(path.substr(0, path.find('?')));
}

/// The value of a hexadecimal digit, or -1.
int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// %XX decoded, '+' as a space, as query strings have it; a malformed escape is kept as it is.
std::string percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out += ' ';
    } else if (in[i] == '%' && i + 2 < in.size() && hex_digit(in[i + 1]) >= 0 && hex_digit(in[i + 2]) >= 0) {
      out += static_cast<char>(hex_digit(in[i + 1]) * 16 + hex_digit(in[i + 2]));
      i += 2;
    } else {
      out += in[i];
    }
  }
  return out;
}

/// The `state` of a callback's request target ("/callback?code=...&state=..."),
/// the first one if there are several; nullopt when there is none. Only to find
/// which of the browser's authorizations it answers: the session checks the
/// whole callback against that authorization (complete_authorization).
std::optional<cfo::secret> callback_state(std::string_view target) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  auto query = target.substr(q + 1);
  query = query.substr(0, query.find('#'));
  while (!query.empty()) {
    auto end = query.find('&');
    auto pair = query.substr(0, end);
    query = end == std::string_view::npos ? std::string_view{} : query.substr(end + 1);
    auto eq = pair.find('=');
    if (percent_decode(pair.substr(0, eq)) == "state")
      return cfo::secret(eq == std::string_view::npos ? std::string() : percent_decode(pair.substr(eq + 1)));
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// HTTP/1.1, just enough: one request per connection
// ---------------------------------------------------------------------------

struct request {
  std::string method, target;
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;
  asio::ip::address peer;  // the client's address, for the rate limit

  std::string_view path() const { return std::string_view(target).substr(0, target.find('?')); }
  const std::string* header(std::string_view lower_name) const {
    for (const auto& [name, value] : headers)
      if (name == lower_name) return &value;
    return nullptr;
  }
};

struct response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;  // beyond the ones every response gets
  std::string body;
};

response html_response(int status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

/// A page as a response: `id` names the page for tests, `content` is HTML.
response page(int status, std::string_view id, std::string_view title, std::string_view content) {
  return html_response(status, html_page(id, title, content));
}

response redirect_to(std::string location) {
  response r;
  r.status = 303;  // "see other": the browser follows with a GET, whatever it sent
  r.headers.emplace_back("Location", std::move(location));
  return r;
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 302: return "Found";
    case 303: return "See Other";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

std::string serialize(const response& r) {
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + std::string(reason_phrase(r.status)) + "\r\n";
  out += "Content-Type: text/html; charset=utf-8\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  out += "Connection: close\r\n";
  // Pages are per user and some carry a URL with an authorization code: never
  // cache them, and never send that URL to another site as a Referer
  // ("same-origin", not "no-referrer", which would make our own forms post
  // with "Origin: null").
  out += "Cache-Control: no-store\r\n";
  out += "Referrer-Policy: same-origin\r\n";
  out += "X-Content-Type-Options: nosniff\r\n";
  out += "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
         "base-uri 'none'\r\n";
  for (const auto& [name, value] : r.headers) out += name + ": " + value + "\r\n";
  out += "\r\n";
  out += r.body;
  return out;
}

/// A request the server refuses before any route sees it.
struct protocol_error : std::runtime_error {
  protocol_error(int status, const std::string& message) : std::runtime_error(message), status(status) {}
  int status;
};

bool is_token_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

/// Parses the head (request line and headers, without the final empty line)
/// into `req` and returns the body length; throws protocol_error.
std::size_t parse_head(std::string_view head, request& req) {
  auto next_line = [&head]() {
    auto end = head.find("\r\n");
    auto line = head.substr(0, end);
    head = end == std::string_view::npos ? std::string_view{} : head.substr(end + 2);
    return line;
  };
  auto bad = [](const std::string& why) { return protocol_error(400, why); };

  auto line = next_line();
  auto sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp1 == sp2) throw bad("malformed request line");
  req.method = line.substr(0, sp1);
  req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  auto version = line.substr(sp2 + 1);
  if (req.method.empty() || !std::all_of(req.method.begin(), req.method.end(), is_token_char))
    throw bad("malformed method");
  if (req.target.empty() || req.target.front() != '/' ||
      !std::all_of(req.target.begin(), req.target.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
    throw bad("malformed request target");
  if (version != "HTTP/1.1" && version != "HTTP/1.0") throw protocol_error(505, "unsupported HTTP version");

  std::optional<std::size_t> content_length;
  while (!head.empty()) {
    line = next_line();
    if (req.headers.size() >= max_header_count) throw protocol_error(431, "too many header fields");
    auto colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos ||
        !std::all_of(line.begin(), line.begin() + static_cast<std::ptrdiff_t>(colon), is_token_char))
      throw bad("malformed header field");  // obsolete line folding lands here too
    std::string name(line.substr(0, colon));
    for (char& c : name)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    auto value = trim_ows(line.substr(colon + 1));
    if (std::any_of(value.begin(), value.end(), [](char c) {
          auto u = static_cast<unsigned char>(c);
          return (u < 0x20 && c != '\t') || u == 0x7f;
        }))
      throw bad("control character in a header field");
    if (name == "transfer-encoding") throw protocol_error(501, "request bodies must come with Content-Length");
    if (name == "content-length") {
      std::size_t n = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (value.empty() || ec != std::errc{} || end != value.data() + value.size() ||
          (content_length && *content_length != n))
        throw bad("malformed Content-Length");
      if (n > max_body_bytes) throw protocol_error(413, "request body too large");
      content_length = n;
    }
    req.headers.emplace_back(std::move(name), value);
  }
  return content_length.value_or(0);
}

/// Closes the socket when the timer fires; re-arming replaces the deadline.
void arm_deadline(asio::steady_timer& timer, const std::shared_ptr<tcp::socket>& socket,
                  std::chrono::steady_clock::duration after) {
  timer.expires_after(after);
  timer.async_wait([weak = std::weak_ptr(socket)](std::error_code ec) {
    if (ec) return;
    if (auto s = weak.lock()) {
      std::error_code ignored;
      s->close(ignored);
    }
  });
}

// ---------------------------------------------------------------------------
// Browser ids, form tokens, pending authorizations, the rate limit
// ---------------------------------------------------------------------------

std::string hex(const unsigned char* bytes, std::size_t size) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * size);
  for (std::size_t i = 0; i < size; ++i) {
    out += digits[bytes[i] >> 4];
    out += digits[bytes[i] & 15];
  }
  return out;
}

template <std::size_t N>
std::array<unsigned char, N> random_bytes() {
  std::array<unsigned char, N> bytes;
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1)
    throw std::runtime_error("the random number generator failed");
  return bytes;
}

std::string new_browser_id() {
  auto bytes = random_bytes<32>();  // 256 bits: cannot be guessed
  return hex(bytes.data(), bytes.size());
}

bool is_browser_id(std::string_view s) {
  auto hex_digit = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
  return s.size() == 64 && std::all_of(s.begin(), s.end(), hex_digit);
}

/// The value of `name` in an urlencoded form, not decoded: the app's own
/// fields carry hex digits only, which browsers send as they are.
std::optional<std::string_view> form_field(std::string_view form, std::string_view name) {
  while (!form.empty()) {
    auto end = form.find('&');
    auto pair = form.substr(0, end);
    form = end == std::string_view::npos ? std::string_view{} : form.substr(end + 1);
    auto eq = pair.find('=');
    if (eq != std::string_view::npos && pair.substr(0, eq) == name) return pair.substr(eq + 1);
  }
  return std::nullopt;
}

/// The form token of each browser: an HMAC of its id under a key made at
/// start-up. Another site cannot compute it, and it costs no server state.
class csrf_tokens {
 public:
  csrf_tokens() = default;
  /// Under a key every copy of the app shares (--key-file), so that a form
  /// one copy made is good at another.
  explicit csrf_tokens(const cfo::secret& shared) {
    const std::string_view purpose = "web-app form tokens";
    unsigned size = 0;
    if (!HMAC(EVP_sha256(), shared.reveal().data(), static_cast<int>(shared.reveal().size()),
              reinterpret_cast<const unsigned char*>(purpose.data()), purpose.size(), key_.data(), &size))
      throw std::runtime_error("HMAC-SHA256 failed");
  }

  std::string token_for(std::string_view browser) const {
    std::array<unsigned char, EVP_MAX_MD_SIZE> mac;
    unsigned size = 0;
    if (!HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
              reinterpret_cast<const unsigned char*>(browser.data()), browser.size(), mac.data(), &size))
      throw std::runtime_error("HMAC-SHA256 failed");
    return hex(mac.data(), size);
  }

  /// Compared in constant time: the time taken tells nothing of the right token.
  bool valid(std::string_view browser, std::string_view token) const {
    auto expected = token_for(browser);
    return token.size() == expected.size() && CRYPTO_memcmp(token.data(), expected.data(), token.size()) == 0;
  }

 private:
  std::array<unsigned char, 32> key_ = random_bytes<32>();
};

/// Authorizations started by Connect and awaiting their callback, oldest
/// first: a few hundred bytes each, at most max_pending in all and
/// max_pending_per_browser per browser, each for pending_lifetime. When full,
/// the oldest makes room: a flood can only hurry sign-ins along, not block them.
class pending_authorizations {
 public:
  void add(const std::string& browser, cfo::authorization auth, steady_time now) {
    drop_expired(now);
    auto [first, last] = by_browser_.equal_range(browser);
    if (std::distance(first, last) >= max_pending_per_browser)
      erase(std::min_element(first, last, [](const auto& a, const auto& b) {
              return a.second->expires < b.second->expires;
            })->second);
    if (entries_.size() >= max_pending) erase(entries_.begin());
    auth.url.clear();  // sent to the browser already; the callback needs the rest
    auth.url.shrink_to_fit();
    entries_.push_back(entry{browser, std::move(auth), now + pending_lifetime});
    auto added = std::prev(entries_.end());
    by_browser_.emplace(added->browser, added);
  }

  /// Takes out the authorization of `browser` whose state is `state`: single use.
  std::optional<cfo::authorization> take(std::string_view browser, const cfo::secret& state, steady_time now) {
    drop_expired(now);
    auto [first, last] = by_browser_.equal_range(browser);
    for (auto it = first; it != last; ++it) {
      if (it->second->auth.state == state) {  // constant time
        auto auth = std::move(it->second->auth);
        erase(it->second);
        return auth;
      }
    }
    return std::nullopt;
  }

  /// Drops every authorization of `browser` (signed in, or signed out).
  void forget(std::string_view browser) {
    for (auto it = by_browser_.find(browser); it != by_browser_.end(); it = by_browser_.find(browser)) erase(it->second);
  }

 private:
  struct entry {
    std::string browser;
    cfo::authorization auth;
    steady_time expires;
  };
  using entry_list = std::list<entry>;

  void drop_expired(steady_time now) {
    // One lifetime for all: the oldest expires first.
    while (!entries_.empty() && entries_.front().expires <= now) erase(entries_.begin());
  }

  void erase(entry_list::iterator e) {
    auto [first, last] = by_browser_.equal_range(e->browser);
    for (auto it = first; it != last; ++it) {
      if (it->second == e) {
        by_browser_.erase(it);
        break;
      }
    }
    entries_.erase(e);
  }

  entry_list entries_;
  // Keys view the browser strings in entries_, whose nodes never move.
  std::unordered_multimap<std::string_view, entry_list::iterator> by_browser_;
};

/// A token bucket per client address: `per_minute` requests a minute, as
/// many at once. An IPv6 client counts by its /64, which one subscriber
/// usually holds whole. Remembers at most max_rate_limited_clients buckets;
/// a full bucket is forgotten (a new one is the same), and while every one is
/// in use, new clients wait.
class rate_limiter {
 public:
  explicit rate_limiter(unsigned per_minute) : per_second_(per_minute / 60.0), capacity_(per_minute) {}

  /// Zero when `client` may go ahead now (and is counted), else how long it should wait.
  std::chrono::seconds wait(const asio::ip::address& client, steady_time now) {
    auto k = key_of(client);
    auto it = buckets_.find(k);
    if (it == buckets_.end()) {
      if (buckets_.size() >= max_rate_limited_clients) forget_full_buckets(now);
      if (buckets_.size() >= max_rate_limited_clients) return std::chrono::seconds(60);
      it = buckets_.emplace(k, bucket{capacity_, now}).first;
    }
    auto& b = it->second;
    b.tokens = tokens_at(b, now);
    b.updated = now;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return std::chrono::seconds(0);
    }
    return std::chrono::seconds(static_cast<long long>(std::ceil((1 - b.tokens) / per_second_)));
  }

 private:
  using key = std::array<unsigned char, 16>;
  struct key_hash {
    std::size_t operator()(const key& k) const noexcept {
      return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(k.data()), k.size()));
    }
  };
  struct bucket {
    double tokens;
    steady_time updated;
  };

  static key key_of(const asio::ip::address& a) {
    if (a.is_v4()) return asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4()).to_bytes();
    auto v6 = a.to_v6();
    if (v6.is_v4_mapped()) return v6.to_bytes();
    auto bytes = v6.to_bytes();
    std::fill(bytes.begin() + 8, bytes.end(), 0);
    return bytes;
  }

  double tokens_at(const bucket& b, steady_time now) const {
    double elapsed = std::chrono::duration<double>(now - b.updated).count();
    return std::min(capacity_, b.tokens + elapsed * per_second_);
  }

  void forget_full_buckets(steady_time now) {
    if (now < next_sweep_) return;  // at most once a second: a sweep walks every bucket
    next_sweep_ = now + 1s;
    std::erase_if(buckets_, [&](const auto& entry) { return tokens_at(entry.second, now) >= capacity_; });
  }

  double per_second_;
  double capacity_;
  steady_time next_sweep_{};
  std::unordered_map<key, bucket, key_hash> buckets_;
};

// ---------------------------------------------------------------------------
// The app: the routes
// ---------------------------------------------------------------------------

class web_app {
 public:
  /// Validates the configuration (throws oauth_error) and makes the app's one OAuth client.
  web_app(asio::any_io_executor ex, const cfo::client_config& config, unsigned connect_rate)
      : client_(ex, config),
        callback_path_(url_path(client_.config().redirect_uri)),
        https_(is_https_url(client_.config().redirect_uri)),
        // Browsers keep a __Host- cookie only when it is Secure, for Path=/ and without Domain:
        // no subdomain or plain-http page can plant or overwrite it.
        cookie_name_(https_ ? "__Host-webapp_session" : "webapp_session"),
        connect_limit_(connect_rate) {}

  /// Keeps every user's grant in PostgreSQL (--token-db), a row per browser,
  /// sealed with `key`, which also signs the forms: any copy of the app
  /// sharing the database and the key serves any user.
  void keep_grants_in(const std::string& conninfo, const cfo::secret& key) {
#ifdef CONFLUENCE_OAUTH_EXAMPLE_POSTGRES
    auto db = std::make_shared<cfo::postgres_token_store::database>(client_.get_executor(), conninfo, key);
    store_for_ = [db](const std::string& browser) -> std::shared_ptr<cfo::token_store> {
      // The row is named by a digest: the database never holds a cookie a browser could be impersonated with.
      std::array<unsigned char, EVP_MAX_MD_SIZE> digest;
      unsigned size = 0;
      if (EVP_Digest(browser.data(), browser.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("SHA-256 failed");
      return std::make_shared<cfo::postgres_token_store>(db, "web-app:" + hex(digest.data(), size));
    };
    csrf_ = csrf_tokens(key);
#else
    (void)conninfo;
    (void)key;
    throw usage_error("--token-db: this web-app was built without PostgreSQL (libpq)");
#endif
  }

  std::size_t connections = 0;  // open HTTP connections

  /// The path of the redirect URI, which the app serves.
  const std::string& callback_path() const noexcept { return callback_path_; }

  /// Answers one request. Failures become an error page; they never reach the server.
  asio::awaitable<response> handle(const request& req) {
    response res;
    int failed = 0;
    std::string failure;
    try {
      res = co_await route(req);
    } catch (const cfo::oauth_error& e) {  // Atlassian or the network failed us
      failed = 502;
      failure = e.what();
    } catch (const std::exception& e) {
      failed = 500;
      failure = e.what();
    }
    // The details go to the log only: they may hold a server's words.
    if (failed)
      res = page(failed, "error", "Something went wrong",
                 paragraph("The app could not complete this request. Try again later.") + back_link);
    // The path only: a callback's query holds an authorization code.
    std::clog << "web-app: " << req.method << ' ' << req.path() << ' ' << res.status;
    if (failed) std::clog << ": " << failure;
    std::clog << std::endl;
    co_return res;
  }

 private:
  asio::awaitable<response> route(const request& req) {
    auto path = req.path();
    auto method_not_allowed = [](std::string allow) {
      auto r = page(405, "error", "Method not allowed", paragraph("Use " + allow + "."));
      r.headers.emplace_back("Allow", std::move(allow));
      return r;
    };
    if (req.method == "POST" && !same_origin(req))
      co_return page(403, "error", "Forbidden", paragraph("This form was posted from another site."));
    if (path == "/") {
      if (req.method != "GET") co_return method_not_allowed("GET");
      co_return co_await home(req);
    }
    if (path == "/connect") {
      if (req.method != "POST") co_return method_not_allowed("POST");
      co_return connect(req);
    }
    if (path == callback_path_) {
      if (req.method != "GET") co_return method_not_allowed("GET");
      co_return co_await callback(req);
    }
    if (path == "/logout") {
      if (req.method != "POST") co_return method_not_allowed("POST");
      co_return co_await logout(req);
    }
    co_return page(404, "error", "Not found", paragraph("There is nothing here."));
  }

  // --- GET /: the Connect button, or this user's spaces ---

  asio::awaitable<response> home(const request& req) {
    auto id = browser_id(req);
    auto user = id ? connected_.find(*id) : connected_.end();
    if (user == connected_.end() && id && store_for_ && connected_.size() < max_users) {
      // Signed in at another copy of the app: the grant is in the database.
      cfo::session stored(client_, store_for_(*id));
      if (co_await stored.load()) user = connected_.emplace(*id, std::move(stored)).first;
    }
    if (user == connected_.end())
      co_return start_page(id, "Connect your Confluence Cloud account to see your spaces here.");
    auto session = user->second;  // a handle of its own: the map may change while we wait
    std::string spaces;
    bool grant_gone = false;
    try {
      spaces = co_await spaces_html(session);
    } catch (const cfo::oauth_error& e) {
      if (e.code() != cfo::remedy::reauthenticate) throw;
      grant_gone = true;  // revoked, expired or never had offline_access: only a new consent helps
    }
    if (grant_gone) {
      connected_.erase(*id);  // first: a request arriving meanwhile must not find a half-removed user
      co_await session.logout();
      co_return start_page(id, "Your Confluence connection has expired or was revoked. Connect again.");
    }
    co_return page(200, "spaces", "Your Confluence spaces",
                   spaces + button_form("/logout", csrf_.token_for(*id), "logout", "Disconnect"));
  }

  /// The start page, and a cookie for a browser that has none: its form token is made from it.
  response start_page(std::optional<std::string> id, std::string_view message) const {
    bool new_browser = !id;
    if (new_browser) id = new_browser_id();
    auto res = page(200, "start", "Confluence",
                    paragraph(message) + button_form("/connect", csrf_.token_for(*id), "connect", "Connect to Confluence"));
    if (new_browser) res.headers.emplace_back("Set-Cookie", cookie(*id));
    return res;
  }

  static asio::awaitable<std::string> spaces_html(cfo::session session) {
    auto sites = co_await session.accessible_resources();
    std::string html;
    std::size_t shown = 0;
    for (const auto& site : sites) {
      // One consent can cover Jira sites too: their spaces are not Confluence's.
      bool has_confluence = std::any_of(site.scopes.begin(), site.scopes.end(),
                                        [](const std::string& s) { return s.find("confluence") != std::string::npos; });
      if (!has_confluence) continue;
      ++shown;
      cfo::confluence wiki(session, site);
      auto spaces = co_await wiki.get_all("/wiki/api/v2/spaces?limit=100", max_spaces_per_site);
      html += "<section class=\"site\"><h2>" + html_escape(site.name) + " <small>" + html_escape(site.url) +
              "</small></h2>\n<ul class=\"spaces\">\n";
      for (const auto& space : spaces) {
        html += "<li>" + html_escape(text_field(space, "name"));
        if (auto key = text_field(space, "key"); !key.empty()) html += " <small>(" + html_escape(key) + ")</small>";
        html += "</li>\n";
      }
      html += "</ul>";
      if (spaces.empty()) html += paragraph("No spaces here.");
      html += "</section>\n";
    }
    if (shown == 0) html = paragraph("This account shares no Confluence site with the app.");
    co_return html;
  }

  static std::string text_field(const nlohmann::json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string{};
  }

  // --- POST /connect: a new authorization, bound to this browser's cookie ---

  response connect(const request& req) {
    auto now = std::chrono::steady_clock::now();
    // Counted before anything else: guessing tokens costs the same as clicking.
    if (auto wait = connect_limit_.wait(req.peer, now); wait.count() > 0) {
      auto res = page(429, "error", "Too many requests",
                      paragraph("Too many sign-ins were started from your address. Wait a minute, then try again.") +
                          back_link);
      res.headers.emplace_back("Retry-After", std::to_string(wait.count()));
      return res;
    }
    auto id = browser_id(req);
    auto token = form_field(req.body, "csrf");
    if (!id || !token || !csrf_.valid(*id, *token))
      return page(403, "error", "Form expired",
                  paragraph("This form is out of date or did not come from this app. Nothing was started.") +
                      back_link);
    // From the app's one client: an anonymous browser gets no session of its own.
    auto auth = client_.begin_authorization();
    auto res = redirect_to(auth.url);
    pending_.add(*id, std::move(auth), now);
    return res;
  }

  // --- the callback: the code must answer an authorization of THIS browser ---

  asio::awaitable<response> callback(const request& req) {
    auto state = callback_state(req.target);
    auto id = browser_id(req);
    // Only a callback whose state matches an authorization of this browser
    // counts, and takes it out (single use). Anything else, an error included,
    // ends nothing and is answered with fixed words.
    std::optional<cfo::authorization> auth;
    if (id && state) auth = pending_.take(*id, *state, std::chrono::steady_clock::now());
    if (!auth) co_return not_this_browser();
    if (connected_.size() >= max_users)
      co_return page(503, "error", "Too many users", paragraph("Too many users are connected. Try again later."));

    // Its own token store, on the app's one client (connections, TLS context).
    // The session checks the callback against the authorization (state, code
    // or error), trades the code and holds the grant.
    auto new_id = new_browser_id();
    cfo::session session(client_, store_for_(new_id));
    try {
      co_await session.complete_authorization(req.target, std::move(*auth));
    } catch (const cfo::oauth_error& e) {
      // The server's words stay out of the page: they come back through the browser.
      if (e.code() == cfo::errc::state_mismatch) co_return not_this_browser();
      if (e.code() == cfo::errc::authorization_denied) co_return declined();
      if (e.code() == cfo::errc::authorization_failed) co_return authorization_failed();
      throw;  // the token endpoint or the network: handle() logs it and shows a fixed page
    }

    // A new browser id now that the browser holds a grant: an id planted in
    // the browser before sign-in (session fixation) is worth nothing after it.
    connected_.erase(*id);
    pending_.forget(*id);
    connected_.emplace(new_id, std::move(session));
    auto res = redirect_to("/");
    res.headers.emplace_back("Set-Cookie", cookie(new_id));
    co_return res;
  }

  static response declined() {
    return page(403, "declined", "Access declined",
                paragraph("You declined to connect your Confluence account, so the app cannot show your spaces.") +
                    "<p><a href=\"/\" id=\"try-again\">Try again</a></p>\n");
  }

  static response authorization_failed() {
    return page(502, "error", "Authorization failed",
                paragraph("Atlassian could not complete the sign-in. Nothing was connected.") +
                    "<p><a href=\"/\">Try again</a></p>\n");
  }

  static response not_this_browser() {
    return page(400, "mismatch", "Sign-in not recognised",
                paragraph("This response does not belong to a sign-in started in this browser, or that sign-in has "
                          "expired. Nothing was connected.") +
                    "<p><a href=\"/\">Start again</a></p>\n");
  }

  // --- POST /logout ---

  asio::awaitable<response> logout(const request& req) {
    auto id = browser_id(req);
    auto token = form_field(req.body, "csrf");
    if (!id || !token || !csrf_.valid(*id, *token))
      co_return page(403, "error", "Form expired", paragraph("This form is out of date. Nothing was changed.") + back_link);
    pending_.forget(*id);
    if (auto user = connected_.find(*id); user != connected_.end()) {
      auto session = std::move(user->second);
      connected_.erase(user);  // first: a request arriving meanwhile must not find a half-removed user
      co_await session.logout();
    }
    auto res = redirect_to("/");
    res.headers.emplace_back("Set-Cookie", cookie_name_ + "=; Max-Age=0" + cookie_attributes());
    co_return res;
  }

  // --- cookies ---

  /// The browser id of the request, when it has a well-formed one.
  std::optional<std::string> browser_id(const request& req) const {
    for (const auto& [name, value] : req.headers) {
      if (name != "cookie") continue;
      std::string_view rest = value;
      while (!rest.empty()) {
        auto end = rest.find(';');
        auto pair = trim_ows(rest.substr(0, end));
        rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
        auto eq = pair.find('=');
        if (eq != std::string_view::npos && pair.substr(0, eq) == cookie_name_ && is_browser_id(pair.substr(eq + 1)))
          return std::string(pair.substr(eq + 1));
      }
    }
    return std::nullopt;
  }

  std::string cookie(const std::string& id) const { return cookie_name_ + "=" + id + cookie_attributes(); }

  std::string cookie_attributes() const {
    // HttpOnly: scripts never see it. SameSite=Lax: other sites' forms cannot
    // post with it, yet it comes back with Atlassian's redirect (a top-level GET).
    return std::string("; Path=/; HttpOnly; SameSite=Lax") + (https_ ? "; Secure" : "");
  }

  /// Posts must come from our own pages (belt and braces beside SameSite and the token).
  static bool same_origin(const request& req) {
    const std::string* origin = req.header("origin");
    if (!origin) return true;  // not a browser, or an old one
    const std::string* host = req.header("host");
    return host && (*origin == "http://" + *host || *origin == "https://" + *host);
  }

  cfo::oauth_client client_;  // the one client, TLS context and connection pool of the app
  std::string callback_path_;
  bool https_;
  std::string cookie_name_;
  csrf_tokens csrf_;
  rate_limiter connect_limit_;
  pending_authorizations pending_;
  std::unordered_map<std::string, cfo::session> connected_;  // by browser id: the browsers holding a grant
  // Each user's token store: in memory, or a row in PostgreSQL (keep_grants_in).
  std::function<std::shared_ptr<cfo::token_store>(const std::string&)> store_for_ =
      [](const std::string&) -> std::shared_ptr<cfo::token_store> { return std::make_shared<cfo::memory_token_store>(); };
};

// ---------------------------------------------------------------------------
// The server: accept, read one request, answer, close
// ---------------------------------------------------------------------------

/// Counts a connection as open for as long as it lives.
class connection_count {
 public:
  explicit connection_count(std::size_t& open) : open_(open) { ++open_; }
  connection_count(const connection_count&) = delete;
  connection_count& operator=(const connection_count&) = delete;
  ~connection_count() { --open_; }

 private:
  std::size_t& open_;
};

asio::awaitable<void> serve(std::shared_ptr<web_app> app, std::shared_ptr<tcp::socket> socket) {
  connection_count counted(app->connections);
  std::error_code peer_ec;
  auto peer = socket->remote_endpoint(peer_ec);
  if (peer_ec) co_return;  // already gone

  asio::steady_timer deadline(socket->get_executor());
  arm_deadline(deadline, socket, read_timeout);
  std::string buffer;
  auto [ec, head_size] =
      co_await asio::async_read_until(*socket, asio::dynamic_buffer(buffer, max_head_bytes), "\r\n\r\n", use_tuple);
  if (ec && ec != asio::error::not_found) co_return;  // closed, reset, or the read deadline passed

  response res;
  request req;
  std::size_t body_size = 0;
  int refused = ec ? 431 : 0;  // not_found: the buffer filled up before the head ended
  std::string why = ec ? "request head too large" : "";
  if (!refused) {
    try {
      body_size = parse_head(std::string_view(buffer).substr(0, head_size - 2), req);
    } catch (const protocol_error& e) {
      refused = e.status;
      why = e.what();
    }
  }
  if (std::size_t have = buffer.size() - head_size; !refused && have < body_size) {
    auto [body_ec, n] = co_await asio::async_read(*socket, asio::dynamic_buffer(buffer),
                                                  asio::transfer_exactly(body_size - have), use_tuple);
    if (body_ec) co_return;
  }
  deadline.cancel();
  req.peer = peer.address();
  if (refused) {
    std::clog << "web-app: refused a request: " << why << std::endl;
    res = page(refused, "error", "Bad request", paragraph("This request could not be understood: " + why + "."));
  } else {
    req.body = buffer.substr(head_size, body_size);
    res = co_await app->handle(req);
  }

  arm_deadline(deadline, socket, write_timeout);
  auto bytes = serialize(res);
  auto [write_ec, written] = co_await asio::async_write(*socket, asio::buffer(bytes), use_tuple);
  if (!write_ec) {
    // Closing with unread input would reset the connection and could destroy
    // the response in flight: half-close, then drain what the client still sends.
    std::error_code ignored;
    socket->shutdown(tcp::socket::shutdown_send, ignored);
    std::array<char, 4096> sink;
    for (;;) {
      auto [drain_ec, n] = co_await socket->async_read_some(asio::buffer(sink), use_tuple);
      if (drain_ec) break;
    }
  }
  deadline.cancel();
  std::error_code ignored;
  socket->close(ignored);
}

asio::awaitable<void> accept_loop(std::shared_ptr<web_app> app, tcp::acceptor& acceptor) {
  asio::steady_timer backoff(acceptor.get_executor());
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {  // out of descriptors and the like: breathe, then go on
      backoff.expires_after(50ms);
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    if (app->connections >= max_connections) continue;  // the socket closes as it goes out of scope
    auto connection = std::make_shared<tcp::socket>(std::move(socket));
    asio::co_spawn(acceptor.get_executor(), serve(app, std::move(connection)), asio::detached);
  }
}

tcp::acceptor listen_on(asio::io_context& io, const tcp::endpoint& endpoint) {
  tcp::acceptor acceptor(io);
  std::error_code ec;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::ostringstream where;
    where << endpoint;
    throw std::runtime_error("cannot listen on " + where.str() + ": " + ec.message());
  }
  return acceptor;
}

// Write to a temporary file next to `path`, then rename: readers never see a partial file.
void write_port_file(const std::string& path, std::uint16_t port) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::ofstream out(tmp, std::ios::trunc);
  out << port << '\n';
  out.close();
  if (!out || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write the port file " + path);
  }
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  try {
    s = parse_arguments(argc, argv);
  } catch (const usage_error& e) {
    std::cerr << "web-app: " << e.what() << "\nTry 'web-app --help'.\n";
    return 2;
  }

  asio::io_context io(1);
  try {
    auto address = asio::ip::make_address(s.host);
    auto acceptor = listen_on(io, tcp::endpoint(address, s.port));
    auto port = acceptor.local_endpoint().port();
    std::string origin = "http://" + (address.is_v6() ? "[" + s.host + "]" : s.host) + ":" + std::to_string(port);
    if (!s.redirect_given) s.config.redirect_uri = origin + "/callback";
    // A bad configuration stops us here, not at the first user.
    auto app = std::make_shared<web_app>(io.get_executor(), s.config, s.connect_rate);
    if (!s.token_db.empty()) app->keep_grants_in(s.token_db, s.key);
    const auto& callback = app->callback_path();
    if (callback == "/" || callback == "/connect" || callback == "/logout") {
      std::cerr << "web-app: --redirect-uri: the path " << callback << " is taken by the app's own pages\n";
      return 2;
    }

    asio::co_spawn(io, accept_loop(app, acceptor), asio::detached);

    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](std::error_code, int) { io.stop(); });

    if (!s.port_file.empty()) write_port_file(s.port_file, port);
    std::cout << "listening on " << origin << std::endl;
    io.run();
  } catch (const cfo::oauth_error& e) {
    std::cerr << "web-app: " << e.what() << '\n';
    return e.code() == cfo::remedy::fix_configuration ? 2 : 1;
  } catch (const std::exception& e) {
    std::cerr << "web-app: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
