# FindAsio.cmake - locate standalone (non-Boost) Asio.
#
# Debian's libasio-dev ships neither a CMake package config nor a pkg-config
# file, so we look for <asio.hpp> ourselves and read the version from
# <asio/version.hpp>.
#
# Result variables:
#   Asio_FOUND, Asio_VERSION, Asio_INCLUDE_DIR (cache), Asio_INCLUDE_DIRS
# Imported target:
#   Asio::Asio  (INTERFACE; include directory + Threads::Threads)
#
# Hints: Asio_ROOT / ASIO_ROOT (standard <PackageName>_ROOT handling).

include(FindPackageHandleStandardArgs)

find_path(Asio_INCLUDE_DIR
  NAMES asio.hpp
  PATH_SUFFIXES asio/include include
  DOC "Directory containing the standalone Asio header asio.hpp")
mark_as_advanced(Asio_INCLUDE_DIR)

unset(Asio_VERSION)
if(Asio_INCLUDE_DIR AND EXISTS "${Asio_INCLUDE_DIR}/asio/version.hpp")
  file(STRINGS "${Asio_INCLUDE_DIR}/asio/version.hpp" _asio_version_line
       REGEX "^#[ \t]*define[ \t]+ASIO_VERSION[ \t]+[0-9]+")
  if(_asio_version_line MATCHES "ASIO_VERSION[ \t]+([0-9]+)")
    set(_asio_version_number "${CMAKE_MATCH_1}")
    # ASIO_VERSION = major * 100000 + minor * 100 + sub-minor
    math(EXPR _asio_major "${_asio_version_number} / 100000")
    math(EXPR _asio_minor "${_asio_version_number} / 100 % 1000")
    math(EXPR _asio_patch "${_asio_version_number} % 100")
    set(Asio_VERSION "${_asio_major}.${_asio_minor}.${_asio_patch}")
  endif()
  unset(_asio_version_line)
  unset(_asio_version_number)
  unset(_asio_major)
  unset(_asio_minor)
  unset(_asio_patch)
endif()

find_package_handle_standard_args(Asio
  REQUIRED_VARS Asio_INCLUDE_DIR
  VERSION_VAR Asio_VERSION)

if(Asio_FOUND)
  set(Asio_INCLUDE_DIRS "${Asio_INCLUDE_DIR}")
  if(NOT TARGET Asio::Asio)
    if(NOT TARGET Threads::Threads)
      set(THREADS_PREFER_PTHREAD_FLAG ON)
      find_package(Threads QUIET)
    endif()
    add_library(Asio::Asio INTERFACE IMPORTED)
    set_target_properties(Asio::Asio PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${Asio_INCLUDE_DIR}")
    if(TARGET Threads::Threads)
      set_property(TARGET Asio::Asio APPEND PROPERTY
        INTERFACE_LINK_LIBRARIES Threads::Threads)
    endif()
  endif()
endif()
