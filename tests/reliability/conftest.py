"""Fixtures of the reliability tests (faults, overload, hostile input, security, soak).

Every server joins the test session's Ray instance (``ray_address`` from tests/conftest.py);
this test process reaches the actors through ``ray_connected`` to kill them.
"""
