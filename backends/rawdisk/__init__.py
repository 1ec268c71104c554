"""The ``rawdisk`` backend: each volume is one whole disk from an allow-list ("one PV, one disk").

``options`` holds its settings (and is all the CLI imports); ``backend`` the backend's decisions; ``inventory``
which disks are eligible and why; ``claim`` the GPT mark that makes a disk ours; ``snapshots`` the sparse
snapshot images in the snapshot directory.
"""
