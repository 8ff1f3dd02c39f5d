"""``MIGRATE_OPTIONS`` (a ``virsh migrate`` option string) -> libvirt flags and params.

The stock script runs ``virsh migrate --live $MIGRATE_OPTIONS <per-VM options>
DOMAIN URI``. We call libvirt directly, so each option is mapped to the flag or
typed parameter ``virsh`` would have set. Options that make no sense for a
live migration over shared storage managed by OpenNebula (offline, suspended
result, storage copy, post-copy, renaming, per-host URIs...) are refused with
the reason, before the VM is touched; so is anything unknown.

Per-VM settings come from the VM template as in the stock
``build_migrate_opts``: ``FEATURES/MIGRATE_AUTO_CONVERGE="initial[,increment]"``
adds ``--auto-converge --auto-converge-initial I [--auto-converge-increment
N]``, ``FEATURES/MIGRATE_COMPRESSED=YES`` adds ``--compressed``; they follow
``MIGRATE_OPTIONS``, so a per-VM value wins over a global one.

The mapping is symbolic (libvirt constant names); :meth:`Options.resolve`
turns it into numbers with the installed bindings, so parsing and refusing
need no libvirt.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple


class OptionError(Exception):
    """An option is refused or malformed; nothing was touched."""


# virsh option -> libvirt flag constant
FLAGS: Dict[str, str] = {
    "--live": "VIR_MIGRATE_LIVE",
    "--p2p": "VIR_MIGRATE_PEER2PEER",
    "--tunnelled": "VIR_MIGRATE_TUNNELLED",
    "--persistent": "VIR_MIGRATE_PERSIST_DEST",
    "--undefinesource": "VIR_MIGRATE_UNDEFINE_SOURCE",
    "--unsafe": "VIR_MIGRATE_UNSAFE",
    "--compressed": "VIR_MIGRATE_COMPRESSED",
    "--auto-converge": "VIR_MIGRATE_AUTO_CONVERGE",
    "--abort-on-error": "VIR_MIGRATE_ABORT_ON_ERROR",
    "--change-protection": "VIR_MIGRATE_CHANGE_PROTECTION",
    "--parallel": "VIR_MIGRATE_PARALLEL",
    "--tls": "VIR_MIGRATE_TLS",
    "--zerocopy": "VIR_MIGRATE_ZEROCOPY",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise ValueError("must be between 0 and 100")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _words(text: str) -> List[str]:
    words = [w for w in text.split(",") if w]
    if not words:
        raise ValueError("needs at least one method")
    return words


def _word(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


# virsh option -> (typed parameter constant, value parser, flag it implies)
PARAMS: Dict[str, Tuple[str, Callable[[str], Any], Optional[str]]] = {
    "--bandwidth": ("VIR_MIGRATE_PARAM_BANDWIDTH", _positive_int, None),
    "--parallel-connections": ("VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS", _positive_int,
                               "VIR_MIGRATE_PARALLEL"),
    "--auto-converge-initial": ("VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL", _percent,
                                "VIR_MIGRATE_AUTO_CONVERGE"),
    "--auto-converge-increment": ("VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT", _percent,
                                  "VIR_MIGRATE_AUTO_CONVERGE"),
    "--comp-methods": ("VIR_MIGRATE_PARAM_COMPRESSION", _words, "VIR_MIGRATE_COMPRESSED"),
    "--comp-mt-level": ("VIR_MIGRATE_PARAM_COMPRESSION_MT_LEVEL", _non_negative_int,
                        "VIR_MIGRATE_COMPRESSED"),
    "--comp-mt-threads": ("VIR_MIGRATE_PARAM_COMPRESSION_MT_THREADS", _positive_int,
                          "VIR_MIGRATE_COMPRESSED"),
    "--comp-mt-dthreads": ("VIR_MIGRATE_PARAM_COMPRESSION_MT_DTHREADS", _positive_int,
                           "VIR_MIGRATE_COMPRESSED"),
    "--comp-xbzrle-cache": ("VIR_MIGRATE_PARAM_COMPRESSION_XBZRLE_CACHE", _positive_int,
                            "VIR_MIGRATE_COMPRESSED"),
    "--comp-zlib-level": ("VIR_MIGRATE_PARAM_COMPRESSION_ZLIB_LEVEL", _non_negative_int,
                          "VIR_MIGRATE_COMPRESSED"),
    "--comp-zstd-level": ("VIR_MIGRATE_PARAM_COMPRESSION_ZSTD_LEVEL", _non_negative_int,
                          "VIR_MIGRATE_COMPRESSED"),
    "--listen-address": ("VIR_MIGRATE_PARAM_LISTEN_ADDRESS", _word, None),
}

# accepted and ignored, with the reason
IGNORED: Dict[str, str] = {
    "--verbose": "progress is reported by the framework itself",
}

# refused, with the reason
REFUSED: Dict[str, str] = {
    "--offline": "an offline migration does not move a running VM",
    "--suspend": "it would leave the VM paused on the destination",
    "--direct": "direct migration is for hypervisors that migrate by themselves, not QEMU",
    "--copy-storage-all": "storage copy is the stock script's job (non-shared datastores)",
    "--copy-storage-inc": "storage copy is the stock script's job (non-shared datastores)",
    "--copy-storage-synchronous-writes": "storage copy is the stock script's job",
    "--migrate-disks": "storage copy is the stock script's job (non-shared datastores)",
    "--migrate-disks-detect-zeroes": "storage copy is the stock script's job",
    "--disks-port": "storage copy is the stock script's job",
    "--disks-uri": "storage copy is the stock script's job",
    "--postcopy": ("a post-copy migration cannot be rolled back to the source once it "
                   "has switched over"),
    "--postcopy-after-precopy": "a post-copy migration cannot be rolled back",
    "--postcopy-bandwidth": "a post-copy migration cannot be rolled back",
    "--postcopy-resume": "a post-copy migration cannot be rolled back",
    "--rdma-pin-all": "RDMA transport is not supported by this framework",
    "--timeout": "bound the migration with the driver's -w or VMM_EXEC_MIGRATE_TIMEOUT",
    "--timeout-suspend": "bound the migration with the driver's -w or VMM_EXEC_MIGRATE_TIMEOUT",
    "--timeout-postcopy": "a post-copy migration cannot be rolled back",
    "--dname": "OpenNebula finds the VM by its deploy id, which must not change",
    "--xml": "the domain XML is OpenNebula's; a per-host XML is not a global option",
    "--persistent-xml": "the domain XML is OpenNebula's",
    "--migrateuri": "it depends on the destination host, so it cannot be a global option",
    "--graphicsuri": "it depends on the destination host, so it cannot be a global option",
    "--tls-destination": "it depends on the destination host, so it cannot be a global option",
    "--domain": "the domain is the VM being migrated",
    "--desturi": "the destination URI comes from QEMU_PROTOCOL / VMM_EXEC_DEST_URI",
}


@dataclass(frozen=True)
class Options:
    """The migration options, symbolically (libvirt constant names)."""

    flags: Tuple[str, ...]
    #: param constant name -> value
    params: Tuple[Tuple[str, Any], ...]
    #: accepted option words, for the log
    accepted: Tuple[str, ...] = field(default=())
    #: ignored option -> reason
    ignored: Tuple[Tuple[str, str], ...] = field(default=())

    @property
    def p2p(self) -> bool:
        return "VIR_MIGRATE_PEER2PEER" in self.flags

    def param(self, name: str) -> Any:
        return dict(self.params).get(name)

    def describe(self) -> str:
        mode = "peer-to-peer" if self.p2p else "client-managed"
        extra = " ".join(self.accepted)
        return f"{mode} live migration" + (f" with {extra}" if extra else "")

    def resolve(self, libvirt: Any) -> Tuple[int, Dict[str, Any]]:
        """``(flags, params)`` for ``migrate3``/``migrateToURI3`` with these bindings."""
        flags = 0
        for name in self.flags:
            value = getattr(libvirt, name, None)
            if value is None:
                raise OptionError(f"{_option_of(name)} needs a newer libvirt than this "
                                  f"host's bindings ({name} is missing)")
            flags |= int(value)
        params: Dict[str, Any] = {}
        for name, value in self.params:
            key = getattr(libvirt, name, None)
            if key is None:
                raise OptionError(f"{_option_of(name)} needs a newer libvirt than this "
                                  f"host's bindings ({name} is missing)")
            params[str(key)] = value
        return flags, params


def _option_of(constant: str) -> str:
    for opt, name in FLAGS.items():
        if name == constant:
            return opt
    for opt, (name, _parse, _implied) in PARAMS.items():
        if name == constant:
            return opt
    return constant


def per_vm_options(auto_converge: str, compressed: bool) -> str:
    """The per-VM option string, as the stock ``build_migrate_opts`` builds it."""
    words: List[str] = []
    value = auto_converge.strip()
    if value:
        parts = value.split(",")
        if len(parts) > 2 or not all(p.strip() for p in parts):
            raise OptionError(
                f"FEATURES/MIGRATE_AUTO_CONVERGE={value!r} must be 'initial' or "
                f"'initial,increment' (percentages)")
        words += ["--auto-converge", "--auto-converge-initial", parts[0].strip()]
        if len(parts) == 2:
            words += ["--auto-converge-increment", parts[1].strip()]
    if compressed:
        words.append("--compressed")
    return " ".join(shlex.quote(w) for w in words)


def parse(migrate_options: str, per_vm: str = "") -> Options:
    """Parse ``MIGRATE_OPTIONS`` followed by the per-VM options.

    Always live (``VIR_MIGRATE_LIVE``), as the stock ``virsh migrate --live``.
    """
    try:
        words = shlex.split(migrate_options) + shlex.split(per_vm)
    except ValueError as exc:
        raise OptionError(f"MIGRATE_OPTIONS={migrate_options!r} cannot be split: {exc}") from None
    flags: List[str] = ["VIR_MIGRATE_LIVE"]
    params: Dict[str, Any] = {}
    accepted: List[str] = []
    ignored: List[Tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        name, eq, inline = word.partition("=")
        if not name.startswith("--"):
            raise OptionError(f"MIGRATE_OPTIONS: unexpected argument {word!r} (only options "
                              f"are allowed; the domain and destination are set by OpenNebula)")
        if name in REFUSED:
            raise OptionError(f"MIGRATE_OPTIONS: {name} is not supported: {REFUSED[name]}")
        if name in IGNORED:
            ignored.append((name, IGNORED[name]))
            continue
        if name in FLAGS:
            if eq:
                raise OptionError(f"MIGRATE_OPTIONS: {name} takes no value")
            if FLAGS[name] not in flags:
                flags.append(FLAGS[name])
            if name != "--live":
                accepted.append(name)
            continue
        if name in PARAMS:
            constant, convert, implied = PARAMS[name]
            if eq:
                raw = inline
            elif i < len(words):
                raw = words[i]
                i += 1
            else:
                raise OptionError(f"MIGRATE_OPTIONS: {name} needs a value")
            try:
                params[constant] = convert(raw)
            except ValueError as exc:
                raise OptionError(f"MIGRATE_OPTIONS: {name} {raw!r}: {exc}") from None
            if implied and implied not in flags:
                flags.append(implied)
            accepted.append(f"{name} {raw}")
            continue
        raise OptionError(f"MIGRATE_OPTIONS: unknown option {name} (supported: "
                          + ", ".join(sorted([*FLAGS, *PARAMS, *IGNORED])) + ")")
    if "VIR_MIGRATE_TUNNELLED" in flags and "VIR_MIGRATE_PEER2PEER" not in flags:
        raise OptionError("MIGRATE_OPTIONS: --tunnelled needs --p2p (libvirt tunnels only "
                          "peer-to-peer migrations)")
    if "VIR_MIGRATE_ZEROCOPY" in flags and "VIR_MIGRATE_PARALLEL" not in flags:
        raise OptionError("MIGRATE_OPTIONS: --zerocopy needs --parallel")
    return Options(flags=tuple(flags), params=tuple(params.items()),
                   accepted=tuple(accepted), ignored=tuple(ignored))
