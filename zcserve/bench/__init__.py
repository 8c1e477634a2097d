"""`zcserve bench` and `zcserve report`: sweeps of the server under the load
generator, the copy ceiling, the seed experiment, and their tables and plots."""
