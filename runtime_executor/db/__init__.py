"""Database access: the one gateway (``Gateway``), connections (``Database``) and migrations."""
