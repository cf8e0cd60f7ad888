from twisted.application.service import ServiceMaker

oxipool = ServiceMaker("OxiDB router", "oxidb.pool.tap", "oxipool: a router in front of OxiDB Raft groups", "oxipool")
