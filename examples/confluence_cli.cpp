// confluence-cli — sign in to Confluence Cloud with OAuth 2.0 (3LO) and hand
// access tokens to scripts:
//
//   confluence-cli login              authorize in the browser, save the grant
//   confluence-cli token [--refresh]  print a valid access token
//
// The whole program is one coroutine on one asio::io_context: no threads.
// SIGINT and SIGTERM emit a terminal cancellation to that coroutine, which ends
// whatever it waits for (redirect, HTTP request) with operation_aborted; the
// program then exits 130. A second signal exits at once.
//
// New commands are one function and one line in `commands` below.

#include "confluence_oauth.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

enum exit_code : int {
  exit_ok = 0,
  exit_failure = 1,        // unexpected failure
  exit_usage = 2,          // usage or configuration error
  exit_authorization = 3,  // authorization denied, failed or timed out
  exit_reconsent = 4,      // not logged in, or the grant is gone
  exit_retry = 5,          // network or server trouble: retry later
  exit_interrupted = 130,  // SIGINT or SIGTERM
};

/// A failure that already knows its message and exit code.
struct cli_error : std::runtime_error {
  cli_error(int code, const std::string& message) : std::runtime_error(message), code(code) {}
  int code;
};

[[noreturn]] void usage_error(const std::string& message) { throw cli_error(exit_usage, message); }

std::string help_text() {
  const cfo::client_config d;  // the library's defaults are Atlassian's
  std::string scopes;
  for (const auto& s : d.scopes) scopes += (scopes.empty() ? "" : " ") + s;
  return "usage: confluence-cli [options] <command>\n"
         "\n"
         "Sign in to Confluence Cloud with OAuth 2.0 (3LO) and hand out access tokens.\n"
         "\n"
         "Commands:\n"
         "  login              open the browser to authorize this app, wait for the\n"
         "                     redirect, and save the granted tokens to the token file\n"
         "  token [--refresh]  print a valid access token on stdout, refreshing it first\n"
         "                     when it expires within 60 s (always with --refresh)\n"
         "\n"
         "Options (--opt VALUE or --opt=VALUE):\n"
         "  --client-id ID          OAuth client id (default: $ATLASSIAN_CLIENT_ID)\n"
         "  --client-secret SECRET  OAuth client secret (default: $ATLASSIAN_CLIENT_SECRET;\n"
         "                          prefer the variable: command lines are visible to others)\n"
         "  --redirect-uri URI      callback URL registered for the app; login listens on it\n"
         "                          (default " + d.redirect_uri + ")\n"
         "  --scope SCOPE           scope to request; repeatable, a value may hold several\n"
         "                          separated by spaces (default: " + scopes + ")\n"
         "  --token-file PATH       where the tokens are kept (default:\n"
         "                          $XDG_CONFIG_HOME/confluence-oauth/tokens.json, else\n"
         "                          $HOME/.config/confluence-oauth/tokens.json); folders it\n"
         "                          creates are mode 0700, the file is mode 0600\n"
         "  --authorize-url URL     authorization endpoint (default " + d.authorize_url + ")\n"
         "  --token-url URL         token endpoint (default " + d.token_url + ")\n"
         "  --api-url URL           API base URL (default " + d.api_url + ")\n"
         "  --ca-file PEM           also trust the CA certificates in this PEM file\n"
         "  --token-encoding ENC    token request body: json (Atlassian; default) or form\n"
         "  --pkce                  send a PKCE S256 challenge (standard servers; with it the\n"
         "                          client secret may be omitted)\n"
         "  --audience VALUE        audience parameter (default " + d.audience + "; '' omits it)\n"
         "  --prompt VALUE          prompt parameter (default " + d.prompt + "; '' omits it)\n"
         "  --browser CMD           open the URL with CMD, split on spaces, URL appended\n"
         "                          (default: $BROWSER, else the system opener)\n"
         "  --no-browser            do not open a browser, only print the URL\n"
         "  --timeout SECONDS       how long login waits for the redirect (default 300)\n"
         "  --request-timeout SECONDS  limit for each HTTP request (default 30)\n"
         "  -h, --help              show this help\n"
         "\n"
         "Exit status:\n"
         "  0    success\n"
         "  1    unexpected failure (including a token file that cannot be read or written)\n"
         "  2    usage or configuration error (bad option, missing client id or secret,\n"
         "       client rejected, untrusted certificate, redirect port in use)\n"
         "  3    authorization denied, failed or timed out\n"
         "  4    not logged in, the grant was revoked or expired, or the token file is\n"
         "       corrupt: run login again\n"
         "  5    network or server trouble (unreachable, timeout, 5xx, 429): retry later\n"
         "  130  interrupted (SIGINT or SIGTERM)\n";
}

// ---------------------------------------------------------------------------
// Settings, from the command line and the environment
// ---------------------------------------------------------------------------

struct settings {
  cfo::client_config config;
  std::filesystem::path token_file;
  std::vector<std::string> browser;  // empty: the system opener
  bool no_browser = false;
  std::chrono::seconds wait_timeout = 300s;
  std::string command;
  std::vector<std::string> args;  // the command's own arguments (e.g. --refresh)
};

std::vector<std::string> split_spaces(std::string_view text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while ((pos = text.find_first_not_of(" \t\n", pos)) != std::string_view::npos) {
    auto end = text.find_first_of(" \t\n", pos);
    out.emplace_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

std::chrono::seconds parse_seconds(std::string_view option, std::string_view text, long long max) {
  auto v = cfo::detail::parse_uint<long long>(text);
  if (!v || *v < 1 || *v > max)
    usage_error(std::string(option) + ": expected whole seconds from 1 to " + std::to_string(max) + ", got \"" +
                cfo::detail::sanitize_text(text, 40) + "\"");
  return std::chrono::seconds(*v);
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::filesystem::path default_token_file() {
  std::filesystem::path base;
  if (auto xdg = env("XDG_CONFIG_HOME"); !xdg.empty() && xdg.front() == '/') base = xdg;  // XDG: absolute only
  else if (auto home = env("HOME"); !home.empty()) base = std::filesystem::path(home) / ".config";
  else usage_error("cannot find a home for the token file: set HOME or pass --token-file");
  return base / "confluence-oauth" / "tokens.json";
}

settings parse_arguments(int argc, char** argv) {
  settings s;
  std::optional<std::string> client_id, client_secret;
  bool scope_given = false, positional_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (positional_only || arg.size() < 2 || arg.front() != '-') {  // the command, then its arguments
      if (s.command.empty()) s.command = arg;
      else s.args.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      positional_only = true;
      continue;
    }
    auto eq = arg.find('=');
    std::string_view name = arg.substr(0, eq);
    char* inline_value = eq == std::string_view::npos ? nullptr : argv[i] + eq + 1;
    // The option's value, from "--opt=VALUE" or the next argument.
    char* raw = nullptr;
    auto value = [&]() -> std::string {
      if (!inline_value && i + 1 >= argc) usage_error("option " + std::string(name) + " needs a value");
      raw = inline_value ? inline_value : argv[++i];
      return raw;
    };
    auto flag = [&] {
      if (inline_value) usage_error("option " + std::string(name) + " takes no value");
    };

    if (name == "--help" || name == "-h") {
      std::cout << help_text();
      std::exit(exit_ok);
    } else if (name == "--client-id") {
      client_id = value();
    } else if (name == "--client-secret") {
      client_secret = value();
      std::memset(raw, 'x', std::strlen(raw));  // hide it from ps (best effort: it was visible until now)
    } else if (name == "--redirect-uri") {
      s.config.redirect_uri = value();
    } else if (name == "--scope") {
      if (!scope_given) s.config.scopes.clear();  // the first --scope replaces the defaults
      scope_given = true;
      for (auto& scope : split_spaces(value())) s.config.scopes.push_back(std::move(scope));
    } else if (name == "--token-file") {
      s.token_file = value();
      if (s.token_file.empty()) usage_error("--token-file: empty path");
    } else if (name == "--authorize-url") {
      s.config.authorize_url = value();
    } else if (name == "--token-url") {
      s.config.token_url = value();
    } else if (name == "--api-url") {
      s.config.api_url = value();
    } else if (name == "--ca-file") {
      s.config.tls.ca_file = value();
    } else if (name == "--token-encoding") {
      auto v = value();
      if (v == "json") s.config.encoding = cfo::token_encoding::json;
      else if (v == "form") s.config.encoding = cfo::token_encoding::form;
      else usage_error("--token-encoding: expected json or form, got \"" + cfo::detail::sanitize_text(v, 40) + "\"");
    } else if (name == "--pkce") {
      flag();
      s.config.use_pkce = true;
    } else if (name == "--audience") {
      s.config.audience = value();
    } else if (name == "--prompt") {
      s.config.prompt = value();
    } else if (name == "--browser") {
      s.browser = split_spaces(value());
      if (s.browser.empty()) usage_error("--browser: empty command");
    } else if (name == "--no-browser") {
      flag();
      s.no_browser = true;
    } else if (name == "--timeout") {
      s.wait_timeout = parse_seconds(name, value(), 24 * 3600);
    } else if (name == "--request-timeout") {
      s.config.timeout.request = parse_seconds(name, value(), 3600);
    } else if (name == "--refresh") {  // a command option: the command checks it
      flag();
      s.args.emplace_back(name);
    } else {
      usage_error("unknown option " + cfo::detail::sanitize_text(arg, 60));
    }
  }

  if (s.command.empty()) usage_error("missing command (login or token)");
  s.config.client_id = client_id ? *client_id : env("ATLASSIAN_CLIENT_ID");
  s.config.client_secret = cfo::secret(client_secret ? *client_secret : env("ATLASSIAN_CLIENT_SECRET"));
  if (s.config.client_id.empty()) usage_error("missing client id: pass --client-id or set ATLASSIAN_CLIENT_ID");
  if (s.config.client_secret.empty() && !s.config.use_pkce)
    usage_error("missing client secret: set ATLASSIAN_CLIENT_SECRET or pass --client-secret");
  if (s.token_file.empty()) s.token_file = default_token_file();
  return s;
}

// ---------------------------------------------------------------------------
// The token file's folder
// ---------------------------------------------------------------------------

/// An exclusive flock(2) on the token file's folder while a refresh is in flight,
/// so that two confluence-cli processes never spend the same rotating refresh token.
class folder_lock {
 public:
  static asio::awaitable<folder_lock> acquire(std::filesystem::path dir) {
    folder_lock lock(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    asio::steady_timer retry(co_await asio::this_coro::executor);
    // Poll rather than block, so that the wait stays cancellable. A file system
    // without locks (or a folder we cannot open) simply goes unlocked.
    while (lock.fd_ >= 0 && ::flock(lock.fd_, LOCK_EX | LOCK_NB) != 0 && (errno == EWOULDBLOCK || errno == EINTR)) {
      retry.expires_after(100ms);
      co_await retry.async_wait(asio::use_awaitable);
    }
    co_return lock;
  }
  folder_lock(folder_lock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  folder_lock& operator=(folder_lock&&) = delete;
  ~folder_lock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }

 private:
  explicit folder_lock(int fd) : fd_(fd) {}
  int fd_;
};

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

void expect_no_arguments(const settings& s) {
  if (!s.args.empty()) usage_error(s.command + ": unexpected argument " + cfo::detail::sanitize_text(s.args.front(), 60));
}

/// The stored tokens, refreshed first when `force` or when they expire within a
/// minute. A refreshed set is saved before it is returned: the refresh token it
/// replaces may already be dead.
asio::awaitable<cfo::token_set> current_tokens(const cfo::oauth_client& client, cfo::token_store& store,
                                               std::filesystem::path folder, bool force) {
  auto tokens = co_await store.load();
  if (tokens && !force && !tokens->expires_within(60s)) co_return std::move(*tokens);
  auto lock = co_await folder_lock::acquire(std::move(folder));
  tokens = co_await store.load();  // another process may have refreshed while we waited
  if (!tokens) throw cli_error(exit_reconsent, "not logged in: run confluence-cli login");
  if (!force && !tokens->expires_within(60s)) co_return std::move(*tokens);
  auto next = co_await client.refresh(*tokens);
  co_await store.save(next);
  co_return next;
}

asio::awaitable<int> login(const settings& s) {
  expect_no_arguments(s);
  cfo::oauth_client client(co_await asio::this_coro::executor, s.config);
  // Fail before the user consents, not after (a failure is a store_error: exit 1).
  cfo::detail::create_private_folders(s.token_file.parent_path());
  cfo::file_token_store store(s.token_file);

  cfo::browser_opener launch;
  if (!s.no_browser) launch = s.browser.empty() ? cfo::browser_opener(cfo::open_browser) : cfo::browser_command(s.browser);
  // The URL holds only public values and a single-use state: fine to print.
  cfo::browser_opener show_and_launch = [&](const std::string& url) -> asio::awaitable<void> {
    std::cerr << "Open this URL to authorize:\n  " << url << '\n' << std::flush;
    if (launch) {
      try {
        co_await launch(url);
      } catch (const cfo::oauth_error& e) {
        if (e.code() != cfo::errc::browser_launch_failed) throw;
        std::cerr << "confluence-cli: " << e.what() << "; open the URL yourself\n";
      }
    }
    std::cerr << "Waiting up to " << s.wait_timeout.count() << " s for the authorization (Ctrl-C to cancel)...\n";
  };

  cfo::listener_options listen;
  listen.timeout = s.wait_timeout;
  listen.app_name = "confluence-cli";
  auto tokens = co_await cfo::authorize(client, show_and_launch, listen);
  co_await store.save(tokens);

  std::string expiry = "expiry unknown";
  if (tokens.expires_at != cfo::token_set::clock::time_point::max())
    expiry = "expires in " +
             std::to_string(std::chrono::round<std::chrono::seconds>(tokens.expires_at - cfo::token_set::clock::now()).count()) +
             " s";
  std::cout << "Logged in: token saved to " << store.path().string() << " (" << expiry
            << ", scopes: " << (tokens.scope.empty() ? "unknown" : tokens.scope)
            << ", refresh token: " << (tokens.has_refresh_token() ? "yes" : "no") << ")" << std::endl;
  co_return exit_ok;
}

asio::awaitable<int> token(const settings& s) {
  bool force = false;
  for (const auto& a : s.args)
    if (a == "--refresh") force = true;
    else usage_error("token: unexpected argument " + cfo::detail::sanitize_text(a, 60));
  cfo::oauth_client client(co_await asio::this_coro::executor, s.config);
  cfo::file_token_store store(s.token_file);
  auto tokens = co_await current_tokens(client, store, s.token_file.parent_path(), force);
  std::cout << tokens.access_token.reveal() << '\n' << std::flush;
  co_return std::cout ? exit_ok : exit_failure;
}

struct command {
  std::string_view name;
  asio::awaitable<int> (*run)(const settings&);
};

constexpr command commands[] = {
    {"login", login},
    {"token", token},
};

// ---------------------------------------------------------------------------
// Errors to exit codes
// ---------------------------------------------------------------------------

int exit_code_for(const std::error_code& ec) {
  using cfo::errc;
  if (ec == errc::authorization_denied || ec == errc::authorization_failed || ec == errc::listener_timeout ||
      ec == errc::state_mismatch)
    return exit_authorization;
  if (ec == errc::store_error) return exit_failure;  // the token file cannot be read or written
  if (ec == cfo::condition::reauthenticate) return exit_reconsent;
  if (ec == cfo::condition::fix_configuration) return exit_usage;
  if (ec == cfo::condition::retry_later) return exit_retry;
  return exit_failure;
}

/// Runs one command and turns every failure into a message and an exit code.
asio::awaitable<int> run(const command& cmd, const settings& s, const bool& interrupted) {
  try {
    co_return co_await cmd.run(s);
  } catch (const cli_error& e) {
    std::cerr << "confluence-cli: " << e.what() << '\n';
    co_return e.code;
  } catch (const std::system_error& e) {  // oauth_error, and Asio's operation_aborted
    if (interrupted) {
      std::cerr << "confluence-cli: interrupted\n";
      co_return exit_interrupted;
    }
    std::cerr << "confluence-cli: " << e.what() << '\n';
    int code = exit_code_for(e.code());
    if (e.code() == cfo::errc::invalid_grant)
      std::cerr << "confluence-cli: the grant was revoked or expired: run confluence-cli login again\n";
    else if (code == exit_reconsent)
      std::cerr << "confluence-cli: run confluence-cli login again\n";
    auto* oauth = dynamic_cast<const cfo::oauth_error*>(&e);
    if (oauth && oauth->retry_after())
      std::cerr << "confluence-cli: the server asks to retry after " << oauth->retry_after()->count() << " s\n";
    co_return code;
  } catch (const std::exception& e) {
    std::cerr << "confluence-cli: " << (interrupted ? "interrupted" : e.what()) << '\n';
    co_return interrupted ? exit_interrupted : exit_failure;
  }
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  const command* cmd = nullptr;
  try {
    s = parse_arguments(argc, argv);
    for (const auto& c : commands)
      if (c.name == s.command) cmd = &c;
    if (!cmd) usage_error("unknown command " + cfo::detail::sanitize_text(s.command, 60));
  } catch (const cli_error& e) {
    std::cerr << "confluence-cli: " << e.what() << "\nTry 'confluence-cli --help'.\n";
    return e.code;
  }

  asio::io_context io(1);
  asio::cancellation_signal cancel;
  bool interrupted = false;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  std::function<void(const std::error_code&, int)> on_signal = [&](const std::error_code& ec, int) {
    if (ec) return;                                   // the command finished
    if (interrupted) std::_Exit(exit_interrupted);    // a second signal: do not wait for the unwinding
    interrupted = true;
    cancel.emit(asio::cancellation_type::terminal);  // ends the command's current wait
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);

  int result = exit_failure;
  asio::co_spawn(io, run(*cmd, s, interrupted),
                 asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e, int code) {
                   result = e ? exit_failure : code;
                   signals.cancel();
                 }));
  io.run();
  return result;
}
