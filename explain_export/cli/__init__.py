"""Command-line entry points; each module is a thin argparse layer over the library."""

__all__ = []
