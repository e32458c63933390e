"""exp2-query: find the math kite through Kontrol and call it with a Kontrol token (PROTOCOL.md §11)."""
