"""The command line: ``localcsi serve`` runs the driver; ``ctl``, ``disks`` and ``bench`` talk to one or inspect
the node. :mod:`csi.cli.main` is the entry point."""
