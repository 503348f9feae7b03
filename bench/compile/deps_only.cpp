// The compile-cost baseline of bench/run: the work of examples/quickstart.cpp
// written by hand on confluence_oauth's dependencies alone (Asio, Asio SSL,
// nlohmann/json), with the same coroutine style. It catches the redirect on a
// loopback listener, trades the code for tokens, finds the site and lists its
// pages over verified TLS. Only compiled, never run: the benchmark compares
// what including confluence_oauth.hpp adds to a build.
// As confluence_oauth.hpp does: Asio 1.22 misses clang 14's C++20 coroutines.
#if defined(__clang__) && defined(__cpp_impl_coroutine) && !defined(ASIO_HAS_CO_AWAIT)
#define ASIO_HAS_CO_AWAIT 1
#define ASIO_HAS_STD_COROUTINE 1
#endif
#include <asio.hpp>
#include <asio/ssl.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <iostream>
#include <string>

namespace {

using asio::ip::tcp;
using tls_stream = asio::ssl::stream<tcp::socket>;

struct http_reply {
  int status = 0;
  std::string body;
};

/// One HTTPS exchange on a new verified connection; reads a Content-Length body.
asio::awaitable<http_reply> https(asio::ssl::context& tls, std::string host, std::string method, std::string target,
                                  std::string headers, std::string body) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  tls_stream stream(ex, tls);
  co_await asio::async_connect(stream.next_layer(), co_await resolver.async_resolve(host, "443", asio::use_awaitable),
                               asio::use_awaitable);
  SSL_set_tlsext_host_name(stream.native_handle(), host.c_str());
  stream.set_verify_mode(asio::ssl::verify_peer);
  stream.set_verify_callback(asio::ssl::host_name_verification(host));
  co_await stream.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);

  std::string request = method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\n" + headers +
                        "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  co_await asio::async_write(stream, asio::buffer(request), asio::use_awaitable);

  std::string data;
  auto head_end = co_await asio::async_read_until(stream, asio::dynamic_buffer(data), "\r\n\r\n", asio::use_awaitable);
  http_reply reply;
  reply.status = std::stoi(data.substr(9, 3));
  std::size_t length = 0;
  if (auto at = data.find("Content-Length: "); at != std::string::npos && at < head_end)
    length = std::stoul(data.substr(at + 16));
  if (data.size() < head_end + length)
    co_await asio::async_read(stream, asio::dynamic_buffer(data), asio::transfer_exactly(head_end + length - data.size()),
                              asio::use_awaitable);
  reply.body = data.substr(head_end, length);
  co_return reply;
}

/// Waits for the browser's redirect on the loopback listener; the code it carries.
asio::awaitable<std::string> catch_redirect(unsigned short port) {
  auto ex = co_await asio::this_coro::executor;
  tcp::acceptor acceptor(ex, {asio::ip::make_address("127.0.0.1"), port});
  auto socket = co_await acceptor.async_accept(asio::use_awaitable);
  std::string request;
  co_await asio::async_read_until(socket, asio::dynamic_buffer(request), "\r\n\r\n", asio::use_awaitable);
  auto code_at = request.find("code=");
  std::string code = request.substr(code_at + 5, request.find_first_of("& ", code_at) - code_at - 5);
  std::string page = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\nSigned in";
  co_await asio::async_write(socket, asio::buffer(page), asio::use_awaitable);
  co_return code;
}

asio::awaitable<void> run(std::string client_id, std::string client_secret) {
  asio::ssl::context tls(asio::ssl::context::tls_client);
  tls.set_default_verify_paths();
  std::cout << "https://auth.atlassian.com/authorize?audience=api.atlassian.com&client_id=" << client_id
            << "&scope=read%3Apage%3Aconfluence%20offline_access&redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fcallback"
               "&response_type=code&prompt=consent\n";
  const std::string code = co_await catch_redirect(3000);

  const nlohmann::json grant_request = {{"grant_type", "authorization_code"}, {"client_id", client_id},
                                        {"client_secret", client_secret},   {"code", code},
                                        {"redirect_uri", "http://localhost:3000/callback"}};
  auto token_reply = co_await https(tls, "auth.atlassian.com", "POST", "/oauth/token",
                                    "Content-Type: application/json\r\n", grant_request.dump());
  const auto tokens = nlohmann::json::parse(token_reply.body);
  const std::string bearer = "Authorization: Bearer " + tokens.at("access_token").get<std::string>() + "\r\n";

  auto sites = nlohmann::json::parse(
      (co_await https(tls, "api.atlassian.com", "GET", "/oauth/token/accessible-resources", bearer, "")).body);
  const std::string cloud_id = sites.at(0).at("id").get<std::string>();
  auto pages = nlohmann::json::parse(
      (co_await https(tls, "api.atlassian.com", "GET", "/ex/confluence/" + cloud_id + "/wiki/api/v2/pages?limit=50",
                      bearer, ""))
          .body);
  for (const auto& page : pages.at("results"))
    std::cout << page["id"].get<std::string>() << '\t' << page["title"].get<std::string>() << '\n';
}

}  // namespace

int main() {
  const char* id = std::getenv("ATLASSIAN_CLIENT_ID");
  const char* secret = std::getenv("ATLASSIAN_CLIENT_SECRET");
  if (!id || !secret) return 2;
  asio::io_context io;
  int status = 0;
  asio::co_spawn(io, run(id, secret), [&](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const std::exception& error) {
      std::cerr << error.what() << '\n';
      status = 1;
    }
  });
  io.run();
  return status;
}
