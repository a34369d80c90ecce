"""moto server for the test suite, with one change: requests are handled one at a time.

moto's backends take no locks, so under a threaded server two concurrent conditional writes
(`attribute_not_exists` in TransactWriteItems) can both pass their check, which real DynamoDB
never allows. Serialising requests gives moto DynamoDB's per-item atomicity; connections stay
keep-alive because the server itself is still threaded.

Usage: python scripts/moto_server.py [port]   (binds 127.0.0.1 only)
"""

import sys
import threading

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class Serialised:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            # Materialise the body under the lock: the app may produce it lazily.
            return list(self.app(environ, start_response))


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, Serialised(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
