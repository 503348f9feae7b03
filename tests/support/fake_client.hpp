// A client configuration pointed at a fake Atlassian server.
#pragma once

#include "confluence_oauth.hpp"
#include "fake_atlassian.hpp"

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
