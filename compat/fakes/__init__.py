"""Simulated OpenNebula hosts: fake ``ssh``/``scp`` and fake action scripts.

These modules run as separate processes started by the driver under test
(through ``bin/ssh``, ``bin/scp`` and the ``libexec/action`` wrapper target),
so they use the standard library only and stay Python 3.9 compatible.
The environment variables ``COMPAT_*`` are the contract between the runner's
world, these shims and the scripts.
"""
