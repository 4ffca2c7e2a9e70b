"""mssante: an operator of the French MSSanté secure health e-mail trust space."""

__version__ = "0.1.0"
