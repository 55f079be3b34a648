"""Build the optional C masking accelerator; fall back to pure Python without a compiler.

Everything else about the package lives in pyproject.toml. Set
``TRILLIUM_NO_EXTENSIONS=1`` to skip the accelerator on purpose.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A build_ext that warns instead of failing when the compiler is missing or fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any build failure means "use pure Python"
            print(f"trillium: C accelerator not built ({exc}); pure Python", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"trillium: {ext.name} not built ({exc}); pure Python", file=sys.stderr)


ext_modules = []
if os.environ.get("TRILLIUM_NO_EXTENSIONS", "") in ("", "0"):
    ext_modules.append(
        Extension(
            "trillium.core._speedups",
            sources=["src/trillium/core/_speedups.c"],
            extra_compile_args=["-O3"] if os.name != "nt" else [],
            optional=True,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
