"""A driver-agnostic CSI conformance suite that speaks only gRPC to a CSI endpoint.

Modelled on the areas kubernetes-csi's csi-sanity exercises, but written from the
CSI specification's error tables: where the spec mandates a code, that code is
the oracle, even where csi-sanity accepts something looser.

Run it with ``hack/conformance`` or ``python -m e2e.conformance``; both wrap
``pytest e2e/conformance --csi-endpoint ...``.
"""
