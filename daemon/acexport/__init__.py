"""acexport: keeps a local directory filled with Liferay Analytics Cloud exports."""

__version__ = "0.1.0"
