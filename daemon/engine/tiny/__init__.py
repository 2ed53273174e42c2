"""The tiny random-weight builds of every family, for tests, benchmarks and trying i2vd offline
(``registry`` is the table of them)."""
