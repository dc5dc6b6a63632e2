"""The sandbox's child program (run as a script by :mod:`.sandbox`, never imported by prefkit).

``python -I sandbox_runner.py CONFIG.json REPORT_FD`` in the sandbox's temporary directory:

1. resource limits on itself: CPU seconds, address space, file size (SIGXFSZ ignored, so an
   oversized write raises instead of killing), open files, processes (RLIMIT_NPROC binds only
   non-root users);
2. a network namespace of its own (``unshare(CLONE_NEWNET)`` through ctypes, or a user +
   network namespace for an unprivileged user) when the kernel permits: no interface but a
   down loopback, so nothing can be reached;
3. an audit hook (PEP 578), installed before the user's code runs and impossible to remove,
   that refuses sockets, process creation (fork, exec, spawn, subprocess, os.system), signals
   to other processes, ctypes (its import too), and any open-for-write / remove / rename /
   mkdir / chmod outside the temporary directory;
4. the user's code, then each test in the same namespace; a first line (started: the
   network mode) and then the outcome go to the report descriptor (argv[2]) as JSON.

The audit hook guards against accidents and reward hacking by a policy, not against an
attacker who knows CPython's internals: the hard limits are the rlimits, the namespace and
the killed process group.
"""

import json
import os
import resource
import signal
import sys


def _limit(name, value):
    try:
        resource.setrlimit(getattr(resource, name), (value, value))
        return True
    except (ValueError, OSError):
        return False


def _unshare_network():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        clone_newnet, clone_newuser = 0x40000000, 0x10000000
        if libc.unshare(clone_newnet) == 0:
            return "network namespace"
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(clone_newuser | clone_newnet) == 0:
            for path, text in (("/proc/self/setgroups", "deny"),
                               ("/proc/self/uid_map", f"{uid} {uid} 1"),
                               ("/proc/self/gid_map", f"{gid} {gid} 1")):
                try:
                    with open(path, "w") as f:
                        f.write(text)
                except OSError:
                    pass
            return "user + network namespace"
    except (OSError, AttributeError):
        pass
    return "audit hook only (no network namespace permitted)"


_REFUSED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
            "socket.sendto", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec",
            "os.system", "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn",
            "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.chdir", "os.chroot",
            "os.setuid", "resource.setrlimit",
            "os.putenv", "os.unsetenv"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.truncate", "os.link", "os.symlink", "os.utime", "shutil.rmtree",
                "shutil.copyfile", "shutil.copymode", "shutil.move", "os.replace"}
_NO_IMPORT = {"_ctypes"}


def _install_hook(root, refusals):
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep

    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor: opened under this hook's rules
        try:
            full = realpath(fspath(path))
        except (TypeError, ValueError):
            return False
        return full == root or full.startswith(root + sep)

    def refuse(event, what):
        refusals.append(f"{event} {what}"[:200])
        raise PermissionError(f"sandbox: {event} refused ({what})")

    def hook(event, args):
        if event in _REFUSED:
            refuse(event, args[:1] if event.startswith("socket") else "")
        elif event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT
                                               | os.O_TRUNC | os.O_APPEND))
            if writing and not inside(path):
                refuse(event, f"{path} for writing outside the sandbox")
        elif event in _PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, str | bytes | os.PathLike) and not inside(path):
                    refuse(event, f"{path} outside the sandbox")
        elif event == "import" and args[0] in _NO_IMPORT:
            refuse(event, args[0])

    sys.addaudithook(hook)


def main():
    with open(sys.argv[1]) as f:
        config = json.load(f)
    report = os.fdopen(int(sys.argv[2]), "w")
    cpu, memory = config["cpu_seconds"], config["memory_bytes"]
    limits = {"RLIMIT_CPU": _limit("RLIMIT_CPU", cpu), "RLIMIT_AS": _limit("RLIMIT_AS", memory),
              "RLIMIT_FSIZE": _limit("RLIMIT_FSIZE", config["output_bytes"]),
              "RLIMIT_NOFILE": _limit("RLIMIT_NOFILE", config["open_files"]),
              "RLIMIT_NPROC": os.getuid() != 0 and _limit("RLIMIT_NPROC", 0),
              "RLIMIT_CORE": _limit("RLIMIT_CORE", 0)}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    network = _unshare_network()
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]  # the user's `import ctypes` goes through the hook's refusal
    import traceback

    refusals = []
    outcome = {"network": network, "limits": [k for k, v in limits.items() if v],
               "tests": [], "refusals": refusals}
    report.write(json.dumps({"network": network}) + "\n")  # started: the rest is the code's
    report.flush()
    _install_hook(os.path.realpath(os.getcwd()), refusals)

    def describe(exc):
        line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return line[:300]

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(config["code"], "solution.py", "exec"), namespace)
        outcome["code"] = "ok"
    except BaseException as exc:  # noqa: BLE001 -- the policy's code failed
        outcome["code"] = describe(exc)
    if outcome["code"] == "ok":
        for i, test in enumerate(config["tests"]):
            try:
                exec(compile(test, f"test_{i}.py", "exec"), namespace)
                outcome["tests"].append("ok")
            except BaseException as exc:  # noqa: BLE001 -- a failed test
                outcome["tests"].append(describe(exc))
    report.write(json.dumps(outcome))
    report.flush()
    os._exit(0)  # no atexit / finalizers of the user's code


if __name__ == "__main__":
    main()
