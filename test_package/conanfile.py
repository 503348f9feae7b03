import os

from conan import ConanFile
from conan.tools.build import can_run
from conan.tools.cmake import CMake, cmake_layout


class TestPackageConan(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeDeps", "CMakeToolchain"

    def requirements(self):
        self.requires(self.tested_reference_str)

    def layout(self):
        cmake_layout(self)

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def test(self):
        if can_run(self):
            dependency = self.dependencies[self.tested_reference_str]
            version = dependency.ref.version
            mode = "separate" if dependency.options.separate_compilation else "header-only"
            binary = os.path.join(self.cpp.build.bindir, "test_package")
            # The header's version must be the package's, and the package's
            # option must have reached the compiler.
            self.run(f'"{binary}" {version} {mode}', env="conanrun")
