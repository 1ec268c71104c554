"""CSI Identity service: who we are, what we can do, whether we are ready."""

from __future__ import annotations

import time
from collections.abc import Callable

from loguru import logger

from backends import errors
from csi.capabilities import plugin_capabilities
from csi.context import ServiceContext, Servicer
from csi.gen.csi import v1 as csi
from csi.rpc import rpc

#: How long a healthy Probe answer is reused; an unhealthy one is never reused.
HEALTH_CACHE_SECONDS = 1.0


class IdentityService(Servicer, csi.IdentityBase):
    def __init__(self, ctx: ServiceContext, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: monotonic seconds, for how long a healthy Probe answer holds (tests pass their own)."""
        super().__init__(ctx)
        self._clock = clock
        self._healthy_until = 0.0

    @rpc("GetPluginInfo", log_level="DEBUG")
    async def get_plugin_info(self, message: csi.GetPluginInfoRequest) -> csi.GetPluginInfoResponse:
        cfg = self.ctx.config
        return csi.GetPluginInfoResponse(
            name=cfg.driver_name,
            vendor_version=cfg.version,
            manifest={"backend": cfg.backend_name, "pools": cfg.pool_summary, "mode": cfg.mode.value},
        )

    @rpc("GetPluginCapabilities", log_level="DEBUG")
    async def get_plugin_capabilities(
        self, message: csi.GetPluginCapabilitiesRequest
    ) -> csi.GetPluginCapabilitiesResponse:
        return csi.GetPluginCapabilitiesResponse(
            capabilities=plugin_capabilities(self.ctx.features, self.ctx.config.mode)
        )

    @rpc("Probe", log_level="TRACE")
    async def probe(self, message: csi.ProbeRequest) -> csi.ProbeResponse:
        if self.ctx.backend_ is None:
            return csi.ProbeResponse(ready=True)
        now = self._clock()
        if now < self._healthy_until:  # livenessprobe polls often; a healthy answer holds for a moment
            return csi.ProbeResponse(ready=True)
        try:
            await self.ctx.backend_.check_health()
        except errors.Unavailable as exc:
            self._healthy_until = 0.0
            logger.warning("not ready: {}", exc)
            return csi.ProbeResponse(ready=False)
        self._healthy_until = now + HEALTH_CACHE_SECONDS
        return csi.ProbeResponse(ready=True)
