"""The pure routing core: request -> key -> ring -> placement. No I/O, no clock of its own."""
