"""The framework tests: real web servers on loopback, real clients."""

# The apps are served by servers (some in subprocesses), not test modules: keep
# pytest (and --doctest-modules) from importing them, since importing the WSGI app
# installs trillium as ``simple_websocket`` for Flask-Sock.
collect_ignore_glob = ["apps/*"]
