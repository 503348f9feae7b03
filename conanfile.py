"""Conan 2 recipe for confluence_oauth, a header-only C++20 library.

    conan create . --build=missing

The version is the header's CONFLUENCE_OAUTH_VERSION. The package holds the
header and the license; asio, openssl and nlohmann_json come as requirements
(transitive headers and libraries), so a consumer only needs
find_package(confluence_oauth CONFIG) and confluence_oauth::confluence_oauth.
"""
import os
import re

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy, load
from conan.tools.layout import basic_layout

required_conan_version = ">=2.0"


class ConfluenceOAuthConan(ConanFile):
    name = "confluence_oauth"
    description = "Header-only C++20 OAuth 2.0 (3LO) client for Atlassian Confluence Cloud, on Asio"
    license = "MIT"
    topics = ("oauth2", "atlassian", "confluence", "asio", "coroutines", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    exports_sources = "confluence_oauth.hpp", "LICENSE"
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

    def layout(self):
        basic_layout(self)

    def requirements(self):
        self.requires("asio/[>=1.22 <2]", transitive_headers=True)
        self.requires("openssl/[>=3 <4]", transitive_headers=True, transitive_libs=True)
        self.requires("nlohmann_json/[>=3.11 <4]", transitive_headers=True)

    def package_id(self):
        self.info.clear()

    def validate(self):
        check_min_cppstd(self, 20)

    def package(self):
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        copy(self, "confluence_oauth.hpp", self.source_folder, os.path.join(self.package_folder, "include"))

    def package_info(self):
        self.cpp_info.bindirs = []
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
