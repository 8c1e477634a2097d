"""`zcserve serve`: the HTTP/1.1 static server and its pluggable copy strategies.

Protocol (http, files, respond) stays apart from I/O (sockio, tls, strategies,
connection, server); workers and metrics sit around one server process.
"""
