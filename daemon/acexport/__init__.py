"""acexport: keeps a local directory filled with Liferay Analytics Cloud exports."""

__version__ = "0.1.0"

# The export types AC offers (older docs list only event, individual, page, segment).
EXPORT_TYPES = ("event", "identity", "individual", "membership", "page", "segment")
