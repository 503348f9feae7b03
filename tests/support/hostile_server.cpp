// hostile_server.cpp — implementation of the scripted fault server (see the header).
//
// The network side runs on one thread with its own io_context; the plan queue and the
// counters are shared with the test thread under a mutex. Stopping closes the acceptor
// and every live socket (which cancels their timers too), so the io_context runs out of work.
#include "hostile_server.hpp"

#include "fake_atlassian.hpp"

// Asio 1.22 only knows clang's coroutines TS: switch C++20 coroutines on for
// clang, as confluence_oauth.hpp does (this file does not include it).
#if defined(__clang__) && defined(__cpp_impl_coroutine) && !defined(ASIO_HAS_CO_AWAIT)
#define ASIO_HAS_CO_AWAIT 1
#define ASIO_HAS_STD_COROUTINE 1
#endif

// GCC 12 flags the frames of Asio coroutines it inlines as freed by a mismatched
// operator delete, a false positive (GCC bug 109224, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ssl.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <vector>

namespace hostile {
namespace {

using tcp = asio::ip::tcp;
using tls_stream = asio::ssl::stream<tcp::socket>;
using namespace std::chrono_literals;
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

constexpr std::string_view normal_answer =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";

std::unique_ptr<asio::ssl::context> make_context(const fake_atlassian::certified_key& id, bool legacy) {
  auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->use_certificate_chain(asio::buffer(id.certificate_pem));
  ctx->use_private_key(asio::buffer(id.private_key_pem), asio::ssl::context::pem);
  SSL_CTX* native = ctx->native_handle();
  if (legacy) {
    // TLS 1.0/1.1 sign with SHA-1, which OpenSSL 3 refuses above security level 0.
    SSL_CTX_set_min_proto_version(native, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(native, TLS1_1_VERSION);
    SSL_CTX_set_cipher_list(native, "DEFAULT:@SECLEVEL=0");
  } else {
    SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  }
  return ctx;
}

// The Content-Length of a request head, 0 when there is none.
std::size_t content_length(std::string_view head) {
  std::string lower(head);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  auto at = lower.find("\r\ncontent-length:");
  if (at == std::string::npos) return 0;
  auto value = std::string_view(lower).substr(at + 17);
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  std::size_t n = 0;
  std::from_chars(value.data(), value.data() + value.size(), n);
  return n;
}

struct connection {
  connection(tcp::socket socket, asio::ssl::context& ctx) : stream(std::move(socket), ctx), timer(stream.get_executor()) {}
  tls_stream stream;
  asio::steady_timer timer;  // paces a trickle
  std::string in;            // bytes read past the last request

  void close() {
    std::error_code ignored;
    stream.next_layer().close(ignored);
    timer.cancel();
  }
};

}  // namespace

struct server::impl {
  impl(bool listening);
  ~impl();

  asio::awaitable<void> accept_loop();
  asio::awaitable<void> serve(std::shared_ptr<connection> c, std::optional<plan> p);
  static asio::awaitable<bool> read_request(connection& c);
  static asio::awaitable<void> write_response(connection& c, const plan& p, bool tls);
  static void reset(connection& c);
  static asio::awaitable<void> close_cleanly(connection& c, bool tls);

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};  // run() waits for listen()
  tcp::acceptor acceptor{io};
  unsigned short bound_port = 0;
  fake_atlassian::test_ca trusted, untrusted;
  std::map<handshake, std::unique_ptr<asio::ssl::context>> contexts;
  std::set<std::shared_ptr<connection>> live;  // io thread only

  mutable std::mutex mu;  // guards plans and accepted
  std::deque<plan> plans;
  std::size_t accepted = 0;
  std::thread thread;
};

server::impl::impl(bool listening) {
  const std::vector<std::string> names = {"127.0.0.1", "localhost"};
  contexts[handshake::good] = make_context(trusted.issue(names), false);
  contexts[handshake::expired_certificate] = make_context(trusted.issue(names, -48h, -24h), false);
  contexts[handshake::wrong_host_certificate] = make_context(trusted.issue({"wrong.example"}), false);
  contexts[handshake::untrusted_certificate] = make_context(untrusted.issue(names), false);
  contexts[handshake::tls1_1_only] = make_context(trusted.issue(names), true);

  tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), 0);
  acceptor.open(endpoint.protocol());
  acceptor.set_option(tcp::acceptor::reuse_address(true));
  acceptor.bind(endpoint);
  bound_port = acceptor.local_endpoint().port();
  if (listening) {
    acceptor.listen();
    asio::co_spawn(io, accept_loop(), asio::detached);
  }
  thread = std::thread([this] { io.run(); });
}

server::impl::~impl() {
  std::promise<void> stopped;
  asio::post(io, [this, &stopped] {
    std::error_code ignored;
    acceptor.close(ignored);
    for (const auto& c : live) c->close();
    stopped.set_value();
  });
  stopped.get_future().wait();
  work.reset();  // every operation left fails at once, so run() returns
  thread.join();
}

asio::awaitable<void> server::impl::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor || !acceptor.is_open()) co_return;
    if (ec) continue;
    std::optional<plan> p;
    {
      std::lock_guard lock(mu);
      ++accepted;
      if (!plans.empty()) {
        p = std::move(plans.front());
        plans.pop_front();
      }
    }
    const handshake h = p && p->tls != handshake::garbage ? p->tls : handshake::good;
    auto c = std::make_shared<connection>(std::move(socket), *contexts.at(h));
    live.insert(c);
    asio::co_spawn(io, serve(c, std::move(p)), [this, c](std::exception_ptr) {
      c->close();
      live.erase(c);
    });
  }
}

asio::awaitable<void> server::impl::serve(std::shared_ptr<connection> c, std::optional<plan> p) {
  if (p && p->tls == handshake::garbage) {
    std::array<char, 4096> hello;
    auto [ec, n] = co_await c->stream.next_layer().async_read_some(asio::buffer(hello), use_tuple);
    if (ec) co_return;
    co_await write_response(*c, *p, false);
    if (p->reset)
      reset(*c);
    else
      co_await close_cleanly(*c, false);
    co_return;
  }
  auto [hec] = co_await c->stream.async_handshake(asio::ssl::stream_base::server, use_tuple);
  if (hec) co_return;
  if (!p) {  // normal answers until the client leaves
    while (co_await read_request(*c)) {
      auto [wec, n] = co_await asio::async_write(c->stream, asio::buffer(normal_answer), use_tuple);
      if (wec) co_return;
    }
    co_return;
  }
  if (!co_await read_request(*c)) co_return;
  if (!p->answer) {  // say nothing; wait for the client to give up
    std::array<char, 1024> sink;
    for (;;) {
      auto [ec, n] = co_await c->stream.async_read_some(asio::buffer(sink), use_tuple);
      if (ec) co_return;
    }
  }
  co_await write_response(*c, *p, true);
  if (p->reset)
    reset(*c);
  else
    co_await close_cleanly(*c, p->close_notify);  // without close_notify: the plain FIN and drain
}

// Reads one request head and its Content-Length body; false once the client is gone.
asio::awaitable<bool> server::impl::read_request(connection& c) {
  auto [ec, head_size] = co_await asio::async_read_until(c.stream, asio::dynamic_buffer(c.in), "\r\n\r\n", use_tuple);
  if (ec) co_return false;
  const std::size_t whole = head_size + content_length(std::string_view(c.in).substr(0, head_size));
  if (c.in.size() < whole) {
    auto [bec, n] = co_await asio::async_read(c.stream, asio::dynamic_buffer(c.in), asio::transfer_exactly(whole - c.in.size()),
                                              use_tuple);
    if (bec) co_return false;
  }
  c.in.erase(0, whole);
  co_return true;
}

asio::awaitable<void> server::impl::write_response(connection& c, const plan& p, bool tls) {
  std::error_code ec;
  std::size_t n = 0;
  if (p.trickle.count() == 0) {
    if (tls)
      std::tie(ec, n) = co_await asio::async_write(c.stream, asio::buffer(p.response), use_tuple);
    else
      std::tie(ec, n) = co_await asio::async_write(c.stream.next_layer(), asio::buffer(p.response), use_tuple);
    co_return;
  }
  for (char byte : p.response) {
    c.timer.expires_after(p.trickle);
    std::tie(ec) = co_await c.timer.async_wait(use_tuple);
    if (ec || !c.stream.next_layer().is_open()) co_return;
    if (tls)
      std::tie(ec, n) = co_await asio::async_write(c.stream, asio::buffer(&byte, 1), use_tuple);
    else
      std::tie(ec, n) = co_await asio::async_write(c.stream.next_layer(), asio::buffer(&byte, 1), use_tuple);
    if (ec) co_return;
  }
}

void server::impl::reset(connection& c) {
  std::error_code ignored;
  c.stream.next_layer().set_option(asio::socket_base::linger(true, 0), ignored);
  c.stream.next_layer().close(ignored);  // with a zero linger time: RST, not FIN
}

asio::awaitable<void> server::impl::close_cleanly(connection& c, bool tls) {
  std::error_code ec;
  auto& socket = c.stream.next_layer();
  if (tls) {
    // Sends close_notify, then waits for the client's reply or for it to close.
    std::tie(ec) = co_await c.stream.async_shutdown(use_tuple);
  } else {
    socket.shutdown(tcp::socket::shutdown_send, ec);
    std::array<char, 1024> sink;
    for (;;) {
      auto [rec, n] = co_await socket.async_read_some(asio::buffer(sink), use_tuple);
      if (rec) break;
    }
  }
  socket.close(ec);
}

server::server(bool listening) : impl_(std::make_unique<impl>(listening)) {}
server::~server() = default;

unsigned short server::port() const { return impl_->bound_port; }
std::string server::base_url() const { return "https://127.0.0.1:" + std::to_string(impl_->bound_port); }
std::string server::ca_pem() const { return impl_->trusted.pem(); }

void server::listen() {
  std::promise<void> listening;
  asio::post(impl_->io, [this, &listening] {
    if (impl_->acceptor.is_open()) {
      impl_->acceptor.listen();
      asio::co_spawn(impl_->io, impl_->accept_loop(), asio::detached);
    }
    listening.set_value();
  });
  listening.get_future().wait();
}

void server::push(plan p) {
  std::lock_guard lock(impl_->mu);
  impl_->plans.push_back(std::move(p));
}

std::size_t server::queued() const {
  std::lock_guard lock(impl_->mu);
  return impl_->plans.size();
}

std::size_t server::connections() const {
  std::lock_guard lock(impl_->mu);
  return impl_->accepted;
}

}  // namespace hostile
