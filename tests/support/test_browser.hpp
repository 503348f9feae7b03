// An HTTP client that acts as a browser for the authorization flow: it
// follows redirects and, on the fake server's consent page, submits the form
// with Allow or Deny. Used by the tests and by the `fake-browser` program.
#pragma once

#include "confluence_oauth.hpp"

#include <string>
#include <vector>

namespace test_browser {

namespace cfo = confluence_oauth;

enum class decision { allow, deny };

struct visit {
  int status = 0;
  std::string url;   // the last URL fetched
  std::string body;  // its body
  std::vector<std::string> urls;  // every URL fetched, in order
};

/// Extracts name/value pairs of every <input> inside the first <form> with a
/// name attribute, plus the form's action. Good enough for the fake server's page.
struct form {
  std::string action;
  std::vector<std::pair<std::string, std::string>> fields;
};

inline std::string html_unescape(std::string s) {
  const std::pair<const char*, const char*> entities[] = {
      {"&quot;", "\""}, {"&#39;", "'"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&amp;", "&"}};
  for (auto [from, to] : entities)
    for (auto pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + 1)) s.replace(pos, std::strlen(from), to);
  return s;
}

inline std::string attribute(std::string_view tag, std::string_view name) {
  std::string key = " " + std::string(name) + "=\"";
  auto pos = tag.find(key);
  if (pos == std::string_view::npos) return {};
  pos += key.size();
  auto end = tag.find('"', pos);
  return html_unescape(std::string(tag.substr(pos, end - pos)));
}

inline std::optional<form> find_form(std::string_view html) {
  auto start = html.find("<form");
  if (start == std::string_view::npos) return std::nullopt;
  auto end = html.find("</form>", start);
  auto body = html.substr(start, end - start);
  form f;
  f.action = attribute(body.substr(0, body.find('>')), "action");
  for (auto pos = body.find("<input"); pos != std::string_view::npos; pos = body.find("<input", pos + 1)) {
    auto tag = body.substr(pos, body.find('>', pos) - pos);
    auto n = attribute(tag, "name");
    if (!n.empty()) f.fields.emplace_back(n, attribute(tag, "value"));
  }
  return f;
}

/// Opens `start` and follows the flow to its end: redirects (at most 10), and
/// the consent form answered with `d`. Returns the last page.
inline asio::awaitable<visit> browse(cfo::detail::http_client& http, std::string start, decision d = decision::allow) {
  visit v;
  cfo::detail::url next = cfo::detail::parse_url(start);
  cfo::http_request req;
  for (int hop = 0; hop < 12; ++hop) {
    v.urls.push_back(next.str());
    auto res = co_await http.send(next, req);
    v.status = res.status;
    v.url = next.str();
    v.body = res.body;
    if (res.status >= 300 && res.status < 400) {
      auto location = res.headers.get("Location");
      if (!location) co_return v;
      next = cfo::detail::resolve_reference(next, *location);
      req = {};
      continue;
    }
    auto f = res.status == 200 && req.method == "GET" ? find_form(res.body) : std::nullopt;
    if (!f) co_return v;
    req = {};
    req.method = "POST";
    for (const auto& [name, value] : f->fields) cfo::detail::append_param(req.body, name, value);
    cfo::detail::append_param(req.body, "decision", d == decision::allow ? "allow" : "deny");
    req.headers.add("Content-Type", "application/x-www-form-urlencoded");
    next = cfo::detail::resolve_reference(next, f->action.empty() ? next.target : f->action);
  }
  co_return v;
}

}  // namespace test_browser
