"""Storage backends behind one interface (``base.Storage``)."""
