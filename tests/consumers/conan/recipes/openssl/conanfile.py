"""openssl: wrapper of the system's OpenSSL 3 (Debian libssl-dev), for the
offline Conan test of confluence_oauth (scripts/test-consumers.sh).

Same name, CMake file, targets and components (crypto, ssl) as ConanCenter's
openssl recipe; the version is read from <openssl/opensslv.h>. Nothing is
packaged: headers and libssl/libcrypto are on the default search paths.
"""
import os
import re

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.files import load


class SystemOpenSSLConan(ConanFile):
    name = "openssl"
    description = "System OpenSSL (wrapper, nothing packaged)"
    package_type = "shared-library"
    settings = "os", "arch", "compiler", "build_type"
    build_policy = "missing"
    upload_policy = "skip"

    def set_version(self):
        for d in ("/usr/include", "/usr/local/include"):
            path = os.path.join(d, "openssl", "opensslv.h")
            if os.path.isfile(path):
                m = re.search(r'#\s*define\s+OPENSSL_VERSION_STR\s+"([0-9.]+)"', load(self, path))
                if m:
                    self.version = m.group(1)
                    return
        raise ConanException("OpenSSL 3 headers (openssl/opensslv.h) not found: install libssl-dev")

    def package_id(self):
        self.info.clear()

    def package_info(self):
        self.cpp_info.includedirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.bindirs = []
        self.cpp_info.set_property("cmake_find_mode", "both")
        self.cpp_info.set_property("cmake_file_name", "OpenSSL")
        self.cpp_info.set_property("cmake_target_name", "OpenSSL::OpenSSL")
        self.cpp_info.set_property("pkg_config_name", "openssl")

        crypto = self.cpp_info.components["crypto"]
        crypto.includedirs = []
        crypto.libdirs = []
        crypto.bindirs = []
        crypto.system_libs = ["crypto"]
        crypto.set_property("cmake_target_name", "OpenSSL::Crypto")
        crypto.set_property("pkg_config_name", "libcrypto")

        ssl = self.cpp_info.components["ssl"]
        ssl.includedirs = []
        ssl.libdirs = []
        ssl.bindirs = []
        ssl.system_libs = ["ssl"]
        ssl.requires = ["crypto"]
        ssl.set_property("cmake_target_name", "OpenSSL::SSL")
        ssl.set_property("pkg_config_name", "libssl")
