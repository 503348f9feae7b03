# Shared by the add_subdirectory() and FetchContent consumers, included before
# confluence_oauth is added: the CONFLUENCE_OAUTH_SOURCE_DIR cache variable
# (required), and find_package(doctest) anywhere below made to fail (REQUIRED +
# disabled is an error). After adding it, the consumer calls
# confluence_oauth_in_tree_consumer(<the added source tree>).
set(CONFLUENCE_OAUTH_SOURCE_DIR "" CACHE PATH "confluence_oauth source tree")
if(NOT IS_DIRECTORY "${CONFLUENCE_OAUTH_SOURCE_DIR}")
  message(FATAL_ERROR "set CONFLUENCE_OAUTH_SOURCE_DIR to the confluence_oauth source tree")
endif()

set(CMAKE_DISABLE_FIND_PACKAGE_doctest ON)

set(_confluence_oauth_consumers_dir "${CMAKE_CURRENT_LIST_DIR}")

# Checks that the added tree configured nothing of its own suite and looked for
# no doctest, then defines the consumer executable (../main.cpp), given the
# added tree's project() version as CONSUMER_PACKAGE_VERSION.
function(confluence_oauth_in_tree_consumer source_dir)
  if(NOT TARGET confluence_oauth::confluence_oauth)
    message(FATAL_ERROR "no target confluence_oauth::confluence_oauth")
  endif()
  foreach(option IN ITEMS CONFLUENCE_OAUTH_BUILD_TESTS CONFLUENCE_OAUTH_BUILD_EXAMPLES CONFLUENCE_OAUTH_INSTALL)
    if(${option})
      message(FATAL_ERROR "${option} is ON in a project that is not the top level")
    endif()
  endforeach()
  foreach(target IN ITEMS confluence_oauth_tests fake_atlassian fake-atlassian fake-browser
                          session-worker confluence-cli web-app quickstart)
    if(TARGET ${target})
      message(FATAL_ERROR "target ${target} of confluence_oauth's own suite was defined")
    endif()
  endforeach()
  if(DEFINED CACHE{doctest_DIR})
    message(FATAL_ERROR "doctest was looked for")
  endif()
  get_directory_property(version DIRECTORY "${source_dir}" DEFINITION confluence_oauth_VERSION)
  if(NOT version)
    message(FATAL_ERROR "confluence_oauth_VERSION is not set in ${source_dir}")
  endif()
  message(STATUS "confluence_oauth ${version} from ${source_dir}: suite, examples and install rules off")

  add_executable(consumer "${_confluence_oauth_consumers_dir}/main.cpp")
  target_link_libraries(consumer PRIVATE confluence_oauth::confluence_oauth)
  target_compile_definitions(consumer PRIVATE "CONSUMER_PACKAGE_VERSION=\"${version}\"")
endfunction()
