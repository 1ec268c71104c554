"""The ``loopfile`` backend: each volume is an image file attached as a direct-I/O loop device.

``options`` holds its settings (and is all the CLI imports); ``backend`` the backend itself; ``records`` the
metadata records kept next to each image.
"""
