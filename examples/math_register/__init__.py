"""math-register: a math kite that registers itself to Kontrol (PROTOCOL.md §11)."""
