// hostile_server.hpp — a scripted TLS server on loopback for the fault matrix
// (tests/test_faults.cpp).
//
// Each accepted connection follows the next queued plan: which certificate or broken
// handshake it meets, then which bytes it gets (at once or trickled), or silence, and
// whether it ends with a TCP reset. Once the plans run out, connections get normal
// answers: every request, kept alive, gets 200 with the JSON body {"ok":true}. So a
// client that met a fault can show it recovered through the same origin.
//
// Like fake_atlassian.hpp, this header stays light (no Asio or OpenSSL); the server runs
// on its own thread and io_context behind a pimpl.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

namespace hostile {

// What the TLS handshake meets.
enum class handshake {
  good,                    // a certificate for 127.0.0.1 and localhost from the trusted CA
  expired_certificate,     // the same names and CA, expired yesterday
  wrong_host_certificate,  // the trusted CA, but only for wrong.example
  untrusted_certificate,   // the right names, from a CA nobody trusts
  tls1_1_only,             // a server that offers TLS 1.0 and 1.1 only (@SECLEVEL=0)
  garbage,                 // no TLS at all: `response` answers the ClientHello
};

// One connection's script. The response is written once the request head has been
// read (for handshake::garbage, once the ClientHello is in); then the server closes
// cleanly (TLS close_notify, FIN) unless `reset`.
struct plan {
  handshake tls = handshake::good;
  std::string response;
  std::chrono::milliseconds trickle{0};  // pause before each byte; 0: all at once
  bool answer = true;                    // false: read the request, then say nothing until the client leaves
  bool reset = false;                    // end with a TCP reset (SO_LINGER 0) instead of a clean close
  bool close_notify = true;              // false: end TLS with a bare TCP close, as a truncating attacker would
};

class server {
 public:
  // Binds 127.0.0.1 on a free port and serves from its own thread. When `listening` is
  // false the port is bound but refuses connections until listen() is called.
  explicit server(bool listening = true);
  ~server();  // closes every connection and joins the thread
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // All member functions are thread-safe.
  unsigned short port() const;
  std::string base_url() const;  // "https://127.0.0.1:PORT"
  std::string ca_pem() const;    // the trusted CA
  void listen();                 // start accepting connections (see the constructor)
  void push(plan);               // the next connection without a plan follows this one
  std::size_t queued() const;    // plans no connection has taken yet
  std::size_t connections() const;  // connections accepted so far

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace hostile
