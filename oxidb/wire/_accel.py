"""
Selects the codec core: the C extension L{oxidb.wire._oxiwire} when it is
built, else the pure-Python reference L{oxidb.wire._oxiwire_py}. Both expose
C{OxiWireError}, C{encode}, C{decode}, C{json_scan} and its results, and
C{split_frames}.
"""

from __future__ import annotations

from types import ModuleType

from oxidb.wire import _oxiwire_py

impl: ModuleType
try:
    from oxidb.wire import _oxiwire
except ImportError:  # the optional extension was not built
    impl = _oxiwire_py
else:
    impl = _oxiwire

#: C{"c"} or C{"python"}: the codec core in use.
IMPLEMENTATION = "python" if impl is _oxiwire_py else "c"
