#!/usr/bin/python3
"""server.py: a throwaway OpenStack Swift (proxy, account, container and object servers) on 127.0.0.1 for tests,
from Debian's python3-swift. Everything (configs, rings, swift.conf, data, logs) lives under DIR; /etc/swift is
never read.

usage: server.py start DIR [--owner PID]  start the four servers in the background; writes DIR/env and DIR/pids
       server.py stop DIR                 stop them (SIGTERM, SIGKILL after 5 s); safe to call twice
       server.py kill DIR SERVER          stop one of proxy, account, container, object (fault tests)
       server.py run DIR SERVER --fd N    one server in the foreground (what start launches)

--owner PID: the servers stop by themselves when process PID exits (a test killed with SIGKILL runs no EXIT trap).
"""
import argparse
import json
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

SERVERS = ("account", "container", "object", "proxy")
SKIP = 77  # the exit status of a skipped test (SKIP_RETURN_CODE)
START_TIMEOUT_S = 30
STOP_GRACE_S = 5
USER, KEY = "test:tester", "testing"  # tempauth user_test_tester, account AUTH_test


def die(msg, code=1):
    print(f"server.py: {msg}", file=sys.stderr)
    sys.exit(code)


def need_swift():
    try:
        import swift.common.ring  # noqa: F401
    except ImportError as e:
        die(f"cannot import swift with {sys.executable} ({e}): scripts/setup.sh installs python3-swift "
            "(apt-get install --no-install-recommends python3-swift)", SKIP)


# --- configuration ---------------------------------------------------------------------------------------------

def bind_ports():
    """One listening-to-be socket per server on a free port of 127.0.0.1. The servers inherit these sockets
    (run --fd), so no other process can take a port between choosing it and the server serving on it."""
    socks = {}
    for name in SERVERS:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        socks[name] = s
    return socks


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_swift_conf(d):
    write(f"{d}/swift.conf", f"""[swift-hash]
swift_hash_path_suffix = {secrets.token_hex(8)}
swift_hash_path_prefix = {secrets.token_hex(8)}

[storage-policy:0]
name = Policy-0
default = yes
""")


def write_rings(d, ports):
    from swift.common.ring import RingBuilder
    for name in ("account", "container", "object"):
        b = RingBuilder(6, 1, 0)  # 64 partitions, one replica, no wait between rebalances
        b.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": ports[name], "device": "d1", "weight": 1})
        b.rebalance()
        b.get_ring().save(f"{d}/{name}.ring.gz")


def common_conf(d, name, port):
    # workers = 0: one process per server (its pid is the one in DIR/pids, and the cache filter's dict is shared
    # by every request); mount_check = false: the device is a plain directory, not a mount point.
    return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
swift_dir = {d}
devices = {d}/srv
mount_check = false
log_name = {name}-server
"""


def backend_conf(d, name, port):
    return common_conf(d, name, port) + f"""
[pipeline:main]
pipeline = healthcheck {name}-server

[app:{name}-server]
use = egg:swift#{name}

[filter:healthcheck]
use = egg:swift#healthcheck
"""


def proxy_conf(d, port):
    filters = ("catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk s3api copy slo dlo "
               "versioned_writes").split()
    sections = "".join(f"\n[filter:{f}]\nuse = egg:swift#{f.replace('-', '_')}\n" for f in filters)
    return common_conf(d, "proxy", port) + f"""
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo versioned_writes proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {KEY} .admin

# tempauth keeps its tokens in the memcache of the `cache` slot: the dict below stands in for a memcached
[filter:cache]
paste.filter_factory = __main__:cache_filter_factory
{sections}"""


def write_configs(d, ports):
    os.makedirs(f"{d}/srv/d1", exist_ok=True)
    write_swift_conf(d)
    write_rings(d, ports)
    for name in ("account", "container", "object"):
        write(f"{d}/{name}-server.conf", backend_conf(d, name, ports[name]))
    write(f"{d}/proxy-server.conf", proxy_conf(d, ports["proxy"]))


def write_env(d, port):
    url = f"http://127.0.0.1:{port}"
    write(f"{d}/env", f"""SWIFT_PROXY_PORT={port}
ST_AUTH={url}/auth/v1.0
ST_USER={USER}
ST_KEY={KEY}
AWS_ENDPOINT_URL={url}
AWS_ACCESS_KEY_ID={USER}
AWS_SECRET_ACCESS_KEY={KEY}
AWS_REGION=us-east-1
""")


# --- the memcache stand-in of the proxy's `cache` slot ---------------------------------------------------------

class DictMemcache:
    """The part of swift.common.memcached.MemcacheRing that tempauth and the proxy call, in one process's memory.
    Values go through JSON as with a real memcached, so callers never share (and mutate) a cached object."""
    MAX_RELATIVE_S = 30 * 24 * 3600  # memcached reads a larger `time` as an absolute Unix time

    def __init__(self):
        self.items = {}  # key -> (expires or 0, value)

    def _expires(self, t):
        t = float(t or 0)
        return 0 if t <= 0 else t if t > self.MAX_RELATIVE_S else time.time() + t

    def get(self, key, raise_on_error=False):
        expires, value = self.items.get(key, (0, None))
        if expires and expires <= time.time():
            del self.items[key]
            return None
        return None if value is None else json.loads(value)

    def set(self, key, value, serialize=True, time=0, min_compress_len=0, raise_on_error=False):
        self.items[key] = (self._expires(time), json.dumps(value))

    def incr(self, key, delta=1, time=0):
        value = max(0, int(self.get(key) or 0) + delta)
        self.set(key, value, time=time)
        return value

    def decr(self, key, delta=1, time=0):
        return self.incr(key, -delta, time)

    def delete(self, key, server_key=None):
        self.items.pop(key, None)

    def set_multi(self, mapping, server_key, serialize=True, time=0, min_compress_len=0):
        for key, value in mapping.items():
            self.set(key, value, time=time)

    def get_multi(self, keys, server_key):
        return [self.get(key) for key in keys]


def cache_filter_factory(global_conf, **local_conf):
    cache = DictMemcache()

    def filter(app):
        def middleware(env, start_response):
            env["swift.cache"] = cache
            return app(env, start_response)
        return middleware
    return filter


# --- one server (server.py run) --------------------------------------------------------------------------------

def stop_with_owner(owner):
    """Exit as soon as process OWNER exits. A real thread blocked on a pidfd, started before eventlet patches
    threading and select (a green thread would need the hub that run_wsgi replaces)."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        die(f"owner process {owner} is not running")
    wait = select.select  # bound now: eventlet replaces select.select later

    def watch():
        wait([pidfd], [], [])
        print(f"server.py: owner process {owner} exited: stopping", file=sys.__stderr__, flush=True)
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def run(d, name, fd):
    import swift.common.utils as utils
    # swift.conf is read when storage_policy and constraints are first imported (by swift.common.wsgi): point
    # Swift at DIR's copy before that, so /etc/swift is never read.
    utils.SWIFT_CONF_FILE = f"{d}/swift.conf"
    # Swift always adds a syslog handler, and without /dev/log it sends to UDP 127.0.0.1:514; log only to stderr
    # (DIR/NAME.log, verbose=True below).
    utils.ThreadSafeSysLogHandler = lambda *a, **kw: logging.NullHandler()
    from eventlet.greenio import GreenSocket
    import swift.common.wsgi as wsgi

    inherited = socket.socket(fileno=fd)

    def get_socket(conf):  # replaces Swift's bind to conf's bind_port (start bound it), same options
        inherited.listen(int(conf.get("backlog", 4096)))
        inherited.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        inherited.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return GreenSocket(inherited)
    wsgi.get_socket = get_socket
    kwargs = {}
    if name == "object":  # as swift-object-server does
        from swift.obj.server import global_conf_callback
        kwargs["global_conf_callback"] = global_conf_callback
    return wsgi.run_wsgi(f"{d}/{name}-server.conf", f"{name}-server", verbose=True, **kwargs)


# --- processes -------------------------------------------------------------------------------------------------

def read_pids(d):
    try:
        with open(f"{d}/pids") as f:
            return dict((name, int(pid)) for name, pid in (line.split() for line in f if line.strip()))
    except FileNotFoundError:
        return {}


def is_ours(d, name, pid):
    """PID is still that server, alive (a pid can be reused once the server is gone; a zombie is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return argv[2:5] == ["run", d, name]


def launch(d, name, sock, owner):
    argv = [sys.executable, os.path.abspath(__file__), "run", d, name, "--fd", str(sock.fileno())]
    if owner:
        argv += ["--owner", str(owner)]
    with open(f"{d}/{name}.log", "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=[sock.fileno()], cwd=d)


def healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
            return r.status == 200 and r.read() == b"OK"
    except OSError:
        return False


def wait_ready(d, procs, ports):
    """Polls every server's /healthcheck until all answer OK; says which log to read when one dies or stays mute."""
    waiting = set(SERVERS)
    deadline = time.monotonic() + START_TIMEOUT_S
    while waiting:
        dead = [name for name in SERVERS if procs[name].poll() is not None]
        if dead:
            raise RuntimeError("; ".join(f"the {name} server exited with status {procs[name].returncode} while "
                                         f"starting: read {d}/{name}.log" for name in dead))
        waiting = {name for name in waiting if not healthy(ports[name])}
        if waiting and time.monotonic() > deadline:
            name = sorted(waiting)[0]
            raise RuntimeError(f"the {name} server did not answer http://127.0.0.1:{ports[name]}/healthcheck within "
                               f"{START_TIMEOUT_S} s: read {d}/{name}.log")
        if waiting:
            time.sleep(0.1)


def start(d, owner):
    need_swift()
    if any(is_ours(d, name, pid) for name, pid in read_pids(d).items()):
        die(f"Swift is already running from {d} (pids in {d}/pids): run `server.py stop {d}` first")
    os.makedirs(d, exist_ok=True)
    for stale in ("env", "pids"):
        if os.path.exists(f"{d}/{stale}"):
            os.remove(f"{d}/{stale}")
    socks = bind_ports()
    ports = {name: s.getsockname()[1] for name, s in socks.items()}
    write_configs(d, ports)
    procs = {}
    for name in SERVERS:
        procs[name] = launch(d, name, socks[name], owner)
        socks[name].close()  # the server holds it now
    write("%s/pids" % d, "".join(f"{name} {p.pid}\n" for name, p in procs.items()))
    try:
        wait_ready(d, procs, ports)
    except RuntimeError as e:
        stop(d, quiet=True)
        die(f"Swift did not start: {e}")
    write_env(d, ports["proxy"])
    print(f"swift: proxy on http://127.0.0.1:{ports['proxy']} (env in {d}/env, logs in {d}/*.log)")


def stop_pids(d, pids, quiet=False):
    """SIGTERM, then SIGKILL to whichever of PIDS (name -> pid) still runs after STOP_GRACE_S."""
    live = {name: pid for name, pid in pids.items() if is_ours(d, name, pid)}
    running = ", ".join(f"{n} (pid {p})" for n, p in live.items())
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        for name, pid in live.items():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            live = {name: pid for name, pid in live.items() if is_ours(d, name, pid)}
            if live:
                time.sleep(0.05)
        if not live:
            break
    if live:
        die("still running after SIGKILL: " + ", ".join(f"{n} server (pid {p})" for n, p in live.items()))
    if not quiet:
        print(f"swift: stopped {running}" if running else f"swift: not running: {', '.join(pids) or 'no server'} of {d}")


def stop(d, quiet=False):
    stop_pids(d, read_pids(d), quiet)


def kill_one(d, name):
    pids = read_pids(d)
    if name not in pids:
        die(f"no {name} server in {d}/pids (servers: {', '.join(pids) or 'none'})")
    stop_pids(d, {name: pids[name]})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("start", "stop", "kill", "run"))
    p.add_argument("dir")
    p.add_argument("server", nargs="?", choices=SERVERS)
    p.add_argument("--owner", type=int, help="stop the servers when this process exits")
    p.add_argument("--fd", type=int, help="(run) the bound listening socket inherited from start")
    a = p.parse_args()
    d = os.path.abspath(a.dir)
    if a.command in ("kill", "run") and not a.server:
        p.error(f"{a.command} needs a SERVER: one of {', '.join(SERVERS)}")
    if a.command == "start":
        start(d, a.owner)
    elif a.command == "stop":
        stop(d)
    elif a.command == "kill":
        kill_one(d, a.server)
    else:
        if a.fd is None:
            p.error("run needs --fd")
        if a.owner:
            stop_with_owner(a.owner)
        sys.exit(run(d, a.server, a.fd))


if __name__ == "__main__":
    main()
