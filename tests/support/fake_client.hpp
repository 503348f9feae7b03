// A client configuration pointed at a fake Atlassian server.
#pragma once

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"

#include <future>
#include <string>

namespace test_util {

inline confluence_oauth::client_config client_config_for(const fake_atlassian::server& srv, std::string redirect_uri) {
  confluence_oauth::client_config c;
  c.client_id = "test-client-id";
  c.client_secret = confluence_oauth::secret("test-client-secret");
  c.redirect_uri = std::move(redirect_uri);
  c.authorize_url = srv.base_url() + "/authorize";
  c.token_url = srv.base_url() + "/oauth/token";
  c.api_url = srv.base_url();
  c.tls.ca_pem = srv.ca_pem();
  return c;
}

}  // namespace test_util

namespace test_util {

/// A fresh grant from the fake server, as if the user had just consented.
inline confluence_oauth::token_set grant_from(fake_atlassian::server& srv, const confluence_oauth::client_config& cfg,
                                              const std::string& scope) {
  asio::io_context io;
  confluence_oauth::oauth_client client(io.get_executor(), cfg);
  confluence_oauth::authorization auth;
  auth.redirect_uri = cfg.redirect_uri;
  auto code = confluence_oauth::secret(srv.issue_code(cfg.redirect_uri, scope));
  auto f = asio::co_spawn(io, client.exchange_code(code, auth), asio::use_future);
  io.run();
  return f.get();
}

}  // namespace test_util
