// The transport: TLS trust and host-name checks, the plain-http-to-loopback rule,
// invalid TLS configuration, the keep-alive pool (reuse, stale connections,
// retries), cancellation, and the error conditions, against the fake Atlassian
// server on loopback.
#include <doctest/doctest.h>

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"
#include "hostile_server.hpp"
#include "test_util.hpp"

#include <asio/experimental/awaitable_operators.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <openssl/bio.h>
#include <sys/socket.h>
#include <unistd.h>

// Its own namespace, so that the unity build can put test files together.
namespace test_transport {

namespace {

namespace cfo = confluence_oauth;
using cfo::errc;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

constexpr const char* resources_path = "/oauth/token/accessible-resources";

// Trusts the CA of a fake_atlassian::server or a hostile::server.
template <class Server>
cfo::client_config::tls_options trusting(const Server& srv) {
  cfo::client_config::tls_options tls;
  tls.ca_pem = srv.ca_pem();
  return tls;
}

fake_atlassian::server make_server(std::vector<std::string> cert_hosts, std::string host = "127.0.0.1",
                                   bool tls = true) {
  fake_atlassian::options o;
  o.host = std::move(host);
  o.tls = tls;
  o.cert_hosts = std::move(cert_hosts);
  return fake_atlassian::server(o);
}

fake_atlassian::server make_fake(bool tls) {
  fake_atlassian::options o;
  o.tls = tls;
  return fake_atlassian::server(o);
}

fake_atlassian::server make_plain_server() { return make_fake(false); }

// GET `url_text` (no Authorization header).
asio::awaitable<cfo::http_response> get(cfo::detail::http_client& client, std::string url_text) {
  const auto u = cfo::detail::parse_url(url_text);
  cfo::http_request req;
  req.target = u.target;
  co_return co_await client.send(u, req);
}

struct attempt {
  std::optional<cfo::http_response> response;
  std::error_code ec;
  std::string what;
  std::chrono::milliseconds elapsed{0};
};

// Like get(), but turns an oauth_error into data (anything else still propagates).
asio::awaitable<attempt> try_get(cfo::detail::http_client& client, std::string url_text) {
  attempt a;
  const auto start = steady::now();
  try {
    a.response = co_await get(client, std::move(url_text));
  } catch (const cfo::oauth_error& e) {
    a.ec = e.code();
    a.what = e.what();
  }
  a.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
  co_return a;
}

// One GET through a fresh client with these TLS options and request deadline.
attempt fetch(const std::string& url_text, const cfo::client_config::tls_options& tls, std::chrono::milliseconds request = 5s) {
  return test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<attempt> {
        cfo::detail::http_client client(ex, tls, cfo::client_config::http_timeouts{request, 30s});
        co_return co_await try_get(client, url_text);
      },
      30s);
}

std::error_code config_error_of(const cfo::client_config::tls_options& tls) {
  try {
    cfo::detail::make_tls_context(tls);
  } catch (const cfo::oauth_error& e) {
    return e.code();
  }
  return {};
}

std::error_code client_ctor_error_of(const cfo::client_config::tls_options& tls) {
  asio::io_context io;
  try {
    cfo::detail::http_client client(io.get_executor(), tls, cfo::client_config::http_timeouts{});
  } catch (const cfo::oauth_error& e) {
    return e.code();
  }
  return {};
}

// A file in the temp directory, removed on destruction.
struct temp_file {
  std::filesystem::path path;
  explicit temp_file(const std::string& stem)
      : path(std::filesystem::temp_directory_path() /
             (stem + "-" + std::to_string(::getpid()) + "-" +
              std::to_string(steady::now().time_since_epoch().count()) + ".pem")) {}
  ~temp_file() {
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
  }
  void write(const std::string& text) const {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
  }
};

// A TCP listener on 127.0.0.1 that answers whatever it gets with a plain HTTP 400
// (as an http server does to a TLS ClientHello), then half-closes and drains.
asio::awaitable<void> answer_not_tls(std::shared_ptr<asio::ip::tcp::acceptor> acceptor) {
  auto [ec, s] = co_await acceptor->async_accept(cfo::detail::use_tuple);
  if (ec) co_return;
  std::string buf(4096, '\0');
  std::size_t n = 0;
  std::tie(ec, n) = co_await s.async_read_some(asio::buffer(buf), cfo::detail::use_tuple);
  if (ec) co_return;
  const std::string answer = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  std::tie(ec, n) = co_await asio::async_write(s, asio::buffer(answer), cfo::detail::use_tuple);
  s.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  while (!ec) std::tie(ec, n) = co_await s.async_read_some(asio::buffer(buf), cfo::detail::use_tuple);
}

asio::awaitable<int> status_of(cfo::detail::http_client& client, std::string url_text) {
  auto res = co_await get(client, std::move(url_text));
  co_return res.status;
}

}  // namespace

TEST_SUITE("transport") {

// ---------------------------------------------------------------------------
// TLS trust and host names
// ---------------------------------------------------------------------------

TEST_CASE("TLS to the fake server works when its CA is trusted via ca_pem") {
  fake_atlassian::server srv;
  auto a = fetch(srv.base_url() + resources_path, trusting(srv));
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->status == 401);  // no token: the TLS exchange itself worked
  CHECK(srv.stats().api_requests == 1);

  // The extra CA alone, without the system store, is enough.
  auto only_ca = trusting(srv);
  only_ca.use_system_trust = false;
  auto b = fetch(srv.base_url() + resources_path, only_ca);
  CAPTURE(b.what);
  REQUIRE(b.response);
  CHECK(b.response->status == 401);
}

TEST_CASE("TLS to the fake server works when its CA is trusted via ca_file") {
  fake_atlassian::server srv;
  temp_file ca("confluence-oauth-test-ca");
  srv.write_ca_pem(ca.path.string());
  cfo::client_config::tls_options tls;
  tls.ca_file = ca.path.string();
  auto a = fetch(srv.base_url() + resources_path, tls);
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->status == 401);
}

TEST_CASE("an untrusted CA is certificate_rejected") {
  fake_atlassian::server srv;
  auto a = fetch(srv.base_url() + resources_path, cfo::client_config::tls_options{});  // system store only
  CAPTURE(a.what);
  CHECK_FALSE(a.response);
  CHECK(a.ec == errc::certificate_rejected);
  CHECK(a.ec == cfo::remedy::fix_configuration);
  CHECK(srv.stats().connections == 1);
  CHECK(srv.stats().requests == 0);  // no request over an unverified channel

  // Trusting a different CA does not help.
  fake_atlassian::server other;
  auto b = fetch(srv.base_url() + resources_path, trusting(other));
  CAPTURE(b.what);
  CHECK(b.ec == errc::certificate_rejected);
  CHECK(srv.stats().requests == 0);
}

TEST_CASE("a certificate for another host name is certificate_rejected") {
  auto srv = make_server({"other.example"});
  auto a = fetch(srv.base_url() + resources_path, trusting(srv));
  CAPTURE(a.what);
  CHECK(a.ec == errc::certificate_rejected);
  CHECK(srv.stats().requests == 0);
}

TEST_CASE("a certificate naming only localhost is accepted for localhost and rejected for 127.0.0.1") {
  auto srv = make_server({"localhost"});
  const std::string port = std::to_string(srv.port());
  auto by_name = fetch("https://localhost:" + port + resources_path, trusting(srv));
  CAPTURE(by_name.what);
  REQUIRE(by_name.response);
  CHECK(by_name.response->status == 401);

  auto by_ip = fetch("https://127.0.0.1:" + port + resources_path, trusting(srv));
  CAPTURE(by_ip.what);
  CHECK(by_ip.ec == errc::certificate_rejected);
}

TEST_CASE("a certificate naming only 127.0.0.1 is accepted for 127.0.0.1 and rejected for localhost") {
  auto srv = make_server({"127.0.0.1"});
  const std::string port = std::to_string(srv.port());
  auto by_ip = fetch("https://127.0.0.1:" + port + resources_path, trusting(srv));
  CAPTURE(by_ip.what);
  REQUIRE(by_ip.response);
  CHECK(by_ip.response->status == 401);

  auto by_name = fetch("https://localhost:" + port + resources_path, trusting(srv));
  CAPTURE(by_name.what);
  CHECK(by_name.ec == errc::certificate_rejected);
}

TEST_CASE("a certificate naming a different IP address is certificate_rejected") {
  auto srv = make_server({"localhost", "127.0.0.2"});
  auto a = fetch(srv.base_url() + resources_path, trusting(srv));
  CAPTURE(a.what);
  CHECK(a.ec == errc::certificate_rejected);
}

TEST_CASE("TLS works over IPv6 loopback with the address in the certificate") {
  {
    asio::io_context io;
    asio::ip::tcp::acceptor probe(io);
    std::error_code ec;
    probe.open(asio::ip::tcp::v6(), ec);
    if (!ec) probe.bind({asio::ip::make_address("::1"), 0}, ec);
    if (ec) {
      MESSAGE("skipped: no IPv6 loopback here (" << ec.message() << ")");
      return;
    }
  }
  auto srv = make_server({"localhost", "127.0.0.1", "::1"}, "::1");
  CHECK(srv.base_url().rfind("https://[::1]:", 0) == 0);
  auto a = fetch(srv.base_url() + resources_path, trusting(srv));
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->status == 401);

  auto wrong = make_server({"localhost", "127.0.0.1"}, "::1");
  auto b = fetch(wrong.base_url() + resources_path, trusting(wrong));
  CAPTURE(b.what);
  CHECK(b.ec == errc::certificate_rejected);
}

TEST_CASE("https to a server that does not speak TLS is tls_handshake_failed") {
  auto a = test_util::run(
      [](asio::any_io_executor ex) -> asio::awaitable<attempt> {
        auto acceptor = std::make_shared<asio::ip::tcp::acceptor>(
            ex, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        const auto port = acceptor->local_endpoint().port();
        asio::co_spawn(ex, answer_not_tls(acceptor), asio::detached);
        cfo::detail::http_client client(ex, cfo::client_config::tls_options{}, cfo::client_config::http_timeouts{5s, 30s});
        auto r = co_await try_get(client, "https://127.0.0.1:" + std::to_string(port) + "/");
        std::error_code ignored;
        acceptor->close(ignored);
        co_return r;
      },
      30s);
  CAPTURE(a.what);
  CHECK(a.ec == errc::tls_handshake_failed);
  CHECK(a.ec == cfo::remedy::retry_later);
}

TEST_CASE("the TLS context requires TLS 1.2 or newer and verifies the peer") {
  auto ctx = cfo::detail::make_tls_context({});
  REQUIRE(ctx);
  CHECK(SSL_CTX_get_min_proto_version(ctx->native_handle()) == TLS1_2_VERSION);
  CHECK((SSL_CTX_get_verify_mode(ctx->native_handle()) & SSL_VERIFY_PEER) != 0);
}

// ---------------------------------------------------------------------------
// TLS configuration errors
// ---------------------------------------------------------------------------

TEST_CASE("a ca_file that does not exist is invalid_config") {
  cfo::client_config::tls_options tls;
  tls.ca_file = "/nonexistent/confluence-oauth/ca.pem";
  auto ec = config_error_of(tls);
  CHECK(ec == errc::invalid_config);
  CHECK(ec == cfo::remedy::fix_configuration);
  CHECK(client_ctor_error_of(tls) == errc::invalid_config);
}

TEST_CASE("a ca_file or ca_pem without certificates is invalid_config") {
  temp_file junk("confluence-oauth-test-junk");
  junk.write("this is not a certificate\n");
  cfo::client_config::tls_options by_file;
  by_file.ca_file = junk.path.string();
  CHECK(config_error_of(by_file) == errc::invalid_config);
  CHECK(client_ctor_error_of(by_file) == errc::invalid_config);

  cfo::client_config::tls_options by_pem;
  by_pem.ca_pem = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n";
  CHECK(config_error_of(by_pem) == errc::invalid_config);
  by_pem.ca_pem = "garbage";
  CHECK(config_error_of(by_pem) == errc::invalid_config);
  CHECK(client_ctor_error_of(by_pem) == errc::invalid_config);

  // The control: a real CA loads.
  fake_atlassian::server srv;
  CHECK_FALSE(config_error_of(trusting(srv)));
}

// ---------------------------------------------------------------------------
// Plain http: loopback only
// ---------------------------------------------------------------------------

TEST_CASE("is_loopback accepts 127/8 and ::1 only") {
  for (const char* host : {"127.0.0.1", "127.1.2.3", "127.255.255.254", "::1", "[::1]"}) {
    CAPTURE(host);
    CHECK(cfo::detail::is_loopback(host));
  }
  for (const char* host : {"localhost", "LocalHost", "example.com", "nonexistent.invalid", "localhost.example.com", "127.0.0.1.nip.io",
                           "10.0.0.1", "0.0.0.0", "128.0.0.1", "::", "::2", "", "[]", "2130706433"}) {
    CAPTURE(host);
    CHECK_FALSE(cfo::detail::is_loopback(host));
  }
}

TEST_CASE("plain http to a non-loopback host is insecure_transport before any network I/O") {
  for (const char* url : {"http://nonexistent.invalid/", "http://example.com/oauth/token", "http://10.0.0.1:8080/x",
                          "http://localhost.example.com/", "http://127.0.0.1.nip.io/"}) {
    CAPTURE(url);
    struct result {
      attempt a;
      std::uint64_t opened = 0;
    };
    auto r = test_util::run(
        [&](asio::any_io_executor ex) -> asio::awaitable<result> {
          cfo::detail::http_client client(ex, cfo::client_config::tls_options{}, cfo::client_config::http_timeouts{5s, 30s});
          result out;
          out.a = co_await try_get(client, url);
          out.opened = client.connections_opened();
          co_return out;
        },
        30s);
    CAPTURE(r.a.what);
    CHECK(r.a.ec == errc::insecure_transport);
    CHECK(r.a.ec == cfo::remedy::fix_configuration);
    CHECK(r.opened == 0);  // no connection was even attempted (nor a DNS lookup)
  }
}

TEST_CASE("plain http to loopback is allowed") {
  auto srv = make_plain_server();
  CHECK(srv.base_url().rfind("http://127.0.0.1:", 0) == 0);
  CHECK(srv.ca_pem().empty());
  auto a = fetch(srv.base_url() + resources_path, cfo::client_config::tls_options{});
  CAPTURE(a.what);
  REQUIRE(a.response);
  CHECK(a.response->status == 401);

  auto b = fetch("http://localhost:" + std::to_string(srv.port()) + resources_path, cfo::client_config::tls_options{});
  CAPTURE(b.what);
  REQUIRE(b.response);
  CHECK(b.response->status == 401);
  CHECK(srv.stats().api_requests == 2);
}

TEST_CASE("a refused connection is connect_failed") {
  unsigned short port = 0;
  {
    asio::io_context io;
    asio::ip::tcp::acceptor probe(io, {asio::ip::make_address("127.0.0.1"), 0});
    port = probe.local_endpoint().port();
  }  // closed: nothing listens there now
  auto a = fetch("http://127.0.0.1:" + std::to_string(port) + "/", cfo::client_config::tls_options{});
  CAPTURE(a.what);
  CHECK(a.ec == errc::connect_failed);
  CHECK(a.ec == cfo::remedy::retry_later);
}

// ---------------------------------------------------------------------------
// The keep-alive pool
// ---------------------------------------------------------------------------

TEST_CASE("keep-alive sends sequential requests over one connection") {
  for (bool tls : {true, false}) {
    CAPTURE(tls);
    auto srv = make_fake(tls);
    struct result {
      std::vector<int> statuses;
      std::uint64_t opened = 0;
      std::size_t idle = 0;
    };
    auto r = test_util::run(
        [&](asio::any_io_executor ex) -> asio::awaitable<result> {
          cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
          result out;
          for (int i = 0; i < 5; ++i) out.statuses.push_back((co_await get(client, srv.base_url() + resources_path)).status);
          out.opened = client.connections_opened();
          out.idle = client.idle_connections();
          co_return out;
        },
        30s);
    CHECK(r.statuses == std::vector<int>(5, 401));
    CHECK(r.opened == 1);
    CHECK(r.idle == 1);
    CHECK(srv.stats().connections == 1);
    CHECK(srv.stats().requests == 5);
  }
}

TEST_CASE("connections idle longer than timeouts.idle are not reused") {
  fake_atlassian::server srv;
  auto opened = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<std::uint64_t> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 0ms});
        for (int i = 0; i < 3; ++i) CHECK((co_await get(client, srv.base_url() + resources_path)).status == 401);
        co_return client.connections_opened();
      },
      30s);
  CHECK(opened == 3);
  CHECK(srv.stats().connections == 3);
}

TEST_CASE("close_idle drops pooled connections") {
  fake_atlassian::server srv;
  auto opened = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<std::uint64_t> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
        CHECK((co_await get(client, srv.base_url() + resources_path)).status == 401);
        CHECK(client.idle_connections() == 1);
        client.close_idle();
        CHECK(client.idle_connections() == 0);
        CHECK((co_await get(client, srv.base_url() + resources_path)).status == 401);
        co_return client.connections_opened();
      },
      30s);
  CHECK(opened == 2);
  CHECK(srv.stats().connections == 2);
}

TEST_CASE("a new connection to a server met before resumes its TLS session") {
  fake_atlassian::server srv;
  auto opened = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<std::uint64_t> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
        CHECK((co_await get(client, srv.base_url() + resources_path)).status == 401);
        client.close_idle();
        CHECK((co_await get(client, srv.base_url() + resources_path)).status == 401);
        co_return client.connections_opened();
      },
      30s);
  CHECK(opened == 2);
  CHECK(srv.stats().tls_resumptions == 1);
}

TEST_CASE("a TLS session is resumed only under the host name its certificate was checked for") {
  auto srv = make_server({"localhost"});
  const std::string port = std::to_string(srv.port());
  auto by_ip = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<attempt> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
        auto by_name = co_await try_get(client, "https://localhost:" + port + resources_path);
        CHECK(by_name.response);
        co_return co_await try_get(client, "https://127.0.0.1:" + port + resources_path);
      },
      30s);
  CAPTURE(by_ip.what);
  CHECK(by_ip.ec == errc::certificate_rejected);
  CHECK(srv.stats().tls_resumptions == 0);
}

TEST_CASE("each origin has its own pooled connections") {
  fake_atlassian::server one;
  fake_atlassian::server two;
  auto opened = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<std::uint64_t> {
        auto tls = trusting(one);
        tls.ca_pem += trusting(two).ca_pem;  // trust both CAs
        cfo::detail::http_client client(ex, tls, cfo::client_config::http_timeouts{5s, 30s});
        for (int i = 0; i < 3; ++i) {
          CHECK((co_await get(client, one.base_url() + resources_path)).status == 401);
          CHECK((co_await get(client, two.base_url() + resources_path)).status == 401);
        }
        CHECK(client.idle_connections() == 2);
        co_return client.connections_opened();
      },
      30s);
  CHECK(opened == 2);
  CHECK(one.stats().connections == 1);
  CHECK(two.stats().connections == 1);
  CHECK(one.stats().requests == 3);
  CHECK(two.stats().requests == 3);
}

TEST_CASE("concurrent requests use separate connections which are then pooled") {
  using namespace asio::experimental::awaitable_operators;
  fake_atlassian::server srv;
  struct result {
    int a = 0, b = 0, c = 0;
    std::uint64_t opened = 0;
    std::size_t idle = 0;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
        const std::string url = srv.base_url() + resources_path;
        auto [a, b, c] = co_await (status_of(client, url) && status_of(client, url) && status_of(client, url));
        co_return result{a, b, c, client.connections_opened(), client.idle_connections()};
      },
      30s);
  CHECK(r.a == 401);
  CHECK(r.b == 401);
  CHECK(r.c == 401);
  CHECK(r.opened == 3);
  CHECK(r.idle == 3);
  CHECK(srv.stats().connections == 3);
}

TEST_CASE("a burst of concurrent requests leaves its connections pooled for the next burst") {
  // Found by bench/soak.cpp: with 8 idle connections kept per origin, most
  // requests at concurrency 256 paid for a new TLS handshake.
  fake_atlassian::server srv;
  constexpr int burst = 32;
  auto opened = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<std::uint64_t> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{30s, 30s});
        const std::string url = srv.base_url() + resources_path;
        for (int round = 0; round < 2; ++round) {
          int left = burst;
          asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
          for (int i = 0; i < burst; ++i)  // each takes its connection before any finishes
            asio::co_spawn(ex, status_of(client, url), [&](std::exception_ptr, int) {
              if (--left == 0) all_done.cancel();
            });
          co_await all_done.async_wait(cfo::detail::use_tuple);
          CHECK(client.idle_connections() == burst);
        }
        co_return client.connections_opened();
      },
      60s);
  CHECK(opened == burst);
  CHECK(srv.stats().connections == burst);
}

TEST_CASE("more concurrent requests than 256 to one origin wait for its 256 connections") {
  // A thousand requests that waited for one token refresh must not cost a
  // thousand TLS handshakes: past the limit, requests take returned connections.
  fake_atlassian::server srv;
  constexpr int burst = 300;
  struct result {
    int ok = 0;
    std::uint64_t opened = 0;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{60s, 30s});
        const std::string url = srv.base_url() + resources_path;
        int left = burst, ok = 0;
        asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
        for (int i = 0; i < burst; ++i)  // all ask for a connection before any finishes
          asio::co_spawn(ex, status_of(client, url), [&](std::exception_ptr e, int status) {
            if (!e && status == 401) ++ok;
            if (--left == 0) all_done.cancel();
          });
        co_await all_done.async_wait(cfo::detail::use_tuple);
        co_return result{ok, client.connections_opened()};
      },
      120s);
  CHECK(r.ok == burst);
  CHECK(r.opened == 256);
  CHECK(srv.stats().connections == 256);
}

TEST_CASE("requests queued for a connection end at their deadline or when cancelled, and leave no place taken") {
  // 256 requests hold every connection to a server that never answers; 64
  // more queue behind them, and one more is cancelled while it waits. (Plain
  // HTTP: 256 TLS handshakes would take seconds in a sanitizer build.)
  auto srv = make_plain_server();
  constexpr int held = 256, queued = 64;
  for (int i = 0; i < held + queued; ++i) srv.push_stall("/stalled");  // those that reach it: not all queued do
  struct result {
    int timed_out = 0, other = 0;
    std::error_code cancelled;
    std::chrono::milliseconds cancelled_after{0}, all_after{0};
    int after = 0;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        using namespace asio::experimental::awaitable_operators;
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{2s, 30s});
        const std::string url = srv.base_url() + "/stalled";
        result out;
        const auto started = steady::now();
        int left = held + queued;
        asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
        for (int i = 0; i < held + queued; ++i)
          asio::co_spawn(ex, status_of(client, url), [&](std::exception_ptr e, int) {
            (test_util::code_of(e) == errc::timeout ? out.timed_out : out.other)++;
            if (--left == 0) all_done.cancel();
          });
        asio::steady_timer give_up(ex, 200ms);
        try {
          co_await (status_of(client, url) || give_up.async_wait(asio::use_awaitable));
        } catch (const cfo::oauth_error& e) {
          out.cancelled = e.code();
        }
        out.cancelled_after = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - started);
        co_await all_done.async_wait(cfo::detail::use_tuple);
        out.all_after = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - started);
        const std::string answering = srv.base_url() + resources_path;
        out.after = co_await status_of(client, answering);  // every place is free again
        co_return out;
      },
      60s);
  CHECK(r.timed_out == held + queued);  // none hangs: each ends with its own deadline
  CHECK(r.other == 0);
  CHECK_FALSE(r.cancelled);           // the timer won: the request was cancelled, and said nothing
  CHECK(r.cancelled_after < 1500ms);  // at once, not when a connection came back
  CHECK(r.all_after < 10s);
  CHECK(r.after == 401);
}

TEST_CASE("bytes after a response that OpenSSL holds decrypted keep its connection out of the pool") {
  // The 5,000-byte body and a smuggled second answer travel in one TLS record.
  // The body is read straight into the response, so the smuggled bytes stay
  // inside OpenSSL, not in the connection's buffer: the next request must not
  // take them for its answer.
  hostile::server srv;
  const std::string body(5000, 'x');
  hostile::plan smuggling;
  smuggling.response = "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + body +
                       "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"smuggled\":1}";
  srv.push(smuggling);
  const auto tls = trusting(srv);
  auto bodies = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<std::vector<std::string>> {
        cfo::detail::http_client client(ex, tls, cfo::client_config::http_timeouts{5s, 30s});
        std::vector<std::string> seen;
        seen.push_back((co_await get(client, srv.base_url() + "/first")).body);
        CHECK(client.idle_connections() == 0);
        seen.push_back((co_await get(client, srv.base_url() + "/second")).body);
        co_return seen;
      },
      30s);
  REQUIRE(bodies.size() == 2);
  CHECK(bodies[0] == body);
  CHECK(bodies[1] == R"({"ok":true})");
  CHECK(srv.connections() == 2);
}

TEST_CASE("a pooled connection the server closed is retried transparently on a new connection") {
  for (bool tls : {true, false}) {
    CAPTURE(tls);
    auto srv = make_fake(tls);
    // A keep-alive looking answer, after which the server closes anyway.
    srv.push_raw_response(resources_path, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
    struct result {
      attempt first, second;
      std::size_t idle_between = 0;
      std::uint64_t opened = 0;
    };
    auto r = test_util::run(
        [&](asio::any_io_executor ex) -> asio::awaitable<result> {
          cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
          result out;
          out.first = co_await try_get(client, srv.base_url() + resources_path);
          out.idle_between = client.idle_connections();
          out.second = co_await try_get(client, srv.base_url() + resources_path);
          out.opened = client.connections_opened();
          co_return out;
        },
        30s);
    CAPTURE(r.first.what);
    CAPTURE(r.second.what);
    REQUIRE(r.first.response);
    CHECK(r.first.response->body == "ok");
    CHECK(r.idle_between == 1);  // the client believed the connection reusable
    REQUIRE(r.second.response);
    CHECK(r.second.response->status == 401);
    CHECK(r.opened == 2);
    CHECK(srv.stats().connections == 2);
    CHECK(srv.stats().requests == 2);  // the request on the dead connection never reached the server
  }
}

TEST_CASE("the retry after a stale pooled connection uses a fresh connection") {
  using namespace asio::experimental::awaitable_operators;
  fake_atlassian::server srv;
  const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  srv.push_raw_response(resources_path, ok, true);
  srv.push_raw_response(resources_path, ok, true);
  struct result {
    int a = 0, b = 0;
    std::size_t idle_between = 0;
    attempt third;
    std::uint64_t opened = 0;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
        const std::string url = srv.base_url() + resources_path;
        result out;
        // Two pooled connections, both of which the server then closes (a server
        // restart or an idle timeout does that to every pooled connection).
        std::tie(out.a, out.b) = co_await (status_of(client, url) && status_of(client, url));
        out.idle_between = client.idle_connections();
        out.third = co_await try_get(client, url);
        out.opened = client.connections_opened();
        co_return out;
      },
      30s);
  CHECK(r.a == 200);
  CHECK(r.b == 200);
  CHECK(r.idle_between == 2);
  CAPTURE(r.third.what);
  // A retry must not pick the next (equally dead) pooled connection.
  REQUIRE(r.third.response);
  CHECK(r.third.response->status == 401);
  CHECK(srv.stats().connections == 3);
  CHECK(r.opened == 3);
}

TEST_CASE("a pooled connection that fails after the response started is not retried") {
  fake_atlassian::server srv;
  struct result {
    attempt first, second;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{5s, 30s});
        result out;
        out.first = co_await try_get(client, srv.base_url() + resources_path);
        srv.push_raw_response(resources_path, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", true);
        out.second = co_await try_get(client, srv.base_url() + resources_path);
        CHECK(client.idle_connections() == 0);
        co_return out;
      },
      30s);
  REQUIRE(r.first.response);
  CHECK(r.first.response->status == 401);
  CAPTURE(r.second.what);
  CHECK(r.second.ec == errc::connection_closed);
  CHECK(srv.stats().connections == 1);
  CHECK(srv.stats().requests == 2);  // not sent a second time
}

TEST_CASE("a timeout on a pooled connection is not retried") {
  fake_atlassian::server srv;
  struct result {
    attempt first, second;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{300ms, 30s});
        result out;
        out.first = co_await try_get(client, srv.base_url() + resources_path);
        srv.push_stall(resources_path);
        out.second = co_await try_get(client, srv.base_url() + resources_path);
        CHECK(client.idle_connections() == 0);
        co_return out;
      },
      30s);
  REQUIRE(r.first.response);
  CAPTURE(r.second.what);
  CHECK(r.second.ec == errc::timeout);
  CHECK(r.second.ec == cfo::remedy::retry_later);
  CHECK(r.second.elapsed >= 300ms);
  CHECK(r.second.elapsed < 5s);
  CHECK(srv.stats().connections == 1);
  CHECK(srv.stats().requests == 2);
}

TEST_CASE("one client shared by threads of a thread pool") {
  fake_atlassian::server srv;
  asio::thread_pool pool(4);
  {
    cfo::detail::http_client client(pool.get_executor(), trusting(srv), cfo::client_config::http_timeouts{10s, 30s});
    std::vector<std::future<int>> results;
    for (int i = 0; i < 16; ++i)
      results.push_back(asio::co_spawn(pool, status_of(client, srv.base_url() + resources_path), asio::use_future));
    for (auto& f : results) {
      REQUIRE(f.wait_for(30s) == std::future_status::ready);
      CHECK(f.get() == 401);
    }
    CHECK(client.connections_opened() == srv.stats().connections);
    CHECK(client.connections_opened() >= 1);
    CHECK(client.connections_opened() <= 16);
    CHECK(client.idle_connections() <= 16);
  }
  pool.join();
  CHECK(srv.stats().requests == 16);
}

TEST_CASE("TLS writes to a socket whose peer has gone fail with EPIPE, without SIGPIPE") {
  // SIGPIPE's default action ends the program: a write that raised it would end this test run.
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  ::close(fds[1]);
  BIO* bio = cfo::detail::socket_bio::make(fds[0]);
  REQUIRE(bio != nullptr);
  errno = 0;
  CHECK(BIO_write(bio, "x", 1) == -1);
  CHECK(errno == EPIPE);
  CHECK_FALSE(BIO_should_retry(bio));
  BIO_free(bio);
  CHECK(::fcntl(fds[0], F_GETFD) != -1);  // the BIO leaves the socket to its owner
  ::close(fds[0]);
}

// ---------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------

TEST_CASE("cancelling a stalled request ends it with operation_aborted") {
  fake_atlassian::server srv;
  srv.push_stall(resources_path);
  struct result {
    std::error_code ec;
    bool typed = false;  // an oauth_error
    std::string what;
    std::chrono::milliseconds elapsed{0};
    std::size_t idle_after_cancel = 99;
    int next_status = 0;
    std::uint64_t opened = 0;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{10s, 30s});
        asio::cancellation_signal signal;
        asio::steady_timer done(ex, steady::time_point::max());
        std::optional<std::exception_ptr> outcome;
        const auto start = steady::now();
        asio::co_spawn(ex, get(client, srv.base_url() + resources_path),
                       asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e, cfo::http_response) {
                         outcome = e;
                         done.cancel();
                       }));
        asio::steady_timer pause(ex, 100ms);
        co_await pause.async_wait(asio::use_awaitable);
        signal.emit(asio::cancellation_type::terminal);
        if (!outcome) co_await done.async_wait(cfo::detail::use_tuple);

        result out;
        out.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
        try {
          if (*outcome) std::rethrow_exception(*outcome);
        } catch (const cfo::oauth_error& e) {
          out.ec = e.code();
          out.typed = true;
          out.what = e.what();
        } catch (const std::system_error& e) {
          out.ec = e.code();
          out.what = e.what();
        }
        out.idle_after_cancel = client.idle_connections();
        // The client is still usable afterwards.
        out.next_status = (co_await get(client, srv.base_url() + resources_path)).status;
        out.opened = client.connections_opened();
        co_return out;
      },
      30s);
  CAPTURE(r.what);
  CHECK(r.ec == asio::error::operation_aborted);
  CHECK(r.typed);
  CHECK(r.elapsed >= 100ms);
  CHECK(r.elapsed < 5s);  // far from the 10 s request deadline
  CHECK(r.idle_after_cancel == 0);
  CHECK(r.next_status == 401);
  CHECK(r.opened == 2);
  CHECK(srv.stats().requests == 2);
}

TEST_CASE("cancelling a request on a pooled connection does not resend it") {
  fake_atlassian::server srv;
  struct result {
    int first_status = 0;
    std::error_code ec;
    bool typed = false;
    std::string what;
    bool completed_normally = false;
  };
  auto r = test_util::run(
      [&](asio::any_io_executor ex) -> asio::awaitable<result> {
        cfo::detail::http_client client(ex, trusting(srv), cfo::client_config::http_timeouts{10s, 30s});
        result out;
        out.first_status = (co_await get(client, srv.base_url() + resources_path)).status;  // pools the connection
        srv.push_stall(resources_path);
        asio::cancellation_signal signal;
        asio::steady_timer done(ex, steady::time_point::max());
        std::optional<std::exception_ptr> outcome;
        asio::co_spawn(ex, get(client, srv.base_url() + resources_path),
                       asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e, cfo::http_response) {
                         outcome = e;
                         done.cancel();
                       }));
        asio::steady_timer pause(ex, 100ms);
        co_await pause.async_wait(asio::use_awaitable);
        signal.emit(asio::cancellation_type::terminal);
        if (!outcome) co_await done.async_wait(cfo::detail::use_tuple);
        try {
          if (*outcome) std::rethrow_exception(*outcome);
          out.completed_normally = true;
        } catch (const cfo::oauth_error& e) {
          out.ec = e.code();
          out.typed = true;
          out.what = e.what();
        } catch (const std::system_error& e) {
          out.ec = e.code();
          out.what = e.what();
        }
        co_return out;
      },
      30s);
  CAPTURE(r.what);
  CHECK(r.first_status == 401);
  CHECK_FALSE(r.completed_normally);
  CHECK(r.ec == asio::error::operation_aborted);
  CHECK(r.typed);
  CHECK(srv.stats().connections == 1);  // no second connection for a retry
  CHECK(srv.stats().requests == 2);
}

// ---------------------------------------------------------------------------
// Error conditions
// ---------------------------------------------------------------------------

TEST_CASE("transport errors map to the expected conditions") {
  CHECK(make_error_code(errc::certificate_rejected) == cfo::remedy::fix_configuration);
  CHECK(make_error_code(errc::certificate_rejected) != cfo::remedy::retry_later);
  CHECK(make_error_code(errc::insecure_transport) == cfo::remedy::fix_configuration);
  CHECK(make_error_code(errc::invalid_config) == cfo::remedy::fix_configuration);
  CHECK(make_error_code(errc::timeout) == cfo::remedy::retry_later);
  CHECK(make_error_code(errc::timeout) != cfo::remedy::reauthenticate);
  CHECK(make_error_code(errc::connection_closed) == cfo::remedy::retry_later);
  CHECK(make_error_code(errc::tls_handshake_failed) == cfo::remedy::retry_later);
  CHECK(make_error_code(errc::connect_failed) == cfo::remedy::retry_later);
  CHECK(make_error_code(errc::protocol_error) == cfo::remedy::retry_later);

  std::error_code ec = errc::certificate_rejected;
  CHECK(ec.category() == cfo::detail::error_category());
  CHECK(std::string(ec.category().name()) == "confluence_oauth");
  CHECK(ec.message() == "server certificate rejected");
  cfo::oauth_error e(ec, "context");
  CHECK(e.code() == errc::certificate_rejected);
  CHECK(std::string(e.what()).find("context") != std::string::npos);
}

}  // TEST_SUITE("transport")

}  // namespace test_transport
