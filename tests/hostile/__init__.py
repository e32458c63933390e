"""Hostile input (issue 13): every parser, fed garbage and near-valid input, either parses or raises
our ``ProtocolError`` or a ``KiteError``; a real kite survives it and answers the next good call."""
