"""Jobs on many GPUs and machines: Ray workers behind the same hot folder (docs/cluster.md).

Ray is an optional extra (``pip install "i2v-daemon[cluster]"``) and is imported only here,
and only when ``[cluster] backend = "ray"``.
"""
