#!/usr/bin/env python3
"""A stand-in for the Lambda runtime API, and the cold-start timer of scripts/cold-start.sh.

Each function binary is started RUNS times, one at a time, with the environment a deployed
function gets (`AWS_LAMBDA_RUNTIME_API` pointing here, `AWS_LAMBDA_FUNCTION_*`, the region,
test credentials with a session token, the `CHRONICLE_*` variables its settings read, no HOME
and so no ~/.aws files). Its init time is from just before the process is spawned (fork and
exec) to the moment its first `GET /2018-06-01/runtime/invocation/next` arrives here: what
Lambda reports as "Init Duration", minus downloading the code. That request is never answered;
the process is killed and the next run starts.

    runtime_api.py [--runs 20] [--wrapper "qemu-aarch64 -L DIR"] [--check-network]
                   [--env-vars FILE] [--archiver-env-vars FILE] NAME=BINARY...

--check-network first runs each binary once under `strace -f -e trace=network` and lists every
connect()/sendto() that is not to this stand-in (an init that calls AWS, IMDS or DNS shows
up there); it does not time that run. Standard library only.
"""

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NEXT = "/2018-06-01/runtime/invocation/next"

# Values for the variables Chronicle's functions read (the names come from the ENV_VARS lists of
# shared/aws/src/config.rs and shared/lambda/src/archiver.rs); the template's defaults.
VALUES = {
    "CHRONICLE_EVENTS_TABLE": "chronicle-events",
    "CHRONICLE_READ_TABLE": "chronicle-read",
    "CHRONICLE_SNAPSHOT_BUCKET": "chronicle-snapshots-123456789012",
    "CHRONICLE_ARCHIVE_BUCKET": "chronicle-archive-123456789012",
    "CHRONICLE_EVENT_STREAM": "chronicle-events",
    "CHRONICLE_ANCHOR_BUCKET": "chronicle-anchors-123456789012",
    "CHRONICLE_SNAPSHOT_EVERY": "100",
    "CHRONICLE_IDEMPOTENCY_RETENTION": "7d",
    "CHRONICLE_ARCHIVE_AFTER": "30d",
    "CHRONICLE_ARCHIVE_BELOW_SNAPSHOT": "true",
    "CHRONICLE_EXPIRE_AFTER": "off",
    "CHRONICLE_KEY_TABLE": "chronicle-keys",
}
# Variables the template sets only when a parameter is given (left unset, as by default).
UNSET_BY_DEFAULT = {"CHRONICLE_KEY_KMS_KEY"}


def env_var_names(path):
    """Every name in the `ENV_VARS: [&'static str; N] = [...]` lists of a Rust source file."""
    text = open(path, encoding="utf-8").read()
    names = []
    for block in re.findall(r"ENV_VARS:\s*\[&'static str;\s*\d+\]\s*=\s*\[(.*?)\];", text, re.S):
        names += re.findall(r'"([A-Z0-9_]+)"', block)
    if not names:
        sys.exit(f"no ENV_VARS list in {path}")
    return names


class StandIn(ThreadingHTTPServer):
    """Answers nothing: notes the arrival time of each `GET .../invocation/next`."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.arrived = threading.Event()
        self.at = None
        self.release = threading.Event()

    def reset(self):
        self.at = None
        self.arrived.clear()
        self.release.clear()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        now = time.perf_counter_ns()
        if self.path.endswith(NEXT):
            if self.server.at is None:
                self.server.at = now
                self.server.arrived.set()
            # Hold the long poll as Lambda does until the function is killed.
            self.server.release.wait(30)
            self.close_connection = True
            return
        self.send_error(404)

    def log_message(self, *args):
        pass


def lambda_env(name, port, names):
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "_HANDLER": "bootstrap",
        "LAMBDA_TASK_ROOT": "/var/task",
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": f"chronicle-{name}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/chronicle-{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "ASIATESTTESTTESTTEST",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_SESSION_TOKEN": "test",
        "AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129:2000",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "RUST_LOG": "info",
    }
    for n in names:
        if n in UNSET_BY_DEFAULT:
            continue
        if n in VALUES:
            env[n] = VALUES[n]
        elif re.search(r"_(TABLE|BUCKET|STREAM)$", n):
            env[n] = "chronicle-" + n.removeprefix("CHRONICLE_").lower().replace("_", "-")
        else:
            sys.exit(f"{n}: a variable the functions read that runtime_api.py has no value for")
    return env


def run_once(server, cmd, env, log, timeout):
    server.reset()
    t0 = time.perf_counter_ns()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    ok = server.arrived.wait(timeout)
    exited = proc.poll()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its group: strace's tracee too
    except ProcessLookupError:
        pass
    proc.wait()
    server.release.set()
    if not ok:
        return None, exited
    return (server.at - t0) / 1e6, exited


def check_network(server, name, cmd, env, port, workdir):
    """Runs cmd once under strace; returns the network calls that are not to the stand-in."""
    out = os.path.join(workdir, f"{name}.strace")
    with open(os.path.join(workdir, f"{name}.strace-log"), "wb") as log:
        ms, _ = run_once(
            server,
            ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", out] + cmd,
            env, log, 60,
        )
    if ms is None:
        return None
    calls = []
    for line in open(out, encoding="utf-8", errors="replace"):
        if not re.search(r"\b(connect|sendto|sendmsg)\(", line):
            continue
        if f"htons({port})" in line and "127.0.0.1" in line:
            continue  # the runtime API
        if re.search(r"\b(sendto|sendmsg)\(\d+, .*\) = \d+$", line) and "sin_" not in line:
            continue  # a write on an already connected socket (the runtime API's)
        calls.append(line.strip())
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--wrapper", default="", help="a command the binary runs under (qemu-aarch64 -L ...)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the first request")
    ap.add_argument("--check-network", action="store_true")
    ap.add_argument("--env-vars", action="append", default=[], metavar="FILE",
                    help="a Rust source whose ENV_VARS lists name variables to set (repeatable)")
    ap.add_argument("--archiver-env-vars", action="append", default=[], metavar="FILE",
                    help="the same, for variables only the archiver reads")
    ap.add_argument("functions", nargs="+", metavar="NAME=BINARY")
    args = ap.parse_args()

    common = [n for f in args.env_vars for n in env_var_names(f)]
    archiver_only = [n for f in args.archiver_env_vars for n in env_var_names(f)]

    server = StandIn()
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    workdir = tempfile.mkdtemp(prefix="chronicle-cold-start.")
    wrapper = shlex.split(args.wrapper)
    failed = False
    rows = []
    for spec in args.functions:
        name, _, binary = spec.partition("=")
        names = common + (archiver_only if name == "archiver" else [])
        env = lambda_env(name, port, names)
        cmd = wrapper + [binary]
        if args.check_network:
            calls = check_network(server, name, cmd, env, port, workdir)
            if calls is None:
                print(f"{name}: no request to the runtime API under strace", file=sys.stderr)
                failed = True
            elif calls:
                print(f"{name}: network calls during init besides the runtime API:", file=sys.stderr)
                for c in calls:
                    print(f"    {c}", file=sys.stderr)
                failed = True
            else:
                print(f"{name}: init makes no network call but the runtime API's", file=sys.stderr)
        times = []
        logpath = os.path.join(workdir, f"{name}.log")
        with open(logpath, "wb") as log:
            for _ in range(args.runs):
                ms, exited = run_once(server, cmd, env, log, args.timeout)
                if ms is None:
                    break
                times.append(ms)
        if len(times) < args.runs:
            tail = open(logpath, encoding="utf-8", errors="replace").read()[-2000:]
            print(f"{name}: no request to the runtime API within {args.timeout} s "
                  f"(exit status {exited}); its output:\n{tail}", file=sys.stderr)
            failed = True
            continue
        rows.append((name, min(times), statistics.median(times), max(times), os.path.getsize(binary)))
    print(f"{'FUNCTION':<12} {'RUNS':>4} {'MIN ms':>8} {'MEDIAN ms':>10} {'MAX ms':>8} {'BYTES':>10}")
    for name, lo, med, hi, size in rows:
        print(f"{name:<12} {args.runs:>4} {lo:>8.1f} {med:>10.1f} {hi:>8.1f} {size:>10}")
    server.shutdown()
    if failed:
        print(f"(outputs kept in {workdir})", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
