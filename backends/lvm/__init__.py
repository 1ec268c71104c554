"""The ``lvm`` backend: each volume is a logical volume of one volume group, thick or thin.

``options`` holds its settings (and is all the CLI imports); ``backend`` the backend itself; ``tags`` how a
volume's state is kept in LV tags.
"""
