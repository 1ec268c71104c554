"""``localcsi bench``: latency, throughput, cost and data path of a CSI driver, against the bare commands and the
bare storage. :mod:`csi.bench.main` is the command; ``client``, ``phases``, ``bare``, ``fio``, ``stats`` and
``report`` its parts."""
