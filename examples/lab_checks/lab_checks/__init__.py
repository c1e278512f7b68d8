"""A lab's own CellAudit check and its report section (docs/extending.md)."""
