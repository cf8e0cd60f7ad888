"""
oxipool: a router in front of OxiDB Raft groups (spec server.md 8.12,
docs/sharding.md). Master/replica mode pools connections to one group;
sharded mode spreads collections over several groups by a shard key.
"""
