"""One wrapper recipe for the system's asio, openssl and nlohmann_json (Debian
libasio-dev, libssl-dev, nlohmann-json3-dev), for the offline Conan test of
confluence_oauth (scripts/test-consumers.sh). Exported once per package:

    conan export tests/consumers/conan/system_package --name asio
    conan export tests/consumers/conan/system_package --name openssl
    conan export tests/consumers/conan/system_package --name nlohmann_json

Each gets the same name, CMake file, targets and components as ConanCenter's
recipe, so recipes written against ConanCenter resolve against it; the version
is read from the installed headers. Nothing is packaged: headers and libraries
are on the compiler's default search paths. What differs between the three is
the table PACKAGES below.
"""
import os
import re

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.files import load

INCLUDE_DIRS = ("/usr/include", "/usr/local/include")


def _define(text, macro, value=r"(\d+)"):
    m = re.search(rf"#\s*define\s+{macro}\s+{value}", text)
    return m.group(1) if m else None


def _asio_version(text):
    n = _define(text, "ASIO_VERSION")  # e.g. 102801 for 1.28.1
    return n and f"{int(n) // 100000}.{int(n) // 100 % 1000}.{int(n) % 100}"


def _openssl_version(text):
    return _define(text, "OPENSSL_VERSION_STR", r'"([0-9.]+)"')


def _nlohmann_json_version(text):
    parts = [_define(text, f"NLOHMANN_JSON_VERSION_{p}") for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts) if all(parts) else None


# name -> where the version is (headers below INCLUDE_DIRS, tried in order) and
# how to read it, the Debian package to hint at, and what package_info()
# declares. "components": name -> (CMake target, pkg-config name, system libs,
# required components). "posix_libs": system libs on Linux and FreeBSD only.
PACKAGES = {
    "asio": {
        "headers": ["asio/version.hpp"], "parse": _asio_version, "debian": "libasio-dev",
        "package_type": "header-library", "cmake_file_name": "asio",
        "cmake_target_name": "asio::asio", "pkg_config_name": "asio",
        "posix_libs": ["pthread"],
    },
    "openssl": {
        "headers": ["openssl/opensslv.h"], "parse": _openssl_version, "debian": "libssl-dev",
        "package_type": "shared-library", "cmake_file_name": "OpenSSL", "cmake_find_mode": "both",
        "cmake_target_name": "OpenSSL::OpenSSL", "pkg_config_name": "openssl",
        "components": {
            "crypto": ("OpenSSL::Crypto", "libcrypto", ["crypto"], []),
            "ssl": ("OpenSSL::SSL", "libssl", ["ssl"], ["crypto"]),
        },
    },
    "nlohmann_json": {
        "headers": ["nlohmann/detail/abi_macros.hpp", "nlohmann/json.hpp"],
        "parse": _nlohmann_json_version, "debian": "nlohmann-json3-dev",
        "package_type": "header-library", "cmake_file_name": "nlohmann_json",
        "cmake_target_name": "nlohmann_json::nlohmann_json", "pkg_config_name": "nlohmann_json",
    },
}


class SystemPackageConan(ConanFile):
    description = "System package (wrapper, nothing packaged)"
    settings = "os", "arch", "compiler", "build_type"
    build_policy = "missing"
    upload_policy = "skip"

    @property
    def _data(self):
        if self.name not in PACKAGES:
            raise ConanException(
                f"system_package: export it with --name {'|'.join(PACKAGES)} (got {self.name})")
        return PACKAGES[self.name]

    def set_version(self):
        data = self._data
        for d in INCLUDE_DIRS:
            for header in data["headers"]:
                path = os.path.join(d, header)
                version = os.path.isfile(path) and data["parse"](load(self, path))
                if version:
                    self.version = version
                    return
        raise ConanException(f"{self.name}: no version found in {' or '.join(data['headers'])} "
                             f"below {' or '.join(INCLUDE_DIRS)}: install {data['debian']}")

    def configure(self):
        self.package_type = self._data["package_type"]

    def package_id(self):
        self.info.clear()

    def package_info(self):
        data = self._data
        for key in ("cmake_find_mode", "cmake_file_name", "cmake_target_name", "pkg_config_name"):
            if key in data:
                self.cpp_info.set_property(key, data[key])
        if "posix_libs" in data and self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = data["posix_libs"]
        cpp_infos = [self.cpp_info]
        for name, (target, pc_name, libs, requires) in data.get("components", {}).items():
            component = self.cpp_info.components[name]
            component.set_property("cmake_target_name", target)
            component.set_property("pkg_config_name", pc_name)
            component.system_libs = libs
            component.requires = requires
            cpp_infos.append(component)
        for cpp_info in cpp_infos:  # nothing packaged: no folders of the package's own
            cpp_info.includedirs = []
            cpp_info.libdirs = []
            cpp_info.bindirs = []
