// The implementation of the PostgreSQL token store, compiled once beside the
// library's own (src/confluence_oauth.cpp) in a separate-compilation build:
// the target confluence_oauth::postgres. It alone needs libpq.
#define CONFLUENCE_OAUTH_POSTGRES_IMPLEMENTATION
#include "confluence_oauth_postgres.hpp"
