// The implementation of confluence_oauth, compiled once: what the build
// systems' separate-compilation option builds (docs/INSTALL.md). Every file
// that includes the header, this one included, also defines
// CONFLUENCE_OAUTH_SEPARATE_COMPILATION (the library target carries it).
#define CONFLUENCE_OAUTH_IMPLEMENTATION
#include "confluence_oauth.hpp"
