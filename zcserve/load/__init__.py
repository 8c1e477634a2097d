"""`zcserve load`: a load generator that measures any HTTP/1.1 server.

Nothing here imports the server or the bench: a load worker must start without
loading the code it measures.
"""
