"""Old home of the load tests' scripted servers, now tests/support/scripted.py: kept
only until tests/test_load_output.py and tests/test_load_receive.py move to
tests/load/ and import from tests.support."""

from tests.support.scripted import Behaviour as Behaviour
from tests.support.scripted import ScriptedServer as ScriptedServer
from tests.support.scripted import make_certificate as make_certificate
from tests.support.scripted import zcserve_child as zcserve_child
