"""Differential-test harness of vmm_exec against recordings of the Ruby driver.

``compat.runner`` runs scenarios, ``compat.fakes`` simulates the hosts.
Nothing here is imported by the driver itself.
"""
