"""Infrastructure: what keeps and dispatches results, knowing nothing of what they mean.

``store`` (the results store: a folder or an S3 bucket), ``keys`` (what a stored result means:
versions and environment class), ``executors`` (serial, worker processes or Dask), ``threads``
(one thread per computation), ``output`` (atomic writes, progress bars) and ``provenance`` (a
module's source-closure hash). It imports no other flatlib sub-package: the kinds of versions
above it (measures, certificates, verdict rules) register themselves with ``keys.register_kind``.
"""
