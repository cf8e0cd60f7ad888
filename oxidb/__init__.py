"""
OxiDB-compatible document database server on Twisted.

Run it with C{twistd -n oxidb}; embed it with L{oxidb.service.OxiService}.
"""

__version__ = "0.1.0"
