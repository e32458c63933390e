"""A clock for the verifier and the token renewer that only moves when a test says so."""


class FakeClock:
    """Unix time that only moves when a test says so: set ``now``."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now
