"""Old home of the in-process server helper, now tests/support/servers.py: kept only
until tests/test_load_output.py moves to tests/load/ and imports from tests.support."""

from tests.support.servers import start_server as start_server
