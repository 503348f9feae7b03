-- The table confluence_oauth_postgres.hpp keeps grants in: one row per grant.
-- postgres_token_store creates it on first use; where the application's
-- database role may not create tables, run this file once instead and set
-- postgres_token_store::settings::create_table to false. The role then needs
-- SELECT, INSERT, UPDATE and DELETE on it. To keep it in another schema, put
-- that schema first in the role's search_path (or options=-csearch_path=...
-- in the connection string).
--
--   grant_key   the caller's name for the grant (e.g. the Atlassian account id)
--   version     1 when inserted, + 1 on every write: replace() updates only the
--               version it read, so no host overwrites a grant it has not seen
--   key_id      names the encryption key (a digest, not the key)
--   sealed      the token set, AES-256-GCM, base64url; grant_key is sealed in
--               as associated data, so a row copied to another name is refused
--   locked_by   the store that holds the grant's lock (a random name), from
--   locked_at   when it took it until it writes or lets go cleanly; one that
--               lost its connection mid-refresh stays named, and the others
--               wait for it to save (settings::unfinished_refresh_wait)
CREATE TABLE IF NOT EXISTS confluence_oauth_grants (
  grant_key  text        PRIMARY KEY,
  version    bigint      NOT NULL,
  key_id     text        NOT NULL,
  sealed     text        NOT NULL,
  locked_by  text,
  locked_at  timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
