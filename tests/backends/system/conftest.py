from tests.backends.system.fixtures import loops, scratch

__all__ = ["loops", "scratch"]
