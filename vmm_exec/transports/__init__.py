"""How commands reach a host: local processes, one-shot ssh, persistent streams.

Every transport returns an :class:`~vmm_exec.transports.base.Execution`
(exit code, stdout, stderr, the command text for logs) and registers its
processes with the action's :class:`~vmm_exec.transports.base.Tracker`, so a
cancelled or timed-out action can be stopped wherever it runs.
"""
