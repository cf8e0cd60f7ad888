"""
Build hook for the optional C accelerators: the OxiWire codec, the index
keys of written documents and the $group hash aggregate.

All metadata lives in setup.cfg; this file only declares the extensions. They
are optional: without a compiler the build goes on, oxidb.wire and
oxidb.engine.keys fall back to their pure-Python code and $group to SQLite's
GROUP BY.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "oxidb.wire._oxiwire",
            ["oxidb/wire/_oxiwire.c"],
            optional=True,
        ),
        Extension(
            "oxidb.engine._keys",
            ["oxidb/engine/_keys.c"],
            optional=True,
        ),
        Extension(
            "oxidb.engine._grouphash",
            ["oxidb/engine/_grouphash.c"],
            optional=True,
        ),
    ],
)
