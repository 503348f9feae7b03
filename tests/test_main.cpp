// doctest's implementation and main(). Both macros, so that it works wherever the
// unity build puts this file: DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN alone is read
// only by the first inclusion of doctest.h in a translation unit, and another
// test file may have included it first.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
