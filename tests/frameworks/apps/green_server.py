"""wsgi_app.py's app under gevent.pywsgi or eventlet.wsgi, monkey-patched first as
their users do: ``python green_server.py {gevent,eventlet} PORT``."""

import sys

library, port = sys.argv[1], int(sys.argv[2])
if library == "gevent":
    from gevent import monkey

    monkey.patch_all()
else:
    import eventlet

    eventlet.monkey_patch()

from wsgi_app import app  # noqa: E402  (after the patching, as both servers' docs say)

if library == "gevent":
    from gevent.pywsgi import WSGIServer

    WSGIServer(("127.0.0.1", port), app, log=None).serve_forever()
else:
    import eventlet.wsgi

    eventlet.wsgi.server(eventlet.listen(("127.0.0.1", port)), app, log_output=False)
