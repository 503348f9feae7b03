// The redirect listener, with every rule of DESIGN.md's "Listener" paragraph,
// driven over real loopback sockets by the library's HTTP client and by raw
// TCP connections that misbehave.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "test_util.hpp"

// Its own namespace, so that the unity build can put test files together.
namespace test_listener {

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;
using tcp = asio::ip::tcp;

namespace {

cfo::client_config listener_config(std::string redirect = "http://localhost:0/callback") {
  cfo::client_config c;
  c.client_id = "client-id";
  c.client_secret = cfo::secret("client-secret-value");
  c.redirect_uri = std::move(redirect);
  return c;
}

/// GETs `target` on the listener (plain http, loopback) and returns the response.
asio::awaitable<cfo::http_response> get(const cfo::oauth_client& client, const cfo::detail::redirect_listener& l,
                                        std::string target, std::string host = "127.0.0.1",
                                        std::string method = "GET") {
  auto u = cfo::detail::parse_url(l.redirect_uri());
  u.host = std::move(host);
  u.target = std::move(target);
  cfo::http_request req;
  req.method = std::move(method);
  co_return co_await cfo::detail::http_of(client).send(u, req);
}

std::string callback(const cfo::authorization& a, std::string code = "the-code") {
  return "/callback?code=" + code + "&state=" + cfo::detail::percent_encode(a.state.reveal());
}

asio::awaitable<void> sleep(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

/// Waits for the listener in the background; the result lands in `out`.
struct background_wait {
  std::optional<cfo::secret> code;
  std::error_code error;
  bool done = false;
};

void start_wait(const asio::any_io_executor& ex, cfo::detail::redirect_listener& l, const cfo::authorization& a,
                background_wait& out, asio::cancellation_slot slot = {}) {
  asio::co_spawn(ex, l.wait(a), asio::bind_cancellation_slot(slot, [&out](std::exception_ptr e, cfo::secret code) {
    out.done = true;
    if (!e) {
      out.code = std::move(code);
      return;
    }
    try {
      std::rethrow_exception(e);
    } catch (const cfo::oauth_error& x) {
      out.error = x.code();
    } catch (...) {
      out.error = std::make_error_code(std::errc::io_error);
    }
  }));
}

asio::awaitable<void> until_done(const background_wait& w, std::chrono::milliseconds limit = 5000ms) {
  for (auto waited = 0ms; !w.done && waited < limit; waited += 10ms) co_await sleep(10ms);
}

/// A client, a listener on a free localhost port, and a wait in progress for
/// the authorization it made.
struct pending_login {
  cfo::oauth_client client;
  cfo::detail::redirect_listener listener;
  cfo::authorization auth;
  background_wait wait;

  explicit pending_login(const asio::any_io_executor& ex, cfo::session_options::listener_options o = {})
      : client(ex, listener_config()), listener(ex, client.config().redirect_uri, std::move(o)),
        auth(client.begin_authorization(listener.redirect_uri())) {
    start_wait(ex, listener, auth, wait);
  }
};

}  // namespace

TEST_SUITE("listener") {

TEST_CASE("the callback with the right state ends the wait and the page never shows the code") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, listener_config());
    cfo::detail::redirect_listener l(ex, client.config().redirect_uri);
    CHECK(l.port() != 0);
    CHECK(l.redirect_uri() == "http://localhost:" + std::to_string(l.port()) + "/callback");
    auto a = client.begin_authorization(l.redirect_uri());
    background_wait w;
    start_wait(ex, l, a, w);
    auto res = co_await get(client, l, callback(a, "c0de-value-123"));
    co_await until_done(w);
    REQUIRE(w.code);
    CHECK(w.code->reveal() == "c0de-value-123");
    CHECK(res.status == 200);
    CHECK(res.body.find("Authorization complete") != std::string::npos);
    CHECK(res.body.find("c0de-value-123") == std::string::npos);
    CHECK(res.body.find(a.state.reveal()) == std::string::npos);
    CHECK(res.headers.get("Cache-Control") == std::optional<std::string_view>("no-store"));
    CHECK(res.headers.get("Referrer-Policy") == std::optional<std::string_view>("no-referrer"));
  });
}

TEST_CASE("localhost is served on both 127.0.0.1 and ::1") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    auto v4 = co_await get(client, l, "/favicon.ico", "127.0.0.1");
    CHECK(v4.status == 404);
    auto v6 = co_await get(client, l, callback(a), "::1");
    CHECK(v6.status == 200);
    co_await until_done(w);
    CHECK(w.code);
  });
}

TEST_CASE("a fixed port is bound as given and kept verbatim") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    // Find a free port, release it, then ask for it by number.
    tcp::acceptor probe(ex, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    auto port = probe.local_endpoint().port();
    probe.close();
    std::string uri = "http://127.0.0.1:" + std::to_string(port) + "/oauth/cb";
    cfo::detail::redirect_listener l(ex, uri);
    CHECK(l.port() == port);
    CHECK(l.redirect_uri() == uri);
    co_return;
  });
}

TEST_CASE("denial ends the wait with authorization_denied and a page of fixed text") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    auto res = co_await get(client, l,
                            "/callback?error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&state=" +
                                cfo::detail::percent_encode(a.state.reveal()));
    co_await until_done(w);
    CHECK(w.error == cfo::errc::authorization_denied);
    CHECK(res.status == 403);
    CHECK(res.body.find("Authorization denied") != std::string::npos);
    CHECK(res.body.find("alert(1)") == std::string::npos);
  });
}

// Security: any web page can send the browser to the listener with
// ?error=access_denied. Before 1.1 that ended the sign-in in progress and put the
// attacker's description on the page and in the error.
TEST_CASE("an error without the sign-in's state gets a fixed page and the wait goes on") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    for (std::string target : {"/callback?error=access_denied&error_description=Your%20account%20is%20locked%3A%20call%20EVIL",
                               "/callback?error=server_error&error_description=EVIL&state=forged"}) {
      auto res = co_await get(client, l, target);
      CHECK(res.status == 400);
      CHECK(res.body.find("Authorization mismatch") != std::string::npos);
      CHECK(res.body.find("EVIL") == std::string::npos);
    }
    co_await sleep(50ms);
    CHECK_FALSE(w.done);
    auto ok = co_await get(client, l, callback(a));
    CHECK(ok.status == 200);
    co_await until_done(w);
    CHECK(w.code);
  });
}

// Security: DNS rebinding. A page on attacker.example whose name resolves to
// 127.0.0.1 reaches the listener's port; its requests carry its own Host.
TEST_CASE("requests naming another host get 400 and the wait goes on") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    const std::string port = std::to_string(l.port());
    // (login's members by name: clang 14 cannot capture structured bindings)
    auto raw = [&ex, &login](std::string host_line) -> asio::awaitable<std::string> {
      tcp::socket s(ex);
      co_await s.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), login.listener.port()),
                               asio::use_awaitable);
      std::string request = "GET " + callback(login.auth) + " HTTP/1.1\r\n" + host_line + "Connection: close\r\n\r\n";
      co_await asio::async_write(s, asio::buffer(request), cfo::detail::use_tuple);
      std::string reply;
      co_await asio::async_read(s, asio::dynamic_buffer(reply), cfo::detail::use_tuple);
      co_return reply;
    };
    for (std::string host : {"Host: attacker.example:" + port + "\r\n", std::string("Host: attacker.example\r\n"),
                             "Host: 127.0.0.1:" + std::to_string(l.port() == 65535 ? 1 : l.port() + 1) + "\r\n",
                             std::string("Host: localhost.attacker.example:") + port + "\r\n", std::string()}) {
      auto reply = co_await raw(host);
      CHECK_MESSAGE(reply.rfind("HTTP/1.1 400", 0) == 0, host);
      CHECK(reply.find("Authorization complete") == std::string::npos);
    }
    co_await sleep(50ms);
    CHECK_FALSE(w.done);
    auto reply = co_await raw("Host: localhost:" + port + "\r\n");
    CHECK(reply.rfind("HTTP/1.1 200", 0) == 0);
    co_await until_done(w);
    CHECK(w.code);
  });
}

TEST_CASE("every loopback spelling of the listener's own host is accepted") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    for (std::string host : {"[::1]", "localhost", "LocalHost", "127.0.0.1"}) {
      pending_login login(ex);
      auto& [client, l, a, w] = login;
      tcp::socket s(ex);
      co_await s.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), l.port()), asio::use_awaitable);
      std::string request = "GET " + callback(a) + " HTTP/1.1\r\nHost: " + host + ":" + std::to_string(l.port()) +
                            "\r\nConnection: close\r\n\r\n";
      co_await asio::async_write(s, asio::buffer(request), cfo::detail::use_tuple);
      std::string reply;
      co_await asio::async_read(s, asio::dynamic_buffer(reply), cfo::detail::use_tuple);
      CHECK_MESSAGE(reply.rfind("HTTP/1.1 200", 0) == 0, host);
      co_await until_done(w);
      CHECK(w.code);
    }
  });
}

TEST_CASE("another error from the server is authorization_failed") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    auto res = co_await get(client, l, "/callback?error=unauthorized_client&state=" + cfo::detail::percent_encode(a.state.reveal()));
    co_await until_done(w);
    CHECK(w.error == cfo::errc::authorization_failed);
    CHECK(res.status == 400);
    CHECK(res.body.find("Authorization failed") != std::string::npos);
  });
}

TEST_CASE("a mismatched state gets a 400 page and the wait goes on") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    auto mismatch = co_await get(client, l, "/callback?code=evil-code&state=forged");
    CHECK(mismatch.status == 400);
    CHECK(mismatch.body.find("Authorization mismatch") != std::string::npos);
    CHECK(mismatch.body.find("evil-code") == std::string::npos);
    auto denied_other = co_await get(client, l, "/callback?error=access_denied&state=forged");
    CHECK(denied_other.status == 400);
    auto incomplete = co_await get(client, l, "/callback?state=" + cfo::detail::percent_encode(a.state.reveal()));
    CHECK(incomplete.status == 400);
    co_await sleep(50ms);
    CHECK_FALSE(w.done);
    auto ok = co_await get(client, l, callback(a));
    CHECK(ok.status == 200);
    co_await until_done(w);
    REQUIRE(w.code);
    CHECK(w.code->reveal() == "the-code");
  });
}

TEST_CASE("other paths get 404, other methods 405, and the wait goes on") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    {
      auto reply = co_await get(client, l, "/favicon.ico");
      CHECK(reply.status == 404);
    }
    {
      auto reply = co_await get(client, l, "/callbackx?code=x");
      CHECK(reply.status == 404);
    }
    {
      auto reply = co_await get(client, l, "/");
      CHECK(reply.status == 404);
    }
    {
      auto reply = co_await get(client, l, callback(a), "127.0.0.1", "POST");
      CHECK(reply.status == 405);
    }
    CHECK_FALSE(w.done);
    {
      auto reply = co_await get(client, l, callback(a));
      CHECK(reply.status == 200);
    }
    co_await until_done(w);
    CHECK(w.code);
  });
}

TEST_CASE("a taken port is a clear address_in_use error") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    tcp::acceptor holder(ex, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    auto port = holder.local_endpoint().port();
    try {
      cfo::detail::redirect_listener l(ex, "http://127.0.0.1:" + std::to_string(port) + "/callback");
      FAIL("bound a taken port");
    } catch (const cfo::oauth_error& e) {
      CHECK(e.code() == cfo::errc::address_in_use);
      CHECK(std::string(e.what()).find(std::to_string(port)) != std::string::npos);
    }
    co_return;
  });
}

TEST_CASE("redirect URIs the listener cannot serve are refused") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    for (const char* uri : {"http://example.com:3000/callback", "https://localhost:3000/callback", "http://10.0.0.1/cb"}) {
      CAPTURE(uri);
      try {
        cfo::detail::redirect_listener l(ex, uri);
        FAIL("accepted");
      } catch (const cfo::oauth_error& e) {
        CHECK(e.code() == cfo::errc::invalid_config);
      }
    }
    co_return;
  });
}

TEST_CASE("the overall deadline ends the wait with listener_timeout") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, listener_config());
    cfo::session_options::listener_options o;
    o.timeout = 300ms;
    cfo::detail::redirect_listener l(ex, client.config().redirect_uri, o);
    auto a = client.begin_authorization(l.redirect_uri());
    auto start = std::chrono::steady_clock::now();
    try {
      co_await l.wait(a);
      FAIL("wait returned");
    } catch (const cfo::oauth_error& e) {
      CHECK(e.code() == cfo::errc::listener_timeout);
      CHECK(e.code() == cfo::remedy::reauthenticate);
    }
    auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(elapsed >= 250ms);
    CHECK(elapsed < 3s);
  });
}

TEST_CASE("cancelling the wait ends it with operation_aborted and the listener is reusable") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    cfo::oauth_client client(ex, listener_config());
    cfo::detail::redirect_listener l(ex, client.config().redirect_uri);
    auto a = client.begin_authorization(l.redirect_uri());
    asio::cancellation_signal cancel;
    background_wait w;
    start_wait(ex, l, a, w, cancel.slot());
    co_await sleep(100ms);
    CHECK_FALSE(w.done);
    cancel.emit(asio::cancellation_type::terminal);
    co_await until_done(w);
    CHECK(w.done);
    CHECK(w.error == asio::error::operation_aborted);
    background_wait again;
    start_wait(ex, l, a, again);
    {
      auto reply = co_await get(client, l, callback(a));
      CHECK(reply.status == 200);
    }
    co_await until_done(again);
    CHECK(again.code);
  });
}

TEST_CASE("silent and half-open connections neither block the callback nor hold the listener") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    cfo::session_options::listener_options o;
    o.read_timeout = 300ms;
    pending_login login(ex, o);
    auto& [client, l, a, w] = login;
    tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), l.port());
    // A browser's speculative connection that sends nothing, and one that stops mid-request.
    tcp::socket silent(ex), partial(ex);
    co_await silent.async_connect(ep, asio::use_awaitable);
    co_await partial.async_connect(ep, asio::use_awaitable);
    co_await asio::async_write(partial, asio::buffer(std::string("GET /callback?code=x")), asio::use_awaitable);
    auto start = std::chrono::steady_clock::now();
    auto res = co_await get(client, l, callback(a));  // a third connection, served at once
    CHECK(res.status == 200);
    CHECK(std::chrono::steady_clock::now() - start < 250ms);
    co_await until_done(w);
    CHECK(w.code);
    // The silent client is disconnected by the listener, not left hanging.
    std::array<char, 16> buf;
    auto [ec, n] = co_await silent.async_read_some(asio::buffer(buf), cfo::detail::use_tuple);
    CHECK(ec);
    CHECK(n == 0);
  });
}

TEST_CASE("a client that connects and sends nothing is dropped after the read deadline") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    cfo::session_options::listener_options o;
    o.read_timeout = 200ms;
    pending_login login(ex, o);
    auto& [client, l, a, w] = login;
    tcp::socket silent(ex);
    co_await silent.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), l.port()), asio::use_awaitable);
    auto start = std::chrono::steady_clock::now();
    std::array<char, 16> buf;
    auto [ec, n] = co_await silent.async_read_some(asio::buffer(buf), cfo::detail::use_tuple);
    auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(ec);
    CHECK(elapsed >= 150ms);
    CHECK(elapsed < 2s);
    CHECK_FALSE(w.done);  // the wait itself goes on
    {
      auto reply = co_await get(client, l, callback(a));
      CHECK(reply.status == 200);
    }
    co_await until_done(w);
    CHECK(w.code);
  });
}

TEST_CASE("garbage requests get 400 and the wait goes on") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    for (std::string junk : {std::string("\x16\x03\x01\x02\x00garbage\r\n\r\n", 16), std::string("GET\r\n\r\n"),
                             "GET /callback HTTP/1.1\r\n" + std::string(20000, 'a') + "\r\n\r\n"}) {
      tcp::socket s(ex);
      co_await s.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), l.port()), asio::use_awaitable);
      co_await asio::async_write(s, asio::buffer(junk), cfo::detail::use_tuple);
      std::string reply;
      auto [ec, n] = co_await asio::async_read(s, asio::dynamic_buffer(reply), cfo::detail::use_tuple);
      (void)n;
      CHECK(reply.rfind("HTTP/1.1 400", 0) == 0);
    }
    CHECK_FALSE(w.done);
    {
      auto reply = co_await get(client, l, callback(a));
      CHECK(reply.status == 200);
    }
    co_await until_done(w);
    CHECK(w.code);
  });
}

TEST_CASE("at the connection limit the oldest silent connection makes room for the browser") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    cfo::session_options::listener_options o;
    o.max_connections = 4;
    o.read_timeout = 5s;
    pending_login login(ex, o);
    auto& [client, l, a, w] = login;
    tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), l.port());
    std::vector<tcp::socket> idle;
    for (int i = 0; i < 4; ++i) {
      idle.emplace_back(ex);
      co_await idle.back().async_connect(ep, asio::use_awaitable);
    }
    co_await sleep(50ms);
    auto start = std::chrono::steady_clock::now();
    {
      auto reply = co_await get(client, l, callback(a));  // the fifth: served at once
      CHECK(reply.status == 200);
    }
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    std::array<char, 16> buf;
    auto [ec, n] = co_await idle.front().async_read_some(asio::buffer(buf), cfo::detail::use_tuple);
    CHECK(ec);  // the oldest was dropped
    CHECK(n == 0);
    co_await until_done(w);
    CHECK(w.code);
  });
}

TEST_CASE("closing the listener ends a pending wait") {
  test_util::run([](auto ex) -> asio::awaitable<void> {
    pending_login login(ex);
    auto& [client, l, a, w] = login;
    co_await sleep(50ms);
    l.close();
    co_await until_done(w);
    CHECK(w.error == asio::error::operation_aborted);
  });
}

}  // TEST_SUITE

}  // namespace test_listener
