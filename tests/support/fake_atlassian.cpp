// fake_atlassian.cpp — implementation of the fake Atlassian server (see the header).
//
// Layout: text and crypto helpers, the in-memory PKI, HTTP/1.1 messages, the server
// state and its endpoints (authorize, token, accessible-resources, Confluence v2 and
// v1 spaces), then the network side (accept loop, connections with deadlines,
// keep-alive, TLS, delayed answers) and the public member functions. All state lives
// behind one mutex; the network side runs on a single thread with its own io_context.
#include "fake_atlassian.hpp"

// Asio 1.22 only knows clang's coroutines TS: switch C++20 coroutines on for
// clang, as confluence_oauth.hpp does (this file does not include it).
#if defined(__clang__) && defined(__cpp_impl_coroutine) && !defined(ASIO_HAS_CO_AWAIT)
#define ASIO_HAS_CO_AWAIT 1
#define ASIO_HAS_STD_COROUTINE 1
#endif

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <nlohmann/json.hpp>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>  // strstr, used by EVP_EC_gen
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <type_traits>

namespace fake_atlassian {
namespace {

using json = nlohmann::json;
using tcp = asio::ip::tcp;
using tls_stream = asio::ssl::stream<tcp::socket>;
using sys_clock = std::chrono::system_clock;
using namespace std::chrono_literals;

constexpr std::size_t max_head_bytes = 64 * 1024;
constexpr std::size_t max_body_bytes = 1024 * 1024;
constexpr auto idle_timeout = 30s;      // per read or write on a connection
constexpr auto closing_timeout = 2s;    // TLS close_notify exchange / lingering close
constexpr auto refresh_inactivity = std::chrono::days{90};
constexpr auto refresh_absolute = std::chrono::days{365};
constexpr int default_limit = 25;
constexpr int max_limit = 250;

// ---------------------------------------------------------------------------
// Text helpers: case, trimming, percent-encoding, forms, HTML, base64url, scopes
// ---------------------------------------------------------------------------

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

bool iequals(std::string_view a, std::string_view b) { return a.size() == b.size() && lower(a) == lower(b); }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string percent_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string r;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      r += static_cast<char>(c);
    } else {
      r += '%';
      r += hex[c >> 4];
      r += hex[c & 15];
    }
  }
  return r;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Form decoding ('+' is a space); nullopt on a malformed escape.
std::optional<std::string> form_decode(std::string_view s) {
  std::string r;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      r += ' ';
    } else if (s[i] != '%') {
      r += s[i];
    } else {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      r += static_cast<char>(hi * 16 + lo);
      i += 2;
    }
  }
  return r;
}

// application/x-www-form-urlencoded (also query strings). The first occurrence of a
// name wins. nullopt on a malformed escape.
using fields = std::map<std::string, std::string>;
std::optional<fields> parse_form(std::string_view s) {
  fields out;
  while (!s.empty()) {
    auto amp = s.find('&');
    auto pair = s.substr(0, amp);
    s = amp == std::string_view::npos ? std::string_view{} : s.substr(amp + 1);
    if (pair.empty()) continue;
    auto eq = pair.find('=');
    auto name = form_decode(pair.substr(0, eq));
    auto value = form_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1));
    if (!name || !value) return std::nullopt;
    out.emplace(std::move(*name), std::move(*value));
  }
  return out;
}

std::string get(const fields& f, const std::string& name) {
  auto it = f.find(name);
  return it == f.end() ? std::string{} : it->second;
}

std::string html_escape(std::string_view s) {
  std::string r;
  for (char c : s) {
    switch (c) {
      case '&': r += "&amp;"; break;
      case '<': r += "&lt;"; break;
      case '>': r += "&gt;"; break;
      case '"': r += "&quot;"; break;
      case '\'': r += "&#39;"; break;
      default: r += c;
    }
  }
  return r;
}

constexpr std::string_view b64url_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string base64url(const unsigned char* p, std::size_t n) {
  std::string r;
  std::uint32_t acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < n; ++i) {
    acc = (acc << 8) | p[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      r += b64url_alphabet[(acc >> bits) & 63];
    }
  }
  if (bits > 0) r += b64url_alphabet[(acc << (6 - bits)) & 63];
  return r;
}

std::string base64url(std::string_view s) {
  return base64url(reinterpret_cast<const unsigned char*>(s.data()), s.size());
}

// Unpadded base64url only; nullopt on anything else.
std::optional<std::string> base64url_decode(std::string_view s) {
  std::string r;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    auto v = b64url_alphabet.find(c);
    if (v == std::string_view::npos) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      r += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) return std::nullopt;  // non-canonical tail
  return r;
}

std::vector<std::string> split_scopes(std::string_view s) {
  std::vector<std::string> r;
  while (!s.empty()) {
    auto sp = s.find(' ');
    if (sp != 0) r.emplace_back(s.substr(0, sp));
    s = sp == std::string_view::npos ? std::string_view{} : s.substr(sp + 1);
  }
  return r;
}

bool has_scope(std::string_view scopes, std::string_view wanted) {
  auto all = split_scopes(scopes);
  return std::find(all.begin(), all.end(), wanted) != all.end();
}

std::optional<long long> parse_int(std::string_view s) {
  long long v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// ---------------------------------------------------------------------------
// Crypto: random tokens, S256, and the in-memory PKI (CA + leaf) with OpenSSL 3
// ---------------------------------------------------------------------------

template <class T, void (*Free)(T*)>
struct openssl_deleter {
  void operator()(T* p) const { Free(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, openssl_deleter<EVP_PKEY, EVP_PKEY_free>>;
using x509_ptr = std::unique_ptr<X509, openssl_deleter<X509, X509_free>>;
using ext_ptr = std::unique_ptr<X509_EXTENSION, openssl_deleter<X509_EXTENSION, X509_EXTENSION_free>>;
using names_ptr = std::unique_ptr<GENERAL_NAMES, openssl_deleter<GENERAL_NAMES, GENERAL_NAMES_free>>;
using bn_ptr = std::unique_ptr<BIGNUM, openssl_deleter<BIGNUM, BN_free>>;
using bio_ptr = std::unique_ptr<BIO, openssl_deleter<BIO, BIO_free_all>>;

void check(bool ok, const char* what) {
  if (ok) return;
  std::array<char, 256> msg{};
  ERR_error_string_n(ERR_get_error(), msg.data(), msg.size());
  ERR_clear_error();
  throw std::runtime_error(std::string("fake_atlassian: ") + what + ": " + msg.data());
}

// 256 random bits, base64url: codes, tokens, family and consent-request ids.
std::string random_token() {
  std::array<unsigned char, 32> b{};
  check(RAND_bytes(b.data(), static_cast<int>(b.size())) == 1, "RAND_bytes");
  return base64url(b.data(), b.size());
}

std::string s256(std::string_view verifier) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int n = 0;
  check(EVP_Digest(verifier.data(), verifier.size(), md.data(), &n, EVP_sha256(), nullptr) == 1, "EVP_Digest");
  return base64url(md.data(), n);
}

std::string strip_brackets(std::string s) {
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  return s;
}

pkey_ptr make_p256_key() {
  pkey_ptr k{EVP_EC_gen("P-256")};
  check(k != nullptr, "EVP_EC_gen");
  return k;
}

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  ext_ptr ext{X509V3_EXT_conf_nid(nullptr, &ctx, nid, value)};
  check(ext && X509_add_ext(cert, ext.get(), -1) == 1, "X509_add_ext");
}

void add_subject_alt_names(X509* cert, const std::vector<std::string>& hosts) {
  names_ptr names{sk_GENERAL_NAME_new_null()};
  check(names != nullptr, "sk_GENERAL_NAME_new_null");
  for (const auto& h : hosts) {
    std::string host = strip_brackets(h);
    GENERAL_NAME* gn = GENERAL_NAME_new();
    check(gn != nullptr, "GENERAL_NAME_new");
    if (ASN1_OCTET_STRING* ip = a2i_IPADDRESS(host.c_str())) {
      GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
    } else {
      ASN1_IA5STRING* dns = ASN1_IA5STRING_new();
      check(dns && ASN1_STRING_set(dns, host.data(), static_cast<int>(host.size())) == 1, "ASN1_STRING_set");
      GENERAL_NAME_set0_value(gn, GEN_DNS, dns);
    }
    ERR_clear_error();  // a2i_IPADDRESS may leave an error behind for DNS names
    check(sk_GENERAL_NAME_push(names.get(), gn) > 0, "sk_GENERAL_NAME_push");
  }
  check(X509_add1_ext_i2d(cert, NID_subject_alt_name, names.get(), 0, X509V3_ADD_DEFAULT) == 1, "subjectAltName");
}

// A v3 certificate for `key`, valid from now + not_before to now + not_after (by
// default from an hour ago for a day), signed by issuer_key. Without an issuer it is a
// self-signed CA; with one it is a TLS server leaf for `hosts`.
x509_ptr make_cert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key,
                   const std::vector<std::string>& hosts, std::chrono::seconds not_before = -1h,
                   std::chrono::seconds not_after = 24h) {
  x509_ptr cert{X509_new()};
  check(cert != nullptr, "X509_new");
  X509* c = cert.get();
  check(X509_set_version(c, X509_VERSION_3) == 1, "X509_set_version");

  std::array<unsigned char, 16> serial{};
  check(RAND_bytes(serial.data(), static_cast<int>(serial.size())) == 1, "RAND_bytes");
  serial[0] &= 0x7f;
  bn_ptr bn{BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr)};
  check(bn && BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(c)) != nullptr, "serial");

  check(X509_gmtime_adj(X509_getm_notBefore(c), static_cast<long>(not_before.count())) != nullptr, "notBefore");
  check(X509_gmtime_adj(X509_getm_notAfter(c), static_cast<long>(not_after.count())) != nullptr, "notAfter");
  check(X509_set_pubkey(c, key) == 1, "X509_set_pubkey");
  X509_NAME* name = X509_get_subject_name(c);
  check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()),
                                   -1, -1, 0) == 1,
        "subject");
  check(X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : name) == 1, "issuer");

  if (!issuer) {
    add_ext(c, c, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(c, c, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(c, c, NID_subject_key_identifier, "hash");
  } else {
    add_ext(c, issuer, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(c, issuer, NID_key_usage, "critical,digitalSignature");
    add_ext(c, issuer, NID_ext_key_usage, "serverAuth");
    add_ext(c, issuer, NID_subject_key_identifier, "hash");
    add_ext(c, issuer, NID_authority_key_identifier, "keyid");
    if (!hosts.empty()) add_subject_alt_names(c, hosts);
  }
  check(X509_sign(c, issuer_key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

std::string to_pem(X509* cert) {
  bio_ptr bio{BIO_new(BIO_s_mem())};
  check(bio && PEM_write_bio_X509(bio.get(), cert) == 1, "PEM_write_bio_X509");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

// ---------------------------------------------------------------------------
// HTTP/1.1 messages
// ---------------------------------------------------------------------------

using header_list = std::vector<std::pair<std::string, std::string>>;

struct request {
  std::string method, path, query, version;
  header_list headers;  // names lower-cased
  std::string body;

  const std::string* header(std::string_view name) const {
    for (const auto& [n, v] : headers)
      if (n == name) return &v;
    return nullptr;
  }
  bool header_has_token(std::string_view name, std::string_view token) const {
    const std::string* v = header(name);
    if (!v) return false;
    std::string_view s = *v;
    while (!s.empty()) {
      auto comma = s.find(',');
      if (iequals(trim(s.substr(0, comma)), token)) return true;
      s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
    }
    return false;
  }
  bool wants_close() const {
    if (version == "HTTP/1.0") return !header_has_token("connection", "keep-alive");
    return header_has_token("connection", "close");
  }
};

// Request line and header fields (`head` excludes the final CRLF CRLF). Strict:
// origin-form targets, no obsolete line folding, tokens for names.
std::optional<request> parse_head(std::string_view head) {
  auto next_line = [&head]() {
    auto eol = head.find("\r\n");
    auto line = head.substr(0, eol);
    head = eol == std::string_view::npos ? std::string_view{} : head.substr(eol + 2);
    return line;
  };
  request rq;
  auto line = next_line();
  auto sp1 = line.find(' ');
  auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) return std::nullopt;
  rq.method = line.substr(0, sp1);
  auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  rq.version = line.substr(sp2 + 1);
  if (rq.method.empty() || target.empty() || target[0] != '/') return std::nullopt;
  if (rq.version != "HTTP/1.1" && rq.version != "HTTP/1.0") return std::nullopt;
  auto q = target.find('?');
  rq.path = target.substr(0, q);
  if (q != std::string_view::npos) rq.query = target.substr(q + 1);

  while (!head.empty()) {
    line = next_line();
    auto colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos) return std::nullopt;
    auto name = line.substr(0, colon);
    bool token = std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) ||
             std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    });
    if (!token) return std::nullopt;
    rq.headers.emplace_back(lower(name), trim(line.substr(colon + 1)));
  }
  return rq;
}

struct response {
  int status = 200;
  header_list headers;
  std::string body;
};

std::string_view reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

std::string serialize(const response& r, bool close) {
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + std::string(reason(r.status)) + "\r\n";
  for (const auto& [n, v] : r.headers) out += n + ": " + v + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  if (close) out += "Connection: close\r\n";
  out += "\r\n";
  out += r.body;
  return out;
}

response json_response(int status, const json& body, header_list headers = {}) {
  headers.emplace_back("Content-Type", "application/json;charset=UTF-8");
  return {status, std::move(headers), body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

response html_response(int status, std::string_view title, std::string_view body_html) {
  std::string page = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html_escape(title) +
                     "</title></head>\n<body>\n" + std::string(body_html) + "</body></html>\n";
  return {status, {{"Content-Type", "text/html;charset=utf-8"}, {"Cache-Control", "no-store"}}, std::move(page)};
}

response error_page(std::string_view error, std::string_view description) {
  return html_response(400, "Something went wrong",
                       "<h1>Something went wrong</h1>\n<p>Error: <code>" + html_escape(error) + "</code></p>\n<p>" +
                           html_escape(description) + "</p>\n");
}

response redirect(std::string location) { return {302, {{"Location", std::move(location)}}, {}}; }

std::string with_query(std::string uri, const std::vector<std::pair<std::string, std::string>>& params) {
  char sep = uri.find('?') == std::string::npos ? '?' : '&';
  for (const auto& [n, v] : params) {
    uri += sep + percent_encode(n) + "=" + percent_encode(v);
    sep = '&';
  }
  return uri;
}

response not_found() { return json_response(404, {{"code", 404}, {"message", "Not Found"}}); }

response method_not_allowed(const char* allow) {
  return json_response(405, {{"code", 405}, {"message", "Method Not Allowed"}}, {{"Allow", allow}});
}

response unauthorized(std::string_view message, bool www_authenticate) {
  header_list h;
  if (www_authenticate) h.emplace_back("WWW-Authenticate", "Bearer");
  return json_response(401, {{"code", 401}, {"message", message}}, std::move(h));
}

// v2 error body for bad query parameters.
response bad_parameter(std::string_view title) {
  return json_response(400, {{"errors", json::array({{{"status", 400},
                                                       {"code", "INVALID_REQUEST_PARAMETER"},
                                                       {"title", title},
                                                       {"detail", nullptr}}})}});
}

// What the connection does with a request.
struct outcome {
  enum kind_t { answer, raw, stall, delay } kind = answer;
  response resp;        // answer
  std::string bytes;    // raw
  bool close = false;   // raw: close after writing
  std::chrono::milliseconds wait{0};  // delay: then the normal answer
};

}  // namespace

// ---------------------------------------------------------------------------
// Server state and the endpoints (handlers run with `mu` held)
// ---------------------------------------------------------------------------

struct server::impl {
  struct fault {
    std::string prefix;
    outcome what;
  };
  struct pending_consent {  // a consent page waiting for Allow/Deny
    std::string redirect_uri, scope, state, challenge;
    sys_clock::time_point expires;
  };
  struct code_grant {
    std::string client_id, redirect_uri, scope, challenge;
    sys_clock::time_point expires;
  };
  struct family {  // everything issued from one consent
    std::string scope;
    sys_clock::time_point created;
    bool revoked = false;
  };
  struct refresh_token {
    std::string family;
    sys_clock::time_point last_used;
    std::optional<sys_clock::time_point> superseded;
  };
  struct access_token {
    std::string family;
    sys_clock::time_point expires;
  };

  explicit impl(options o);
  ~impl();

  // state
  sys_clock::time_point now() const { return sys_clock::now() + clock_offset; }
  std::string new_code(const std::string& redirect_uri, const std::string& scope, const std::string& challenge);
  void revoke(family& f);
  outcome dispatch(const request& rq);
  response answer(const request& rq);
  response route(const request& rq);
  response authorize(const request& rq);
  response authorize_decision(const request& rq);
  response token(const request& rq);
  response token_error(int status, std::string_view error, std::optional<std::string_view> description);
  response code_grant_answer(const fields& f);
  response refresh_grant_answer(const fields& f);
  response client_credentials_answer(const fields& f);
  response token_success(const std::string& family_id, bool with_refresh,
                         std::chrono::seconds lifetime);
  response tenant_info() const;
  const access_token* bearer(const request& rq) const;
  response accessible_resources(const request& rq);
  response confluence(const request& rq);
  response list(const request& rq, const site& s, const std::string& kind, int total, json (*item)(int, int));
  response v1_spaces(const request& rq, const site& s);
  response protocol_error(int status, std::string_view message);
  response rate_limited(const request& rq);

  // network
  template <class Stream> struct connection;
  asio::awaitable<void> accept_loop();
  template <class Stream> asio::awaitable<void> run_connection(std::shared_ptr<connection<Stream>> c);
  template <class Stream> asio::awaitable<void> serve(connection<Stream>& c);
  template <class Stream> asio::awaitable<void> close_gracefully(connection<Stream>& c);
  void stop_all();

  // immutable after construction
  const options opts;
  std::string ca;
  std::string base;
  unsigned short bound_port = 0;

  // guarded by mu
  mutable std::mutex mu;
  counters count;
  std::chrono::seconds clock_offset{0};
  std::deque<fault> faults;
  std::map<std::string, pending_consent> consents;
  std::map<std::string, code_grant> codes;
  std::map<std::string, family> families;
  std::map<std::string, refresh_token> refresh_tokens;
  std::map<std::string, access_token> access_tokens;
  struct limiter {  // options::limits
    int burst_used = 0;
    std::chrono::steady_clock::time_point burst_blocked_until;
    int quota_used = 0;
    std::optional<sys_clock::time_point> quota_start;
  } limiter;

  // network, io thread only; ssl is declared before io so it outlives every stream
  asio::ssl::context ssl{asio::ssl::context::tls_server};
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::set<asio::steady_timer*> live;  // timers stop_all() expires: connection deadlines, pending delays
  bool stopping = false;
  std::thread thread;
};

namespace {

options normalize(options o) {
  if (o.sites.empty()) {
    o.sites.push_back({"b2c3d4e5-0000-4000-8000-000000000002", "example-jira", "https://example-jira.atlassian.net",
                       {"read:jira-work", "read:jira-user"},
                       "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png"});
    o.sites.push_back({"a1b2c3d4-0000-4000-8000-000000000001", "example", "https://example.atlassian.net", {},
                       "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/site.png"});
  }
  o.page_count = std::max(o.page_count, 0);
  o.space_count = std::max(o.space_count, 0);
  return o;
}

}  // namespace

std::string server::impl::new_code(const std::string& redirect_uri, const std::string& scope,
                                   const std::string& challenge) {
  std::string code = random_token();
  codes[code] = {opts.client_id, redirect_uri, scope, challenge, now() + opts.code_lifetime};
  return code;
}

void server::impl::revoke(family& f) {
  if (f.revoked) return;
  f.revoked = true;
  ++count.families_revoked;
}

response server::impl::protocol_error(int status, std::string_view message) {
  std::lock_guard lock(mu);
  ++count.requests;
  return json_response(status, {{"code", status}, {"message", message}});
}

// Counts, then the fault queue, then the real endpoints.
outcome server::impl::dispatch(const request& rq) {
  {
    std::lock_guard lock(mu);
    ++count.requests;
    if (rq.path == "/oauth/token") ++count.token_requests;
    if (rq.path == "/oauth/token/accessible-resources" || rq.path.starts_with("/ex/")) ++count.api_requests;

    auto f = std::find_if(faults.begin(), faults.end(), [&](const fault& x) { return rq.path.starts_with(x.prefix); });
    if (f != faults.end()) {
      outcome o = std::move(f->what);
      faults.erase(f);
      if (o.kind == outcome::answer && (o.resp.status == 429 || o.resp.status == 503)) ++count.injected_retry_statuses;
      return o;
    }
  }
  return {outcome::answer, answer(rq), {}, false};
}

// The normal answer, without counting the request (dispatch did).
response server::impl::answer(const request& rq) {
  std::lock_guard lock(mu);
  try {
    return rate_limited(rq);
  } catch (const std::exception&) {  // a bug in the fake, never the client's fault: say so
    return json_response(500, {{"code", 500}, {"message", "Internal Server Error"}});
  }
}

response server::impl::route(const request& rq) {
  const auto& p = rq.path;
  if (p == "/authorize") return rq.method == "GET" ? authorize(rq) : method_not_allowed("GET");
  if (p == "/authorize/decision") return rq.method == "POST" ? authorize_decision(rq) : method_not_allowed("POST");
  if (p == "/oauth/token") return rq.method == "POST" ? token(rq) : method_not_allowed("POST");
  if (p == "/oauth/token/accessible-resources")
    return rq.method == "GET" ? accessible_resources(rq) : method_not_allowed("GET");
  if (p.starts_with("/ex/confluence/")) return confluence(rq);
  if (p == "/_edge/tenant_info") return rq.method == "GET" ? tenant_info() : method_not_allowed("GET");
  return not_found();
}

// --- GET /authorize: validate, then the consent page (or an immediate redirect) ---

response server::impl::authorize(const request& rq) {
  ++count.authorize_pages;
  auto q = parse_form(rq.query);
  if (!q) return error_page("invalid_request", "The request is malformed.");
  auto redirect_uri = get(*q, "redirect_uri");
  bool registered = std::find(opts.redirect_uris.begin(), opts.redirect_uris.end(), redirect_uri) !=
                    opts.redirect_uris.end();
  if (get(*q, "client_id") != opts.client_id || !registered)
    return error_page("unauthorized_client", "The app's callback URL or client id is not registered.");
  if (get(*q, "response_type") != "code")
    return error_page("invalid_request", "response_type must be code.");
  if (get(*q, "audience") != "api.atlassian.com")
    return error_page("invalid_request", "audience must be api.atlassian.com.");
  auto state = get(*q, "state"), scope = get(*q, "scope"), challenge = get(*q, "code_challenge");
  if (state.empty()) return error_page("invalid_request", "state is required.");
  if (split_scopes(scope).empty()) return error_page("invalid_request", "scope is required.");
  if (!challenge.empty() && get(*q, "code_challenge_method") != "S256")
    return error_page("invalid_request", "code_challenge_method must be S256.");

  if (opts.auto_approve)
    return redirect(with_query(redirect_uri, {{"code", new_code(redirect_uri, scope, challenge)}, {"state", state}}));

  std::string id = random_token();
  consents[id] = {redirect_uri, scope, state, challenge, now() + opts.code_lifetime};
  std::string items;
  for (const auto& s : split_scopes(scope)) items += "<li><code>" + html_escape(s) + "</code></li>\n";
  return html_response(
      200, "Authorize app",
      "<h1>Authorize app</h1>\n<p>The app <code>" + html_escape(opts.client_id) +
          "</code> wants to access your Atlassian account with these scopes:</p>\n<ul id=\"scopes\">\n" + items +
          "</ul>\n<form method=\"post\" action=\"/authorize/decision\">\n"
          "<input type=\"hidden\" name=\"request_id\" value=\"" + id + "\">\n"
          "<button type=\"submit\" name=\"decision\" value=\"allow\" id=\"allow\">Allow</button>\n"
          "<button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button>\n</form>\n");
}

// --- POST /authorize/decision: the consent form ---

response server::impl::authorize_decision(const request& rq) {
  const std::string* type = rq.header("content-type");
  auto form = type && iequals(trim(std::string_view(*type).substr(0, type->find(';'))),
                              "application/x-www-form-urlencoded")
                  ? parse_form(rq.body)
                  : std::nullopt;
  if (!form) return error_page("invalid_request", "Expected a form submission.");
  auto it = consents.find(get(*form, "request_id"));
  if (it == consents.end() || it->second.expires <= now())
    return error_page("invalid_request", "This authorization request is unknown or has expired. Start again.");
  auto decision = get(*form, "decision");
  if (decision != "allow" && decision != "deny") return error_page("invalid_request", "Choose Allow or Deny.");
  pending_consent c = std::move(it->second);
  consents.erase(it);
  ++count.authorize_decisions;

  if (decision == "allow")
    return redirect(
        with_query(c.redirect_uri, {{"code", new_code(c.redirect_uri, c.scope, c.challenge)}, {"state", c.state}}));
  std::vector<std::pair<std::string, std::string>> params{
      {"error", "access_denied"}, {"error_description", "User did not authorize the request"}};
  if (opts.echo_state_on_deny) params.emplace_back("state", c.state);
  return redirect(with_query(c.redirect_uri, params));
}

// --- POST /oauth/token: client authentication, then the two grants ---

response server::impl::token_error(int status, std::string_view error, std::optional<std::string_view> description) {
  ++count.token_errors;
  json body{{"error", error}};
  if (description) body["error_description"] = *description;
  return json_response(status, body, {{"Cache-Control", "no-store"}, {"Pragma", "no-cache"}});
}

response server::impl::token(const request& rq) {
  const std::string* type = rq.header("content-type");
  auto media = type ? lower(trim(std::string_view(*type).substr(0, type->find(';')))) : std::string{};
  std::optional<fields> f;
  if (media == "application/json") {
    auto j = json::parse(rq.body, nullptr, false);
    if (j.is_object()) {
      f.emplace();
      for (const auto& [k, v] : j.items())
        if (v.is_string()) f->emplace(k, v.get<std::string>());
    }
  } else if (media == "application/x-www-form-urlencoded") {
    f = parse_form(rq.body);
  }
  if (!f) return token_error(400, "invalid_request", "The request body must be a JSON object or a form.");
  if (get(*f, "grant_type") == "client_credentials") return client_credentials_answer(*f);
  if (get(*f, "client_id") != opts.client_id || get(*f, "client_secret") != opts.client_secret)
    return token_error(401, "access_denied", "Unauthorized");
  auto grant = get(*f, "grant_type");
  if (grant == "authorization_code") return code_grant_answer(*f);
  if (grant == "refresh_token") return refresh_grant_answer(*f);
  if (grant.empty()) return token_error(400, "invalid_request", "grant_type is required.");
  return token_error(400, "unsupported_grant_type", std::nullopt);
}

response server::impl::code_grant_answer(const fields& f) {
  auto it = codes.find(get(f, "code"));
  if (it == codes.end()) return token_error(400, "invalid_request", "authorization_code is invalid");
  code_grant c = std::move(it->second);
  codes.erase(it);  // single use, whatever happens next
  if (c.expires <= now() || c.client_id != opts.client_id)
    return token_error(400, "invalid_request", "authorization_code is invalid");
  if (get(f, "redirect_uri") != c.redirect_uri) return token_error(400, "invalid_grant", "redirect_uri mismatch");
  // Strict PKCE (RFC 7636 4.6, RFC 9700 2.1.1): a code issued with a challenge needs
  // its verifier, and a verifier for a code issued without one is a downgrade.
  if (c.challenge.empty() && f.contains("code_verifier"))
    return token_error(400, "invalid_grant", "code_verifier given for a code issued without code_challenge");
  if (!c.challenge.empty() && !f.contains("code_verifier"))
    return token_error(400, "invalid_grant", "code_verifier is required");
  if (!c.challenge.empty() && s256(get(f, "code_verifier")) != c.challenge)
    return token_error(400, "invalid_grant", "code_verifier does not match code_challenge");
  ++count.authorization_code_grants;
  std::string id = random_token();
  families[id] = {c.scope, now()};
  return token_success(id, true, opts.access_token_lifetime);
}

// Rotation: the token used is superseded; within the reuse window it still works,
// after it the whole family is revoked.
response server::impl::refresh_grant_answer(const fields& f) {
  auto invalid = [this] { return token_error(403, "invalid_grant", "Unknown or invalid refresh token."); };
  auto it = refresh_tokens.find(get(f, "refresh_token"));
  if (it == refresh_tokens.end()) return invalid();
  refresh_token& rt = it->second;
  family& fam = families.at(rt.family);
  auto t = now();
  if (fam.revoked || t >= fam.created + refresh_absolute || t >= rt.last_used + refresh_inactivity) return invalid();
  if (rt.superseded && t - *rt.superseded > opts.refresh_reuse_window) {
    revoke(fam);
    return invalid();
  }
  rt.last_used = t;
  bool rotate = !opts.omit_refresh_token_on_refresh;
  if (rotate && !rt.superseded) rt.superseded = t;
  ++count.refresh_grants;
  return token_success(rt.family, rotate, opts.access_token_lifetime);
}

// A service account: its own id and secret, a token of its own family, never a refresh token.
response server::impl::client_credentials_answer(const fields& f) {
  if (opts.service_account_id.empty() || get(f, "client_id") != opts.service_account_id ||
      get(f, "client_secret") != opts.service_account_secret)
    return token_error(401, "invalid_client", "Unauthorized");
  ++count.client_credentials_grants;
  std::string id = random_token();
  families[id] = {opts.service_account_scope, now()};
  return token_success(id, false, opts.service_token_lifetime);
}

response server::impl::token_success(const std::string& family_id, bool with_refresh,
                                     std::chrono::seconds lifetime) {
  const family& fam = families.at(family_id);
  std::string access = opts.token_prefix + random_token();
  access_tokens[access] = {family_id, now() + lifetime};
  json body{{"access_token", access},
            {"expires_in", lifetime.count()},
            {"token_type", "Bearer"},
            {"scope", fam.scope}};
  if (with_refresh && has_scope(fam.scope, "offline_access")) {
    std::string refresh = opts.token_prefix + random_token();
    refresh_tokens[refresh] = {family_id, now(), std::nullopt};
    body["refresh_token"] = refresh;
  }
  return json_response(200, body, {{"Cache-Control", "no-store"}, {"Pragma", "no-cache"}});
}

// --- The API gateway: bearer tokens, accessible-resources, Confluence v2 ---

const server::impl::access_token* server::impl::bearer(const request& rq) const {
  const std::string* h = rq.header("authorization");
  if (!h || h->size() < 7 || !iequals(std::string_view(*h).substr(0, 7), "Bearer ")) return nullptr;
  auto it = access_tokens.find(std::string(trim(std::string_view(*h).substr(7))));
  if (it == access_tokens.end() || it->second.expires <= now() || families.at(it->second.family).revoked)
    return nullptr;
  return &it->second;
}

response server::impl::accessible_resources(const request& rq) {
  const access_token* tok = bearer(rq);
  if (!tok) {
    ++count.api_unauthorized;
    return unauthorized("Unauthorized", true);
  }
  auto granted = split_scopes(families.at(tok->family).scope);
  json sites = json::array();
  for (const auto& s : opts.sites)
    sites.push_back({{"id", s.id},
                     {"name", s.name},
                     {"url", s.url},
                     {"scopes", s.scopes.empty() ? granted : s.scopes},
                     {"avatarUrl", s.avatar_url}});
  return json_response(200, sites);
}

namespace {

// A site listed only for Jira: its own scopes, none of them Confluence's.
bool jira_only(const site& s) {
  return !s.scopes.empty() && std::none_of(s.scopes.begin(), s.scopes.end(), [](const std::string& scope) {
    return scope.find("confluence") != std::string::npos;
  });
}

}  // namespace

// GET /_edge/tenant_info, on the site's own host: public, no token.
response server::impl::tenant_info() const {
  std::string id = opts.tenant_cloud_id;
  if (id.empty()) {
    auto s = std::find_if(opts.sites.begin(), opts.sites.end(), [](const site& x) { return !jira_only(x); });
    if (s == opts.sites.end()) return not_found();
    id = s->id;
  }
  return json_response(200, {{"cloudId", id}});
}

namespace {

json page_item(int n, int spaces) {
  return {{"id", std::to_string(n)},
          {"status", "current"},
          {"title", "Page " + std::to_string(n)},
          {"spaceId", std::to_string((n - 1) % std::max(spaces, 1) + 1)}};
}

json space_item(int n, int) {
  return {{"id", std::to_string(n)},
          {"key", "SP" + std::to_string(n)},
          {"name", "Space " + std::to_string(n)},
          {"type", "global"}};
}

}  // namespace

// /ex/confluence/{cloudid}/wiki/...: authentication first (as the gateway does), then
// the site, then the endpoint and its scope. v1 answers 410 Gone, except `space`.
response server::impl::confluence(const request& rq) {
  const access_token* tok = bearer(rq);
  if (!tok) {
    ++count.api_unauthorized;
    return unauthorized("Unauthorized", true);
  }
  // Reported by developers: the gateway refuses some tokens shortly before they expire.
  if (opts.near_expiry_window > std::chrono::seconds{0} && tok->expires <= now() + opts.near_expiry_window) {
    ++count.api_near_expiry;
    int status = opts.near_expiry_status;
    return json_response(status, {{"code", status}, {"message", reason(status)}});
  }
  std::string_view rest = std::string_view(rq.path).substr(std::string_view("/ex/confluence/").size());
  auto slash = rest.find('/');
  auto cloud_id = rest.substr(0, slash);
  auto sub = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
  auto s = std::find_if(opts.sites.begin(), opts.sites.end(),
                        [&](const site& x) { return x.id == cloud_id && !jira_only(x); });
  if (s == opts.sites.end())
    return json_response(404, {{"code", 404}, {"message", "No site found for this cloud id"}});
  if (sub == "/wiki/rest/api/space") {
    if (rq.method != "GET") return method_not_allowed("GET");
    const auto& granted = families.at(tok->family).scope;
    if (!has_scope(granted, "read:confluence-space.summary") && !has_scope(granted, "read:space:confluence")) {
      ++count.api_unauthorized;
      return unauthorized("Unauthorized; scope does not match", false);
    }
    return v1_spaces(rq, *s);
  }
  if (sub.starts_with("/wiki/rest/api/"))
    return json_response(410, {{"statusCode", 410}, {"message", "This API is no longer available. Use the v2 API."}});

  struct endpoint {
    std::string_view path, scope, kind;
  };
  static constexpr std::array<endpoint, 2> endpoints{{{"/wiki/api/v2/pages", "read:page:confluence", "pages"},
                                                      {"/wiki/api/v2/spaces", "read:space:confluence", "spaces"}}};
  auto e = std::find_if(endpoints.begin(), endpoints.end(), [&](const endpoint& x) { return x.path == sub; });
  if (e == endpoints.end()) return not_found();
  if (rq.method != "GET") return method_not_allowed("GET");
  if (!has_scope(families.at(tok->family).scope, e->scope)) {
    ++count.api_unauthorized;
    return unauthorized("Unauthorized; scope does not match", false);
  }
  return e->kind == "pages" ? list(rq, *s, "pages", opts.page_count, page_item)
                            : list(rq, *s, "spaces", opts.space_count, space_item);
}

// Cursor pagination: the cursor is the base64url of the next offset.
response server::impl::list(const request& rq, const site& s, const std::string& kind, int total,
                            json (*item)(int, int)) {
  auto q = parse_form(rq.query);
  if (!q) return bad_parameter("Malformed query string.");
  long long limit = default_limit;
  if (q->contains("limit")) {
    auto l = parse_int(get(*q, "limit"));
    if (!l || *l < 1) return bad_parameter("Provided value for 'limit' is not valid.");
    limit = std::min<long long>(*l, max_limit);
  }
  long long offset = 0;
  if (q->contains("cursor")) {
    auto decoded = base64url_decode(get(*q, "cursor"));
    auto o = decoded ? parse_int(*decoded) : std::nullopt;
    if (!o || *o < 0 || *o > total) return bad_parameter("Provided value for 'cursor' is not valid.");
    offset = *o;
  }
  json results = json::array();
  for (long long i = offset; i < std::min<long long>(offset + limit, total); ++i)
    results.push_back(item(static_cast<int>(i) + 1, opts.space_count));
  json links{{"base", s.url + "/wiki"}};
  header_list headers;
  if (offset + limit < total) {
    std::string next = "/wiki/api/v2/" + kind + "?limit=" + std::to_string(limit) +
                       "&cursor=" + base64url(std::to_string(offset + limit));
    links["next"] = next;
    headers.emplace_back("Link", "<" + next + ">; rel=\"next\"");
  }
  return json_response(200, {{"results", std::move(results)}, {"_links", std::move(links)}}, std::move(headers));
}

// v1 offset pagination: `start`, `limit` and `size` echoed in the answer, and
// `_links.next` relative to `_links.context` ("/wiki"), so it does not start with
// /wiki. No Link header.
response server::impl::v1_spaces(const request& rq, const site& s) {
  auto v1_bad_request = [](std::string_view message) {
    return json_response(400, {{"statusCode", 400}, {"message", message}});
  };
  auto q = parse_form(rq.query);
  if (!q) return v1_bad_request("Malformed query string.");
  long long limit = default_limit, start = 0;
  if (q->contains("limit")) {
    auto l = parse_int(get(*q, "limit"));
    if (!l || *l < 1) return v1_bad_request("limit must be a positive integer");
    limit = std::min<long long>(*l, max_limit);
  }
  if (q->contains("start")) {
    auto st = parse_int(get(*q, "start"));
    if (!st || *st < 0) return v1_bad_request("start must be a non-negative integer");
    start = *st;
  }
  const long long total = opts.space_count;
  const long long from = std::min(start, total);  // past the end: an empty page (and no overflow)
  json results = json::array();
  for (long long i = from; i < std::min(from + limit, total); ++i)
    results.push_back(space_item(static_cast<int>(i) + 1, opts.space_count));
  json links{{"base", s.url + "/wiki"}, {"context", "/wiki"}};
  if (from + limit < total)
    links["next"] = "/rest/api/space?limit=" + std::to_string(limit) + "&start=" + std::to_string(from + limit);
  auto size = results.size();
  return json_response(200, {{"results", std::move(results)},
                             {"start", start},
                             {"limit", limit},
                             {"size", size},
                             {"_links", std::move(links)}});
}

// --- Rate limits (options::limits): the burst limit and the quota ---

namespace {

std::string iso8601(sys_clock::time_point t) {
  const std::time_t secs = sys_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  std::array<char, 32> text{};
  std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text.data();
}

}  // namespace

// The normal answer, or the limiter's refusal; with a quota, the X-RateLimit-* headers.
response server::impl::rate_limited(const request& rq) {
  const auto& l = opts.limits;
  const bool api = rq.path == "/oauth/token/accessible-resources" || rq.path.starts_with("/ex/");
  if (!api || (l.burst <= 0 && l.quota <= 0)) return route(rq);
  std::optional<std::chrono::seconds> wait;
  std::string reason;
  if (l.burst > 0) {
    const auto t = std::chrono::steady_clock::now();
    if (t >= limiter.burst_blocked_until && limiter.burst_used >= l.burst) {
      limiter.burst_blocked_until = t + l.burst_reset;
      limiter.burst_used = 0;
    }
    if (t < limiter.burst_blocked_until) {
      wait = std::chrono::ceil<std::chrono::seconds>(limiter.burst_blocked_until - t);
      reason = "burst";
    }
  }
  const auto t = now();
  if (l.quota > 0 && (!limiter.quota_start || t >= *limiter.quota_start + l.quota_period)) {
    limiter.quota_start = t;
    limiter.quota_used = 0;
  }
  if (!wait && l.quota > 0 && limiter.quota_used >= l.quota) {
    wait = std::chrono::ceil<std::chrono::seconds>(*limiter.quota_start + l.quota_period - t);
    reason = "quota";
  }
  response r;
  if (wait) {
    ++count.rate_limited;
    header_list h{{"RateLimit-Reason", reason}};
    const std::string retry_after = l.retry_after.empty() ? std::to_string(wait->count()) : l.retry_after;
    if (l.send_retry_after) {
      h.emplace_back("Retry-After", retry_after);
      h.emplace_back("Beta-Retry-After", retry_after);
    }
    r = json_response(l.status, {{"code", l.status}, {"message", "Rate limit exceeded."}}, std::move(h));
  } else {
    if (l.burst > 0) ++limiter.burst_used;
    if (l.quota > 0) ++limiter.quota_used;
    r = route(rq);
  }
  if (l.quota > 0) {
    const int left = std::max(l.quota - limiter.quota_used, 0);
    r.headers.emplace_back("X-RateLimit-Limit", std::to_string(l.quota));
    r.headers.emplace_back("X-RateLimit-Remaining", std::to_string(left));
    r.headers.emplace_back("X-RateLimit-Reset", iso8601(*limiter.quota_start + l.quota_period));
    r.headers.emplace_back("X-RateLimit-NearLimit", left * 5 < l.quota ? "true" : "false");
  }
  return r;
}

// ---------------------------------------------------------------------------
// Network: accept loop, connections (deadline watchdog, keep-alive, TLS), stop
// ---------------------------------------------------------------------------

// One client connection. A watchdog closes the socket when `deadline` passes; every
// read and write first moves the deadline.
template <class Stream>
struct server::impl::connection {
  template <class... Args>
  explicit connection(Args&&... args)
      : stream(std::forward<Args>(args)...), deadline(stream.get_executor(), idle_timeout) {}
  Stream stream;
  asio::steady_timer deadline;
  std::string buf;  // bytes read but not yet consumed (pipelined requests)
};

namespace {

template <class Conn>
asio::awaitable<void> watchdog(std::shared_ptr<Conn> c, const bool& stopping) {
  auto& socket = c->stream.lowest_layer();
  while (socket.is_open()) {
    if (stopping || c->deadline.expiry() <= std::chrono::steady_clock::now()) {
      std::error_code ignored;
      socket.close(ignored);
      co_return;
    }
    std::error_code ec;
    co_await c->deadline.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

// Reads and discards until the peer closes or the socket is closed.
template <class Conn>
asio::awaitable<void> drain(Conn& c) {
  std::array<char, 4096> sink;
  std::error_code ec;
  while (!ec) co_await c.stream.async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
}

}  // namespace

asio::awaitable<void> server::impl::accept_loop() {
  for (;;) {
    std::error_code ec;
    tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (!acceptor.is_open()) co_return;
    if (ec) {  // e.g. out of file descriptors: back off instead of spinning
      asio::steady_timer pause(io, 50ms);
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    {
      std::lock_guard lock(mu);
      ++count.connections;
    }
    socket.set_option(tcp::no_delay(true), ec);
    if (opts.tls)
      asio::co_spawn(io, run_connection(std::make_shared<connection<tls_stream>>(std::move(socket), ssl)),
                     asio::detached);
    else
      asio::co_spawn(io, run_connection(std::make_shared<connection<tcp::socket>>(std::move(socket))),
                     asio::detached);
  }
}

template <class Stream>
asio::awaitable<void> server::impl::run_connection(std::shared_ptr<connection<Stream>> c) {
  if (!stopping) {
    live.insert(&c->deadline);
    asio::co_spawn(io, watchdog(c, stopping), asio::detached);
    try {
      co_await serve(*c);
    } catch (const std::exception&) {  // the peer went away, timed out, or failed the handshake
    }
    live.erase(&c->deadline);
  }
  std::error_code ignored;
  c->stream.lowest_layer().close(ignored);
  c->deadline.cancel();
}

template <class Stream>
asio::awaitable<void> server::impl::serve(connection<Stream>& c) {
  if constexpr (std::is_same_v<Stream, tls_stream>) {
    c.deadline.expires_after(idle_timeout);
    co_await c.stream.async_handshake(asio::ssl::stream_base::server, asio::use_awaitable);
    if (SSL_session_reused(c.stream.native_handle())) {
      std::lock_guard lock(mu);
      ++count.tls_resumptions;
    }
  }
  auto send = [&c](const std::string& bytes) -> asio::awaitable<void> {
    c.deadline.expires_after(idle_timeout);
    co_await asio::async_write(c.stream, asio::buffer(bytes), asio::use_awaitable);
  };
  auto reject = [&](int status, std::string_view message) -> asio::awaitable<void> {
    co_await send(serialize(protocol_error(status, message), true));
    co_await close_gracefully(c);
  };

  for (;;) {
    // Head: up to max_head_bytes (read_until never reads past that, so `buf` stays bounded).
    c.deadline.expires_after(idle_timeout);
    std::error_code ec;
    std::size_t head_len = co_await asio::async_read_until(c.stream, asio::dynamic_buffer(c.buf, max_head_bytes),
                                                           "\r\n\r\n", asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::not_found) co_return co_await reject(431, "Request Header Fields Too Large");
    if (ec) co_return;  // closed by the peer, idle timeout, or server stop
    auto rq = parse_head(std::string_view(c.buf).substr(0, head_len - 4));
    if (!rq) co_return co_await reject(400, "Bad Request");

    // Body: Content-Length only.
    if (rq->header("transfer-encoding")) co_return co_await reject(411, "Length Required");
    std::size_t length = 0;
    if (const std::string* cl = rq->header("content-length")) {
      auto n = parse_int(*cl);
      if (!n || *n < 0 || std::count_if(rq->headers.begin(), rq->headers.end(),
                                        [](const auto& h) { return h.first == "content-length"; }) > 1)
        co_return co_await reject(400, "Bad Request");
      if (static_cast<unsigned long long>(*n) > max_body_bytes) co_return co_await reject(413, "Content Too Large");
      length = static_cast<std::size_t>(*n);
    }
    if (c.buf.size() < head_len + length) {
      if (rq->header_has_token("expect", "100-continue")) co_await send("HTTP/1.1 100 Continue\r\n\r\n");
      c.deadline.expires_after(idle_timeout);
      co_await asio::async_read(c.stream, asio::dynamic_buffer(c.buf),
                                asio::transfer_exactly(head_len + length - c.buf.size()), asio::use_awaitable);
    }
    rq->body = c.buf.substr(head_len, length);
    c.buf.erase(0, head_len + length);

    outcome out = dispatch(*rq);
    bool close = rq->wants_close();
    switch (out.kind) {
      case outcome::stall:
        c.deadline.expires_at(std::chrono::steady_clock::time_point::max());
        co_await drain(c);
        co_return;
      case outcome::raw:
        co_await send(out.bytes);
        close = close || out.close;
        break;
      case outcome::answer:
        co_await send(serialize(out.resp, close));
        break;
      case outcome::delay: {
        // A timer, not a sleep: the io thread serves the other connections meanwhile,
        // and stop_all() expires it (if stop_all() has already run, nothing would).
        // The answer is computed once the delay is over.
        if (stopping) co_return;
        asio::steady_timer wait(io, out.wait);
        c.deadline.expires_after(out.wait + idle_timeout);
        live.insert(&wait);
        std::error_code ignored;
        co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
        live.erase(&wait);
        if (stopping) co_return;
        co_await send(serialize(answer(*rq), close));
        break;
      }
    }
    if (close) co_return co_await close_gracefully(c);
  }
}

// TLS: exchange close_notify; plain TCP: half-close and drain, so unread request bytes
// do not turn the close into a reset that destroys the response. Bounded by a deadline.
template <class Stream>
asio::awaitable<void> server::impl::close_gracefully(connection<Stream>& c) {
  c.deadline.expires_after(closing_timeout);
  std::error_code ec;
  if constexpr (std::is_same_v<Stream, tls_stream>) {
    co_await c.stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
  } else {
    c.stream.shutdown(tcp::socket::shutdown_send, ec);
    co_await drain(c);
  }
  c.stream.lowest_layer().close(ec);
}

// Runs on the io thread: no new connections; every watchdog closes its socket now.
void server::impl::stop_all() {
  stopping = true;
  std::error_code ignored;
  acceptor.close(ignored);
  for (asio::steady_timer* t : live) t->expires_at(std::chrono::steady_clock::time_point::min());
}

server::impl::impl(options o) : opts(normalize(std::move(o))) {
  if (opts.tls) {
    pkey_ptr ca_key = make_p256_key(), leaf_key = make_p256_key();
    x509_ptr ca_cert = make_cert(ca_key.get(), "confluence_oauth test CA", nullptr, ca_key.get(), {});
    std::string leaf_cn = opts.cert_hosts.empty() ? "localhost" : strip_brackets(opts.cert_hosts.front());
    x509_ptr leaf = make_cert(leaf_key.get(), leaf_cn, ca_cert.get(), ca_key.get(), opts.cert_hosts);
    ca = to_pem(ca_cert.get());
    SSL_CTX* ctx = ssl.native_handle();
    check(SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1, "SSL_CTX_set_min_proto_version");
    check(SSL_CTX_use_certificate(ctx, leaf.get()) == 1, "SSL_CTX_use_certificate");
    check(SSL_CTX_use_PrivateKey(ctx, leaf_key.get()) == 1, "SSL_CTX_use_PrivateKey");
    check(SSL_CTX_add1_chain_cert(ctx, ca_cert.get()) == 1, "SSL_CTX_add1_chain_cert");
  }

  auto address = asio::ip::make_address(strip_brackets(opts.host));
  tcp::endpoint endpoint(address, opts.port);
  acceptor.open(endpoint.protocol());
  acceptor.set_option(tcp::acceptor::reuse_address(true));
  acceptor.bind(endpoint);
  acceptor.listen();
  bound_port = acceptor.local_endpoint().port();
  std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  base = (opts.tls ? "https://" : "http://") + host + ":" + std::to_string(bound_port);

  asio::co_spawn(io, accept_loop(), asio::detached);
  thread = std::thread([this] { io.run(); });
}

server::impl::~impl() {
  asio::post(io, [this] { stop_all(); });
  thread.join();
}

// ---------------------------------------------------------------------------
// Public interface
// ---------------------------------------------------------------------------

server::server(options o) : impl_(std::make_unique<impl>(std::move(o))) {}
server::~server() = default;

unsigned short server::port() const { return impl_->bound_port; }
std::string server::base_url() const { return impl_->base; }
std::string server::ca_pem() const { return impl_->ca; }

void server::write_ca_pem(const std::string& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << impl_->ca;
  out.close();
  if (!out) throw std::runtime_error("fake_atlassian: cannot write " + path);
}

counters server::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->count;
}

void server::advance_clock(std::chrono::seconds s) {
  std::lock_guard lock(impl_->mu);
  impl_->clock_offset += s;
}

void server::push_raw_response(std::string path_prefix, std::string raw_bytes, bool close_after) {
  std::lock_guard lock(impl_->mu);
  impl_->faults.push_back({std::move(path_prefix), {outcome::raw, {}, std::move(raw_bytes), close_after}});
}

void server::push_stall(std::string path_prefix) {
  std::lock_guard lock(impl_->mu);
  impl_->faults.push_back({std::move(path_prefix), {outcome::stall, {}, {}, false}});
}

void server::push_delay(std::string path_prefix, std::chrono::milliseconds delay) {
  std::lock_guard lock(impl_->mu);
  impl_->faults.push_back({std::move(path_prefix), {outcome::delay, {}, {}, false, delay}});
}

std::size_t server::queued_faults() const {
  std::lock_guard lock(impl_->mu);
  return impl_->faults.size();
}

void server::push_status(std::string path_prefix, int status, std::string json_body,
                         std::vector<std::pair<std::string, std::string>> headers) {
  if (std::none_of(headers.begin(), headers.end(), [](const auto& h) { return iequals(h.first, "content-type"); }))
    headers.emplace_back("Content-Type", "application/json");
  std::lock_guard lock(impl_->mu);
  impl_->faults.push_back(
      {std::move(path_prefix), {outcome::answer, {status, std::move(headers), std::move(json_body)}, {}, false}});
}

std::string server::issue_code(const std::string& redirect_uri, const std::string& scope,
                               const std::string& code_challenge) {
  std::lock_guard lock(impl_->mu);
  return impl_->new_code(redirect_uri, scope, code_challenge);
}

void server::revoke_all() {
  std::lock_guard lock(impl_->mu);
  for (auto& [id, fam] : impl_->families) impl_->revoke(fam);
}

struct test_ca::impl {
  pkey_ptr key = make_p256_key();
  x509_ptr cert = make_cert(key.get(), "confluence_oauth test CA", nullptr, key.get(), {});
};

test_ca::test_ca() : impl_(std::make_unique<impl>()) {}
test_ca::~test_ca() = default;

std::string test_ca::pem() const { return to_pem(impl_->cert.get()); }

certified_key test_ca::issue(const std::vector<std::string>& hosts, std::chrono::seconds not_before,
                             std::chrono::seconds not_after) const {
  pkey_ptr key = make_p256_key();
  x509_ptr leaf = make_cert(key.get(), hosts.empty() ? "localhost" : strip_brackets(hosts.front()), impl_->cert.get(),
                            impl_->key.get(), hosts, not_before, not_after);
  bio_ptr bio{BIO_new(BIO_s_mem())};
  check(bio && PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "PEM_write_bio_PrivateKey");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return {to_pem(leaf.get()), std::string(data, static_cast<std::size_t>(n))};
}

}  // namespace fake_atlassian
