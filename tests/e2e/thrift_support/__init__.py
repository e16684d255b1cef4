"""Real Thrift peers (Apache Thrift and thriftpy2 clients and servers) for the end-to-end tests."""
