"""CSI Identity service: who we are, what we can do, whether we are ready."""

from __future__ import annotations

from loguru import logger

from backends import errors
from csi.capabilities import plugin_capabilities
from csi.context import ServiceContext, Servicer
from csi.gen.csi import v1 as csi
from csi.rpc import rpc


class IdentityService(Servicer, csi.IdentityBase):
    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)

    @rpc("GetPluginInfo", log_level="DEBUG")
    async def get_plugin_info(self, message: csi.GetPluginInfoRequest) -> csi.GetPluginInfoResponse:
        cfg = self.ctx.config
        return csi.GetPluginInfoResponse(
            name=cfg.driver_name,
            vendor_version=cfg.version,
            manifest={"backend": cfg.backend, "mode": cfg.mode.value},
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
        try:
            await self.ctx.backend_.check_health()
        except errors.Unavailable as exc:
            logger.warning("not ready: {}", exc)
            return csi.ProbeResponse(ready=False)
        return csi.ProbeResponse(ready=True)
