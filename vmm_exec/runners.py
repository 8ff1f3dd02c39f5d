"""Turning one step into commands: script paths, parameters, stdin, fan-out.

Ports ``OpenNebulaDriver#do_action`` (vmm), ``VirtualNetworkDriver#do_action``
(vnm, one run per VN_MAD), ``TransferManagerDriver#do_transfer_action`` (tm)
and ``DatastoreExecDriver#do_datastore_action`` (ds), each ending in
``get_info_from_execution``.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from vmm_exec import rubyisms
from vmm_exec.context import ActionContext
from vmm_exec.hooks import hook_environment
from vmm_exec.protocol import split_stderr
from vmm_exec.quoting import bare, host_problem, name_problem, one_line, single_quoted
from vmm_exec.request import StepError
from vmm_exec.steps import DirectCall, Param, Step, Sym
from vmm_exec.transports.base import Execution
from vmm_exec.transports.local import capture, report, run_local
from vmm_exec.transports.remote import run_remotes_command

Outcome = Tuple[bool, str]


def info_from_execution(ctx: ActionContext, result: Execution) -> Outcome:
    """``get_info_from_execution``: stderr ``LEVEL: [id] text`` lines go to oned as LOG
    lines (under the id they name); on failure the other stderr lines are the info."""
    logs, err_info = split_stderr(result.stderr)
    for severity, msg_id, text in logs:
        ctx.writer.log_line(severity, msg_id, ctx.mask(text), ctx.gate)
    info = result.stdout if result.code == 0 else err_info
    return result.code == 0, info if info else "-"


def render_parameters(ctx: ActionContext, params: Sequence[Param]) -> str:
    """``get_parameters``: each value in single quotes (safely), blank separated."""
    words = []
    for param in params:
        value = ctx.value(param.name) if isinstance(param, Sym) else str(param)
        words.append(single_quoted(value))
    return " ".join(words)


def action_command_line(ctx: ActionContext, action: str, parameters: str,
                        default_name: Optional[str], directory: str, local: bool) -> str:
    """``action_command_line``: an absolute command is used as is, else the script path."""
    if action.startswith("/"):
        return f"{action} {parameters}"
    base = ctx.config.paths.remotes if local else ctx.config.scripts_remote_dir
    name = ctx.config.script_name(action, default_name)
    if "/" in name:  # an add-on's script (a hook's ``script``): relative to the remotes
        return f"{os.path.join(base, name)} {parameters}"
    return f"{os.path.join(base, directory, name)} {parameters}"


# -- vmm -------------------------------------------------------------------
def run_vmm(ctx: ActionContext, step: Step) -> Outcome:
    host = ctx.value("dest_host") if step.destination else ctx.value("host")
    params = render_parameters(ctx, step.parameters)
    if not step.no_extra_params:
        params = f"{params} {bare(ctx.msg_id)} {bare(host)}"
    local_script = ctx.config.action_is_local(step.action)  # -l: the script path is local
    local = local_script or bool(step.is_local)              # is_local: run it on the front-end
    command = action_command_line(ctx, step.action, params, step.script_name,
                                  ctx.config.vmm_directory, local_script)
    stdin = step.stdin if step.stdin is not None else ctx.message.xml()
    if local:
        result = run_local(ctx.scope, command, ctx.log,
                           rubyisms.strict_encode64(stdin.encode("utf-8", "surrogateescape")),
                           ctx.config.timeout)
    else:
        stream = ctx.stream(destination=step.destination)
        result = stream.run(command, stdin, command, ctx.config.timeout,
                            check_timeout=ctx.connection_timeout)
    return info_from_execution(ctx, result)


# -- vnm -------------------------------------------------------------------
def run_vnm(ctx: ActionContext, step: Step) -> Outcome:
    drivers, vm_xml = ctx.vnm_view(step.destination)
    params = " " + render_parameters(ctx, step.parameters)
    skip = step.skip if not ctx.config.strict else ()
    infos = ""
    ok = True
    encoded = rubyisms.strict_encode64(vm_xml.encode("utf-8", "surrogateescape"))
    for driver in drivers:
        if driver in skip:
            continue
        problem = name_problem("network driver name (VN_MAD)", driver)
        if problem is not None:
            raise StepError(problem)
        local = (ctx.config.action_is_local(step.action)
                 or f"{driver}-{step.action}" in ctx.config.vnmad_local_actions)
        command = action_command_line(ctx, step.action, params, None,
                                      os.path.join("vnm", driver), local)
        if local:
            result = run_local(ctx.scope, command, ctx.log, encoded, ctx.default_timeout)
        else:
            stdin = step.stdin if step.stdin is not None else encoded
            result = ctx.stream(destination=step.destination).run(
                command, stdin, command, ctx.default_timeout, check_timeout=ctx.connection_timeout)
        ok, info = info_from_execution(ctx, result)
        infos += f" {driver}: {info}"
        if not ok:
            break
    return ok, infos


# -- tm / ds -----------------------------------------------------------------
def _driver_dirs(path: str) -> List[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir())
    except OSError:
        return []


def _split_command(words: Sequence[str], what: str) -> Tuple[str, str, str]:
    """``CMD DRIVER ARG...`` → (script name, driver, shell-escaped args), as tm/ds do.

    The script name becomes a path under the driver's directory: one that would
    leave it (``../``) or carry shell syntax is refused (Ruby ran it).
    """
    if not words:
        raise StepError(f"empty {what} command")
    driver = words[1] if len(words) > 1 else ""
    problem = name_problem(f"{what} action", words[0].lower())
    if problem is not None:
        raise StepError(problem)
    return words[0].lower(), driver, " ".join(rubyisms.shell_escape(w) for w in words[2:])


def run_tm(ctx: ActionContext, words: Sequence[str], stdin: Optional[str]) -> Outcome:
    """``do_transfer_action``: ``tm/<TM_MAD>/<cmd>`` on the front-end, args shell-escaped."""
    cmd, tm, args = _split_command(words, "transfer manager")
    tm_dir = os.path.join(ctx.config.paths.remotes, "tm")
    if tm not in _driver_dirs(tm_dir):
        return False, f"Transfer Driver '{one_line(tm)}' not available"
    path = os.path.join(tm_dir, tm, cmd)
    if not os.path.exists(path):
        head, dot, _ = cmd.rpartition(".")
        if not dot:
            return False, f"Driver path '{path}' does not exists"
        shortened = os.path.join(tm_dir, tm, head)
        if not os.path.exists(shortened):
            return False, f"Driver path '{path}' nor '{shortened}' exists"
        path = shortened
    command = f"{bare(path)} {args}"
    result = run_local(ctx.scope, command, ctx.log, stdin, ctx.default_timeout)
    return info_from_execution(ctx, result)


def run_ds(ctx: ActionContext, words: Sequence[str], stdin: Optional[str]) -> Outcome:
    """``do_datastore_action``: ``datastore/<DS_MAD>/<cmd>`` on the front-end."""
    cmd, ds, args = _split_command(words, "datastore")
    ds_dir = os.path.join(ctx.config.paths.remotes, "datastore")
    if ds not in _driver_dirs(ds_dir):
        return False, f"Datastore Driver '{one_line(ds)}' not available"
    command = f"{bare(os.path.join(ds_dir, ds, cmd))} {args}"
    result = run_local(ctx.scope, command, ctx.log, stdin, ctx.default_timeout)
    return info_from_execution(ctx, result)


# -- one-shot answered actions ----------------------------------------------
def run_direct(ctx: ActionContext, call: DirectCall) -> Outcome:
    """``do_action`` with ``:respond``: one-shot remote (or -l local) script call."""
    params = call.raw_parameters if call.raw_parameters is not None else " ".join(
        bare(p) for p in call.parameters)
    host = call.host or ""
    if not call.no_extra_params:
        params = f"{params} {bare(ctx.msg_id)} {bare(host)}"
    local = ctx.config.action_is_local(call.action)
    problem = host_problem(host) if host and not local else None
    if problem is not None:
        raise StepError(problem)
    command = action_command_line(ctx, call.action, params, call.script_name,
                                  ctx.config.vmm_directory, local)
    if local:
        result = run_local(ctx.scope, command, ctx.log,
                           rubyisms.strict_encode64(call.stdin.encode("utf-8", "surrogateescape")),
                           ctx.config.timeout)
    else:
        result = run_remotes_command(ctx.transport, ctx.scope, command, host,
                                     ctx.config.scripts_remote_dir,
                                     ctx.config.paths.remotes_for_update, ctx.log, call.stdin,
                                     ctx.config.retries, ctx.config.timeout,
                                     update_timeout=ctx.update_timeout)
    return info_from_execution(ctx, result)


# -- add-on hooks -------------------------------------------------------------
def hook_stdin(ctx: ActionContext, spec: Optional[str]) -> str:
    """``vm`` (default): the VM element; ``message``: the whole request; ``none``."""
    if spec is None or spec == "vm":
        return ctx.message.element_xml("VM")
    if spec == "message":
        return ctx.message.xml()
    if spec == "none":
        return ""
    return spec


def run_hook(ctx: ActionContext, step: Step) -> Outcome:
    """An add-on script: on the front-end, or on the host/target through the action's stream.

    The script gets its parameters as argv, the hook environment (VM id,
    deploy id, hosts, action, point, failed step and info) and, on stdin,
    the VM XML unless the hook asks otherwise.
    """
    env = hook_environment(ctx.hook_data(), ctx.action, step.hook_point, step.origin)
    script = step.script_name or step.action
    params = render_parameters(ctx, step.parameters)
    stdin = hook_stdin(ctx, step.stdin)
    if step.is_local:
        command = f"{bare(script)} {params}".rstrip()
        full_env = dict(os.environ)
        full_env.update(env)
        result = capture(ctx.scope, command, stdin, ctx.config.timeout, env=full_env)
        return info_from_execution(ctx, report(result, command, ctx.log))
    path = script if script.startswith("/") else os.path.join(ctx.config.scripts_remote_dir, script)
    assignments = " ".join(f"{k}={single_quoted(v)}" for k, v in env.items())
    command = f"{assignments} {bare(path)} {params}".rstrip()
    result = ctx.stream(destination=step.destination).run(
        command, stdin, bare(path), ctx.config.timeout, check_timeout=ctx.connection_timeout)
    return info_from_execution(ctx, result)
