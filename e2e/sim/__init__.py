"""The kubelet-free end-to-end harness: Kubernetes' CSI callers played against a real ``localcsi serve``.

Entry point: ``python -m e2e.sim --backend loopfile`` (or ``hack/e2e-sim``). See ``README.md`` in this directory.
"""
