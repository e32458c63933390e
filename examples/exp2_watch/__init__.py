"""exp2-watch: follow math kites registering to and leaving Kontrol (PROTOCOL.md §11, §7.9)."""
