"""What the tests share, imported as `tests.support.<module>` (never from a test
module or from conftest):

timing      the deadlines every wait uses, and `wait_for`
site        the generated site most server tests serve, and `Live`
tls         the one certificate maker, and the plain and TLS transports
servers     `start_server` (in this process, on a thread) and `start_child` (a
            `zcserve serve` child), the two ways a test starts zcserve
httpclient  the one `connect`, and a small exact HTTP/1.1 client
stress      descriptor and memory readings, resets, abort storms
scripted    servers with known behaviour for the load generator's tests
metrics     reading a --metrics endpoint
results     the one `LoadResult` factory
import_graph  the import graph behind tests/project/test_layout.py (also a script)
"""
