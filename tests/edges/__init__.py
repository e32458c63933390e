"""Hostile input (issue 13): the websocket codec against wsproto, Autobahn-style cases against a real
server and client, and HTTP edges (slowloris, huge headers, endless bodies, path traversal)."""
