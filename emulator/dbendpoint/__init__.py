"""The database's own endpoints, as a client connecting directly sees them (RDS's DNS names).

On AWS a client reaches the database through DNS names: the writer (cluster) endpoint, the reader
endpoint of an Aurora cluster, one endpoint per instance. After a failover the names point at the new
writer only once the DNS change reaches the client (Aurora's zones use a 5-second TTL). This package is
their local twin: one listener per name, routed by the topology file the cluster writes, with the
DNS-like delay (README.md in this directory).
"""
