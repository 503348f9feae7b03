// The secrets sentinel: the client secret, access and refresh tokens, the
// authorization code, the PKCE verifier, the state and the store key never
// appear in an exception, a listener page, a stream, or the output of the
// examples, whatever a hostile server reflects back. Every secret is a
// sentinel, and every text the library produces on a failure path is searched
// for it raw, percent-encoded, JSON-escaped, HTML-escaped, as hex and as
// base64 or base64url at any alignment.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "fake_client.hpp"
#include "test_util.hpp"

#include <sys/stat.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <thread>

// Its own namespace, so that the unity build can put test files together.
namespace test_secrets {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;
using tcp = asio::ip::tcp;

namespace {

constexpr const char* redirect = "http://localhost:3000/callback";

// Each sentinel is a unique core (letters, digits and '_', the same in every
// text encoding) and a tail that every encoding changes.
constexpr const char* tail = "/+\"=&<x";

std::string sentinel_value(const char* core) { return std::string(core) + tail; }

/// 32 bytes, as file_token_store wants.
std::string sentinel_key(const char* core) {
  std::string key = sentinel_value(core);
  key.resize(32, 'k');
  return key;
}

const std::string client_secret = sentinel_value("SENTINEL_CLIENT_SECRET_7c1");
const std::string access_token = sentinel_value("SENTINEL_ACCESS_TOKEN_7c1");
const std::string refresh_token = sentinel_value("SENTINEL_REFRESH_TOKEN_7c1");
const std::string new_access_token = sentinel_value("SENTINEL_NEW_ACCESS_7c1");
const std::string new_refresh_token = sentinel_value("SENTINEL_NEW_REFRESH_7c1");
const std::string auth_code = sentinel_value("SENTINEL_AUTH_CODE_7c1");
const std::string verifier = sentinel_value("SENTINEL_PKCE_VERIFIER_7c1");
const std::string state = sentinel_value("SENTINEL_STATE_7c1");
const std::string other_state = sentinel_value("SENTINEL_OTHER_STATE_7c1");
const std::string store_key = sentinel_key("SENTINEL_KEY_A_7c1");
const std::string other_key = sentinel_key("SENTINEL_KEY_B_7c1");

struct leak_form {
  std::string name;    // "raw", "JSON-escaped", "base64url (alignment 1)", ...
  std::string needle;  // what must not appear
};

struct sentinel {
  std::string name;
  std::vector<leak_form> forms;  // most specific first; the bare core last
};

std::string json_escaped(const std::string& s) {
  auto quoted = nlohmann::json(s).dump();
  return quoted.substr(1, quoted.size() - 2);
}

std::string hex_of(const std::string& s, bool upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string to_standard_base64(std::string s) {
  for (char& c : s) c = c == '-' ? '+' : c == '_' ? '/' : c;
  return s;
}

sentinel make_sentinel(std::string name, const std::string& value) {
  const std::string core = value.substr(0, value.find("_7c1") + 4);
  sentinel s{std::move(name), {}};
  s.forms.push_back({"raw", value});
  s.forms.push_back({"percent-encoded", cfo::detail::percent_encode(value)});
  s.forms.push_back({"JSON-escaped", json_escaped(value)});
  s.forms.push_back({"HTML-escaped", cfo::detail::html_escape(value)});
  s.forms.push_back({"hex", hex_of(value, false)});
  s.forms.push_back({"HEX", hex_of(value, true)});
  // Inside a longer base64 text the core's encoding depends on its offset
  // modulo 3: keep, for each offset, the characters only the core decides.
  for (std::size_t offset = 0; offset < 3; ++offset) {
    const auto encoded = cfo::detail::base64url_encode(std::string(offset, '\x01') + core);
    const std::size_t begin = offset == 0 ? 0 : 4, end = (offset + core.size()) / 3 * 4;
    const auto fragment = encoded.substr(begin, end - begin);
    s.forms.push_back({"base64url (alignment " + std::to_string(offset) + ")", fragment});
    s.forms.push_back({"base64 (alignment " + std::to_string(offset) + ")", to_standard_base64(fragment)});
  }
  s.forms.push_back({"core (a fragment, or another encoding)", core});
  return s;
}

const std::vector<sentinel>& sentinels() {
  static const std::vector<sentinel> all = [] {
    std::vector<sentinel> v;
    v.push_back(make_sentinel("client secret", client_secret));
    v.push_back(make_sentinel("access token", access_token));
    v.push_back(make_sentinel("refresh token", refresh_token));
    v.push_back(make_sentinel("refreshed access token", new_access_token));
    v.push_back(make_sentinel("refreshed refresh token", new_refresh_token));
    v.push_back(make_sentinel("authorization code", auth_code));
    v.push_back(make_sentinel("PKCE verifier", verifier));
    v.push_back(make_sentinel("state", state));
    v.push_back(make_sentinel("other state", other_state));
    v.push_back(make_sentinel("store key", store_key));
    v.push_back(make_sentinel("other store key", other_key));
    return v;
  }();
  return all;
}

/// Every leak in `text`: one line per sentinel found, naming the form.
std::string leaks_in(const std::string& text) {
  std::string found;
  for (const auto& s : sentinels())
    for (const auto& f : s.forms)
      if (auto at = text.find(f.needle); at != std::string::npos) {
        auto from = at < 60 ? 0 : at - 60;
        found += "  the " + s.name + ", " + f.name + ", in: ..." + cfo::detail::sanitize_text(text.substr(from, 200), 200) + "\n";
        break;
      }
  return found;
}

/// Fails loudly, naming the path and the leaked form, when `text` carries a sentinel.
void check_clean(const std::string& path, const std::string& text) {
  const auto found = leaks_in(text);
  if (!found.empty()) FAIL_CHECK("secret leaked on path \"" << path << "\":\n" << found);
}

/// Every text an oauth_error carries.
std::string texts_of(const cfo::oauth_error& e) {
  std::ostringstream s;
  s << "what: " << e.what() << "\nmessage: " << e.code().message() << "\nerror: " << e.details().error
    << "\nerror_description: " << e.details().error_description << "\nerror_uri: " << e.details().error_uri
    << "\nwww_authenticate: " << e.details().www_authenticate << '\n';
  return s.str();
}

struct outcome {
  std::error_code code;
  std::string text;
};

template <typename Make>
outcome failure_of(Make make) {
  try {
    test_util::run(std::move(make), 30s);
  } catch (const cfo::oauth_error& e) {
    return {e.code(), texts_of(e)};
  } catch (const std::exception& e) {
    return {std::make_error_code(std::errc::state_not_recoverable), std::string("unexpected exception: ") + e.what()};
  }
  return {};
}

/// The path failed as expected, and said nothing secret.
void check_failure(const std::string& path, const outcome& o, std::error_code expected) {
  CAPTURE(path);
  CAPTURE(o.text);
  CHECK(o.code == expected);
  check_clean(path, o.text);
}

/// What a reflecting server sends back of `values`: each raw, as the JSON
/// request body carried it, and as the form body carried it.
std::string echo_of(const std::vector<std::string>& values) {
  std::string out = "you sent";
  for (const auto& v : values) out += " [" + v + "] [" + json_escaped(v) + "] [" + cfo::detail::percent_encode(v) + "]";
  return out;
}

/// What an API server reflects of a bearer token: it went raw in a header, so
/// it comes back raw (JSON-escaped in a JSON body) or percent-encoded in a URL.
std::string bearer_echo_of(const std::string& token) {
  return "you sent [" + token + "] [" + cfo::detail::percent_encode(token) + "]";
}

std::string raw_response(int status, const std::string& reason, const std::vector<std::pair<std::string, std::string>>& headers,
                         const std::string& body) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
  for (const auto& [name, value] : headers) out += name + ": " + value + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  return out;
}

std::string json_error(const std::string& error, const std::string& description) {
  nlohmann::json j = {{"error", error}, {"error_description", description}, {"error_uri", "https://errors.example/?" + description}};
  return j.dump();
}

std::string token_answer(const std::string& access, const std::string& refresh) {
  nlohmann::json j = {{"access_token", access}, {"refresh_token", refresh}, {"expires_in", 3600}, {"token_type", "Bearer"}};
  return j.dump();
}

fake_atlassian::options server_options() {
  fake_atlassian::options o;
  o.client_secret = client_secret;
  return o;
}

cfo::client_config config_for(const fake_atlassian::server& srv, cfo::client_config::token_encoding encoding = cfo::client_config::token_encoding::json) {
  auto c = test_util::client_config_for(srv, redirect);
  c.client_secret = cfo::secret(client_secret);
  c.encoding = encoding;
  c.use_pkce = true;
  c.timeouts.request = 10s;
  c.tls.use_system_trust = false;  // only the fake server's CA; loading the system store is slow
  return c;
}

cfo::authorization sentinel_authorization(std::string redirect_uri = redirect) {
  cfo::authorization a;
  a.url = "https://auth.example/authorize";
  a.state = cfo::secret(state);
  a.code_verifier = cfo::secret(verifier);
  a.redirect_uri = std::move(redirect_uri);
  return a;
}

cfo::token_set sentinel_tokens(std::chrono::seconds expires_in = 3600s) {
  cfo::token_set t;
  t.access_token = cfo::secret(access_token);
  t.refresh_token = cfo::secret(refresh_token);
  t.expires_at = cfo::token_set::clock::now() + expires_in;
  t.scope = "read:page:confluence offline_access";
  return t;
}

outcome exchange_failure(const cfo::client_config& cfg) {
  return failure_of([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, cfg);
    co_await client.exchange_code(cfo::secret(auth_code), sentinel_authorization());
  });
}

outcome refresh_failure(const cfo::client_config& cfg) {
  return failure_of([&](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, cfg);
    co_await client.refresh(sentinel_tokens());
  });
}

const std::string api_path = "/ex/confluence/a1b2c3d4-0000-4000-8000-000000000001/wiki/api/v2/pages";

/// A session over sentinel tokens, without retries.
struct session_fixture {
  fake_atlassian::server srv{server_options()};
  cfo::client_config cfg = config_for(srv);
  std::shared_ptr<cfo::memory_token_store> store = std::make_shared<cfo::memory_token_store>();

  explicit session_fixture(std::chrono::seconds expires_in = 3600s) {
    auto tokens = sentinel_tokens(expires_in);
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store->save(tokens); });
  }

  static cfo::session_options no_retries() {
    cfo::session_options o;
    o.retry.max_attempts = 1;
    return o;
  }

  outcome get_failure(std::string target = api_path) {
    return failure_of([&](auto ex) -> asio::awaitable<void> {
      cfo::session s(ex, cfg, store, no_retries());
      co_await s.load();
      co_await s.get_json(target);
    });
  }
};

/// Sends raw bytes to 127.0.0.1:port and reads until the peer closes.
asio::awaitable<std::string> raw_exchange(unsigned short port, std::string request) {
  tcp::socket socket(co_await asio::this_coro::executor);
  co_await socket.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), asio::use_awaitable);
  co_await asio::async_write(socket, asio::buffer(request), asio::use_awaitable);
  std::string out;
  std::array<char, 4096> buffer;
  for (;;) {
    auto [ec, n] = co_await socket.async_read_some(asio::buffer(buffer), cfo::detail::use_tuple);
    out.append(buffer.data(), n);
    if (ec) break;
  }
  co_return out;
}

std::string get_request(const std::string& target, const std::string& method = "GET") {
  return method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
}

std::string callback_target(const std::vector<std::pair<std::string, std::string>>& params, const std::string& path = "/callback") {
  std::string query;
  for (const auto& [name, value] : params) cfo::detail::append_param(query, name, value);
  return path + "?" + query;
}

struct listener_result {
  std::vector<std::pair<std::string, std::string>> pages;  // name, whole response
  outcome wait;                                             // the wait's failure, or the code's stream output
};

/// Waits on a listener for the sentinel authorization while `requests`
/// (name, raw request) arrive one after the other; the last must end the wait.
asio::awaitable<listener_result> drive_listener(std::vector<std::pair<std::string, std::string>> requests) {
  auto ex = co_await asio::this_coro::executor;
  cfo::detail::redirect_listener listener(ex, "http://127.0.0.1:0/callback");
  auto auth = sentinel_authorization(listener.redirect_uri());
  struct wait_state {
    explicit wait_state(const asio::any_io_executor& ex) : finished(ex, asio::steady_timer::time_point::max()) {}
    outcome result;
    bool done = false;
    asio::steady_timer finished;
  };
  // Shared with the handler, which may run after this frame is gone if the wait never ends.
  auto wait = std::make_shared<wait_state>(ex);
  asio::co_spawn(ex, listener.wait(auth), [wait](std::exception_ptr e, cfo::secret code) {
    try {
      if (e) std::rethrow_exception(e);
      std::ostringstream shown;
      shown << code;
      wait->result.text = shown.str();
    } catch (const cfo::oauth_error& x) {
      wait->result = {x.code(), texts_of(x)};
    }
    wait->done = true;
    wait->finished.cancel();
  });
  listener_result result;
  const std::string host = "Host: 127.0.0.1\r\n", own_host = "Host: 127.0.0.1:" + std::to_string(listener.port()) + "\r\n";
  for (auto& [name, request] : requests) {
    if (auto at = request.find(host); at != std::string::npos) request.replace(at, host.size(), own_host);  // the port too
    auto page = co_await raw_exchange(listener.port(), std::move(request));
    result.pages.emplace_back(name, std::move(page));
  }
  if (!wait->done) {
    wait->finished.expires_after(10s);
    co_await wait->finished.async_wait(cfo::detail::use_tuple);
  }
  if (!wait->done) throw std::runtime_error("the listener's wait did not end");
  result.wait = wait->result;
  co_return result;
}

}  // namespace

TEST_SUITE("secrets") {

TEST_CASE("secrets: the detector finds every form of every sentinel") {
  for (const auto& s : sentinels()) {
    CAPTURE(s.name);
    for (const auto& f : s.forms) {
      CAPTURE(f.name);
      CHECK(!f.needle.empty());
      CHECK(!leaks_in("before " + f.needle + " after").empty());
    }
  }
  // Base64 of the whole value at each offset, as in a Basic header or a sealed blob.
  for (std::string prefix : {"", "a", "ab"}) {
    CAPTURE(prefix);
    auto encoded = cfo::detail::base64url_encode(prefix + "test-client-id:" + client_secret);
    CHECK(!leaks_in(encoded).empty());
    CHECK(!leaks_in(to_standard_base64(encoded)).empty());
  }
  CHECK(leaks_in("nothing secret: SENTINEL_ and 7c1 alone").empty());
}

TEST_CASE("secrets: secret and token_set streams show fingerprints only") {
  auto tokens = sentinel_tokens();
  std::ostringstream out;
  out << cfo::secret(client_secret) << ' ' << cfo::secret(store_key) << ' ' << tokens << ' '
      << cfo::secret(auth_code).fingerprint();
  CHECK(out.str().find("sha256:") != std::string::npos);
  check_clean("secret and token_set streams", out.str());
}

TEST_CASE("secrets: token endpoint errors that reflect the request do not carry it into the error") {
  fake_atlassian::server srv(server_options());
  const auto exchange_echo = echo_of({client_secret, auth_code, verifier});
  const auto refresh_echo = echo_of({client_secret, refresh_token, access_token});
  // Header values must stay on one line; the echo does.
  for (auto encoding : {cfo::client_config::token_encoding::json, cfo::client_config::token_encoding::form}) {
    const std::string enc = encoding == cfo::client_config::token_encoding::json ? "json" : "form";
    const auto cfg = config_for(srv, encoding);
    struct reflected {
      std::string name;
      int status;
      std::string error;  // empty: an HTML page
      cfo::errc expected;
    };
    const std::vector<reflected> cases = {
        {"400 invalid_grant", 400, "invalid_grant", cfo::errc::invalid_grant},
        {"401 invalid_client", 401, "invalid_client", cfo::errc::invalid_client},
        {"400 with the echo as the error code", 400, "echo", cfo::errc::oauth_error_response},
        {"200 with an error body", 200, "invalid_request", cfo::errc::invalid_request},
        {"500 HTML page", 500, "", cfo::errc::server_unavailable},
    };
    for (const auto& c : cases) {
      for (bool refresh : {false, true}) {
        const auto& echo = refresh ? refresh_echo : exchange_echo;
        const std::string body = c.error.empty() ? "<html><body><pre>" + echo + "</pre></body></html>"
                                                 : json_error(c.error == "echo" ? echo : c.error, echo);
        const std::string type = c.error.empty() ? "text/html" : "application/json";
        srv.push_raw_response("/oauth/token", raw_response(c.status, "Reason " + echo,
                                                           {{"Content-Type", type}, {"WWW-Authenticate", "Basic realm=\"" + echo + "\""}},
                                                           body));
        const auto path = (refresh ? "refresh, " : "code exchange, ") + enc + ", " + c.name;
        check_failure(path, refresh ? refresh_failure(cfg) : exchange_failure(cfg), c.expected);
      }
    }
  }
}

TEST_CASE("secrets: token answers that hold issued tokens but are unusable say nothing of them") {
  fake_atlassian::server srv(server_options());
  const auto cfg = config_for(srv);
  struct unusable {
    std::string name;
    int status;
    std::string type, body;
  };
  const std::string form = "access_token=" + cfo::detail::percent_encode(new_access_token) +
                           "&refresh_token=" + cfo::detail::percent_encode(new_refresh_token);
  const std::vector<unusable> cases = {
      {"not JSON (a form)", 200, "application/x-www-form-urlencoded", form},
      {"not JSON (raw tokens)", 200, "text/plain", new_access_token + " " + new_refresh_token},
      {"a JSON array", 200, "application/json", nlohmann::json::array({new_access_token, new_refresh_token}).dump()},
      {"token_type is not Bearer", 200, "application/json",
       nlohmann::json({{"access_token", new_access_token}, {"refresh_token", new_refresh_token}, {"token_type", new_access_token}}).dump()},
      {"refresh_token is not a string", 200, "application/json",
       nlohmann::json({{"access_token", new_access_token}, {"refresh_token", nlohmann::json::array({new_refresh_token})}}).dump()},
      {"expires_in is not a number", 200, "application/json",
       nlohmann::json({{"access_token", new_access_token}, {"refresh_token", new_refresh_token}, {"expires_in", new_refresh_token}}).dump()},
      {"no access_token", 200, "application/json", nlohmann::json({{"refresh_token", new_refresh_token}}).dump()},
      {"302 with the tokens in Location", 302, "text/html", ""},
  };
  for (const auto& c : cases) {
    std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", c.type}};
    if (c.status == 302) headers.emplace_back("Location", "https://app.example/cb?" + form);
    srv.push_raw_response("/oauth/token", raw_response(c.status, "OK", headers, c.body));
    check_failure("unusable token answer: " + c.name, refresh_failure(cfg), cfo::errc::invalid_token_response);
  }
}

TEST_CASE("secrets: network failures during the code exchange and the refresh") {
  fake_atlassian::server srv(server_options());
  auto refused = config_for(srv);
  refused.token_url = "https://127.0.0.1:" + std::to_string(test_util::free_port()) + "/oauth/token";
  check_failure("code exchange, connection refused", exchange_failure(refused), cfo::errc::connect_failed);
  check_failure("refresh, connection refused", refresh_failure(refused), cfo::errc::connect_failed);

  auto slow = config_for(srv, cfo::client_config::token_encoding::form);
  // Long enough for the handshake on a loaded machine: the stall must take
  // this request, or the next one meets it.
  slow.timeouts.request = 1500ms;
  srv.push_stall("/oauth/token");
  check_failure("code exchange, timeout", exchange_failure(slow), cfo::errc::timeout);
  REQUIRE(srv.queued_faults() == 0);
  srv.push_stall("/oauth/token");
  check_failure("refresh, timeout", refresh_failure(slow), cfo::errc::timeout);
  REQUIRE(srv.queued_faults() == 0);

  srv.push_raw_response("/oauth/token", "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + token_answer(new_access_token, new_refresh_token));
  check_failure("refresh, answer cut short", refresh_failure(config_for(srv)), cfo::errc::connection_closed);
}

TEST_CASE("secrets: API errors that reflect the bearer token") {
  const auto echo = bearer_echo_of(access_token);
  SUBCASE("401 naming a missing scope, the token echoed in WWW-Authenticate and the body") {
    session_fixture f;
    f.srv.push_raw_response("/ex/", raw_response(401, "Unauthorized " + echo,
                                                 {{"WWW-Authenticate", "Bearer error=\"insufficient_scope\", token=\"" + echo + "\""},
                                                  {"Content-Type", "application/json"}},
                                                 nlohmann::json({{"message", echo}}).dump()));
    check_failure("API 401 insufficient_scope", f.get_failure(), cfo::errc::scope_mismatch);
  }
  SUBCASE("401, refresh, then 401 again echoing the new token") {
    session_fixture f;
    const auto new_echo = bearer_echo_of(new_access_token);
    f.srv.push_raw_response("/ex/", raw_response(401, "Unauthorized", {{"WWW-Authenticate", "Bearer token=\"" + echo + "\""}}, ""));
    f.srv.push_raw_response("/oauth/token", raw_response(200, "OK", {{"Content-Type", "application/json"}},
                                                         token_answer(new_access_token, new_refresh_token)));
    f.srv.push_raw_response("/ex/", raw_response(401, "Unauthorized " + new_echo,
                                                 {{"WWW-Authenticate", "Bearer error=\"invalid_token\", token=\"" + new_echo + "\""}},
                                                 "<html>" + new_echo + "</html>"));
    check_failure("API 401 after a refresh", f.get_failure(), cfo::errc::unauthorized);
    auto held = test_util::run([&](auto) -> asio::awaitable<std::optional<cfo::token_set>> { co_return co_await f.store->load(); });
    REQUIRE(held);
    CHECK(held->access_token.reveal() == new_access_token);  // the path was really taken
    std::ostringstream shown;
    shown << *held;
    check_clean("the refreshed token_set's stream", shown.str());
  }
  SUBCASE("error bodies and reason phrases") {
    struct api_error {
      std::string name;
      int status;
      std::string type, body;
      cfo::errc expected;
    };
    const std::vector<api_error> cases = {
        {"400 JSON message", 400, "application/json", nlohmann::json({{"message", echo}}).dump(), cfo::errc::http_error},
        {"403 JSON errorMessage", 403, "application/json", nlohmann::json({{"errorMessage", echo}}).dump(), cfo::errc::http_error},
        {"404 JSON errors[0].title", 404, "application/json",
         nlohmann::json({{"errors", nlohmann::json::array({{{"title", echo}}})}}).dump(), cfo::errc::http_error},
        {"410 HTML page", 410, "text/html", "<html>" + echo + "</html>", cfo::errc::api_gone},
        {"500 HTML page", 500, "text/html", "<html>" + echo + "</html>", cfo::errc::server_unavailable},
    };
    for (const auto& c : cases) {
      session_fixture f;
      f.srv.push_raw_response("/ex/", raw_response(c.status, "Failed " + echo,
                                                   {{"Content-Type", c.type}, {"WWW-Authenticate", "Bearer token=\"" + echo + "\""}},
                                                   c.body));
      check_failure("API " + c.name, f.get_failure(), c.expected);
    }
  }
  SUBCASE("a redirect whose Location carries the token") {
    session_fixture f;
    f.srv.push_raw_response("/ex/", raw_response(302, "Found " + echo,
                                                 {{"Location", "https://evil.example/steal?t=" + cfo::detail::percent_encode(access_token) +
                                                                   "&raw=" + access_token}},
                                                 ""));
    check_failure("API 302 with the token in Location", f.get_failure(), cfo::errc::http_error);
  }
}

TEST_CASE("secrets: a revoked or unreachable refresh") {
  SUBCASE("invalid_grant echoing the refresh token") {
    session_fixture f(-10s);
    f.srv.push_raw_response("/oauth/token", raw_response(400, "Bad Request", {{"Content-Type", "application/json"}},
                                                         json_error("invalid_grant", echo_of({refresh_token, access_token, client_secret}))));
    check_failure("session refresh revoked (reflected)", f.get_failure(), cfo::errc::invalid_grant);
  }
  SUBCASE("the server's own invalid_grant") {
    session_fixture f(-10s);
    auto o = failure_of([&](auto ex) -> asio::awaitable<void> {
      cfo::session s(ex, f.cfg, f.store, session_fixture::no_retries());
      co_await s.load();
      co_await s.refresh();
    });
    check_failure("session refresh revoked (fake server)", o, cfo::errc::invalid_grant);
  }
  SUBCASE("network failures") {
    session_fixture f(-10s);
    f.cfg.token_url = "https://127.0.0.1:" + std::to_string(test_util::free_port()) + "/oauth/token";
    check_failure("session refresh, connection refused", f.get_failure(), cfo::errc::connect_failed);
    session_fixture g(-10s);
    g.cfg.timeouts.request = 1500ms;
    g.srv.push_stall("/oauth/token");
    check_failure("session refresh, timeout", g.get_failure(), cfo::errc::timeout);
    REQUIRE(g.srv.queued_faults() == 0);
  }
}

TEST_CASE("secrets: listener pages never show the code or the state") {
  const std::string user_text = "USER_TEXT <b>shown escaped</b>";
  // The pages are fixed text; the description (the server's, echoing the code
  // or the state) reaches only the error, redacted (a callback with an error
  // may carry a code too).
  const std::string description = user_text + " " + echo_of({state, auth_code});
  auto run = [](std::vector<std::pair<std::string, std::string>> requests) {
    return test_util::run([&](auto) { return drive_listener(std::move(requests)); }, 30s);
  };

  SUBCASE("the pages that keep the wait going, then the code") {
    std::vector<std::pair<std::string, std::string>> requests;
    requests.reserve(6);  // else g++ 12 at -O3 warns a false -Warray-bounds in the vector's growth
    requests.emplace_back("state mismatch", get_request(callback_target({{"code", auth_code}, {"state", other_state}})));
    requests.emplace_back("no state", get_request(callback_target({{"code", auth_code}})));
    requests.emplace_back("404", get_request(callback_target({{"code", auth_code}, {"state", state}}, "/elsewhere")));
    requests.emplace_back("405", get_request(callback_target({{"code", auth_code}, {"state", state}}), "POST"));
    requests.emplace_back("bad request",
                          "GET " + callback_target({{"code", auth_code}, {"state", state}}) + " HTTP/1.1\r\nBroken " + state + "\r\n\r\n");
    requests.emplace_back("success", get_request(callback_target({{"code", auth_code}, {"state", state}})));
    auto r = run(std::move(requests));
    REQUIRE(r.pages.size() == 6);
    const char* statuses[] = {"HTTP/1.1 400", "HTTP/1.1 400", "HTTP/1.1 404", "HTTP/1.1 405", "HTTP/1.1 400", "HTTP/1.1 200"};
    for (std::size_t i = 0; i < r.pages.size(); ++i) {
      CAPTURE(r.pages[i].second);
      CHECK(r.pages[i].second.starts_with(statuses[i]));
      check_clean("listener page: " + r.pages[i].first, r.pages[i].second);
    }
    CHECK(!r.wait.code);
    CHECK(r.wait.text.starts_with("secret(sha256:"));
    check_clean("the code's stream output", r.wait.text);
  }
  SUBCASE("denial") {
    std::vector<std::pair<std::string, std::string>> requests;
    requests.emplace_back("denial", get_request(callback_target(
                                        {{"error", "access_denied"}, {"error_description", description}, {"state", state}, {"code", auth_code}})));
    auto r = run(std::move(requests));
    REQUIRE(r.pages.size() == 1);
    CHECK(r.pages[0].second.starts_with("HTTP/1.1 403"));
    CHECK(r.pages[0].second.find("USER_TEXT") == std::string::npos);  // the page is fixed text
    check_clean("listener page: denial", r.pages[0].second);
    check_failure("listener wait: denial", r.wait, cfo::errc::authorization_denied);
  }
  SUBCASE("another error") {
    std::vector<std::pair<std::string, std::string>> requests;
    requests.emplace_back("error", get_request(callback_target({{"error", "server_error"},
                                                                {"error_description", description},
                                                                {"error_uri", "https://errors.example/?" + description},
                                                                {"state", state},
                                                                {"code", auth_code}})));
    auto r = run(std::move(requests));
    REQUIRE(r.pages.size() == 1);
    CHECK(r.pages[0].second.starts_with("HTTP/1.1 400"));
    CHECK(r.pages[0].second.find("USER_TEXT") == std::string::npos);
    check_clean("listener page: error", r.pages[0].second);
    check_failure("listener wait: error", r.wait, cfo::errc::authorization_failed);
  }
}

TEST_CASE("secrets: verify_callback errors never carry the code or the state") {
  const auto auth = sentinel_authorization();
  const std::string description = "USER_TEXT " + echo_of({state, auth_code, verifier});
  struct callback_case {
    std::string name, query;
    cfo::errc expected;
  };
  const std::vector<callback_case> cases = {
      {"state mismatch", callback_target({{"code", auth_code}, {"state", other_state}}), cfo::errc::state_mismatch},
      {"no state", callback_target({{"code", auth_code}}), cfo::errc::state_mismatch},
      {"denied", callback_target({{"error", "access_denied"}, {"error_description", description}, {"state", state}, {"code", auth_code}}),
       cfo::errc::authorization_denied},
      {"failed", callback_target({{"error", "server_error"}, {"error_description", description}, {"error_uri", description},
                                  {"state", state}, {"code", auth_code}}),
       cfo::errc::authorization_failed},
      {"error with another state", callback_target({{"error", "server_error"}, {"error_description", description}, {"state", other_state}}),
       cfo::errc::state_mismatch},
  };
  for (const auto& c : cases) {
    outcome o;
    try {
      cfo::detail::verify_callback(cfo::detail::parse_callback(c.query), auth);
    } catch (const cfo::oauth_error& e) {
      o = {e.code(), texts_of(e)};
    }
    check_failure("verify_callback: " + c.name, o, c.expected);
  }
}

TEST_CASE("secrets: token store errors never show the tokens or the key") {
  test_util::temp_dir dir;
  const auto path = dir / "tokens.json";
  const auto tokens = sentinel_tokens();
  auto load_failure = [](cfo::file_token_store& store) {
    return failure_of([&](auto) -> asio::awaitable<void> { co_await store.load(); });
  };
  auto write = [&](const std::string& text) {
    { std::ofstream(path, std::ios::binary | std::ios::trunc) << text; }
    ::chmod(path.c_str(), 0600);  // a file the umask left open to others is refused before it is read
  };

  const std::string full = tokens.to_json().dump();
  struct corrupt {
    std::string name, text;
  };
  const std::vector<corrupt> cases = {
      {"cut short", full.substr(0, full.size() - 3)},
      {"access_token not a string",
       nlohmann::json({{"access_token", nlohmann::json::array({access_token})}, {"refresh_token", refresh_token}}).dump()},
      {"refresh_token not a string",
       nlohmann::json({{"access_token", access_token}, {"refresh_token", nlohmann::json::array({refresh_token})}}).dump()},
      {"expires_at not a time", nlohmann::json({{"access_token", access_token}, {"expires_at", refresh_token}}).dump()},
      {"no access_token", nlohmann::json({{"refresh_token", refresh_token}}).dump()},
      {"not an object", nlohmann::json::array({access_token, refresh_token}).dump()},
  };
  cfo::file_token_store plain(path);
  for (const auto& c : cases) {
    write(c.text);
    check_failure("corrupt token file: " + c.name, load_failure(plain), cfo::errc::store_corrupt);
  }

  cfo::file_token_store sealed(path, cfo::secret(store_key));
  test_util::run([&](auto) -> asio::awaitable<void> { co_await sealed.save(tokens); });
  const auto sealed_text = test_util::read_text(path);
  check_clean("the encrypted token file", sealed_text);
  cfo::file_token_store wrong_key(path, cfo::secret(other_key));
  check_failure("encrypted file, wrong key", load_failure(wrong_key), cfo::errc::store_key_mismatch);
  check_failure("encrypted file, no key", load_failure(plain), cfo::errc::store_key_mismatch);
  auto altered = nlohmann::json::parse(sealed_text);
  auto blob = altered["sealed"].get<std::string>();
  blob[20] = blob[20] == 'A' ? 'B' : 'A';
  altered["sealed"] = blob;
  write(altered.dump());
  check_failure("encrypted file, altered", load_failure(sealed), cfo::errc::store_corrupt);
  write(full);
  check_failure("plain file, a key given", load_failure(sealed), cfo::errc::store_key_mismatch);

  outcome short_key;
  try {
    cfo::file_token_store(path, cfo::secret(store_key.substr(0, 31)));
  } catch (const cfo::oauth_error& e) {
    short_key = {e.code(), texts_of(e)};
  }
  check_failure("a key of the wrong size", short_key, cfo::errc::invalid_config);
}

TEST_CASE("secrets: a client secret pasted into another field of the configuration") {
  fake_atlassian::server srv(server_options());
  struct misplaced {
    std::string name;
    std::function<void(cfo::client_config&)> edit;
    cfo::errc expected;
  };
  const std::vector<misplaced> cases = {
      {"token_url is the secret", [](auto& c) { c.token_url = client_secret; }, cfo::errc::invalid_url},
      {"api_url has it as user information", [](auto& c) { c.api_url = "https://client:" + client_secret + "@api.example"; },
       cfo::errc::invalid_url},
      {"authorize_url over http has it in the query",
       [](auto& c) { c.authorize_url = "http://auth.example/authorize?client_secret=" + client_secret; }, cfo::errc::insecure_transport},
      {"redirect_uri is the secret", [](auto& c) { c.redirect_uri = client_secret; }, cfo::errc::invalid_url},
      {"a scope is the secret, with a space", [](auto& c) { c.scopes.push_back(client_secret + " x"); }, cfo::errc::invalid_config},
  };
  for (const auto& c : cases) {
    auto cfg = config_for(srv);
    c.edit(cfg);
    outcome o;
    try {
      asio::io_context io;
      cfo::oauth_client client(io.get_executor(), cfg);
    } catch (const cfo::oauth_error& e) {
      o = {e.code(), texts_of(e)};
    }
    check_failure("configuration: " + c.name, o, c.expected);
  }
}

#if defined(CFO_CLI_PATH)

namespace {

/// confluence-cli and web-app against the fake server, the client secret in the environment.
struct examples_fixture {
  fake_atlassian::server srv{server_options()};
  test_util::temp_dir dir;
  std::string ca = dir / "ca.pem";
  std::string token_file = dir / "tokens.json";

  examples_fixture() { srv.write_ca_pem(ca); }

  std::vector<std::string> endpoints() const {
    return {"--client-id", "test-client-id", "--authorize-url", srv.base_url() + "/authorize",
            "--token-url", srv.base_url() + "/oauth/token", "--api-url", srv.base_url(), "--ca-file", ca};
  }

  test_util::process_result cli(std::vector<std::string> args) const {
    std::vector<std::string> argv = {CFO_CLI_PATH};
    auto common = endpoints();
    argv.insert(argv.end(), common.begin(), common.end());
    argv.push_back("--token-file");
    argv.push_back(token_file);
    argv.insert(argv.end(), args.begin(), args.end());
    return test_util::run_process(argv, 60s, {"ATLASSIAN_CLIENT_SECRET=" + client_secret});
  }

  void save_tokens(const cfo::token_set& tokens, const std::string& key = {}) const {
    auto store = key.empty() ? cfo::file_token_store(token_file) : cfo::file_token_store(token_file, cfo::secret(key));
    test_util::run([&](auto) -> asio::awaitable<void> { co_await store.save(tokens); });
  }
};

void check_process(const std::string& path, const test_util::process_result& r, int expected_exit) {
  CAPTURE(path);
  CAPTURE(r.out);
  CAPTURE(r.err);
  CHECK(r.exit_code == expected_exit);
  CHECK(!r.err.empty());
  check_clean(path, r.out + r.err);
}

/// A blocking HTTP exchange with a local process, until it closes the connection.
std::string http_to(unsigned short port, const std::string& request) {
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  asio::write(socket, asio::buffer(request));
  std::string out;
  std::array<char, 4096> buffer;
  std::error_code ec;
  while (!ec) out.append(buffer.data(), socket.read_some(asio::buffer(buffer), ec));
  return out;
}

std::string header_of(const std::string& response, const std::string& name) {
  auto at = response.find("\r\n" + name + ": ");
  if (at == std::string::npos) return {};
  at += name.size() + 4;
  return response.substr(at, response.find("\r\n", at) - at);
}

/// The web app as a child process; stopped with SIGTERM, its output kept.
class web_app_process {
 public:
  web_app_process(const std::string& program, std::vector<std::string> args, const std::string& secret_env) {
    args.insert(args.begin(), program);
    args.push_back("--port");
    args.push_back("0");
    args.push_back("--port-file");
    args.push_back(dir_ / "port");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
    env_strings.push_back(secret_env);
    std::vector<char*> envp;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, (dir_ / "out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, (dir_ / "err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) throw std::runtime_error("cannot start " + program + ": " + std::strerror(err));
    for (auto deadline = std::chrono::steady_clock::now() + 30s; std::chrono::steady_clock::now() < deadline;
         std::this_thread::sleep_for(10ms)) {
      auto text = test_util::read_text(dir_ / "port");
      if (!text.empty() && text.back() == '\n') {
        port_ = static_cast<unsigned short>(std::stoi(text));
        return;
      }
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
    }
    stop();
    throw std::runtime_error("web-app did not start: " + test_util::read_text(dir_ / "err"));
  }
  ~web_app_process() { stop(); }
  web_app_process(const web_app_process&) = delete;
  web_app_process& operator=(const web_app_process&) = delete;

  unsigned short port() const { return port_; }

  /// Stops the app and returns all it wrote to stdout and stderr.
  std::string stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    return test_util::read_text(dir_ / "out") + test_util::read_text(dir_ / "err");
  }

 private:
  test_util::temp_dir dir_;
  pid_t pid_ = -1;
  unsigned short port_ = 0;
};

}  // namespace

TEST_CASE("secrets: confluence-cli prints no secret on its failure paths") {
  examples_fixture f;
  const auto echo = echo_of({client_secret, refresh_token, access_token});

  const auto expired_and_revoked_reflecting = [&] {
    f.save_tokens(sentinel_tokens(-10s));
    f.srv.push_raw_response("/oauth/token", raw_response(400, "Bad Request " + echo,
                                                         {{"Content-Type", "application/json"}, {"WWW-Authenticate", "Basic realm=\"" + echo + "\""}},
                                                         json_error("invalid_grant", echo)));
  };
  expired_and_revoked_reflecting();
  check_process("confluence-cli token: refresh revoked, reflected", f.cli({"token"}), 4);
  expired_and_revoked_reflecting();
  check_process("confluence-cli status: refresh revoked, reflected", f.cli({"status"}), 3);

  f.save_tokens(sentinel_tokens());
  const auto new_echo = bearer_echo_of(new_access_token);
  f.srv.push_raw_response("/ex/", raw_response(401, "Unauthorized " + echo, {{"WWW-Authenticate", "Bearer token=\"" + echo + "\""}}, echo));
  f.srv.push_raw_response("/oauth/token", raw_response(200, "OK", {{"Content-Type", "application/json"}},
                                                       token_answer(new_access_token, new_refresh_token)));
  f.srv.push_raw_response("/ex/", raw_response(400, "Bad Request " + new_echo, {{"Content-Type", "application/json"}},
                                               nlohmann::json({{"message", new_echo}}).dump()));
  check_process("confluence-cli get: API errors reflecting the token", f.cli({"get", api_path}), 1);

  const auto full = sentinel_tokens().to_json().dump();
  std::ofstream(f.token_file, std::ios::trunc) << full.substr(0, full.size() - 3);
  check_process("confluence-cli token: corrupt token file", f.cli({"token"}), 4);

  f.save_tokens(sentinel_tokens(), store_key);
  const auto key_file = f.dir / "key";
  std::ofstream(key_file) << hex_of(other_key, false) << '\n';
  ::chmod(key_file.c_str(), 0600);
  check_process("confluence-cli token: wrong key", f.cli({"--key-file", key_file, "token"}), 2);

  check_process("confluence-cli: the secret given as the token URL", f.cli({"--token-url", client_secret, "token"}), 2);
}

TEST_CASE("secrets: web-app pages and log lines carry no secret") {
  const auto program = (std::filesystem::path(CFO_CLI_PATH).parent_path() / "web-app").string();
  REQUIRE_MESSAGE(std::filesystem::exists(program), "web-app is built next to confluence-cli: " << program);
  examples_fixture f;
  web_app_process app(program, f.endpoints(), "ATLASSIAN_CLIENT_SECRET=" + client_secret);

  // A pending authorization for this browser: the start page gives the cookie
  // and the form's CSRF token, Connect posts them. The app's state is random,
  // so it is checked for by value.
  auto start = http_to(app.port(), get_request("/"));
  auto cookie = header_of(start, "Set-Cookie");
  cookie = cookie.substr(0, cookie.find(';'));
  REQUIRE(!cookie.empty());
  const std::string token_field = "name=\"csrf\" value=\"";
  auto token_at = start.find(token_field);
  REQUIRE(token_at != std::string::npos);
  const auto form = "csrf=" + start.substr(token_at + token_field.size(), 64);
  auto with_cookie = [&](const std::string& target) {
    return "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + cookie + "\r\nConnection: close\r\n\r\n";
  };
  auto post_connect = [&] {
    return http_to(app.port(), "POST /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + cookie +
                                   "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " +
                                   std::to_string(form.size()) + "\r\nConnection: close\r\n\r\n" + form);
  };
  auto connect = post_connect();
  auto app_state = cfo::detail::parse_callback(header_of(connect, "Location")).state;
  REQUIRE(app_state);
  const std::string real_state = app_state->reveal();

  std::vector<std::pair<std::string, std::string>> pages;
  pages.emplace_back("mismatched state", http_to(app.port(), with_cookie(callback_target({{"code", auth_code}, {"state", other_state}}))));
  pages.emplace_back("404", http_to(app.port(), with_cookie(callback_target({{"code", auth_code}, {"state", state}}, "/elsewhere"))));
  pages.emplace_back("405", http_to(app.port(), "POST " + callback_target({{"code", auth_code}, {"state", real_state}}) +
                                                    " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
  f.srv.push_raw_response("/oauth/token", raw_response(400, "Bad Request", {{"Content-Type", "application/json"}},
                                                       json_error("invalid_grant", echo_of({client_secret, auth_code}))));
  pages.emplace_back("code exchange refused, reflected",
                     http_to(app.port(), with_cookie(callback_target({{"code", auth_code}, {"state", real_state}}))));
  CHECK(f.srv.stats().token_requests == 1);  // the exchange was really made

  connect = post_connect();
  app_state = cfo::detail::parse_callback(header_of(connect, "Location")).state;
  REQUIRE(app_state);
  const std::string second_state = app_state->reveal();
  pages.emplace_back("authorization error", http_to(app.port(), with_cookie(callback_target(
                                                               {{"error", "server_error"},
                                                                {"error_description", "USER_TEXT " + echo_of({second_state, auth_code})},
                                                                {"state", second_state},
                                                                {"code", auth_code}}))));

  const auto output = app.stop();
  for (const auto& page : pages) {
    CAPTURE(page.second);
    check_clean("web-app page: " + page.first, page.second);
    for (const auto& s : {real_state, second_state})
      if (page.second.find(s) != std::string::npos || page.second.find(cfo::detail::percent_encode(s)) != std::string::npos)
        FAIL_CHECK("web-app page \"" << page.first << "\" shows the authorization's state");
  }
  CHECK(pages.back().second.find("USER_TEXT") == std::string::npos);  // a fixed message: nothing from the request
  CAPTURE(output);
  CHECK(output.find("web-app: GET /callback 502") != std::string::npos);
  check_clean("web-app stdout and stderr", output);
  for (const auto& s : {real_state, second_state})
    if (output.find(s) != std::string::npos) FAIL_CHECK("web-app's log shows an authorization's state");
}

#endif  // CFO_CLI_PATH

}  // TEST_SUITE

}  // namespace test_secrets
