"""igllama's version: the command line, the banner and the package read it here."""

__version__ = "0.1.0"
