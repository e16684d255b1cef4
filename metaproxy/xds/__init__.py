"""Route discovery, proxy side: :class:`RdsSubscription` keeps a RouteHolder current over xDS."""

from metaproxy.xds.client import RdsSubscription

__all__ = ["RdsSubscription"]
