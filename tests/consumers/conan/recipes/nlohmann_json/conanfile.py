"""nlohmann_json: wrapper of the system's nlohmann/json (Debian
nlohmann-json3-dev), for the offline Conan test of confluence_oauth
(scripts/test-consumers.sh).

Same name, CMake file and target as ConanCenter's nlohmann_json recipe; the
version is read from the installed headers. Nothing is packaged.
"""
import os
import re

from conan import ConanFile
from conan.errors import ConanException
from conan.tools.files import load


class SystemNlohmannJsonConan(ConanFile):
    name = "nlohmann_json"
    description = "System nlohmann/json (wrapper, nothing packaged)"
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    build_policy = "missing"
    upload_policy = "skip"

    def set_version(self):
        for d in ("/usr/include", "/usr/local/include"):
            for name in ("detail/abi_macros.hpp", "json.hpp"):
                path = os.path.join(d, "nlohmann", name)
                if not os.path.isfile(path):
                    continue
                text = load(self, path)
                parts = [re.search(rf"#\s*define\s+NLOHMANN_JSON_VERSION_{p}\s+(\d+)", text)
                         for p in ("MAJOR", "MINOR", "PATCH")]
                if all(parts):
                    self.version = ".".join(m.group(1) for m in parts)
                    return
        raise ConanException("nlohmann/json headers not found: install nlohmann-json3-dev")

    def package_id(self):
        self.info.clear()

    def package_info(self):
        self.cpp_info.includedirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.bindirs = []
        self.cpp_info.set_property("cmake_file_name", "nlohmann_json")
        self.cpp_info.set_property("cmake_target_name", "nlohmann_json::nlohmann_json")
        self.cpp_info.set_property("pkg_config_name", "nlohmann_json")
