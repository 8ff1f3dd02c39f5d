"""End-to-end tests: the driver, a simulated oned and real OpenSSH hosts (tests/testbed.py).

:mod:`tests.e2e.kit` builds the driver's world (ONE_LOCATION, a fake remotes tree that
journals every call and obeys a faults file) on a :class:`tests/testbed.py.Testbed`;
``compat/demo.py --real-hosts`` uses it too.
"""
