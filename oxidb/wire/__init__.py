"""
The sans-IO wire layer: length-prefixed framing and the JSON, OxiWire and
MessagePack payload codecs. Nothing here does I/O or imports Twisted.

Public modules: L{oxidb.wire.framing} (frames), L{oxidb.wire.codec} (payload
format detection, request decoding, reply encoding), L{oxidb.wire.oxiwire}
(the OxiWire value codec) and L{oxidb.wire.limits}.
"""
