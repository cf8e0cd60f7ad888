"""
Build hook for the optional C accelerator of the OxiWire codec.

All metadata lives in setup.cfg; this file only declares the extension. It is
optional: without a compiler the build goes on and oxidb.wire falls back to
the pure-Python codec.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "oxidb.wire._oxiwire",
            ["oxidb/wire/_oxiwire.c"],
            optional=True,
        ),
    ],
)
