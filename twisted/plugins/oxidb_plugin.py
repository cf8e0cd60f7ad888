from twisted.application.service import ServiceMaker

oxidb = ServiceMaker("OxiDB server", "oxidb.tap", "OxiDB-compatible document database server", "oxidb")
