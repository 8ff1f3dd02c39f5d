"""vmm_exec: a Python drop-in replacement for OpenNebula's ``one_vmm_exec`` driver."""

__version__ = "0.1.0"
