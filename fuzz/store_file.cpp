// Section 8's reading of a token file: file_token_store::decode for a plain
// store and for an encrypted one with a fixed key, and token_set::from_json.
// Input: a mode byte, then the file's text. Mode bit 0 set: the text is sealed
// with the fixed key first, as save() does, so that the encrypted store's
// inner JSON is fuzzed too (a mutated sealed file only ever fails its tag).
#include "fuzz_common.hpp"

namespace {

// The key of fuzz/corpus/store_file/sealed.json, written by save().
const cfo::secret& fixed_key() {
  static const cfo::secret key(std::string("0123456789abcdef0123456789ABCDEF"));
  return key;
}

void check_tokens(const cfo::token_set& t) {
  FUZZ_CHECK(!t.access_token.empty());
  // What a store reads, it writes back and reads again unchanged.
  auto again = cfo::token_set::from_json(t.to_json());
  FUZZ_CHECK(again.access_token == t.access_token && again.refresh_token == t.refresh_token &&
             again.expires_at == t.expires_at && again.scope == t.scope && again.token_type == t.token_type &&
             again.first_obtained == t.first_obtained && again.last_rotated == t.last_rotated);
  (void)t.expires_within(std::chrono::minutes(5));
}

void decode(const cfo::file_token_store& store, std::string_view text) {
  try {
    check_tokens(store.decode(text));
  } catch (const cfo::oauth_error& e) {
    auto ec = fuzz::errc_of(e);
    FUZZ_CHECK(ec == cfo::errc::store_corrupt || ec == cfo::errc::store_key_mismatch);
  }
}

// save()'s envelope around `plain` for "tokens.json": format 2, or the first
// format that load() still reads (its associated data is the format alone).
std::string seal(std::string_view plain, bool first_format) {
  static const std::string key_id = [] {
    auto digest = cfo::detail::sha256("confluence_oauth file_token_store key id:" + fixed_key().reveal());
    return cfo::detail::base64url_encode(digest.data(), 9);
  }();
  const std::string format = first_format ? "confluence_oauth/aes-256-gcm/1" : "confluence_oauth/aes-256-gcm/2";
  const std::string aad = first_format ? format : format + "\ntoken_set\ntokens.json";
  nlohmann::json sealed = {{"format", format},
                           {"key_id", key_id},
                           {"sealed", cfo::detail::base64url_encode(cfo::detail::aes256gcm_seal(fixed_key().reveal(), plain, aad))}};
  return sealed.dump(2) + "\n";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::reader in(data, size);
  const std::uint8_t mode = in.byte();
  const std::string_view text = in.rest();
  static const cfo::file_token_store plain_store("/nonexistent/tokens.json");
  static const cfo::file_token_store sealed_store("/nonexistent/tokens.json", fixed_key());

  if (mode & 1) {
    auto sealed = seal(text, (mode & 2) != 0);
    decode(sealed_store, sealed);
    decode(plain_store, sealed);
    return 0;
  }
  decode(plain_store, text);
  decode(sealed_store, text);
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_discarded()) {
    try {
      check_tokens(cfo::token_set::from_json(j));
    } catch (const cfo::oauth_error& e) {
      FUZZ_CHECK(fuzz::errc_of(e) == cfo::errc::store_corrupt);
    }
  }
  return 0;
}
