// confluence-cli — sign in to Confluence Cloud with OAuth 2.0 (3LO), hand
// access tokens to scripts, and read from the Confluence REST API:
//
//   confluence-cli login [--no-browser]           authorize in the browser, save the grant
//   confluence-cli status                         the stored grant: usable or not, and why
//   confluence-cli token [--refresh]              print a valid access token
//   confluence-cli sites                          list the sites the grant reaches
//   confluence-cli pages [--site SITE] [--limit N]  list a site's pages
//   confluence-cli get [--site SITE] PATH         GET an API path, print its JSON
//   confluence-cli logout                         forget the grant
//   confluence-cli help [COMMAND]                 the options, or one command's help
//   confluence-cli --client-credentials token|sites|pages|get
//                                                 the same as an Atlassian service account
//
// Each command works through a confluence_oauth::session over the token file,
// which refreshes the access token when needed and saves the rotated tokens
// before using them.
//
// The whole program is one coroutine on one asio::io_context: no threads.
// SIGINT and SIGTERM emit a terminal cancellation to that coroutine, which ends
// whatever it waits for (redirect, pasted URL, HTTP request) with
// operation_aborted; the program then exits 130. A second signal exits at once.
//
// New commands are one function and one entry in `commands` below.

#include "confluence_oauth.hpp"
#ifdef CONFLUENCE_OAUTH_EXAMPLE_POSTGRES
#include "confluence_oauth_postgres.hpp"
#endif

#include <asio/experimental/parallel_group.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/read_until.hpp>
#include <asio/redirect_error.hpp>
#if ASIO_VERSION >= 102300
#include <asio/deferred.hpp>
#else
#include <asio/experimental/deferred.hpp>
#endif
#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace cfo = confluence_oauth;
using namespace std::chrono_literals;

namespace {

#if ASIO_VERSION >= 102300
constexpr auto deferred = asio::deferred;
#else
constexpr auto deferred = asio::experimental::deferred;
#endif

enum exit_code : int {
  exit_ok = 0,
  exit_failure = 1,        // unexpected failure
  exit_usage = 2,          // usage or configuration error
  exit_authorization = 3,  // authorization denied, failed or timed out; status: log in again
  exit_reconsent = 4,      // not logged in, or the grant is gone
  exit_retry = 5,          // network or server trouble: retry later
  exit_interrupted = 130,  // SIGINT or SIGTERM
};

constexpr std::size_t default_page_limit = 25;  // Confluence's own default page size
constexpr std::size_t max_page_limit = 100000;  // get_all keeps every page in memory
constexpr std::size_t max_page_size = 250;      // the most one v2 listing request returns

/// A failure that already knows its message and exit code.
struct cli_error : std::runtime_error {
  cli_error(int code, const std::string& message) : std::runtime_error(message), code(code) {}
  int code;
};

[[noreturn]] void usage_error(const std::string& message) { throw cli_error(exit_usage, message); }

// ---------------------------------------------------------------------------
// Small helpers: numbers, text for the terminal, files, memory
// ---------------------------------------------------------------------------

/// The whole of `text` as a non-negative decimal number ("+1", "-1", "1x" and
/// "" are not), or nullopt when it is not one or does not fit.
template <typename Int>
std::optional<Int> parse_number(std::string_view text) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  Int value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

/// The length (1 to 4) of the well-formed UTF-8 character at the start of
/// `s`, and its code point; 0 for anything else (a stray byte, an overlong
/// form, a surrogate, a character cut short).
std::size_t utf8_char(std::string_view s, char32_t& cp) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = byte(0);
  const std::size_t n = lead < 0x80 ? 1 : lead < 0xC2 ? 0 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : lead < 0xF5 ? 4 : 0;
  if (n == 0 || n > s.size()) return 0;
  cp = n == 1 ? lead : lead & (0x7F >> n);
  for (std::size_t i = 1; i < n; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i) & 0x3F);
  }
  const bool overlong = (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000);
  if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

/// Text from outside (a server's answer, an argument, a file name) made safe
/// for a terminal, and short: control characters (C0, DEL, C1, the line and
/// paragraph separators) become spaces, so that nothing moves the cursor or
/// breaks the columns; bidirectional overrides, isolates and marks, which can
/// make a terminal show text in another order, are dropped; bytes that are
/// not UTF-8 become '?'. At most `max` bytes of it, never half a character,
/// then "..." when it was cut.
std::string terminal_text(std::string_view in, std::size_t max) {
  auto is_control = [](char32_t c) { return c < 0x20 || (c >= 0x7F && c <= 0x9F) || c == 0x2028 || c == 0x2029; };
  auto is_bidi = [](char32_t c) {
    return c == 0x061C || c == 0x200E || c == 0x200F || (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
  };
  std::string out;
  std::size_t i = 0;
  while (i < in.size()) {
    char32_t cp = 0;
    const std::size_t n = utf8_char(in.substr(i), cp);
    if (i + std::max<std::size_t>(n, 1) > max) break;
    if (n == 0) out += '?';
    else if (is_control(cp)) out += ' ';
    else if (!is_bidi(cp)) out.append(in.substr(i, n));
    i += std::max<std::size_t>(n, 1);
  }
  if (i < in.size()) out += "...";
  return out;
}

/// A file descriptor, closed when it goes.
class file_descriptor {
 public:
  explicit file_descriptor(int fd) noexcept : fd_(fd) {}
  file_descriptor(const file_descriptor&) = delete;
  file_descriptor& operator=(const file_descriptor&) = delete;
  ~file_descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_;
};

/// Overwrites a string's bytes before it is freed, however the scope ends:
/// for text that holds a key.
struct wipe_on_exit {
  std::string& text;
  ~wipe_on_exit() { OPENSSL_cleanse(text.data(), text.size()); }
};

/// The value of a hexadecimal digit, or -1.
int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// The host of an http(s) URL, in lower case, without port or brackets; empty
/// when `url` is not one (the client's validation then says what is wrong).
std::string host_of(std::string_view url) {
  auto scheme = url.find("://");
  if (scheme == std::string_view::npos) return {};
  auto authority = url.substr(scheme + 3);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  if (authority.find('@') != std::string_view::npos) return {};  // user information: refused anyway
  std::string_view host = authority;
  if (!host.empty() && host.front() == '[') host = host.substr(1, host.find(']') - 1);
  else host = host.substr(0, host.rfind(':'));
  std::string out(host);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

/// Creates the missing folders of `dir`, parents included, mode 0700 from the
/// start (and again after the umask may have taken bits away); existing
/// folders are left as they are. Fails as the token store does: store_error.
void create_private_folders(const std::filesystem::path& dir) {
  std::filesystem::path partial;
  for (const auto& part : dir) {
    partial /= part;
    if (::mkdir(partial.c_str(), 0700) == 0) {
      ::chmod(partial.c_str(), 0700);
    } else if (errno != EEXIST) {
      throw cfo::oauth_error(cfo::errc::store_error,
                             "cannot create " + partial.string() + ": " + std::generic_category().message(errno));
    }
  }
}

// ---------------------------------------------------------------------------
// Settings, from the command line and the environment
// ---------------------------------------------------------------------------

struct settings {
  cfo::client_config config;
  std::filesystem::path token_file;
  cfo::secret key;                   // the token file's encryption key; empty: not encrypted
  std::string token_db;              // --token-db: the grant is in PostgreSQL
  std::string grant_key;             // --grant-key: its row there
  std::vector<std::string> browser;  // empty: the system opener
  bool no_browser = false;
  bool redirect_page = true;         // the browser opens a private page that leads to the URL
  std::chrono::seconds wait_timeout = 300s;
  std::string command;                       // with help: the command to explain, or empty
  bool help = false;                         // --help, or the help command
  std::vector<std::string> args;             // the command's positional arguments (get's PATH)
  std::vector<std::string> command_options;  // the command options given, checked against the command's
  bool refresh = false;                      // token --refresh
  std::string site;                          // pages, get --site; empty: the only site
  std::size_t limit = default_page_limit;    // pages --limit
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
  auto v = parse_number<long long>(text);
  if (!v || *v < 1 || *v > max)
    usage_error(std::string(option) + ": expected whole seconds from 1 to " + std::to_string(max) + ", got \"" +
                terminal_text(text, 40) + "\"");
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

/// The token file's key from --key-file: exactly 32 raw bytes, or 64 hex
/// digits (trailing white space allowed). Like ssh with private keys, a
/// symbolic link, a file of another user and a file others may read or write
/// are refused; the checks are on the open descriptor, so the file cannot be
/// swapped between check and read.
cfo::secret read_key_file(const std::string& path) {
  const std::string what = "--key-file " + terminal_text(path, 200);
  file_descriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK));
  if (!fd && errno == ELOOP) usage_error(what + ": a symbolic link: name the key file itself");
  if (!fd) usage_error(what + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) usage_error(what + ": not a regular file");
  if (st.st_uid != ::geteuid())
    usage_error(what + ": owned by user " + std::to_string(st.st_uid) + ", not by this user (" +
                std::to_string(::geteuid()) + ")");
  if ((st.st_mode & 077) != 0)
    usage_error(what + ": the key is accessible to group or others (mode 0" +
                std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
                std::to_string(st.st_mode & 7) + "): run chmod 600 on it");
  std::string text(130, '\0');  // one byte more than the longest form accepted
  wipe_on_exit wipe{text};
  std::size_t size = 0;
  while (size < text.size()) {
    auto n = ::read(fd.get(), text.data() + size, text.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) usage_error(what + ": " + std::strerror(errno));
    if (n == 0) break;
    size += static_cast<std::size_t>(n);
  }
  std::string_view content(text.data(), size);
  if (content.size() == 32) return cfo::secret(content);
  while (!content.empty() && std::isspace(static_cast<unsigned char>(content.back()))) content.remove_suffix(1);
  if (content.size() == 64 &&
      std::all_of(content.begin(), content.end(), [](char c) { return hex_digit(c) >= 0; })) {
    std::string key(32, '\0');
    for (std::size_t i = 0; i < key.size(); ++i)
      key[i] = static_cast<char>(hex_digit(content[2 * i]) * 16 + hex_digit(content[2 * i + 1]));
    return cfo::secret(std::move(key));
  }
  usage_error(what + ": expected 32 raw bytes or 64 hex digits (e.g. from 'openssl rand -hex 32')");
}

struct command;
const command& command_named(std::string_view name);
const command& find_command(const settings& s);

settings parse_arguments(int argc, char** argv) {
  settings s;
  std::optional<std::string> client_id, client_secret, key_file;
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
      flag();
      s.help = true;
    } else if (name == "--client-id") {
      client_id = value();
    } else if (name == "--client-credentials") {
      flag();
      s.config.service_account = true;
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
    } else if (name == "--key-file") {
      key_file = value();
    } else if (name == "--token-db") {
      s.token_db = value();
      std::memset(raw, 'x', std::strlen(raw));  // it may hold a password: as --client-secret
    } else if (name == "--grant-key") {
      s.grant_key = value();
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
      if (v == "json") s.config.encoding = cfo::client_config::token_encoding::json;
      else if (v == "form") s.config.encoding = cfo::client_config::token_encoding::form;
      else usage_error("--token-encoding: expected json or form, got \"" + terminal_text(v, 40) + "\"");
    } else if (name == "--pkce") {  // the default since 1.1; still accepted
      flag();
      s.config.use_pkce = true;
    } else if (name == "--no-pkce") {
      flag();
      s.config.use_pkce = false;
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
    } else if (name == "--no-redirect-page") {
      flag();
      s.redirect_page = false;
    } else if (name == "--timeout") {
      s.wait_timeout = parse_seconds(name, value(), 24 * 3600);
    } else if (name == "--request-timeout") {
      s.config.timeouts.request = parse_seconds(name, value(), 3600);
    } else if (name == "--refresh") {  // command options: find_command checks that the command takes them
      flag();
      s.refresh = true;
      s.command_options.emplace_back(name);
    } else if (name == "--site") {
      s.site = value();
      if (s.site.empty()) usage_error("--site: empty site");
      s.command_options.emplace_back(name);
    } else if (name == "--limit") {
      auto v = value();
      auto n = parse_number<std::size_t>(v);
      if (!n || *n < 1 || *n > max_page_limit)
        usage_error("--limit: expected a number of pages from 1 to " + std::to_string(max_page_limit) + ", got \"" +
                    terminal_text(v, 40) + "\"");
      s.limit = *n;
      s.command_options.emplace_back(name);
    } else {
      usage_error("unknown option " + terminal_text(arg, 60));
    }
  }

  if (s.command == "help") {
    if (s.args.size() > 1) usage_error("help: unexpected argument " + terminal_text(s.args[1], 60));
    s.command = s.args.empty() ? "" : s.args.front();
    s.args.clear();
    s.help = true;
  }
  if (s.help) {
    if (!s.command.empty()) command_named(s.command);
    return s;  // help needs no client id
  }
  if (s.command.empty()) usage_error("missing command");
  find_command(s);  // a mistyped command is said before a missing client id
  s.config.client_id = client_id ? *client_id : env("ATLASSIAN_CLIENT_ID");
  s.config.client_secret = cfo::secret(client_secret ? *client_secret : env("ATLASSIAN_CLIENT_SECRET"));
  if (s.config.client_id.empty()) usage_error("missing client id: pass --client-id or set ATLASSIAN_CLIENT_ID");
  const bool atlassian = host_of(s.config.token_url) == "auth.atlassian.com";
  if (s.config.client_secret.empty() && (!s.config.use_pkce || atlassian))
    usage_error("missing client secret: set ATLASSIAN_CLIENT_SECRET or pass --client-secret");
  // A service account's tokens never overwrite a user's grant.
  if (s.token_file.empty())
    s.token_file = s.config.service_account ? default_token_file().replace_filename("service-account-tokens.json")
                                            : default_token_file();
  if (key_file) s.key = read_key_file(*key_file);
  if (s.grant_key.empty()) s.grant_key = "confluence-cli:" + s.config.client_id;
  if (!s.token_db.empty() && s.key.empty()) usage_error("--token-db needs --key-file: the rows are sealed with it");
  return s;
}

/// Where the grant is kept: the token file, or a row in PostgreSQL (--token-db).
std::shared_ptr<cfo::token_store> make_store(const settings& s, asio::any_io_executor ex) {
  if (s.token_db.empty())
    return s.key.empty() ? std::make_shared<cfo::file_token_store>(s.token_file)
                         : std::make_shared<cfo::file_token_store>(s.token_file, s.key);
#ifdef CONFLUENCE_OAUTH_EXAMPLE_POSTGRES
  auto db = std::make_shared<cfo::postgres_token_store::database>(ex, s.token_db, s.key);
  return std::make_shared<cfo::postgres_token_store>(db, s.grant_key);
#else
  (void)ex;
  usage_error("--token-db: this confluence-cli was built without PostgreSQL (libpq)");
#endif
}

/// The store, for messages.
std::string store_name(const settings& s) {
  return s.token_db.empty() ? s.token_file.string() : "PostgreSQL (grant " + terminal_text(s.grant_key, 200) + ")";
}

// ---------------------------------------------------------------------------
// Errors: one message and an exit code
// ---------------------------------------------------------------------------

int exit_code_for(const std::error_code& ec) {
  using cfo::errc;
  if (ec == errc::authorization_denied || ec == errc::authorization_failed || ec == errc::listener_timeout ||
      ec == errc::state_mismatch)
    return exit_authorization;
  if (ec == errc::store_error) return exit_failure;  // the token file cannot be read or written
  if (ec == cfo::remedy::reauthenticate) return exit_reconsent;
  if (ec == cfo::remedy::fix_configuration) return exit_usage;  // scope_mismatch, api_gone, site_not_found, ...
  if (ec == cfo::remedy::retry_later) return exit_retry;
  return exit_failure;
}

/// The one message for a failure: what went wrong, then what to do about it
/// where the error does not say so itself.
std::string failure_message(const std::system_error& e, const settings& s) {
  const auto ec = e.code();
  if (ec == cfo::errc::listener_timeout)
    return "no authorization redirect reached " + terminal_text(s.config.redirect_uri, 200) + " within " +
           std::to_string(s.wait_timeout.count()) +
           " s. The usual cause: the redirect URI registered for the app in the developer console differs from "
           "--redirect-uri, so the sign-in failed at Atlassian or the browser went to the registered address";
  std::string text = e.what();
  if (ec == cfo::errc::scope_mismatch) text += "; name the scope with --scope when you run confluence-cli login again";
  else if (ec == cfo::remedy::reauthenticate) text += "; run confluence-cli login";
  auto* oauth = dynamic_cast<const cfo::oauth_error*>(&e);
  if (oauth && oauth->details().retry_after)
    text += "; the server asks to retry after " + std::to_string(oauth->details().retry_after->count()) + " s";
  return text;
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------
//
// No lock of our own: two confluence-cli processes sharing a token file never
// spend the same rotating refresh token, because the session refreshes under
// the store's lock (file_token_store::lock, an flock on "<file>.lock"),
// re-reads the file there, and takes tokens another process has just saved
// instead of refreshing again. login and logout write the file under the same
// lock, so that a refresh elsewhere cannot put back an old grant over theirs.

cfo::session_options options_for(const settings& s) {
  cfo::session_options o;
  o.listener.timeout = s.wait_timeout;
  o.listener.app_name = "confluence-cli";
  return o;
}

/// A session over the token file, holding the saved grant (a service
/// account's cached token, if any).
asio::awaitable<cfo::session> signed_in(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  auto ex = co_await asio::this_coro::executor;
  cfo::session session(ex, s.config, store, options_for(s));
  const bool loaded = co_await session.load();
  if (s.config.service_account) {
    auto held = co_await session.grant();
    if (held && held->has_refresh_token())  // its renewal would replace a user's grant for good
      usage_error("--client-credentials: " + s.token_file.string() + " holds a user's grant; name another --token-file");
  } else if (!loaded) {
    throw cli_error(exit_reconsent, "not logged in: run confluence-cli login");
  }
  co_return session;
}

/// Server text on its way to a terminal: no control characters (a tab would
/// also break the columns).
std::string printable(std::string_view text) { return terminal_text(text, 4096); }

std::string field(const nlohmann::json& item, const char* key) {
  auto it = item.find(key);
  return it != item.end() && it->is_string() ? printable(it->get_ref<const std::string&>()) : std::string();
}

/// exit_ok once the output has reached stdout (a full disk is a failure).
int flushed() {
  std::cout.flush();
  return std::cout ? exit_ok : exit_failure;
}

/// A service account's --site: a cloud id, or a site URL whose public
/// tenant_info gives it (its grant may list no sites).
asio::awaitable<cfo::site> service_account_site(const settings& s, cfo::session& session) {
  cfo::site site;
  if (s.site.find_first_of(".:") == std::string::npos) {
    site.id = s.site;
  } else {
    site.url = s.site;
    site.id = co_await session.cloud_id(s.site);
  }
  co_return site;
}

/// The site --site names, else the only Confluence site the grant reaches.
asio::awaitable<cfo::site> choose_site(const settings& s, cfo::session& session) {
  if (s.config.service_account && !s.site.empty()) co_return co_await service_account_site(s, session);
  auto sites = co_await session.accessible_resources();
  if (!s.site.empty()) co_return cfo::site::find(sites, s.site);
  try {
    co_return cfo::site::find(sites);
  } catch (const cfo::oauth_error& e) {
    if (e.code() != cfo::errc::site_not_found || sites.empty()) throw;
    usage_error(std::string(e.what()) + "; choose one with --site URL, name or cloud id");
  }
}

/// After login: the sites the user just authorized, Confluence or not. The
/// grant is saved already: a failure here only says so.
asio::awaitable<void> say_authorized_sites(cfo::session& session) {
  std::vector<cfo::site> sites;
  try {
    sites = co_await session.accessible_resources();
  } catch (const cfo::oauth_error& e) {
    if (e.code() == asio::error::operation_aborted) throw;
    std::cerr << "confluence-cli: the authorized sites could not be listed: " << e.what() << '\n';
    co_return;
  }
  std::cout << (sites.empty() ? "No site authorized: log in again and choose a site on the consent page\n"
                              : "Authorized sites:\n");
  for (const auto& site : sites) std::cout << "  " << printable(site.url) << "  " << printable(site.name) << '\n';
}

// ---------------------------------------------------------------------------
// login --no-browser: the address the browser ended on, pasted
// ---------------------------------------------------------------------------

constexpr std::size_t max_pasted_line = 8192;  // a redirect with a code is well under 2 KiB

/// The raw value of the first `name` in `url`'s query, empty when absent. Not
/// decoded: it is compared with what the same server wrote.
std::string_view query_value(std::string_view url, std::string_view name) {
  const auto q = url.find('?');
  if (q == std::string_view::npos) return {};
  auto query = url.substr(q + 1);
  query = query.substr(0, query.find('#'));
  while (!query.empty()) {
    const auto end = query.find('&');
    const auto pair = query.substr(0, end);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    query = end == std::string_view::npos ? std::string_view() : query.substr(end + 1);
  }
  return {};
}

/// Waits for the first of two operations to end, cancels the other, and ends
/// as the first did.
asio::awaitable<void> first_of(asio::awaitable<void> a, asio::awaitable<void> b) {
  auto ex = co_await asio::this_coro::executor;
  auto [order, a_failure, b_failure] =
      co_await asio::experimental::make_parallel_group(asio::co_spawn(ex, std::move(a), deferred),
                                                       asio::co_spawn(ex, std::move(b), deferred))
          .async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
  const std::exception_ptr failure = order[0] == 0 ? a_failure : b_failure;
  if (failure) std::rethrow_exception(failure);
}

/// Puts standard input's flags back (Asio makes it non-blocking, and the
/// shell shares it).
struct restore_input_flags {
  int flags = ::fcntl(STDIN_FILENO, F_GETFL);
  ~restore_input_flags() {
    if (flags >= 0) ::fcntl(STDIN_FILENO, F_SETFL, flags);
  }
};

/// For a browser on another machine: the address it ended on, pasted by the
/// user on standard input, goes to the sign-in's own listener as the browser
/// would have brought it, so that it is checked exactly as a redirect is
/// (host, path, state) and ends the same wait. It must first be on the
/// redirect URI and carry this sign-in's state: a wrong paste ends the login
/// at once, with no token request, instead of waiting out the deadline.
/// Standard input is read on the executor; when it cannot be (a file,
/// /dev/null) or ends, the listener alone is waited for.
class pasted_redirect {
 public:
  pasted_redirect(const asio::any_io_executor& ex, std::string redirect_uri)
      : redirect_uri_(std::move(redirect_uri)), timer_(ex) {
    timer_.expires_at(asio::steady_timer::time_point::max());
  }

  /// The sign-in's authorization URL is on the screen: a paste may answer it.
  void expect(const std::string& authorization_url) {
    state_ = query_value(authorization_url, "state");
    timer_.cancel();
  }

  /// Ends only with an error: a paste that cannot answer the sign-in
  /// (cli_error), or cancellation once the sign-in has ended.
  asio::awaitable<void> watch() {
    std::error_code ec;
    if (state_.empty()) co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (state_.empty()) throw std::system_error(asio::error::operation_aborted);  // cancelled before expect()
    restore_input_flags restore;
    asio::posix::stream_descriptor input(timer_.get_executor());
    const int fd = ::fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 0);
    if (fd >= 0) input.assign(fd, ec);  // EPERM for a file or /dev/null: nothing to wait for
    if (fd >= 0 && ec) ::close(fd);
    std::string line;
    line.reserve(max_pasted_line);  // read in place: no copy of the code left behind by a reallocation
    wipe_on_exit wipe{line};
    while (fd >= 0 && !ec) {
      const std::size_t n = co_await asio::async_read_until(input, asio::dynamic_buffer(line, max_pasted_line), '\n',
                                                            asio::redirect_error(asio::use_awaitable, ec));
      if (ec == asio::error::operation_aborted) throw std::system_error(ec);
      if (ec == asio::error::not_found)
        throw cli_error(exit_authorization, "the pasted line is longer than " + std::to_string(max_pasted_line) +
                                                " bytes: it is not the address the browser ended on");
      std::string_view pasted(line.data(), ec ? line.size() : n);  // at the end of input, the last line
      while (!pasted.empty() && std::isspace(static_cast<unsigned char>(pasted.back()))) pasted.remove_suffix(1);
      while (!pasted.empty() && std::isspace(static_cast<unsigned char>(pasted.front()))) pasted.remove_prefix(1);
      if (!pasted.empty()) {
        std::string target = listener_target(pasted);
        wipe_on_exit wipe_target{target};
        co_await hand_over(target);
        break;
      }
      line.erase(0, n);
    }
    timer_.expires_at(asio::steady_timer::time_point::max());
    co_await timer_.async_wait(asio::use_awaitable);  // until the sign-in ends and cancels this
  }

 private:
  [[noreturn]] static void refuse(const std::string& why) {
    throw cli_error(exit_authorization, "the pasted address " + why);  // never the address: it holds the code
  }

  /// The redirect URI's authority: "localhost:8080".
  std::string authority() const {
    const auto start = redirect_uri_.find("://") + 3;
    return redirect_uri_.substr(start, redirect_uri_.find('/', start) - start);
  }

  /// The path and query the listener is to get, once `pasted` is on the
  /// redirect URI and answers this sign-in.
  std::string listener_target(std::string_view pasted) const {
    if (!std::all_of(pasted.begin(), pasted.end(), [](char c) { return c > ' ' && c < 0x7F; }))
      refuse("holds spaces, control characters or non-ASCII bytes: paste it as the browser shows it");
    if (!pasted.starts_with(redirect_uri_ + "?"))
      refuse("is not on the redirect URI " + terminal_text(redirect_uri_, 200) +
             ": paste the address the browser ended on, which starts with it");
    const auto state = query_value(pasted, "state");
    if (state.size() != state_.size() || CRYPTO_memcmp(state.data(), state_.data(), state.size()) != 0)
      refuse("does not answer this sign-in (its state differs): paste the address this login's URL led to");
    if (query_value(pasted, "code").empty() && query_value(pasted, "error").empty())
      refuse("carries neither a code nor an error");
    pasted.remove_prefix(redirect_uri_.find("://") + 3 + authority().size());
    return std::string(pasted.substr(0, pasted.find('#')));
  }

  /// Brings `target` to the listener on the redirect URI, as a browser would.
  asio::awaitable<void> hand_over(const std::string& target) const {
    const std::string host = host_of(redirect_uri_), where = authority();
    const auto colon = where.rfind(':');
    const auto port = colon == std::string::npos || where.back() == ']'
                          ? std::optional<unsigned short>(80)
                          : parse_number<unsigned short>(std::string_view(where).substr(colon + 1));
    const asio::ip::tcp::endpoint listener(asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host),
                                           port.value_or(80));
    asio::ip::tcp::socket socket(co_await asio::this_coro::executor);
    co_await socket.async_connect(listener, asio::use_awaitable);
    std::string request = "GET " + target + " HTTP/1.1\r\nHost: " + where + "\r\nConnection: close\r\n\r\n";
    wipe_on_exit wipe{request};
    co_await asio::async_write(socket, asio::buffer(request), asio::use_awaitable);
    std::string page;  // the listener's page, read to its end: then the wait has ended
    std::error_code ec;
    co_await asio::async_read(socket, asio::dynamic_buffer(page, 64 * 1024), asio::redirect_error(asio::use_awaitable, ec));
  }

  std::string redirect_uri_;
  std::string state_;
  asio::steady_timer timer_;
};

asio::awaitable<int> login(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  if (s.config.service_account) usage_error("login: a service account (--client-credentials) needs none");
  auto ex = co_await asio::this_coro::executor;
  cfo::session session(ex, s.config, store, options_for(s));
  // Fail before the user consents, not after (a failure is a store_error: exit 1).
  if (s.token_db.empty()) create_private_folders(s.token_file.parent_path());
  else co_await store->load();

  cfo::browser_opener launch;
  if (!s.no_browser) launch = s.browser.empty() ? cfo::browser_opener(cfo::browser_command{}) : cfo::browser_command(s.browser);
  // The terminal is the user's own: the URL may be printed there. A command
  // line is every local user's: the browser gets a private page that leads
  // to the URL, kept until the sign-in ends.
  std::optional<cfo::redirect_page> page;
  std::optional<pasted_redirect> paste;
  if (s.no_browser) paste.emplace(ex, s.config.redirect_uri);
  cfo::browser_opener show_and_launch = [&](const std::string& url) -> asio::awaitable<void> {
    std::cerr << "Open this URL to authorize:\n  " << url << '\n' << std::flush;
    if (paste) {
      paste->expect(url);
      std::cerr << "If the browser runs on another machine and cannot reach this one, paste here the\n"
                   "address it ends on (" << s.config.redirect_uri << "?code=...) and press Enter.\n";
    }
    if (launch) {
      try {
        if (s.redirect_page) page.emplace(url);
        const std::string target = page ? page->url() : url;  // not a ?: inside the co_await (GCC 12)
        co_await launch(target);
      } catch (const cfo::oauth_error& e) {
        if (e.code() != cfo::errc::browser_launch_failed) throw;
        std::cerr << "confluence-cli: " << e.what() << "; open the URL yourself\n";
      }
    }
    std::cerr << "Waiting up to " << s.wait_timeout.count() << " s for the authorization (Ctrl-C to cancel)...\n";
  };

  if (paste) co_await first_of(session.authorize(show_and_launch), paste->watch());
  else co_await session.authorize(show_and_launch);  // holds the store's lock only to save
  page.reset();
  const auto held = co_await session.grant();
  const auto& tokens = *held;

  std::string expiry = "expiry unknown";
  if (tokens.expires_at != cfo::token_set::clock::time_point::max())
    expiry = "expires in " +
             std::to_string(std::chrono::round<std::chrono::seconds>(tokens.expires_at - cfo::token_set::clock::now()).count()) +
             " s";
  std::cout << "Logged in: token saved to " << store_name(s) << " (" << expiry
            << ", scopes: " << (tokens.scope.empty() ? "unknown" : tokens.scope)
            << ", refresh token: " << (tokens.has_refresh_token() ? "yes" : "no") << ")" << std::endl;
  co_await say_authorized_sites(session);
  co_return flushed();
}

/// A moment for people: "2026-12-03 14:10:43 UTC".
std::string utc_time(std::chrono::system_clock::time_point when) {
  const std::time_t t = std::chrono::system_clock::to_time_t(when);
  std::tm tm{};
  char text[32] = "unknown";
  if (::gmtime_r(&t, &tm)) std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return text;
}

/// A span of time for people, rounded down: "45 s", "12 min", "5 h", "40 days".
std::string span(std::chrono::system_clock::duration d) {
  using namespace std::chrono;
  const auto s = duration_cast<seconds>(d).count();
  if (s < 120) return std::to_string(s) + " s";
  if (s < 2 * 3600) return std::to_string(s / 60) + " min";
  if (s < 2 * 86400) return std::to_string(s / 3600) + " h";
  return std::to_string(s / 86400) + " days";
}

std::string access_token_expiry(const cfo::token_set& tokens) {
  if (tokens.expires_at == cfo::token_set::clock::time_point::max()) return "no expiry given by the server";
  const auto now = cfo::token_set::clock::now();
  if (tokens.expires_at <= now) return "expired " + span(now - tokens.expires_at) + " ago (" + utc_time(tokens.expires_at) + ")";
  return "valid for " + span(tokens.expires_at - now) + " (until " + utc_time(tokens.expires_at) + ")";
}

/// The grant's age: when it was consented to and last rotated, which
/// Atlassian's 365-day and 90-day limits count from. A grant saved before the
/// library recorded them says so.
std::string grant_age(const cfo::token_set& tokens) {
  const cfo::token_set::clock::time_point unknown{};
  const auto now = cfo::token_set::clock::now();
  auto ago = [&](cfo::token_set::clock::time_point t) {
    return t == unknown ? std::string("unknown") : span(now - t) + " ago (" + utc_time(t) + ")";
  };
  return "obtained " + ago(tokens.first_obtained) + ", last rotated " + ago(tokens.last_rotated);
}

asio::awaitable<int> status(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  std::cout << (s.token_db.empty() ? "Token file:    " : "Token store:   ") << printable(store_name(s)) << '\n';
  auto ex = co_await asio::this_coro::executor;
  auto options = options_for(s);
  std::vector<std::string> warnings;  // the grant's age and missing scopes, said by the session
  options.grant_warning = [&warnings](const std::string& warning) { warnings.push_back(warning); };
  cfo::session session(ex, s.config, store, options);
  std::vector<cfo::site> reached;
  try {
    if (!co_await session.load()) {
      std::cout << "Grant:         none stored\n" << std::flush;
      throw cli_error(exit_authorization, "not logged in: run confluence-cli login");
    }
    reached = co_await session.accessible_resources();  // one API call: the grant works, or says why not
  } catch (const std::system_error& e) {
    if (e.code() != cfo::remedy::reauthenticate) throw;
    std::cout << "Grant:         needs a new login\n" << std::flush;
    throw cli_error(exit_authorization, failure_message(e, s));
  }
  const auto held = co_await session.grant();
  std::cout << "Grant:         usable\n"
            << "Access token:  " << access_token_expiry(*held) << '\n'
            << "Refresh token: " << (held->has_refresh_token() ? "yes" : "no (log in again when the access token expires)")
            << '\n'
            << "Grant age:     " << grant_age(*held) << '\n'
            << "Scopes:        " << (held->scope.empty() ? "unknown" : printable(held->scope)) << '\n'
            << "Sites:" << (reached.empty() ? "         none" : "") << '\n';
  for (const auto& site : reached)
    std::cout << "  " << printable(site.id) << "  " << printable(site.name) << "  " << printable(site.url) << '\n';
  for (const auto& warning : warnings) std::cout << "Warning:       " << printable(warning) << '\n';
  co_return flushed();
}

asio::awaitable<int> token(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  auto session = co_await signed_in(s, store);
  auto held = co_await session.grant();
  const bool renewable = s.config.service_account || held->has_refresh_token();
  if (s.refresh && !renewable)
    throw cli_error(exit_reconsent, "the grant has no refresh token: log in again with the offline_access scope");
  // session.token() hands out a token until it expires (refreshing it in the
  // background within the skew); a script needs one that lasts a while, so an
  // expiring one is refreshed first.
  cfo::secret access;
  if (s.refresh || (renewable && (!held || held->expires_within(session.options().refresh_skew)))) {
    auto next = co_await session.refresh();
    access = std::move(next.access_token);
  } else {
    access = co_await session.token();
  }
  std::cout << access.reveal() << '\n';
  co_return flushed();
}

asio::awaitable<int> sites(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  auto session = co_await signed_in(s, store);
  auto list = co_await session.accessible_resources();
  for (const auto& site : list)
    std::cout << printable(site.id) << "  " << printable(site.name) << "  " << printable(site.url) << '\n';
  co_return flushed();
}

asio::awaitable<int> pages(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  auto session = co_await signed_in(s, store);
  auto site = co_await choose_site(s, session);
  cfo::confluence wiki(session, site);
  auto path = "/wiki/api/v2/pages?limit=" + std::to_string(std::min(s.limit, max_page_size));
  auto list = co_await wiki.get_all(std::move(path), s.limit);
  for (const auto& page : list) std::cout << field(page, "id") << '\t' << field(page, "title") << '\n';
  co_return flushed();
}

asio::awaitable<int> get_path(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  const std::string& path = s.args.front();
  if (!path.starts_with('/')) usage_error("get: PATH must start with / (e.g. /wiki/api/v2/spaces)");
  const bool on_site = path.starts_with("/wiki/");
  if (!on_site && !s.site.empty()) usage_error("get: --site is only for paths under /wiki/");
  auto session = co_await signed_in(s, store);
  nlohmann::json body;
  if (on_site) {
    auto site = co_await choose_site(s, session);
    cfo::confluence wiki(session, site);
    body = co_await wiki.get(path);
  } else {
    body = co_await session.get_json(path);
  }
  // dump escapes control characters; an answer that echoes a token or the secret shows none
  std::cout << session.redact(body.dump(2)) << '\n';
  co_return flushed();
}

asio::awaitable<int> logout(const settings& s, const std::shared_ptr<cfo::token_store>& store) {
  std::error_code ec;
  if (s.token_db.empty() && !std::filesystem::exists(s.token_file, ec) && !ec) {  // nothing to forget: create no folder or lock file
    std::cerr << "Not logged in: nothing to forget\n";
    co_return exit_ok;
  }
  auto ex = co_await asio::this_coro::executor;
  cfo::session session(ex, s.config, store, options_for(s));
  co_await session.logout();
  std::cerr << "Logged out: removed " << store_name(s) << '\n';
  co_return exit_ok;
}

struct command {
  std::string_view name;
  std::string_view synopsis;  // how it is called, after "confluence-cli [options] "
  std::string_view summary;   // what it does, for the list of commands
  std::string_view details;   // the rest of its own help: its options, its exit status
  std::string_view options;   // the command options it takes, separated by spaces
  std::string_view argument;  // its one positional argument, or empty for none
  asio::awaitable<int> (*run)(const settings&, const std::shared_ptr<cfo::token_store>&);
};

constexpr command commands[] = {
    {"login", "login [--no-browser]",
     "open the browser to authorize this app, wait for the\n"
     "redirect, and save the granted tokens to the token file",
     "With --no-browser, for a browser on another machine (an SSH session): print the\n"
     "URL and take whichever comes first: the browser's redirect to the listener on\n"
     "--redirect-uri, or the address the browser ends on (the redirect URI followed\n"
     "by ?code=...&state=...) pasted on standard input and ended with Enter. A pasted\n"
     "address must be on the redirect URI and answer this sign-in (its state);\n"
     "anything else ends the login with exit status 3 before any token request.\n"
     "\n"
     "Options that matter here: --no-browser, --browser CMD, --no-redirect-page,\n"
     "--timeout SECONDS, --redirect-uri URI, --scope SCOPE, --key-file PATH.\n"
     "Exit status: 0 logged in, 3 authorization denied, failed or timed out.\n",
     "", "", login},
    {"status", "status",
     "show the stored grant: the token file, the access token's\n"
     "expiry, the grant's age, its scopes and sites, and warnings",
     "Checks the grant with one API call (the sites it reaches), which refreshes the\n"
     "access token first when it has expired. Prints no token.\n"
     "Exit status: 0 the grant is usable; 3 it needs a new login (none stored, a\n"
     "refresh token rejected or expired, an unreadable token file); 5 the server\n"
     "could not be reached: retry later.\n",
     "", "", status},
    {"token", "token [--refresh]",
     "print a valid access token on stdout, refreshing it first\n"
     "when it expires within 60 s (always with --refresh)",
     "  --refresh               refresh even when the token is still valid\n", "--refresh", "", token},
    {"sites", "sites",
     "list the sites the grant reaches, one per line:\n"
     "cloud id, name and URL, separated by two spaces",
     "", "", "", sites},
    {"pages", "pages [--site SITE] [--limit N]", "list the site's pages, one per line: id, a tab, title",
     "  --site SITE             the site's URL, name or cloud id (default: the only\n"
     "                          Confluence site the grant reaches)\n"
     "  --limit N               list at most N pages (default 25)\n",
     "--site --limit", "", pages},
    {"get", "get [--site SITE] PATH",
     "GET PATH and print the JSON answer; a PATH under /wiki/\n"
     "is on the site (e.g. /wiki/api/v2/spaces), any other on\n"
     "the API base (e.g. /oauth/token/accessible-resources)",
     "  --site SITE             the site's URL, name or cloud id (default: the only\n"
     "                          Confluence site the grant reaches)\n",
     "--site", "PATH", get_path},
    {"logout", "logout", "forget the grant: remove the token file", "", "", "", logout},
};

/// The names of the commands, for a message: "login, status, ..., help".
std::string command_names() {
  std::string out;
  for (const auto& c : commands) out += std::string(c.name) + ", ";
  return out + "help";
}

/// The command called `name`; a usage error that lists them when there is none.
const command& command_named(std::string_view name) {
  auto cmd = std::find_if(std::begin(commands), std::end(commands), [&](const command& c) { return c.name == name; });
  if (cmd == std::end(commands))
    usage_error("unknown command \"" + terminal_text(name, 60) + "\"; the commands are " + command_names());
  return *cmd;
}

/// The command `s` names, once its options and arguments are checked.
const command& find_command(const settings& s) {
  const command& cmd = command_named(s.command);
  const auto takes = split_spaces(cmd.options);
  for (const auto& option : s.command_options)
    if (std::find(takes.begin(), takes.end(), option) == takes.end()) usage_error(s.command + " takes no " + option + " option");
  const std::size_t wanted = cmd.argument.empty() ? 0 : 1;
  if (s.args.size() < wanted) usage_error(s.command + ": missing " + std::string(cmd.argument));
  if (s.args.size() > wanted)
    usage_error(s.command + ": unexpected argument " + terminal_text(s.args[wanted], 60));
  return cmd;
}

// ---------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------

/// `text`'s lines, each after `indent`.
std::string indented(std::string_view text, std::string_view indent) {
  std::string out;
  while (!text.empty()) {
    const auto end = text.find('\n');
    out.append(indent).append(text.substr(0, end)) += '\n';
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
  }
  return out;
}

/// The commands, two columns: synopsis, then summary from column 26.
std::string command_list() {
  constexpr std::size_t column = 26;
  const std::string margin(column, ' ');
  std::string out;
  for (const auto& c : commands) {
    out += "  " + std::string(c.synopsis);
    out += c.synopsis.size() + 4 < column ? std::string(column - 2 - c.synopsis.size(), ' ') : "\n" + margin;
    out += indented(c.summary, margin).substr(column);
  }
  out += "  help [COMMAND]          this help, or COMMAND's own (also: COMMAND --help)\n";
  return out;
}

/// One command's own help.
std::string command_help(const command& c) {
  return "usage: confluence-cli [options] " + std::string(c.synopsis) + "\n\n" + indented(c.summary, "") +
         (c.details.empty() ? "" : "\n") + std::string(c.details) +
         "\nThe options all commands take: confluence-cli --help\n";
}

/// The whole help: every command and option.
std::string help_text() {
  const cfo::client_config d;  // the library's defaults are Atlassian's
  std::string scopes;
  for (const auto& s : d.scopes) scopes += (scopes.empty() ? "" : " ") + s;
  return "usage: confluence-cli [options] <command>\n"
         "\n"
         "Sign in to Confluence Cloud with OAuth 2.0 (3LO), hand out access tokens, and\n"
         "read from the Confluence REST API.\n"
         "\n"
         "Commands:\n" + command_list() +
         "\n"
         "Command options:\n"
         "  --refresh               token: refresh even when the token is still valid\n"
         "  --site SITE             pages, get: the site's URL, name or cloud id (default:\n"
         "                          the only Confluence site the grant reaches)\n"
         "  --limit N               pages: list at most N pages, 1 to " + std::to_string(max_page_limit) +
         " (default " + std::to_string(default_page_limit) + ")\n"
         "\n"
         "Options (--opt VALUE or --opt=VALUE):\n"
         "  --client-id ID          OAuth client id (default: $ATLASSIAN_CLIENT_ID)\n"
         "  --client-secret SECRET  OAuth client secret (default: $ATLASSIAN_CLIENT_SECRET;\n"
         "                          prefer the variable: command lines are visible to others)\n"
         "  --client-credentials    the id and secret are an Atlassian service account's:\n"
         "                          token, sites, pages and get work without login, with\n"
         "                          tokens cached in the token file (default\n"
         "                          .../service-account-tokens.json); --site takes a cloud\n"
         "                          id or a site URL (its cloud id is public)\n"
         "  --redirect-uri URI      callback URL registered for the app; login listens on it\n"
         "                          (default " + d.redirect_uri + ")\n"
         "  --scope SCOPE           scope to request; repeatable, a value may hold several\n"
         "                          separated by spaces (default: " + scopes + ")\n"
         "  --token-file PATH       where the tokens are kept (default:\n"
         "                          $XDG_CONFIG_HOME/confluence-oauth/tokens.json, else\n"
         "                          $HOME/.config/confluence-oauth/tokens.json); folders it\n"
         "                          creates are mode 0700, the file is mode 0600\n"
         "  --key-file PATH         encrypt the token file (AES-256-GCM) with the key in\n"
         "                          PATH: 32 raw bytes or 64 hex digits, e.g. from\n"
         "                          'openssl rand -hex 32'; PATH must be a file of yours,\n"
         "                          not a link, and not accessible to group or others;\n"
         "                          every command then needs the same key\n"
         "  --token-db CONNINFO     keep the grant in PostgreSQL instead of the token file:\n"
         "                          a libpq connection string or URI; needs --key-file\n"
         "                          (a password belongs in ~/.pgpass or $PGPASSWORD: command\n"
         "                          lines are visible to others)\n"
         "                          (rows are sealed with it: the same key on every host)\n"
         "  --grant-key NAME        the grant's row there (default: confluence-cli: and\n"
         "                          the client id)\n"
         "  --authorize-url URL     authorization endpoint (default " + d.authorize_url + ")\n"
         "  --token-url URL         token endpoint (default " + d.token_url + ")\n"
         "  --api-url URL           API base URL (default " + d.api_url + ")\n"
         "  --ca-file PEM           also trust the CA certificates in this PEM file\n"
         "  --token-encoding ENC    token request body: json (Atlassian; default) or form\n"
         "  --no-pkce               send no PKCE S256 challenge (it is sent by default; off\n"
         "                          only for a server that rejects it). With PKCE, a\n"
         "                          server other than Atlassian's may go without the secret\n"
         "  --audience VALUE        audience parameter (default " + d.audience + "; '' omits it)\n"
         "  --prompt VALUE          prompt parameter (default " + d.prompt + "; '' omits it)\n"
         "  --browser CMD           open the URL with CMD, split on spaces, URL appended\n"
         "                          (default: $BROWSER, else the system opener)\n"
         "  --no-browser            login: open no browser, print the URL, and take the\n"
         "                          redirect on the listener or the address the browser\n"
         "                          ends on, pasted on standard input\n"
         "  --no-redirect-page      give the browser the URL itself, not a private local page\n"
         "                          that leads to it (for browsers that cannot read local\n"
         "                          files, such as snap-confined ones; the URL is then on\n"
         "                          the browser's command line, which other users can read)\n"
         "  --timeout SECONDS       how long login waits for the redirect (default 300)\n"
         "  --request-timeout SECONDS  limit for each HTTP request (default 30)\n"
         "  -h, --help              show this help\n"
         "\n"
         "Exit status:\n"
         "  0    success\n"
         "  1    unexpected failure (including a token file that cannot be read or written,\n"
         "       and an API answer with no other meaning here, such as 403 or 404)\n"
         "  2    usage or configuration error (bad option, missing client id or secret,\n"
         "       client rejected, untrusted certificate, redirect port in use, wrong key,\n"
         "       no site matching --site, a scope the grant lacks, a retired API)\n"
         "  3    authorization denied, failed or timed out; status: the grant needs a new\n"
         "       login\n"
         "  4    not logged in, the grant was revoked or expired, or the token file is\n"
         "       corrupt: run login again\n"
         "  5    network or server trouble (unreachable, timeout, 5xx, 429): retry later\n"
         "  130  interrupted (SIGINT or SIGTERM)\n";
}

/// Runs one command and turns every failure into a message and an exit code.
asio::awaitable<int> run(const command& cmd, const settings& s, const std::shared_ptr<cfo::token_store>& store,
                        const bool& interrupted) {
  try {
    co_return co_await cmd.run(s, store);
  } catch (const cli_error& e) {
    std::cerr << "confluence-cli: " << e.what() << '\n';
    co_return e.code;
  } catch (const std::system_error& e) {  // oauth_error, and Asio's operation_aborted
    if (interrupted) {
      std::cerr << "confluence-cli: interrupted\n";
      co_return exit_interrupted;
    }
    std::cerr << "confluence-cli: " << failure_message(e, s) << '\n';
    co_return exit_code_for(e.code());
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
    if (s.help) {
      std::cout << (s.command.empty() ? help_text() : command_help(command_named(s.command))) << std::flush;
      return std::cout ? exit_ok : exit_failure;
    }
    cmd = &find_command(s);
  } catch (const cli_error& e) {
    std::cerr << "confluence-cli: " << e.what() << "\nTry 'confluence-cli --help'.\n";
    return e.code;
  }

  asio::io_context io(1);
  std::shared_ptr<cfo::token_store> store;
  try {
    store = make_store(s, io.get_executor());
  } catch (const std::exception& e) {
    std::cerr << "confluence-cli: " << e.what() << '\n';
    return exit_usage;
  }
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
  asio::co_spawn(io, run(*cmd, s, store, interrupted),
                 asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e, int code) {
                   result = e ? exit_failure : code;
                   // io.run() still lets a refresh the session started in the
                   // background save its tokens; a signal meanwhile just ends the process.
                   std::error_code ignored;
                   signals.clear(ignored);
                   signals.cancel(ignored);
                 }));
  io.run();
  return result;
}
