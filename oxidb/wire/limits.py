"""
Limits shared by the framing and every payload decoder.
"""

#: The largest payload a peer may declare in a frame prefix (16 MiB). A frame
#: of exactly this size is accepted; a larger declared length is fatal for the
#: connection.
MAX_FRAME = 16 * 1024 * 1024

#: The deepest nesting of arrays and objects any decoder accepts: a scalar has
#: depth 0, C{[]} depth 1, C{[[]]} depth 2. Upstream's JSON parser (serde_json)
#: stops at 128 as well, and staying well below orjson's encoder limit (254)
#: keeps every value we accept encodable on the fast path, envelope included.
MAX_DEPTH = 128
