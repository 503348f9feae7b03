"""Conan 2 recipe for confluence_oauth, a C++20 library: header-only, or
compiled once into a static library (option separate_compilation).

    conan create . --build=missing
    conan create . --build=missing -o "confluence_oauth/*:separate_compilation=True"

The version is the header's CONFLUENCE_OAUTH_VERSION. Header-only (the
default), the package holds the header and the license and is the same for
every configuration. With separate_compilation=True it also holds
lib/libconfluence_oauth.a, built by the project's CMakeLists.txt with
CONFLUENCE_OAUTH_SEPARATE_COMPILATION=ON, and every consumer compiles with
CONFLUENCE_OAUTH_SEPARATE_COMPILATION defined (declarations only). Either way
asio, openssl and nlohmann_json come as requirements (transitive headers and
libraries), so a consumer only needs find_package(confluence_oauth CONFIG) and
confluence_oauth::confluence_oauth.

With -o "confluence_oauth/*:postgres=True" the package also holds the
PostgreSQL token store (confluence_oauth_postgres.hpp, and in a compiled
package lib/libconfluence_oauth_postgres.a) as the component postgres:
target confluence_oauth::postgres, pkg-config confluence_oauth_postgres,
with libpq as a requirement.
"""
import os
import re

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load, rmdir
from conan.tools.layout import basic_layout

required_conan_version = ">=2.0"


class ConfluenceOAuthConan(ConanFile):
    name = "confluence_oauth"
    description = ("C++20 OAuth 2.0 (3LO) client for Atlassian Confluence Cloud, on Asio: "
                   "header-only or compiled once")
    license = "MIT"
    topics = ("oauth2", "atlassian", "confluence", "asio", "coroutines", "header-only")
    package_type = "header-library"   # configure(): static-library when compiled
    settings = "os", "arch", "compiler", "build_type"
    options = {"separate_compilation": [True, False], "postgres": [True, False]}
    default_options = {"separate_compilation": False, "postgres": False}
    # What the compiled build needs besides the header: the CMake project (its
    # tests and examples stay off) and the implementation file.
    exports_sources = ("confluence_oauth.hpp", "confluence_oauth_postgres.hpp",
                       "confluence_oauth_postgres.sql", "LICENSE", "CMakeLists.txt",
                       "cmake/*", "src/*")
    no_copy_source = True

    def set_version(self):
        header = load(self, os.path.join(self.recipe_folder, "confluence_oauth.hpp"))
        m = re.search(r'^#define\s+CONFLUENCE_OAUTH_VERSION\s+"([^"]+)"', header, re.MULTILINE)
        if not m:
            raise ConanException("CONFLUENCE_OAUTH_VERSION not found in confluence_oauth.hpp")
        if self.version and str(self.version) != m.group(1):
            raise ConanException(
                f"--version {self.version} differs from the header's CONFLUENCE_OAUTH_VERSION {m.group(1)}")
        self.version = m.group(1)

    @property
    def _compiled(self):
        return bool(self.options.separate_compilation)

    def configure(self):
        if self._compiled:
            self.package_type = "static-library"

    def layout(self):
        if self._compiled:
            cmake_layout(self)
        else:
            basic_layout(self)

    def requirements(self):
        self.requires("asio/[>=1.22 <2]", transitive_headers=True)
        self.requires("openssl/[>=3 <4]", transitive_headers=True, transitive_libs=True)
        self.requires("nlohmann_json/[>=3.11 <4]", transitive_headers=True)
        if self.options.postgres:
            self.requires("libpq/[>=15 <18]", transitive_headers=True, transitive_libs=True)

    def package_id(self):
        # Header-only: one package for every configuration.
        if not self.info.options.separate_compilation:
            self.info.clear()

    def validate(self):
        check_min_cppstd(self, 20)

    def generate(self):
        if not self._compiled:
            return
        tc = CMakeToolchain(self)
        tc.cache_variables["CONFLUENCE_OAUTH_SEPARATE_COMPILATION"] = True
        tc.cache_variables["CONFLUENCE_OAUTH_BUILD_TESTS"] = False
        tc.cache_variables["CONFLUENCE_OAUTH_BUILD_EXAMPLES"] = False
        tc.cache_variables["CONFLUENCE_OAUTH_INSTALL"] = True
        tc.cache_variables["CONFLUENCE_OAUTH_POSTGRES"] = "ON" if self.options.postgres else "OFF"
        tc.generate()
        deps = CMakeDeps(self)
        # CMakeLists.txt asks for find_package(Asio) and Asio::Asio (its own
        # FindAsio.cmake's names); ConanCenter's asio is asio / asio::asio.
        deps.set_property("asio", "cmake_file_name", "Asio")
        deps.set_property("asio", "cmake_target_name", "Asio::Asio")
        deps.generate()

    def build(self):
        if not self._compiled:
            return
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        if not self._compiled:
            copy(self, "confluence_oauth.hpp", self.source_folder,
                 os.path.join(self.package_folder, "include"))
            if self.options.postgres:
                for name in ("confluence_oauth_postgres.hpp", "confluence_oauth_postgres.sql"):
                    copy(self, name, self.source_folder, os.path.join(self.package_folder, "include"))
            return
        CMake(self).install()
        # Conan generates its own CMake and pkg-config files from package_info().
        rmdir(self, os.path.join(self.package_folder, "lib", "cmake"))
        rmdir(self, os.path.join(self.package_folder, "lib", "pkgconfig"))
        rmdir(self, os.path.join(self.package_folder, "share"))

    def package_info(self):
        if self.options.postgres:
            self._package_info_with_postgres()
            return
        self.cpp_info.bindirs = []
        if self._compiled:
            self.cpp_info.libs = ["confluence_oauth"]
            self.cpp_info.defines = ["CONFLUENCE_OAUTH_SEPARATE_COMPILATION"]
        else:
            self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "confluence_oauth")
        self.cpp_info.set_property("cmake_target_name", "confluence_oauth::confluence_oauth")
        self.cpp_info.set_property("pkg_config_name", "confluence_oauth")
        self.cpp_info.requires = [
            "asio::asio",
            "openssl::ssl",
            "openssl::crypto",
            "nlohmann_json::nlohmann_json",
        ]
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
            self.cpp_info.cxxflags = ["-pthread"]

    def _package_info_with_postgres(self):
        # Two components: the library as without the option, and postgres.
        self.cpp_info.set_property("cmake_file_name", "confluence_oauth")
        core = self.cpp_info.components["core"]
        core.bindirs = []
        if self._compiled:
            core.libs = ["confluence_oauth"]
            core.defines = ["CONFLUENCE_OAUTH_SEPARATE_COMPILATION"]
        else:
            core.libdirs = []
        core.set_property("cmake_target_name", "confluence_oauth::confluence_oauth")
        core.set_property("pkg_config_name", "confluence_oauth")
        core.requires = ["asio::asio", "openssl::ssl", "openssl::crypto", "nlohmann_json::nlohmann_json"]
        if self.settings.os in ("Linux", "FreeBSD"):
            core.system_libs = ["pthread"]
            core.cxxflags = ["-pthread"]
        postgres = self.cpp_info.components["postgres"]
        postgres.bindirs = []
        if self._compiled:
            postgres.libs = ["confluence_oauth_postgres"]
        else:
            postgres.libdirs = []
        postgres.set_property("cmake_target_name", "confluence_oauth::postgres")
        postgres.set_property("pkg_config_name", "confluence_oauth_postgres")
        postgres.requires = ["core", "libpq::libpq"]
