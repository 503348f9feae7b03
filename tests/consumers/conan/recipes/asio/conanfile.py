"""asio: wrapper of the system's standalone Asio (Debian libasio-dev), for the
offline Conan test of confluence_oauth (scripts/test-consumers.sh).

Same name, CMake file and target as ConanCenter's asio recipe, so recipes
written against ConanCenter resolve against it; the version is read from
<asio/version.hpp>. Nothing is packaged: the headers are on the compiler's
default search path.
"""
import os
import re

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.files import load


class SystemAsioConan(ConanFile):
    name = "asio"
    description = "System standalone Asio (wrapper, nothing packaged)"
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    build_policy = "missing"
    upload_policy = "skip"

    def set_version(self):
        for d in ("/usr/include", "/usr/local/include"):
            path = os.path.join(d, "asio", "version.hpp")
            if os.path.isfile(path):
                m = re.search(r"#\s*define\s+ASIO_VERSION\s+(\d+)", load(self, path))
                if m:
                    n = int(m.group(1))
                    self.version = f"{n // 100000}.{n // 100 % 1000}.{n % 100}"
                    return
        raise ConanException("standalone Asio (asio/version.hpp) not found: install libasio-dev")

    def package_id(self):
        self.info.clear()

    def package_info(self):
        self.cpp_info.includedirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.bindirs = []
        self.cpp_info.set_property("cmake_file_name", "asio")
        self.cpp_info.set_property("cmake_target_name", "asio::asio")
        self.cpp_info.set_property("pkg_config_name", "asio")
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
